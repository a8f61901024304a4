"""Rate coding with integrate-and-fire (IF) neurons and reset by subtraction.

The usual converter default (Diehl et al. 2015, Rueckauer et al. 2017): a
layer of the ANN becomes a layer of IF neurons with threshold ``lam`` (the
layer's scale); at every step the membrane adds its input current, fires one
spike when it reaches the threshold and subtracts the threshold (reset by
subtraction). A spike carries the value ``lam``; the value of a neuron over
``T`` steps is ``lam * count / T``.

In normalised units (threshold 1, input current ``z`` per step, membrane
starting at ``u0 = 0``) a neuron fed a constant ``z`` fires
``floor(clip(z, 0, 1) * T)`` spikes in ``T`` steps, so its rate is the clipped
value with an error in ``[0, 1/T)``. The scale is the layer's maximum
activation on the calibration data or a high percentile of it (99.9 is the
robust choice of Rueckauer et al. 2017).

All functions are pure tensor functions (no state outside their arguments).
"""

from __future__ import annotations

import numpy as np
import torch

from onespike.errors import OptionError

Tensor = torch.Tensor


def if_step(u: Tensor, current: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """One step of IF neurons with reset by subtraction.

    Args:
        u: membranes before the step.
        current: input current of the step (same units as ``threshold``).
        threshold: firing threshold (a number or a tensor broadcasting to ``u``).

    Returns:
        ``(u_after, spikes)``: the membranes after the possible reset and the
        0/1 spikes (dtype of ``u``).
    """
    u = u + current
    spikes = (u >= threshold).to(u.dtype)
    return u - spikes * threshold, spikes


def run_constant(z: Tensor, steps: int, *, u0: float = 0.0) -> Tensor:
    """Spike counts of normalised IF neurons (threshold 1) fed ``z`` every step for ``steps``."""
    u = torch.full_like(z, float(u0))
    count = torch.zeros_like(z)
    for _ in range(steps):
        u, s = if_step(u, z, 1.0)
        count = count + s
    return count


def decode(count: Tensor, steps: int, scale: Tensor | float = 1.0) -> Tensor:
    """Value carried by ``count`` spikes in ``steps`` steps: ``scale * count / steps``."""
    return count * (scale / steps) if steps > 0 else torch.zeros_like(count)


def expected_count(z: Tensor, steps: int) -> Tensor:
    """Closed form of :func:`run_constant` with ``u0 = 0``: ``floor(clip(z, 0, 1) * T)``."""
    return torch.floor(z.clamp(0.0, 1.0) * steps)


def activation_scale(values: Tensor, method: str | float = "max") -> float:
    """Scale of a layer from its ANN activations on the calibration data.

    ``method`` is ``"max"`` or a percentile in (0, 100] of the positive values
    (``99.9`` for the robust choice). A layer that is never positive gets 1.0.
    """
    pos = values.detach().reshape(-1)
    pos = pos[pos > 0].double().cpu().numpy()
    if pos.size == 0:
        return 1.0
    if method == "max":
        return float(pos.max())
    q = float(method)
    if not 0.0 < q <= 100.0:
        raise OptionError(f"percentile must be in (0, 100], got {method!r}")
    s = float(np.percentile(pos, q))
    return s if s > 0 else 1.0


__all__ = ["activation_scale", "decode", "expected_count", "if_step", "run_constant"]
