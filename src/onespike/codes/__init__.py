"""Neural codes: pure tensor functions (encode, decode, thresholds) and their parameters.

``phase`` is onespike's single-spike code; ``binary`` the multi-spike base-2 code (the
``binary`` input coding, and the comparison's binary neurons); ``rate``, ``burst`` and
``ttfs`` the other codes of the comparison.
"""

from onespike.codes import binary, phase
from onespike.codes.phase import NO_SPIKE, PhaseCode

__all__ = ["NO_SPIKE", "PhaseCode", "binary", "phase"]
