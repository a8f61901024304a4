"""The single-spike phase code: the one place where its arithmetic lives.

A spiking layer has a scale ``lam > 0``, a base ``B`` in (1, 2] and a window of
``T`` phases ``k = 0 .. T-1``. A spike at phase ``k`` means the value
``lam * B**-k``; no spike means 0. Everything in onespike that needs the code
(the fast path, the step-by-step simulator, the calibration search, the cost
model) calls the functions of this module; none of them re-derives a level or a
threshold.

Normalised units: ``z = pre_activation / lam``. Phases are ``int64`` tensors of
the same shape as ``z``, with ``-1`` meaning "no spike".

Threshold rule (METHOD.md section 2), with the shift (rounds to the nearest
level in the linear domain)::

    fire at the smallest k with z >= (B^-k + B^-(k+1)) / 2     for k < T-1
    fire at k = T-1 if z >= B^-(T-1) / 2                        (else no spike)

and without it (floor, the plain rule) ``z >= B^-k``. ``z >= 1`` fires at phase
0 (saturation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from onespike.errors import OptionError

Tensor = torch.Tensor

NO_SPIKE = -1


def check_phases(phases: int) -> None:
    """Raise :class:`~onespike.errors.OptionError` unless ``phases`` is an integer >= 1."""
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise OptionError(f"phases must be an integer >= 1, got {phases!r}")


def check_params(base: float, phases: int) -> None:
    """Raise :class:`~onespike.errors.OptionError` (a ``ValueError``) for a base or a window
    that is invalid."""
    check_phases(phases)
    try:
        b = float(base)
    except (TypeError, ValueError):
        raise OptionError(f"base must be a number in (1, 2], got {base!r}") from None
    if not (1.0 < b <= 2.0):
        raise OptionError(f"base must be in (1, 2], got {base!r}")


def levels(base: float, phases: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Representable normalised values ``B^-k`` for ``k = 0 .. T-1`` (shape ``[T]``).

    The code's tables are small host constants; the functions that use them move them
    to the data's device."""
    k = torch.arange(phases, dtype=torch.float64, device="cpu")
    return (float(base) ** -k).to(dtype)


def thresholds(
    base: float, phases: int, *, threshold_shift: bool = True, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Normalised firing threshold of each phase (shape ``[T]``, strictly decreasing).

    With ``threshold_shift`` the threshold of phase ``k`` is the midpoint between level
    ``k`` and the next level down (0 after the last one), so the code rounds to
    the nearest level; without it the threshold is the level itself (floor).
    """
    lv = levels(base, phases, dtype=torch.float64)
    if threshold_shift:
        below = torch.cat([lv[1:], lv.new_zeros(1)])
        th = (lv + below) / 2
    else:
        th = lv
    return th.to(dtype)


def membrane_thresholds(
    base: float, phases: int, *, threshold_shift: bool = True, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Thresholds seen by a membrane that is multiplied by ``B`` at every fire-window step.

    In the step-by-step realisation the neuron does not lower its threshold: its
    membrane ``u`` (normalised) is multiplied by ``B`` after every step, so at
    step ``k`` it holds ``u * B^k`` and is compared with ``thresholds[k] * B^k``
    (a constant ``(1 + 1/B) / 2`` with the shift, except the last step).
    """
    th = thresholds(base, phases, threshold_shift=threshold_shift, dtype=torch.float64)
    k = torch.arange(phases, dtype=torch.float64, device="cpu")
    return (th * float(base) ** k).to(dtype)


def unit_value(base: float, phases: int) -> float:
    """Normalised value of a spike at the last phase, ``B^-(T-1)``.

    In the step realisation an input-window membrane is multiplied by the sender's
    base every step, so a spike adds this value times the synaptic weight: one at
    phase ``k`` has grown to ``B^-k`` when the window ends.
    """
    return float(base) ** -(phases - 1)


def window_gain(base: float, phases: int) -> float:
    """``B^(T-1)``: the factor a membrane multiplied by ``B`` every step gains over a
    window (a phase-0 spike's value over :func:`unit_value`)."""
    return float(base) ** (phases - 1)


def fire_updates(phase: Tensor, phases: int) -> Tensor:
    """Fire-window steps a neuron is updated (one multiply and one compare each): ``k + 1``
    if it fired at phase ``k`` (silent afterwards), all ``T`` if it never fired."""
    return torch.where(phase >= 0, phase + 1, torch.full_like(phase, phases))


def fire(z: Tensor, base: float, phases: int, *, threshold_shift: bool = True):
    """The fire window of a layer of phase neurons, step by step: ``(phase, count)``.

    ``z``: the membranes at the end of the input window, normalised by the layer's
    scale. At each step ``k`` a neuron that has not fired compares its membrane with
    :func:`membrane_thresholds` ``[k]`` and fires if it reaches it; then every membrane
    is multiplied by ``base``. A neuron's phase is the number of steps it waited
    before its spike (:data:`NO_SPIKE` if none); ``count`` counts the spikes as they
    happen (0 or 1, int64). The event path's :func:`encode` gives the same phases.
    """
    mth = membrane_thresholds(base, phases, threshold_shift=threshold_shift, dtype=z.dtype).tolist()
    narrow = torch.uint8 if phases < 255 else torch.int32
    count = torch.zeros(z.shape, dtype=narrow, device=z.device)  # spikes, as they happen
    waited = torch.zeros(z.shape, dtype=narrow, device=z.device)  # steps spent silent
    silent = torch.ones(z.shape, dtype=torch.bool, device=z.device)
    v = z.clone()
    for k in range(phases):
        fire = (v >= mth[k]).logical_and_(silent)
        count += fire
        silent.logical_and_(fire.logical_not_())
        waited += silent
        v.mul_(base)
    count = count.to(torch.int64)
    phase = torch.where(count > 0, waited.to(torch.int64), NO_SPIKE)
    return phase, count


# Max-pooling of single spikes. The code is monotonic (an earlier spike is a larger
# value), so max-pooling the values equals passing the first spike of each pool window
# and dropping the later ones; a pool has no state. These two functions are the rule,
# for phases (the step simulator) and for spikes (the cost model, the comparison); the
# fast path pools before coding, which gives the same values
# (:func:`onespike.network._pool_before_code`).


def maxpool_phases(pool: Callable[[Tensor], Tensor], phase: Tensor, phases: int, dtype) -> Tensor:
    """The phases out of a max-pool of single spikes: the earliest spike of each pool
    window passes. ``pool`` is the max-pooling (any window and stride); it runs once,
    on the earliness ``T - phase`` (0 for no spike) in ``dtype``, instead of once per step.
    """
    early = torch.where(phase >= 0, phases - phase, 0).to(dtype)
    pooled = pool(early).to(torch.int64)
    return torch.where(pooled > 0, phases - pooled, NO_SPIKE)


def maxpool_spikes(pool: Callable[[Tensor], Tensor], spiked: Tensor) -> Tensor:
    """The 0/1 spikes out of a max-pool of single spikes: one per pool window in which
    any neuron spiked. ``spiked`` is positive where a neuron spiked (its spike count or
    its decoded value) and 0 elsewhere."""
    return (pool(spiked) > 0).to(spiked.dtype)


def ascending_thresholds(
    base: float, phases: int, *, threshold_shift: bool = True, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The thresholds in ascending order, for :func:`reached` (cache it for speed)."""
    return (
        thresholds(base, phases, threshold_shift=threshold_shift, dtype=dtype).flip(0).contiguous()
    )


def reached(z: Tensor, th_ascending: Tensor) -> Tensor:
    """How many thresholds ``z`` reaches (int32, 0 .. T): ``T - phase``, 0 = no spike."""
    return torch.bucketize(z, th_ascending.to(z.device, z.dtype), right=True, out_int32=True)


def reached_from_phase(phase: Tensor, phases: int) -> Tensor:
    """The count of :func:`reached` a phase stands for, ``T - phase`` (0 for no spike):
    the index of its value in :func:`value_table` (``phase`` itself is left as it is)."""
    return (phases - phase).masked_fill_(phase < 0, 0)


def value_table(base: float, phases: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised value for each count of :func:`reached`: ``[0, B^-(T-1), ..., B^-1, 1]``."""
    lv = levels(base, phases, dtype=dtype)
    return torch.cat([lv.new_zeros(1), lv.flip(0)])


def encode(z: Tensor, base: float, phases: int, *, threshold_shift: bool = True) -> Tensor:
    """Spike phase of every neuron for normalised input current ``z``.

    Returns an ``int64`` tensor shaped like ``z``: the smallest ``k`` whose
    threshold ``z`` reaches, or ``-1`` (no spike). Memory: no ``T``-fold copy.
    """
    r = reached(
        z, ascending_thresholds(base, phases, threshold_shift=threshold_shift, dtype=z.dtype)
    )
    return phase_from_reached(r, phases)


def phase_from_reached(r: Tensor, phases: int) -> Tensor:
    """Phase (int64, -1 = no spike) from the count of :func:`reached`: ``T - r``."""
    phase = r.to(torch.int64).neg_().add_(phases)
    return phase.masked_fill_(phase == phases, NO_SPIKE)


def decode(
    phase: Tensor, base: float, scale: Tensor | float = 1.0, phases: int | None = None
) -> Tensor:
    """Value carried by each neuron's spike: ``scale * B^-phase``, 0 for no spike.

    ``scale`` broadcasts against ``phase`` (a float, or a per-channel tensor).
    The levels come from :func:`levels` (a table of ``phases`` entries; by
    default as many as the largest phase needs).
    """
    dtype = scale.dtype if isinstance(scale, Tensor) else torch.get_default_dtype()
    if phases is None:
        phases = int(phase.max()) + 1 if phase.numel() else 1
    lv = levels(base, max(phases, 1), dtype=dtype)
    table = torch.cat([lv, lv.new_zeros(1)])
    # index -1 (no spike) picks the trailing 0
    return table.to(phase.device)[phase] * scale


def value_table_of(base: Tensor, phases: int) -> Tensor:
    """:func:`value_table` as a differentiable function of a tensor ``base`` (a scalar):
    ``[0, B^-(T-1), ..., B^-1, 1]`` in ``base``'s dtype and device (for refinement,
    which learns the base; the network itself uses :func:`value_table` of the float)."""
    k = torch.arange(phases - 1, -1, -1, dtype=base.dtype, device=base.device)
    return torch.cat([base.new_zeros(1), base.reshape(()) ** -k])


def quantize_normalised(z: Tensor, th_ascending: Tensor, table: Tensor) -> Tensor:
    """Decoded value of currents ``z`` (the code without the phases).

    ``th_ascending`` from :func:`ascending_thresholds`, ``table`` from
    :func:`value_table`; equal to ``decode(encode(z))`` with scale 1. Both may
    be multiplied by a (scalar) scale to work in activation units.
    """
    r = reached(z, th_ascending)
    return table.to(z.device, z.dtype).index_select(0, r.reshape(-1)).view_as(z)


def quantize(
    x: Tensor, scale: Tensor | float, base: float, phases: int, *, threshold_shift: bool = True
) -> Tensor:
    """ReLU then the code: ``decode(encode(x / scale))``. Same shape and dtype as ``x``."""
    if not isinstance(scale, Tensor):
        scale = torch.tensor(float(scale), dtype=x.dtype, device=x.device)
    scale = scale.to(dtype=x.dtype, device=x.device)
    th = ascending_thresholds(base, phases, threshold_shift=threshold_shift, dtype=x.dtype)
    return quantize_normalised(x / scale, th, value_table(base, phases, dtype=x.dtype)) * scale


def channel_shape(scale: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel scale ``[C]`` to broadcast over ``[N, C, ...]`` (or keep a scalar)."""
    if scale.dim() == 0:
        return scale
    return scale.reshape((-1,) + (1,) * (ndim - 2))


def max_relative_error(base: float, *, threshold_shift: bool = True) -> float:
    """Worst-case relative error for a value inside the code's range.

    ``(B-1)/(B+1)`` with the threshold shift, ``(B-1)/B`` without.
    """
    b = float(base)
    return (b - 1) / (b + 1) if threshold_shift else (b - 1) / b


@dataclass(frozen=True)
class PhaseCode:
    """Parameters of one layer's code (normalisation scale may be per channel)."""

    base: float
    phases: int
    threshold_shift: bool = True

    def __post_init__(self) -> None:
        check_params(self.base, self.phases)

    def encode(self, z: Tensor) -> Tensor:
        return encode(z, self.base, self.phases, threshold_shift=self.threshold_shift)

    def decode(self, phase: Tensor, scale: Tensor | float = 1.0) -> Tensor:
        return decode(phase, self.base, scale)

    def quantize(self, x: Tensor, scale: Tensor | float) -> Tensor:
        return quantize(x, scale, self.base, self.phases, threshold_shift=self.threshold_shift)
