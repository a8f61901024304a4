"""Deprecated: the neurons of the multi-spike base-2 code are in :mod:`onespike.codes.binary`.

This module forwards to it, under the old names, for one release.
"""

import warnings

from onespike.codes.binary import decode_weight_sum as decode
from onespike.codes.binary import neuron_step as weighted_step
from onespike.codes.binary import phase_of, phase_weight, run_constant

warnings.warn(
    "onespike.codes.weighted is now onespike.codes.binary (weighted_step -> neuron_step, "
    "decode -> decode_weight_sum); the old module goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["decode", "phase_of", "phase_weight", "run_constant", "weighted_step"]
