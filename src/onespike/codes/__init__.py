"""Neural codes: pure tensor functions (encode, decode, thresholds) and their parameters.

``phase`` is onespike's single-spike code; ``binary`` the multi-spike base-2 code (the
``binary`` input coding, and the comparison's binary neurons); ``rate``, ``burst`` and
``ttfs`` the other codes of the comparison; ``signed`` the signed single-spike neurons and
spike x spike products, ``softmax`` the softmax by spike timing (transformers, issue 27).
"""

from onespike.codes import binary, phase, signed, softmax
from onespike.codes.phase import NO_SPIKE, PhaseCode

__all__ = ["NO_SPIKE", "PhaseCode", "binary", "phase", "signed", "softmax"]
