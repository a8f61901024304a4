"""Data augmentation of the training recipes: random crops and flips, seeded.

Every function draws its randomness from a ``torch.Generator`` it is given (or a seed),
so a run is reproducible and resumes exactly (:mod:`onespike.experiments.train`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["alternating_flip", "random_crop_flip", "translate_flip", "tta_logits"]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per-sample random crop (from a ``padding``-pixel zero-padded image) and horizontal flip.

    ``x`` is ``[N, C, H, W]``; the output has the same shape.  All randomness comes from
    ``generator`` so a run is reproducible and resumable.
    """
    n = x.shape[0]
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return _crop(padded, oy, ox, flip, x.shape[-2:])


def translate_flip(
    x: torch.Tensor, flip: torch.Tensor, generator: torch.Generator, translate: int = 2
) -> torch.Tensor:
    """Per-sample random translation by up to ``translate`` pixels each way (a crop of the
    image reflect-padded by ``translate``, as in airbench) and a horizontal flip of the
    samples where the bool tensor ``flip`` is true.  Randomness from ``generator``."""
    n = x.shape[0]
    r = translate
    padded = F.pad(x, (r, r, r, r), mode="reflect") if r > 0 else x
    oy = torch.randint(0, 2 * r + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * r + 1, (n,), generator=generator)
    return _crop(padded, oy, ox, flip, x.shape[-2:])


def alternating_flip(n: int, epoch: int, seed: int) -> torch.Tensor:
    """airbench's derandomised flip: which of ``n`` training images to mirror in ``epoch``
    (0-based).  A random half drawn once from ``seed`` in even epochs, the other half in
    odd ones, so every image is seen both ways in every two consecutive epochs."""
    base = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return base ^ bool(epoch % 2)


@torch.no_grad()
def tta_logits(model: torch.nn.Module, x: torch.Tensor, level: int = 2) -> torch.Tensor:
    """airbench94's test-time augmentation of ``model`` on ``x`` ``[N, C, H, W]``.

    ``level`` 0: the plain logits; 1: the mean of the image's and its mirror image's;
    2: half that, and half the mean of the same over the image moved one pixel up-left
    and one pixel down-right (reflect padding): six views in all, as airbench94 reports
    its 94.01 %. An ANN-only check of the data and the training recipe: a converted
    network sees each image once, and onespike's accuracies are without it.
    """
    if level not in (0, 1, 2):
        raise ValueError(f"tta_logits: level must be 0, 1 or 2, got {level!r}")

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(v) + 0.5 * model(v.flip(-1))

    if level == 0:
        return model(x)
    if level == 1:
        return mirror(x)
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    moved = (padded[..., 0:h, 0:w], padded[..., 2 : h + 2, 2 : w + 2])
    return 0.5 * mirror(x) + 0.25 * (mirror(moved[0]) + mirror(moved[1]))


def _crop(
    padded: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    flip: torch.Tensor,
    size: tuple[int, ...] | torch.Size,
) -> torch.Tensor:
    """Crop ``size`` from ``padded`` at per-sample offsets ``(oy, ox)``, flipping where
    ``flip`` is true."""
    n, c = padded.shape[:2]
    h, w = size
    dev = padded.device
    oy, ox, flip = oy.to(dev), ox.to(dev), flip.to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [N,1,H,1]
    cols = ox[:, None] + torch.arange(w, device=dev)  # [N,W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # [N,1,1,W]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]
