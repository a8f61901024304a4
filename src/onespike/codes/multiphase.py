"""Multi-spike base-2 phase code (weighted spikes, Kim et al. 2018).

Used for the ``phase`` input coding: a value ``x`` in [0, 1] is sent over ``T``
steps as the bits of its binary expansion; a spike at step ``k`` weighs
``2^-(k+1)``. The represented value is ``floor(x * 2^T) / 2^T`` (clipped to
``1 - 2^-T``), so the error is below ``2^-T``.

The integer ``n = floor(x * 2^T)`` holds the whole train: the spike of step
``k`` is bit ``T-1-k`` of ``n``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def encode(x: Tensor, phases: int) -> Tensor:
    """Integer code ``n`` (int64, shape of ``x``) of values ``x`` clipped to [0, 1)."""
    top = 2**phases
    n = torch.floor(x.to(torch.float64) * top).to(torch.int64)
    return n.clamp(0, top - 1)


def spikes_at(code: Tensor, step: int, phases: int) -> Tensor:
    """0/1 spikes (int64) of step ``step``: bit ``T-1-step`` of the code."""
    return (code >> (phases - 1 - step)) & 1


def spike_count(code: Tensor) -> Tensor:
    """Number of spikes (set bits) of each code (int64)."""
    c = code.clone()
    count = torch.zeros_like(c)
    while bool((c > 0).any()):
        count += c & 1
        c = c >> 1
    return count


def decode(code: Tensor, phases: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Value ``n / 2^T`` of each code."""
    return (code.to(torch.float64) / 2**phases).to(dtype)


def unit_weight(phases: int) -> float:
    """Weight of a spike at the last step, ``2^-T``: the membrane doubles each step."""
    return 2.0**-phases
