"""The pieces of ``--recipe airbench`` (airbench94's fast CIFAR-10 training): its fixed
settings, its SGD with decoupled learning rate and weight decay, its learning-rate
schedule, its lookahead and the patch-whitening initialisation of ``fast_vgg``.
:mod:`onespike.experiments.train` runs them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from onespike.models import init_whitening

__all__ = ["AIRBENCH", "Lookahead", "airbench_lr_factor", "airbench_optimizer", "whiten_init"]

#: The fixed settings of ``--recipe airbench``, from airbench94 (KellerJordan/cifar10-airbench,
#: ``legacy/airbench94.py``; the same in ``airbench/lib_airbench94.py``).  ``lr`` and
#: ``weight_decay`` (in :data:`RECIPES`) are airbench's decoupled values: per 1024
#: examples, divided by ``1024 * (1 + 1 / (1 - momentum))`` for PyTorch's SGD with a loss
#: summed over the batch; weight decay is scaled by the batch size and is independent of
#: the learning rate.
AIRBENCH: dict[str, Any] = {
    "bias_scaler": 64.0,  # BatchNorm shifts: learning rate x 64 (same absolute weight decay)
    "whiten_bias_epochs": 3,  # the whitening bias trains for these epochs, then is frozen
    "whiten_samples": 5000,  # training images (a seeded random draw) for the whitening init
    "whiten_eps": 5e-4,
    "warmup": 0.23,  # fraction of the steps with a linear warm-up ...
    "lr_start": 0.2,  # ... from 0.2 x the peak; then a linear decay ...
    "lr_end": 0.07,  # ... to 0.07 x the peak at the last step
    "lookahead_every": 5,  # steps between lookahead updates
    "lookahead_decay": 0.95**5,  # EMA decay at the end; (step / total)^3 x this before
    "translate": 2,  # pixels, reflect padding
}


def airbench_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, batch_size: int
) -> torch.optim.SGD:
    """airbench's SGD: decoupled learning rate and weight decay (see :data:`AIRBENCH`);
    BatchNorm shifts in their own group at ``bias_scaler`` x the learning rate.  Frozen
    parameters (BatchNorm scales, the whitening filters) are left out."""
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr = lr / kilostep
    wd = weight_decay * batch_size / kilostep
    lr_bias = lr * AIRBENCH["bias_scaler"]
    bn_bias = {
        id(m.bias)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    params = [p for p in model.parameters() if p.requires_grad]
    biases = [p for p in params if id(p) in bn_bias]
    others = [p for p in params if id(p) not in bn_bias]
    groups = [
        {"params": biases, "lr": lr_bias, "weight_decay": wd / lr_bias},
        {"params": others, "lr": lr, "weight_decay": wd / lr},
    ]
    return torch.optim.SGD(groups, momentum=momentum, nesterov=True)


def airbench_lr_factor(step: int, total: int) -> float:
    """airbench's learning-rate multiplier at ``step`` of ``total``: linear from
    ``lr_start`` to 1 over the first ``warmup`` fraction, then linear to ``lr_end``."""
    warm = int(total * AIRBENCH["warmup"])
    if step < warm:
        frac = step / warm
        return AIRBENCH["lr_start"] * (1 - frac) + frac
    frac = (step - warm) / max(1, total - warm)
    return (1 - frac) + AIRBENCH["lr_end"] * frac


class Lookahead:
    """airbench's lookahead: every few steps the weights move to an exponential moving
    average of themselves, ``ema = decay * ema + (1 - decay) * w; w = ema`` (floating
    entries of the ``state_dict``, BatchNorm statistics included)."""

    def __init__(self, model: nn.Module) -> None:
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.ema[k].lerp_(v, 1 - decay)
                v.copy_(self.ema[k])

    @staticmethod
    def decay(step: int, total: int) -> float:
        """The EMA decay after ``step`` of ``total`` steps: ``0.95**5 * (step/total)**3``."""
        return AIRBENCH["lookahead_decay"] * (step / total) ** 3


def whiten_init(model: nn.Module, x_train: torch.Tensor, seed: int) -> None:
    """Initialise ``model.whiten`` (if it has one: ``fast_vgg``) from a seeded random draw
    of ``AIRBENCH["whiten_samples"]`` training images; other models are left alone."""
    conv = getattr(model, "whiten", None)
    if not isinstance(conv, nn.Conv2d):
        return
    g = torch.Generator().manual_seed(seed)
    k = min(len(x_train), AIRBENCH["whiten_samples"])
    idx = torch.randperm(len(x_train), generator=g)[:k].sort().values
    init_whitening(conv, x_train[idx], eps=AIRBENCH["whiten_eps"])
