"""Neurons of the multi-spike base-2 phase code (weighted spikes, Kim et al. 2018).

Time is divided into periods of ``K`` phases that repeat. A spike at phase
``k`` weighs ``2^-(k+1)`` (times the layer's scale ``lam``); a neuron may fire
at every phase. The neuron integrates its (weighted) input and, at phase
``k``, fires when its membrane reaches ``lam * 2^-(k+1)`` and subtracts that
threshold: a greedy binary expansion of what it holds, most significant bit
first. The value of a neuron over ``P`` periods is the sum of its spike
weights divided by ``P``.

:mod:`onespike.codes.multiphase` holds the encoder of a known value (the
``phase`` input coding); this module holds the neuron dynamics that produce
the same bits from a membrane, which is what hidden layers need. A value ``z``
in [0, 1) injected at the start of a period yields, in that period, exactly the
bits of ``multiphase.encode(z, K)`` (tested), and over ``P`` periods of a
constant input the decoded value is within ``2^-K / P`` below ``z``.
"""

from __future__ import annotations

import torch

from onespike.errors import OptionError

Tensor = torch.Tensor


def phase_of(step: int, period: int) -> int:
    """Phase ``k`` (0 .. K-1) of global step ``step`` for periods of ``period`` phases."""
    if period < 1:
        raise OptionError(f"period must be >= 1, got {period!r}")
    return step % period


def phase_weight(phase: int) -> float:
    """Weight ``2^-(k+1)`` of a spike at phase ``k`` (in units of the layer's scale)."""
    return 2.0 ** -(phase + 1)


def weighted_step(
    u: Tensor, current: Tensor, threshold: Tensor | float, phase: int
) -> tuple[Tensor, Tensor]:
    """One step at phase ``phase``: integrate, fire at ``threshold * 2^-(k+1)``, subtract.

    Returns ``(u_after, spikes)`` with 0/1 spikes in the dtype of ``u``.
    """
    th = phase_weight(phase) * threshold
    u = u + current
    spikes = (u >= th).to(u.dtype)
    return u - spikes * th, spikes


def run_constant(z: Tensor, periods: int, period: int) -> tuple[Tensor, Tensor, Tensor]:
    """Neurons (threshold 1) fed ``z`` at phase 0 of every period, for ``periods`` periods.

    Returns ``(weight_sum, count, first_period_bits)``: the sum of the spike
    weights, the number of spikes, and the spikes of the first period
    (``[K, *z.shape]``, 0/1).
    """
    u = torch.zeros_like(z)
    total = torch.zeros_like(z)
    count = torch.zeros_like(z)
    first = []
    for t in range(periods * period):
        k = phase_of(t, period)
        u, s = weighted_step(u, z if k == 0 else torch.zeros_like(z), 1.0, k)
        total = total + s * phase_weight(k)
        count = count + s
        if t < period:
            first.append(s)
    return total, count, torch.stack(first)


def decode(weight_sum: Tensor, periods: float, scale: Tensor | float = 1.0) -> Tensor:
    """Value per period carried by spikes of total weight ``weight_sum``."""
    return weight_sum * (scale / periods)


__all__ = ["decode", "phase_of", "phase_weight", "run_constant", "weighted_step"]
