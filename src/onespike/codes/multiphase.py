"""Deprecated: the encoder of the multi-spike base-2 code is :mod:`onespike.codes.binary`.

This module forwards to it for one release.
"""

import warnings

from onespike.codes.binary import decode, encode, spike_count, spikes_at, unit_weight

warnings.warn(
    "onespike.codes.multiphase is now onespike.codes.binary; the old module goes in the "
    "next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["decode", "encode", "spike_count", "spikes_at", "unit_weight"]
