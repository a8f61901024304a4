"""A small vision transformer in the convertible BN/ReLU form (issue 27).

Written with the plain idioms :func:`onespike.trace.trace` understands, so a user's own
transformer written the same way traces the same way:

- patch embedding by a strided ``Conv2d``, then ``flatten(2).transpose(1, 2)`` to
  tokens ``[N, tokens, dim]``, plus a learned positional embedding (a parameter added);
- pre-norm blocks whose norms are ``BatchNorm1d`` over the features of the token tensor,
  ``bn(x.transpose(1, 2)).transpose(1, 2)`` (folded into the ``qkv`` / ``fc1`` Linear that
  follows), in place of LayerNorm;
- attention written out: one ``qkv`` Linear, ``chunk``, ``view``/``transpose`` into heads,
  ``q @ k.transpose(-2, -1) * scale``, ``.softmax(dim=-1)``, ``@ v``, back to tokens and a
  ``proj`` Linear, added to the residual stream;
- a ReLU MLP (``fc1 -> ReLU -> fc2``) in place of GELU;
- optionally a convolutional stem before the patch embedding (``stem=(w1, w2, ...)``:
  3x3 ``Conv2d``-``BatchNorm2d``-``ReLU`` stages, the first at stride 1 and each later one at
  stride 2), the "early convolutions" of Xiao et al. (2021) that let a small ViT train on
  CIFAR-10 from scratch in a few dozen epochs;
- the token mean (or a class token, ``pool="cls"``), a ``BatchNorm1d`` (folded into the
  head) and a Linear head.

Inputs are raw pixels in ``[0, 1]`` like the other models (no normalisation layer).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ATTENTIONS",
    "Attention",
    "ViT",
    "conv_stem",
    "vit_cifar",
    "vit_cifar_relu",
    "vit_small",
    "vit_stem",
    "vit_stem_relu",
    "vit_tiny",
    "vit_tiny_relu",
]

ATTENTIONS = ("softmax", "relu")


class Attention(nn.Module):
    """Multi-head self-attention written with Linear, matmul and softmax, or with ReLU
    attention (``attention="relu"``: ``relu(scores) / N`` over the ``N`` tokens in place of
    the softmax; the ReLU a module, so it converts as a ReLU layer)."""

    def __init__(self, dim: int, heads: int, attention: str = "softmax") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.heads = heads
        self.attention = attention
        self.act = nn.ReLU() if attention == "relu" else None
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        b, n, c3 = qkv.shape  # sizes read from the tensor: traced shape arithmetic
        c = c3 // 3
        q, k, v = qkv.chunk(3, dim=-1)
        q = q.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        # ReLU attention: relu(scores) / N over the N tokens; else the softmax
        attn = self.act(attn) / n if self.act is not None else attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block: BatchNorm1d over features, attention, ReLU MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, attention: str = "softmax") -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm1d(dim)
        self.attn = Attention(dim, heads, attention)
        self.norm2 = nn.BatchNorm1d(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x.transpose(1, 2)).transpose(1, 2))
        h = self.norm2(x.transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(self.relu(self.fc1(h)))


def conv_stem(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """3x3 ``Conv2d`` (no bias) - ``BatchNorm2d`` - ``ReLU`` stages of the given widths, the
    first at stride 1, every later one at stride 2 (each halves the image side)."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        layers += [
            nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        in_channels = width
    return nn.Sequential(*layers)


class ViT(nn.Module):
    """A small BN/ReLU vision transformer (see the module docstring)."""

    def __init__(
        self,
        image_size: int = 28,
        patch: int = 7,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
        pool: str = "mean",
        attention: str = "softmax",
        stem: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.stem = conv_stem(in_channels, tuple(stem)) if stem else None
        if stem:
            in_channels = stem[-1]
            image_size //= 2 ** (len(stem) - 1)
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.pool = pool
        tokens = (image_size // patch) ** 2 + (pool == "cls")
        self.embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim, attention) for _ in range(depth)))
        self.norm = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` for images ``[N, C, H, W]``."""
        if self.stem is not None:
            x = self.stem(x)
        x = self.embed(x).flatten(2).transpose(1, 2)  # [N, tokens, dim]
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos)
        x = x[:, 0] if self.cls is not None else x.mean(dim=1)
        return self.head(self.norm(x))


def vit_tiny(num_classes: int = 10, in_channels: int = 1, pool: str = "mean") -> ViT:
    """A 4-block, 64-wide, 4-head ViT on 7x7 patches of 28x28 images (about 0.14 M
    parameters)."""
    return ViT(num_classes=num_classes, in_channels=in_channels, pool=pool)


def vit_tiny_relu(num_classes: int = 10, in_channels: int = 1, pool: str = "mean") -> ViT:
    """:func:`vit_tiny` with ReLU attention (``relu(scores) / N`` in place of the softmax),
    for the ablation of issue 27 (spike-shift softmax against ReLU attention)."""
    return ViT(num_classes=num_classes, in_channels=in_channels, pool=pool, attention="relu")


def vit_small(num_classes: int = 10, in_channels: int = 1, pool: str = "mean") -> ViT:
    """:func:`vit_tiny`'s blocks on 4x4 patches: 49 tokens of a 28x28 image instead of 16
    (about 0.14 M parameters, about three times the compute), for Fashion-MNIST."""
    return ViT(patch=4, num_classes=num_classes, in_channels=in_channels, pool=pool)


def vit_stem(num_classes: int = 10, in_channels: int = 1, pool: str = "mean") -> ViT:
    """:func:`vit_small`'s blocks behind a convolutional stem for 28x28 images: stem 16-32
    (to 14x14), 2x2 patches of it, 49 tokens of width 64 (for Fashion-MNIST)."""
    return ViT(patch=2, in_channels=in_channels, num_classes=num_classes, pool=pool, stem=(16, 32))


def vit_stem_relu(num_classes: int = 10, in_channels: int = 1, pool: str = "mean") -> ViT:
    """:func:`vit_stem` with ReLU attention (``relu(scores) / N`` in place of the softmax):
    its attention neurons stay silent on negative scores, for fewer spikes per neuron."""
    return ViT(
        patch=2,
        in_channels=in_channels,
        num_classes=num_classes,
        pool=pool,
        stem=(16, 32),
        attention="relu",
    )


def vit_cifar(num_classes: int = 10, in_channels: int = 3, pool: str = "mean") -> ViT:
    """A ViT with a convolutional stem for 32x32 images: stem 32-64-128 (to 8x8), a 1x1
    patch embedding to 64 tokens of width 128, 4 blocks with 4 heads and a 256-wide MLP."""
    return _vit_cifar(num_classes, in_channels, pool, "softmax")


def vit_cifar_relu(num_classes: int = 10, in_channels: int = 3, pool: str = "mean") -> ViT:
    """:func:`vit_cifar` with ReLU attention (``relu(scores) / N`` in place of the softmax),
    for the spike-shift softmax against ReLU attention on CIFAR-10."""
    return _vit_cifar(num_classes, in_channels, pool, "relu")


def _vit_cifar(num_classes: int, in_channels: int, pool: str, attention: str) -> ViT:
    return ViT(
        image_size=32,
        patch=1,
        in_channels=in_channels,
        num_classes=num_classes,
        dim=128,
        depth=4,
        heads=4,
        mlp_dim=256,
        pool=pool,
        stem=(32, 64, 128),
        attention=attention,
    )
