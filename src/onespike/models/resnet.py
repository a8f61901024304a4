"""ResNet-20 for CIFAR-10 (He et al., 2016, section 4.2), inputs in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from onespike.models._init import init_conv_bn

__all__ = ["BasicBlock", "CIFARResNet", "resnet20"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    ``out = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``

    ``shortcut`` is ``nn.Identity()`` when input and output shapes agree, otherwise a
    projection ``Sequential(conv 1x1 stride s, BatchNorm2d)`` (option B of the paper).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``[N, in_planes, H, W]``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """The CIFAR ResNet family (6n+2 layers): stem, three stages of ``n`` blocks, GAP, fc.

    Layout for input ``[N, 3, 32, 32]``::

        conv1 3x3(3->16) -> bn1 -> relu1
        layer1: n x BasicBlock(16),  32x32
        layer2: n x BasicBlock(32),  16x16 (first block stride 2, projection shortcut)
        layer3: n x BasicBlock(64),  8x8   (first block stride 2, projection shortcut)
        pool AdaptiveAvgPool2d(1) -> flatten -> fc Linear(64, num_classes)

    No max-pool and no normalisation layer (inputs are raw pixels in ``[0, 1]``).
    """

    def __init__(self, num_blocks: tuple[int, int, int] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU(inplace=False)
        self.layer1 = self._make_stage(16, 16, num_blocks[0], stride=1)
        self.layer2 = self._make_stage(16, 32, num_blocks[1], stride=2)
        self.layer3 = self._make_stage(32, 64, num_blocks[2], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[N, num_classes]`` for images ``[N, 3, 32, 32]``."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10) -> CIFARResNet:
    """ResNet-20 (3 blocks per stage, 0.27 M parameters)."""
    return CIFARResNet((3, 3, 3), num_classes=num_classes)
