"""Which samples a run uses: data sets by name, calibration draws and test subsets.

The command line, the experiments, the benchmarks and the tests all draw their
images here, so that the same command sees the same images everywhere.
"""

from __future__ import annotations

import torch

from ._common import DataError, PathLike
from .cifar import load_cifar10
from .mnist import load_mnist

__all__ = [
    "DATASETS",
    "SUBSETS",
    "calibration_set",
    "fixed_subset",
    "load_dataset",
    "subset_indices",
]

#: Image data sets known by name.
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10")
#: How a subset of ``k`` test samples is taken (see :func:`subset_indices`).
SUBSETS: tuple[str, ...] = ("first", "random")


def load_dataset(
    name: str, split: str, root: PathLike | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of an image data set by name: float32 images in [0, 1], int64 labels.

    ``name`` is one of :data:`DATASETS`; ``split`` is ``"train"`` or ``"test"``;
    ``root`` the data folder (default :func:`onespike.data.data_root`). ``limit``
    keeps the fixed subset of that size of :func:`fixed_subset` (not the first
    ``limit`` samples: the CIFAR-10 loader returns images sorted by class).

    Raises:
        DataError: an unknown name, or missing or corrupt files.
    """
    if name in ("mnist", "fashion-mnist"):
        x, y = load_mnist(split=split, root=root, dataset=name)
    elif name == "cifar10":
        x, y = load_cifar10(split=split, root=root)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    if limit is not None:
        idx = fixed_subset(len(x), limit)
        x, y = x[idx], y[idx]
    return x.contiguous(), y.contiguous()


def calibration_set(dataset: str, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` training images drawn with ``seed``, and a phrase saying where they come from.

    Without the MNIST training set (only its test set ships with the package) the
    draw is made from the MNIST test set, and the phrase says so.
    """
    try:
        x, _ = load_dataset(dataset, "train")
        where = f"{n} training images (seed {seed})"
    except DataError:
        if dataset != "mnist":
            raise
        x, _ = load_dataset(dataset, "test")
        where = f"{n} TEST images (MNIST training set not found; set ONESPIKE_DATA)"
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    return x[idx], where


def fixed_subset(n: int, limit: int) -> torch.Tensor:
    """Sorted indices of ``min(limit, n)`` samples out of ``n``, the same for every run.

    Drawn with a generator seeded with 0 (independent of any run's seed), so a limited
    run sees every class even when the data set is stored sorted by class.
    """
    if limit >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=g)[:limit].sort().values


def subset_indices(n: int, k: int, how: str = "first") -> torch.Tensor:
    """Indices of ``k`` of ``n`` test samples: the first ``k`` (``how="first"``), or the
    fixed random ``k`` of :func:`fixed_subset` (``"random"``; needed for CIFAR-10,
    whose test set is stored sorted by class)."""
    if how == "random":
        return fixed_subset(n, k)
    if how != "first":
        raise DataError(f"unknown subset {how!r}; choose one of {', '.join(SUBSETS)}")
    return torch.arange(min(n, k))
