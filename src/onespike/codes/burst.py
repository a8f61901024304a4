"""Burst coding (after Park et al. 2019): IF neurons whose consecutive spikes weigh more.

Each neuron keeps a burst factor ``g`` (1 at rest). At every step the membrane
adds its input current and fires when it reaches ``g * theta``; the spike
carries the weight ``g`` (the value ``g * theta``) and the membrane subtracts
``g * theta``. After a spike the factor grows, ``g <- min(beta * g, g_max)``
with ``g_max = beta ** (max_burst - 1)``; after a silent step it returns to 1.
So a neuron whose membrane holds much more than one threshold empties it in a
few steps with a burst of growing spikes, while small values are sent with
the fine resolution ``theta``.

Choices made here (the paper's exact settings could not be checked):
``beta = 2``, ``max_burst = 5`` (``g_max = 16``) and ``theta = lam / g_max``,
so that a sustained burst of the largest spikes carries the layer's full scale
``lam`` per step, like one spike per step of a rate-coded neuron. What follows
from the rule (and is tested): the membrane never goes negative for a
non-negative input, and for a constant input ``0 <= z <= g_max * theta`` the
residual stays below ``max_burst * g_max * theta`` (at most ``g_max * theta``
when a burst ends, plus what piles up while the next burst ramps up), so the
decoded value is within ``max_burst * g_max * theta / T`` below ``z``; there is
no clipping at ``theta`` (values up to ``g_max * theta`` per step get
through). Unlike the rate neuron, a
neuron that just fired needs ``beta`` times more membrane to fire again, so it
may skip a step that a rate neuron would fire in; the value is not lost (it
stays in the membrane).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onespike.errors import OptionError

Tensor = torch.Tensor


@dataclass(frozen=True)
class BurstParams:
    """Burst constant ``beta`` and longest burst ``max_burst`` (spikes of growing weight)."""

    beta: float = 2.0
    max_burst: int = 5

    def __post_init__(self) -> None:
        if not self.beta > 1.0:
            raise OptionError(f"beta must be > 1, got {self.beta!r}")
        if self.max_burst < 1:
            raise OptionError(f"max_burst must be >= 1, got {self.max_burst!r}")

    @property
    def g_max(self) -> float:
        """Weight of the largest spike of a burst, ``beta ** (max_burst - 1)``."""
        return float(self.beta ** (self.max_burst - 1))


def burst_step(
    u: Tensor,
    g: Tensor,
    current: Tensor,
    theta: Tensor | float,
    params: BurstParams = BurstParams(),
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of burst neurons.

    Args:
        u: membranes before the step.
        g: burst factors before the step (1 at rest).
        current: input current of the step (same units as ``theta``).
        theta: base threshold (a number or a tensor broadcasting to ``u``).
        params: burst constant and longest burst.

    Returns:
        ``(u_after, g_next, weight)``: the membranes after the possible
        subtraction, the burst factors for the next step, and the weight of
        each neuron's spike this step (0 for no spike, else the factor ``g``).
    """
    u = u + current
    fire = u >= g * theta
    weight = torch.where(fire, g, 0.0)  # python scalars: no tensors of zeros and ones to fill
    u = u - weight * theta
    g_next = torch.where(fire, (g * params.beta).clamp_(max=params.g_max), 1.0)
    return u, g_next, weight


def run_constant(
    z: Tensor,
    steps: int,
    theta: float = 1.0,
    params: BurstParams = BurstParams(),
) -> tuple[Tensor, Tensor]:
    """(sum of spike weights, number of spikes) of neurons fed ``z`` every step for ``steps``."""
    u = torch.zeros_like(z)
    g = torch.ones_like(z)
    total = torch.zeros_like(z)
    count = torch.zeros_like(z)
    for _ in range(steps):
        u, g, w = burst_step(u, g, z, theta, params)
        total = total + w
        count = count + (w > 0).to(z.dtype)
    return total, count


def decode(weight_sum: Tensor, steps: int, theta: Tensor | float) -> Tensor:
    """Value of spikes of total weight ``weight_sum`` over ``steps``: ``theta * sum / T``."""
    return weight_sum * (theta / steps)


__all__ = ["BurstParams", "burst_step", "decode", "run_constant"]
