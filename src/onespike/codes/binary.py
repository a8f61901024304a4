"""The multi-spike base-2 code (binary phase coding, weighted spikes: Kim et al. 2018).

A value in [0, 1) is sent over a period of ``K`` steps as the bits of its binary
expansion, most significant first: a spike at step ``k`` of a period weighs
``2^-(k+1)`` (times the layer's scale), and a neuron may fire at every step.

Two uses, one rule:

- **Encoding a known value** (the ``binary`` input coding of
  :func:`onespike.convert`): :func:`encode` gives the integer ``n = floor(x * 2^K)``
  (clipped to ``2^K - 1``), whose bit ``K-1-k`` is the spike of step ``k``; the
  represented value is ``n / 2^K``, within ``2^-K`` below ``x``.
- **Neurons that produce the bits from a membrane** (hidden layers of the code
  comparison, :class:`onespike.simulate_codes.BinaryNeurons`): :func:`neuron_step`
  integrates its input and, at step ``k`` of a period, fires when the membrane
  reaches ``scale * 2^-(k+1)`` and subtracts it, a greedy binary expansion of what
  it holds. A value ``z`` in [0, 1) injected at the start of a period yields
  exactly the bits of ``encode(z, K)`` in that period (tested), and over ``P``
  periods of a constant input the decoded value is within ``2^-K / P`` below ``z``.
"""

from __future__ import annotations

import torch

from onespike.errors import OptionError

Tensor = torch.Tensor

#: The base of the code: a spike one step later weighs half as much.
BASE = 2.0


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


def phase_of(step: int, period: int) -> int:
    """Phase ``k`` (0 .. K-1) of global step ``step`` for periods of ``period`` phases."""
    if period < 1:
        raise OptionError(f"period must be >= 1, got {period!r}")
    return step % period


def phase_weight(phase: int) -> float:
    """Weight ``2^-(k+1)`` of a spike at phase ``k`` (in units of the layer's scale)."""
    return 2.0 ** -(phase + 1)


def neuron_step(
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
        u, s = neuron_step(u, z if k == 0 else torch.zeros_like(z), 1.0, k)
        total = total + s * phase_weight(k)
        count = count + s
        if t < period:
            first.append(s)
    return total, count, torch.stack(first)


def decode_weight_sum(weight_sum: Tensor, periods: float, scale: Tensor | float = 1.0) -> Tensor:
    """Value per period carried by spikes of total weight ``weight_sum``."""
    return weight_sum * (scale / periods)


__all__ = [
    "BASE",
    "decode",
    "decode_weight_sum",
    "encode",
    "neuron_step",
    "phase_of",
    "phase_weight",
    "run_constant",
    "spike_count",
    "spikes_at",
    "unit_weight",
]
