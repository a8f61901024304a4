"""Time-to-first-spike (TTFS) coding with a linear latency code (after Rueckauer & Liu 2018).

One spike per neuron; its latency within a window of ``T`` steps is the
value, linearly: a spike at step ``k`` means ``lam * (T - k) / T`` (earlier is
larger), no spike means 0. The representable values are the uniform grid
``{lam/T, 2 lam/T, ..., lam, 0}``: a linear quantiser with one spike per value,
where onespike's code is logarithmic (``lam * B^-k``). An exponential latency
code would be onespike's code with a fixed base, so the linear one is the
distinct alternative compared here.

Realisation (windowed, like onespike's: a layer listens for a window and
fires in the next): at the end of its input window a neuron holds its
normalised input ``z = pre / lam``; in its fire window the membrane rises by
``1/T`` per step (a ramp, ``v_k = z + k/T``) and the neuron fires the first
time it reaches the constant threshold ``theta``, then stays silent. With
``theta = 1`` the code floors (fires at the smallest ``k`` with
``z >= (T-k)/T``); with the threshold shift used for onespike too,
``theta = 1 - 1/(2T)``, it rounds to the nearest level. ``z >= theta`` fires
at step 0 (saturation); ``z < theta - (T-1)/T`` never fires.

Phases are ``int64`` tensors with ``-1`` for no spike, and the window's bookkeeping
(which threshold a current reaches, the phase it gives, the fire-window updates) is
that of :mod:`onespike.codes.phase`: only the levels and thresholds differ.
"""

from __future__ import annotations

import torch

from onespike.codes import phase as pc
from onespike.codes.phase import NO_SPIKE

Tensor = torch.Tensor


def levels(phases: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised value of a spike at step ``k``: ``(T - k) / T`` for ``k = 0 .. T-1``."""
    pc.check_phases(phases)
    k = torch.arange(phases, dtype=torch.float64)
    return ((phases - k) / phases).to(dtype)


def ramp_threshold(phases: int, *, threshold_shift: bool = True) -> float:
    """The constant threshold ``theta`` of the rising membrane (``1 - 1/(2T)`` with the shift)."""
    pc.check_phases(phases)
    return 1.0 - 0.5 / phases if threshold_shift else 1.0


def thresholds(
    phases: int, *, threshold_shift: bool = True, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Equivalent threshold on ``z`` of each step, ``theta - k/T`` (strictly decreasing)."""
    k = torch.arange(phases, dtype=torch.float64)
    return (ramp_threshold(phases, threshold_shift=threshold_shift) - k / phases).to(dtype)


def encode(z: Tensor, phases: int, *, threshold_shift: bool = True) -> Tensor:
    """Spike step of every neuron for normalised input ``z`` (closed form), ``-1`` for none."""
    th = thresholds(phases, threshold_shift=threshold_shift, dtype=torch.float64)
    return pc.phase_from_reached(pc.reached(z.to(torch.float64), th.flip(0)), phases)


def fire(z: Tensor, phases: int, *, threshold_shift: bool = True) -> tuple[Tensor, Tensor]:
    """Fire window step by step: ``(phases, steps_until_fire)``.

    The membrane starts at ``z`` and rises by ``1/T`` after every step; a
    neuron fires the first time it reaches :func:`ramp_threshold` and is then
    silent. ``steps_until_fire`` is the number of steps a neuron was updated
    (``k + 1`` if it fired at step ``k``, ``T`` if it never fired).
    """
    pc.check_phases(phases)
    theta = ramp_threshold(phases, threshold_shift=threshold_shift)
    phase = torch.full(z.shape, NO_SPIKE, dtype=torch.int64, device=z.device)
    v = z.clone()
    slope = 1.0 / phases
    for k in range(phases):
        new = (phase < 0) & (v >= theta)
        phase[new] = k
        v = v + slope
    return phase, pc.fire_updates(phase, phases)


def decode(phase: Tensor, phases: int, scale: Tensor | float = 1.0) -> Tensor:
    """Value of each neuron's spike: ``scale * (T - k) / T``, 0 for no spike."""
    dtype = scale.dtype if isinstance(scale, Tensor) else torch.get_default_dtype()
    val = (phases - phase).to(dtype) / phases
    return torch.where(phase >= 0, val, torch.zeros_like(val)) * scale


def quantize(
    x: Tensor, scale: Tensor | float, phases: int, *, threshold_shift: bool = True
) -> Tensor:
    """ReLU then the code: ``decode(encode(x / scale))``, same shape and dtype as ``x``."""
    s = (
        scale
        if isinstance(scale, Tensor)
        else torch.tensor(float(scale), dtype=x.dtype, device=x.device)
    )
    return decode(encode(x / s, phases, threshold_shift=threshold_shift), phases, s.to(x.dtype))


__all__ = [
    "NO_SPIKE",
    "decode",
    "encode",
    "fire",
    "levels",
    "quantize",
    "ramp_threshold",
    "thresholds",
]
