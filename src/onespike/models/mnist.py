"""A small CNN for MNIST / Fashion-MNIST (28x28 greyscale, inputs in [0, 1])."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MNISTCNN", "mnist_cnn"]


class MNISTCNN(nn.Module):
    """Two conv blocks and a two-layer classifier; about 0.22 M parameters.

    Layout (input ``[N, 1, 28, 28]`` raw pixels in ``[0, 1]``, no normalisation layer)::

        conv1  Conv2d(1, 16, 5, padding=2)  -> bn1 BatchNorm2d(16)  -> relu1 -> pool1 MaxPool2d(2)
        conv2  Conv2d(16, 32, 5, padding=2) -> bn2 BatchNorm2d(32)  -> relu2 -> pool2 AvgPool2d(2)
        flatten -> fc1 Linear(1568, 128) -> relu3 -> dropout Dropout(0.2) -> fc2 Linear(128, 10)

    Every ReLU is its own ``nn.ReLU`` module (never reused, never in-place), so the
    model traces with :func:`torch.fx.symbolic_trace` into readable node names.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU(inplace=False)
        self.pool2 = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.relu3 = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[N, num_classes]`` for images ``[N, 1, 28, 28]``."""
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.flatten(x)
        x = self.dropout(self.relu3(self.fc1(x)))
        return self.fc2(x)


def mnist_cnn(num_classes: int = 10) -> MNISTCNN:
    """Build a freshly initialised :class:`MNISTCNN`."""
    return MNISTCNN(num_classes=num_classes)
