"""Softmax by spike timing, and ReLU attention (issue 27).

The spike-shift exponential ("winner-oriented spike shift", SpikedAttention): after the
row maximum is subtracted, a score ``s`` is ``gap = max - s >= 0`` below the winner. An
exponential neuron fires at the phase whose level ``B**-k`` is nearest ``exp(-gap)``: the
phase code (:mod:`onespike.codes.phase`, scale 1, its thresholds and shift) of
``exp(-gap)``. So each phase step stands for a logit gap of ``ln B`` (``B = e**(1/steps
per unit of logit)``); the winner fires at phase 0 with the exact value 1, and scores more
than ``(T - 1) ln B + ln 2`` below it stay silent (weight 0). The row sum of the spikes'
values is accumulated as they arrive, and the product with the values divided by it once
per output row::

    attention(scores) @ v  ~  (E @ v) / E.sum(-1),   E = phase-code(exp(scores - max))

Error (with the threshold shift, per row; ``delta = (B-1)/(B+1)``, ``tau = B**-(T-1)/2``):
each ``e = exp(-gap)`` is coded with an error ``a <= delta * e`` where ``e >= B**-(T-1)``,
else ``a <= tau``; with ``S``/``S^`` the exact/coded row sums (``S^ >= 1``: the winner is
exact) and ``p = e / S``::

    |p^ - p| <= (a + p * sum(a)) / S^                                  (softmax_bound)

``relu_attention``: the alternative for models trained with it, ``relu(scores) / N`` with
``N`` the number of tokens (no exponential, no division by a data-dependent sum).
"""

from __future__ import annotations

import torch

from onespike.codes import phase as pc
from onespike.codes import signed

Tensor = torch.Tensor

#: The bases the exponential's base is searched over by default.
BASES = tuple(round(1.05 + 0.05 * i, 2) for i in range(20))  # 1.05 .. 2.0


def shifted_exp(scores: Tensor) -> Tensor:
    """``exp(scores - rowmax)`` over the last dimension: what the exponential neurons code
    (scale 1; the winner's value is 1). The step simulator's membranes, normalised."""
    gap = scores.amax(dim=-1, keepdim=True) - scores
    return torch.exp(-gap).contiguous()


def exp_phases(scores: Tensor, base: float, phases: int, *, threshold_shift: bool = True) -> Tensor:
    """Phase of each exponential neuron (-1: silent): the phase code of
    ``exp(scores - rowmax)`` (last dimension) with scale 1."""
    return pc.encode(shifted_exp(scores), base, phases, threshold_shift=threshold_shift)


def exp_values(scores: Tensor, base: float, phases: int, *, threshold_shift: bool = True) -> Tensor:
    """Decoded values ``B**-phase`` (0 when silent) of the exponential neurons: the
    spike-shift approximation of ``exp(scores - rowmax)``."""
    ph = exp_phases(scores, base, phases, threshold_shift=threshold_shift)
    return pc.decode(ph, base, torch.ones((), dtype=scores.dtype, device=scores.device), phases)


def spike_softmax(
    scores: Tensor, base: float, phases: int, *, threshold_shift: bool = True
) -> Tensor:
    """Softmax over the last dimension by spike timing: the exponential neurons' values
    divided by their row sum (at least 1: the winner's spike)."""
    e = exp_values(scores, base, phases, threshold_shift=threshold_shift)
    return e / e.sum(dim=-1, keepdim=True)


def spike_attention(
    scores: Tensor, v: Tensor, base: float, phases: int, *, threshold_shift: bool = True
) -> Tensor:
    """``softmax(scores) @ v`` the event way: ``(E @ v) / rowsum(E)``, one division per
    output row (``E`` from :func:`exp_values`; ``v`` the decoded values)."""
    e = exp_values(scores, base, phases, threshold_shift=threshold_shift)
    return signed.event_matmul(e, v) / e.sum(dim=-1, keepdim=True)


def spike_attention_steps(
    scores: Tensor,
    v_phase: Tensor,
    v_value: Tensor,
    base: float,
    phases: int,
    *,
    threshold_shift: bool = True,
) -> Tensor:
    """:func:`spike_attention` the step way: the exponential neurons fire on the same clock
    as ``v``'s neurons; ``E @ v`` accumulates by traces (:func:`onespike.codes.signed.
    trace_matmul`), the row sum by adding each spike's value at its step, and the division
    comes once at the end of the window."""
    ph = exp_phases(scores, base, phases, threshold_shift=threshold_shift)
    e = pc.decode(ph, base, torch.ones((), dtype=scores.dtype, device=scores.device), phases)
    steps = max(phases, int(v_phase.max()) + 1 if v_phase.numel() else 0)
    num = signed.trace_matmul(ph, e, v_phase, v_value, steps)
    row = torch.zeros_like(e[..., :1])
    for t in range(phases):
        row += torch.where(ph == t, e, 0.0).sum(dim=-1, keepdim=True)
    return num / row


def softmax_bound(scores: Tensor, base: float, phases: int) -> Tensor:
    """Elementwise bound on ``|spike_softmax - softmax|`` with the threshold shift (module
    docstring), from the exact and coded exponentials of ``scores``."""
    e = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    coded = exp_values(scores, base, phases)
    last = pc.unit_value(base, phases)  # B**-(T-1), the smallest level
    a = torch.where(e >= last, pc.max_relative_error(base) * e, torch.full_like(e, last / 2))
    p = e / e.sum(dim=-1, keepdim=True)
    return (a + p * a.sum(dim=-1, keepdim=True)) / coded.sum(dim=-1, keepdim=True)


def search_base(
    scores: Tensor, phases: int, bases: tuple[float, ...] = BASES, *, threshold_shift: bool = True
) -> tuple[float, dict[float, float]]:
    """The base of the exponential neurons that makes :func:`spike_softmax` closest to
    ``torch.softmax`` on calibration ``scores`` (mean absolute error over all entries):
    ``(best base, {base: error})``. Ties go to the smaller base."""
    ref = torch.softmax(scores, dim=-1)
    errors = {
        float(b): float(
            (spike_softmax(scores, b, phases, threshold_shift=threshold_shift) - ref).abs().mean()
        )
        for b in bases
    }
    best = min(errors, key=lambda b: (errors[b], b))
    return best, errors


def relu_attention(scores: Tensor) -> Tensor:
    """ReLU attention: ``relu(scores) / N`` over the last dimension's ``N`` tokens."""
    return torch.relu(scores) / scores.shape[-1]
