"""The weight initialisation the CIFAR-10 models are trained from."""

from __future__ import annotations

from torch import nn


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) initialisation of every convolution; BatchNorm as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
