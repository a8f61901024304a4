"""Signed single-spike neurons and products of two spiking tensors (issue 27).

A signed neuron fires at most one spike, of either sign: a spike of sign ``s`` at phase
``k`` means ``s * lam * B**-k``. Its code is the phase code of the magnitude
(:mod:`onespike.codes.phase`: the same thresholds, levels and shift; nothing is
re-derived here) with the sign of the value::

    quantize_signed(x) = sign(x) * phase.quantize(|x|)

so the code is odd (``q(-x) = -q(x)``) and each half has the phase code's error bound.

Products of two spiking tensors (``q @ k^T`` in attention, ``attention @ v``):

- event form (:func:`event_matmul`): the product of the decoded values, exact.
- trace form (:func:`trace_matmul`), what a step simulator does: each neuron keeps a
  trace that decays by ``1/B`` per step from ``lam`` and freezes when the neuron fires,
  so once it has fired its trace is the value its spike encodes (before, the trace is not
  used: the latched trace ``Tr(t)`` below is the frozen value, 0 until the spike).
  A spike at step ``t`` carries its trace ``s * lam * B**-t``. At each step ``t``
  the product grows by::

      S_a(t) @ Tr_b(t) + Tr_a(t) @ S_b(t) - S_a(t) @ S_b(t)

  with ``S(t)`` the spikes of step ``t`` weighted by their values and ``Tr(t)`` the latched
  traces (spikes at steps ``<= t``). A pair ``a_ik * b_kj`` is added exactly once, at the
  step of the later of its two spikes (both at the same step: added twice by the first two
  terms, removed once by the third). This is the issue's
  ``q_spike K_trace^T + Q_trace k_spike^T - (Q_trace o q_spike) k_spike^T`` with ``q_spike``
  in the third term the 0/1 spike, whose ``Q_trace o q_spike`` is the weighted spike.
"""

from __future__ import annotations

import torch

from onespike.codes import phase as pc

Tensor = torch.Tensor

NO_SPIKE = pc.NO_SPIKE


def encode_signed(
    x: Tensor, scale: Tensor | float, base: float, phases: int, *, threshold_shift: bool = True
) -> tuple[Tensor, Tensor]:
    """``(phase, sign)`` of signed neurons for values ``x``: the phase code of ``|x| /
    scale`` (:func:`onespike.codes.phase.encode`) and the sign of ``x`` (int8: -1, 0 or +1;
    0 where there is no spike)."""
    if not isinstance(scale, Tensor):
        scale = torch.tensor(float(scale), dtype=x.dtype, device=x.device)
    z = (x.abs() / scale.to(x.device, x.dtype)).contiguous()
    phase = pc.encode(z, base, phases, threshold_shift=threshold_shift)
    sign = torch.sign(x).to(torch.int8).masked_fill_(phase < 0, 0)
    return phase, sign


def decode_signed(
    phase: Tensor, sign: Tensor, base: float, scale: Tensor | float = 1.0, phases: int | None = None
) -> Tensor:
    """Value of each signed neuron's spike: ``sign * scale * B**-phase`` (0 for none)."""
    return pc.decode(phase, base, scale, phases) * sign.to(
        scale.dtype if isinstance(scale, Tensor) else torch.get_default_dtype()
    )


def quantize_signed(
    x: Tensor, scale: Tensor | float, base: float, phases: int, *, threshold_shift: bool = True
) -> Tensor:
    """The signed code without the phases: ``sign(x) * phase.quantize(|x|)``; equal to
    ``decode_signed(*encode_signed(x))``. Same shape and dtype as ``x``."""
    return torch.sign(x) * pc.quantize(
        x.abs().contiguous(), scale, base, phases, threshold_shift=threshold_shift
    )


def fire_signed(
    z: Tensor, base: float, phases: int, *, threshold_shift: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """A layer of signed neurons step by step: ``(phase, sign, count)``.

    ``z``: the membranes (normalised by the layer's scale) at the end of the input window.
    Each neuron runs the phase neuron's fire window (:func:`onespike.codes.phase.fire`) on
    its magnitude and fires with the sign of its membrane; ``count`` is 0 or 1 per neuron.
    """
    phase, count = pc.fire(z.abs(), base, phases, threshold_shift=threshold_shift)
    sign = torch.sign(z).to(torch.int8).masked_fill_(count == 0, 0)
    return phase, sign, count


def event_matmul(a: Tensor, b: Tensor) -> Tensor:
    """The event path's product of two spiking tensors: ``a @ b`` of the decoded values."""
    return a @ b


def step_values(phase: Tensor, value: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """``(spikes, traces)`` at ``step``: the values of the spikes fired at that step (0
    elsewhere) and the latched traces (the value of every spike fired at or before it)."""
    spikes = torch.where(phase == step, value, 0.0)
    traces = torch.where((phase >= 0) & (phase <= step), value, 0.0)
    return spikes, traces


def trace_matmul(
    a_phase: Tensor, a_value: Tensor, b_phase: Tensor, b_value: Tensor, steps: int
) -> Tensor:
    """``a @ b`` of two spiking tensors, accumulated step by step from spikes and traces.

    ``*_phase``: each neuron's phase (-1: no spike); ``*_value``: its decoded value
    (:func:`decode_signed`, or :func:`onespike.codes.phase.decode` for a positive
    layer). Both operands run on the same clock of ``steps`` steps (their phases count
    from the same step). At step ``t`` the product grows by
    ``S_a @ Tr_b + Tr_a @ S_b - S_a @ S_b`` (module docstring); the sum over the steps
    equals :func:`event_matmul` of the values (up to the order of the additions).
    """
    a_value = torch.where(a_phase >= 0, a_value, 0.0)
    b_value = torch.where(b_phase >= 0, b_value, 0.0)
    out = torch.zeros_like(a_value @ b_value)
    for t in range(steps):
        sa, ta = step_values(a_phase, a_value, t)
        sb, tb = step_values(b_phase, b_value, t)
        out += sa @ tb + ta @ sb - sa @ sb
    return out


def product_pairs(a_phase: Tensor, b_phase: Tensor) -> Tensor:
    """Pairs ``(a_ik, b_kj)`` that both spiked, summed over the batch and outputs: the
    additions of :func:`trace_matmul`'s three terms over the window (each pair enters once,
    at its later spike). A spike's magnitude ``lam * B**-t`` is common to every spike of a
    step, so these are signed accumulates of traces (ACs): each of the product's two
    accumulators (the terms fed by each factor's spikes) is multiplied by its factor's
    base once per step instead (:func:`onespike.accounting.cost` counts both)."""
    fa = (a_phase >= 0).to(torch.float64)
    fb = (b_phase >= 0).to(torch.float64)
    return (fa @ fb).sum()
