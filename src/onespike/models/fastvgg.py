"""A fast-training VGG-style CIFAR-10 network after Keller Jordan's airbench94, in ReLU form.

airbench94 (Jordan, 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
https://github.com/KellerJordan/cifar10-airbench) reaches 94 % in about 10 epochs with a
small VGG-like net: a frozen 2x2 *patch-whitening* convolution, three blocks of two 3x3
convolutions (widths 64/256/256) with one max-pool each, a global max-pool and a linear
head whose logits are multiplied by 1/9.  This module builds that network in a form
onespike converts:

- ReLU instead of GELU (only ReLUs become spiking neurons);
- in each block ``conv -> BN -> ReLU -> max-pool`` instead of airbench's
  ``conv -> max-pool -> BN -> GELU``: BatchNorm then folds into the convolution before
  it and the max-pool takes spikes (exact in the SNN: the earliest spike wins);
- the network takes raw pixels in ``[0, 1]``, like every onespike model: the per-channel
  normalisation airbench applies to its inputs is absorbed into the whitening layer's
  bias (:func:`init_whitening` centres the patches);
- the global max-pool is ``MaxPool2d(3)`` over the final 3x3 map (as in airbench), the
  logit scale a multiplication by a number (both supported by the converter).

As in airbench, BatchNorm has ``eps=1e-12``, momentum 0.4 (airbench's "0.6" in the
other convention) and a scale frozen at 1 (``weight.requires_grad = False``; the shift is
trained), the whitening weight is frozen (only its bias trains, for the first epochs:
see ``onespike.experiments.train``), convolutions have no bias and start as a partial
identity (``dirac_`` on the first ``in_channels`` filters), and the head has no bias.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from onespike.errors import OptionError

__all__ = [
    "FAST_VGG_WIDTHS",
    "FastVGG",
    "fast_vgg",
    "image_patches",
    "init_whitening",
    "patch_statistics",
]

#: airbench94's block widths.
FAST_VGG_WIDTHS: tuple[int, int, int] = (64, 256, 256)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():  # PyTorch's default init, then identity on the first c_in filters
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)  # scale frozen at 1; only the shift trains
    return bn


class FastVGG(nn.Module):
    """Patch-whitening stem, three conv blocks, global max-pool, scaled linear head.

    ``features`` is an ``nn.Sequential`` named ``whiten, relu0`` (the 2x2 whitening
    convolution, ``2 * 12`` filters: each whitening direction and its negative, so the
    ReLU keeps both signs), then per block ``b = 1, 2, 3``: ``conv{2b-1}, bn{2b-1},
    relu{2b-1}, pool{b}, conv{2b}, bn{2b}, relu{2b}``, then ``pool4 = MaxPool2d(3)``.
    A 32x32 input becomes 31x31 after the whitening conv, 15, 7 and 3 after the block
    pools and 1x1 after ``pool4``; ``flatten`` and ``fc = Linear(widths[2], num_classes,
    bias=False)`` follow, and the logits are multiplied by ``logit_scale`` (1/9).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = FAST_VGG_WIDTHS,
        whiten_kernel: int = 2,
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise OptionError(f"widths must be three positive channel counts, got {widths}")
        n_whiten = 2 * 3 * whiten_kernel**2
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["whiten"] = nn.Conv2d(3, n_whiten, whiten_kernel, padding=0, bias=True)
        layers["relu0"] = nn.ReLU(inplace=False)
        c_in = n_whiten
        for b, c_out in enumerate(widths, start=1):
            i = 2 * b - 1
            layers[f"conv{i}"] = _conv(c_in, c_out)
            layers[f"bn{i}"] = _bn(c_out)
            layers[f"relu{i}"] = nn.ReLU(inplace=False)
            layers[f"pool{b}"] = nn.MaxPool2d(2)
            layers[f"conv{i + 1}"] = _conv(c_out, c_out)
            layers[f"bn{i + 1}"] = _bn(c_out)
            layers[f"relu{i + 1}"] = nn.ReLU(inplace=False)
            c_in = c_out
        layers["pool4"] = nn.MaxPool2d(3)
        self.widths = widths
        self.logit_scale = float(logit_scale)
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes, bias=False)
        with torch.no_grad():
            self.features.whiten.bias.zero_()
        self.features.whiten.weight.requires_grad_(False)

    @property
    def whiten(self) -> nn.Conv2d:
        """The patch-whitening convolution (initialise it with :func:`init_whitening`)."""
        return self.features.whiten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[N, num_classes]`` for images ``[N, 3, 32, 32]`` in [0, 1]."""
        return self.fc(self.flatten(self.features(x))) * self.logit_scale


def fast_vgg(num_classes: int = 10, widths: Sequence[int] = FAST_VGG_WIDTHS) -> FastVGG:
    """The airbench94-style network (ReLU, convertible); ``widths`` of the three blocks."""
    return FastVGG(num_classes=num_classes, widths=widths)


def image_patches(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Every ``kernel x kernel`` patch (stride 1, no padding) of images ``[N, C, H, W]``,
    flattened in the order of a Conv2d weight: ``[N * (H-k+1) * (W-k+1), C * k * k]``."""
    c = x.shape[1]
    p = x.unfold(2, kernel, 1).unfold(3, kernel, 1)  # [N, C, H', W', k, k]
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel)


def patch_statistics(
    x: torch.Tensor, kernel: int, chunk: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64, ``D = C * k * k``) of all the
    ``kernel x kernel`` patches of ``x``, accumulated ``chunk`` images at a time."""
    d = x.shape[1] * kernel * kernel
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for i in range(0, len(x), chunk):
        p = image_patches(x[i : i + chunk], kernel).double()
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    mean = total / count
    return mean, outer / count - torch.outer(mean, mean)


@torch.no_grad()
def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """Set ``conv`` (``2 * C*k*k`` filters of size ``k x k``, with bias) to whiten the
    patches of ``images``.

    With the eigen-decomposition ``cov = V diag(lam) V^T`` of the covariance of the
    centred ``k x k`` patches and ``W = diag(lam + eps')^(-1/2) V^T`` (rows ordered by
    decreasing eigenvalue), the filters are ``[W; -W]`` and the bias ``[-W m; W m]`` for
    the patch mean ``m``: the first half of the outputs has zero mean and covariance
    ``diag(lam / (lam + eps'))`` (the identity, up to the regulariser) on these patches.
    ``eps' = eps * trace(cov) / D`` is airbench's ``eps`` relative to the average patch
    variance (airbench whitens normalised images, whose variance is about 1 per
    pixel).  Returns the eigenvalues (decreasing).
    """
    out_ch, c, kh, kw = conv.weight.shape
    if kh != kw or conv.bias is None or out_ch != 2 * c * kh * kw:
        raise OptionError(
            f"init_whitening needs a square kernel, a bias and 2*C*k*k = {2 * c * kh * kh} "
            f"filters; got weight {tuple(conv.weight.shape)}, bias {conv.bias is not None}"
        )
    mean, cov = patch_statistics(images.float(), kh)
    lam, vec = torch.linalg.eigh(cov)
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    eps_rel = eps * float(cov.diagonal().mean())
    w = vec.T / torch.sqrt(lam + eps_rel)[:, None]  # [D, D], row i = i-th direction
    b = -(w @ mean)
    conv.weight.copy_(torch.cat([w, -w]).reshape(conv.weight.shape).to(conv.weight.dtype))
    conv.bias.copy_(torch.cat([b, -b]).to(conv.bias.dtype))
    return lam.float()
