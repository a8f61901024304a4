"""Loaders for the real data sets (MNIST, Fashion-MNIST, CIFAR-10, Planetoid graphs) and
the choice of samples a run uses (:mod:`onespike.data.select`: data sets by name,
calibration draws, test subsets).

All loaders read from :func:`data_root` (override with ``ONESPIKE_DATA`` or ``root=``),
return torch tensors, and raise :class:`DataError` with a one-sentence explanation for any
missing, corrupt or misnamed data. Nothing is downloaded unless a ``download_*`` helper is
called explicitly. See ``docs/DATA.md``.
"""

from __future__ import annotations

from ._common import DataError, cache_dir, data_root
from .cifar import CIFAR10_CLASSES, load_cifar10
from .download import download_cifar10, download_mnist, download_planetoid
from .mnist import load_fashion_mnist, load_mnist, read_idx
from .planetoid import Graph, load_planetoid, normalized_adjacency
from .select import (
    DATASETS,
    SUBSETS,
    calibration_set,
    fixed_subset,
    load_dataset,
    subset_indices,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "SUBSETS",
    "DataError",
    "Graph",
    "cache_dir",
    "calibration_set",
    "data_root",
    "download_cifar10",
    "download_mnist",
    "download_planetoid",
    "fixed_subset",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_planetoid",
    "normalized_adjacency",
    "read_idx",
    "subset_indices",
]
