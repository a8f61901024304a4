"""Neural codes: pure tensor functions (encode, decode, thresholds) and their parameters."""

from onespike.codes import multiphase, phase
from onespike.codes.phase import NO_SPIKE, PhaseCode

__all__ = ["NO_SPIKE", "PhaseCode", "multiphase", "phase"]
