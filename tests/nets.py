"""Small networks built from every supported operator, for the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _relu(kind: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if kind == "module":
        return module(x)
    if kind == "F":
        return F.relu(x)
    if kind == "torch":
        return torch.relu(x)
    return x.relu()


class RandNet(nn.Module):
    """Conv-BN-ReLU, optional max-pool, two branches merged by add or cat, pooling,
    a flatten of the chosen flavour, dropout, Linear-ReLU-Linear. Input [N, 2, 8, 8]."""

    def __init__(
        self,
        relu_kind: str = "module",
        maxpool: bool = True,
        merge: str = "add",
        pool: str = "avg",
        flatten: str = "view",
        width: int = 4,
    ):
        super().__init__()
        c = width
        self.relu_kind, self.maxpool, self.merge, self.pool_kind, self.flat = (
            relu_kind,
            maxpool,
            merge,
            pool,
            flatten,
        )
        self.conv1 = nn.Conv2d(2, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.mp = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(c, c, 1)
        self.relu3 = nn.ReLU()
        mc = 2 * c if merge == "cat" else c
        self.conv4 = nn.Conv2d(mc, c, 3, padding=1)
        self.relu4 = nn.ReLU()
        side = 1 if (pool != "avg" or maxpool) else 2  # spatial side after pooling, over 2
        self.pool = nn.AvgPool2d(2) if pool == "avg" else nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(c * 4 * side * side, 12)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        a = _relu(self.relu_kind, self.relu1, self.bn1(self.conv1(x)))
        if self.maxpool:
            a = self.mp(a)
        b = self.relu2(self.bn2(self.conv2(a)))
        c = self.relu3(self.conv3(a))
        m = b + c + a if self.merge == "add" else torch.cat([b, c], dim=1)
        d = self.relu4(self.conv4(m))
        e = self.pool(d)
        if self.flat == "view":
            f = e.view(e.size(0), -1)
        elif self.flat == "reshape":
            f = e.reshape(e.shape[0], -1)
        elif self.flat == "torch":
            f = torch.flatten(e, 1)
        else:
            f = self.flatten(e)
        f = self.drop(f)
        return self.fc2(self.relu5(self.fc1(f)))


class TinyMLP(nn.Module):
    """4 -> 3 -> ReLU -> 2: small enough to count its operations by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


class Net1d(nn.Module):
    """Conv1d-BN-ReLU-MaxPool1d-Flatten-Linear. Input [N, 3, 16]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.relu = nn.ReLU()
        self.mp = nn.MaxPool1d(2)
        self.fc1 = nn.Linear(48, 16)
        self.bn2 = nn.BatchNorm1d(16)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = self.mp(self.relu(self.bn(self.conv(x))))
        return self.fc2(self.relu2(self.bn2(self.fc1(torch.flatten(h, 1)))))


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2)
    return model.eval()


def make(seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(RandNet(**kw), seed)


class MnistRes(nn.Module):
    """A small residual network for MNIST [N, 1, 28, 28]: conv-BN-ReLU, max-pool, a
    residual block (conv-BN-ReLU, conv-BN, add, ReLU), max-pool, Linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        c = width
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.mp1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.mp2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(c * 7 * 7, 10)

    def forward(self, x):
        a = self.mp1(F.relu(self.bn1(self.conv1(x))))
        h = F.relu(self.bn2(self.conv2(a)))
        h = F.relu(self.bn3(self.conv3(h)) + a)
        return self.fc(torch.flatten(self.mp2(h), 1))


def train_briefly(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, seed: int = 0,
    lr: float = 3e-3, batch_size: int = 64,
) -> nn.Module:  # fmt: skip
    """Adam on ``(x, y)`` for a few epochs (seconds on a few thousand MNIST images); eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


def warm_bn(model: nn.Module, x: torch.Tensor, passes: int = 3, bias: float = 0.2) -> nn.Module:
    """``model`` in eval mode with BatchNorm1d running statistics from ``passes`` training
    passes over ``x`` and affine parameters drawn away from the identity (weights in
    [0.5, 1.5], biases in [-bias, bias]), so folding them is really checked."""
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-bias, bias)
    return model.eval()
