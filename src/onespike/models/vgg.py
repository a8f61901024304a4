"""VGG-11 with batch norm for CIFAR-10 (32x32 inputs in [0, 1])."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from onespike.errors import OptionError
from onespike.models._init import init_conv_bn

__all__ = ["VGG", "VGG11_CFG", "vgg11_bn"]

#: VGG-11 ("A") layout; integers are conv output channels, ``"M"`` a 2x2 max-pool.
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """A VGG feature stack (conv3x3 pad 1 -> BN -> ReLU, max-pool at each ``"M"``) and a
    single linear classifier.

    ``features`` is an ``nn.Sequential`` whose children are named ``conv1, bn1, relu1,
    conv2, ...`` (convs numbered 1..8) and ``pool1..pool5``; after five pools a 32x32
    input is 1x1, so ``flatten`` gives ``c = round(512 * width)`` features and the
    classifier is ``fc = Linear(c, num_classes)`` (no hidden classifier layer, no dropout).
    """

    def __init__(
        self, cfg: tuple[int | str, ...] = VGG11_CFG, num_classes: int = 10, width: float = 1.0
    ) -> None:
        super().__init__()
        if width <= 0:
            raise OptionError(f"width must be positive, got {width}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch, n_conv, n_pool = 3, 0, 0
        for v in cfg:
            if v == "M":
                n_pool += 1
                layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
            else:
                n_conv += 1
                out_ch = max(1, round(int(v) * width))
                layers[f"conv{n_conv}"] = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
                layers[f"bn{n_conv}"] = nn.BatchNorm2d(out_ch)
                layers[f"relu{n_conv}"] = nn.ReLU(inplace=False)
                in_ch = out_ch
        self.width = width
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[N, num_classes]`` for images ``[N, 3, 32, 32]``."""
        return self.fc(self.flatten(self.features(x)))


def vgg11_bn(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-11 with BN; channel counts multiplied by ``width`` (rounded to int)."""
    return VGG(VGG11_CFG, num_classes=num_classes, width=width)
