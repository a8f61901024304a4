"""Loaders for the real data sets: MNIST, Fashion-MNIST, CIFAR-10, Planetoid graphs.

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

__all__ = [
    "CIFAR10_CLASSES",
    "DataError",
    "Graph",
    "cache_dir",
    "data_root",
    "download_cifar10",
    "download_mnist",
    "download_planetoid",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "load_planetoid",
    "normalized_adjacency",
    "read_idx",
]
