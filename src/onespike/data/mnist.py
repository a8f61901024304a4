"""MNIST and Fashion-MNIST from the original gzipped IDX files."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from onespike.errors import OptionError

from ._common import DataError, PathLike, check_choice, missing_file_message, resolve_root

__all__ = [
    "MNIST_DATASETS",
    "SPLITS",
    "load_fashion_mnist",
    "load_mnist",
    "mnist_file_names",
    "read_idx",
    "shipped_mnist_dir",
]

MNIST_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
SPLITS: tuple[str, ...] = ("train", "test")

_IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SIDE = 28


def shipped_mnist_dir() -> Path:
    """Folder inside the package holding the shipped MNIST test set (two ``t10k`` files)."""
    return Path(__file__).resolve().parent.parent / "assets" / "mnist"


def mnist_file_names(split: str) -> tuple[str, str]:
    """``(images file, labels file)`` names of a split, e.g. ``t10k-images-idx3-ubyte.gz``."""
    split = check_choice("split", split, SPLITS)
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _dataset_name(dataset: str) -> str:
    if isinstance(dataset, str) and dataset.lower().replace("_", "-") in MNIST_DATASETS:
        return dataset.lower().replace("_", "-")
    return check_choice("dataset", dataset, MNIST_DATASETS)


def _read_bytes(path: Path) -> bytes:
    """All bytes of an IDX file, gunzipped if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError as exc:
        raise DataError(
            f"{path} is truncated (the gzip stream ends early); delete it and download it "
            f"again, e.g. with onespike.data.download_mnist()."
        ) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path} is not a valid gzip file ({exc}); delete it and download it again, "
            f"e.g. with onespike.data.download_mnist()."
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check the file.") from exc


def read_idx(path: PathLike, kind: str) -> np.ndarray:
    """Read one MNIST-style IDX file (gzipped if the name ends in ``.gz``).

    Args:
        path: the file.
        kind: ``"images"`` (magic 0x00000803, shape [N, 28, 28]) or ``"labels"``
            (magic 0x00000801, shape [N]).

    Returns:
        uint8 array of shape [N, 28, 28] (pixel values 0..255) or [N] (class indices).

    Raises:
        DataError: the file is unreadable, not gzip, truncated, has a bad magic number,
            bad dimensions, or a payload whose length does not match its header.
    """
    path = Path(path)
    if kind not in ("images", "labels"):
        raise OptionError(f"kind must be 'images' or 'labels', not {kind!r}")
    raw = _read_bytes(path)
    magic_expected = _IMAGE_MAGIC if kind == "images" else _LABEL_MAGIC
    ndim = 3 if kind == "images" else 1
    header_len = 4 + 4 * ndim
    redo = "delete it and download it again, e.g. with onespike.data.download_mnist()"
    if len(raw) < header_len:
        raise DataError(f"{path} is too short to be an IDX {kind} file ({len(raw)} bytes); {redo}.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != magic_expected:
        raise DataError(
            f"{path} has a bad IDX magic number {magic:#010x} (expected {magic_expected:#010x} "
            f"for {kind}), so it is corrupt or not an MNIST {kind} file; {redo}."
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [_SIDE, _SIDE]:
        raise DataError(
            f"{path} holds {dims[1]}x{dims[2]} images, not {_SIDE}x{_SIDE}; "
            f"it is not an MNIST-format images file."
        )
    expected = int(np.prod(dims))
    payload = len(raw) - header_len
    if payload != expected:
        raise DataError(
            f"{path} is corrupt: its header promises {expected} data bytes "
            f"but it holds {payload}; {redo}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _find(folder: Path, name: str) -> Path | None:
    """The gzipped file, else its uncompressed twin (name without ``.gz``), else None."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(
    split: str = "test", root: PathLike | None = None, dataset: str = "mnist"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST from ``<root>/<dataset>/``.

    Reads ``{train,t10k}-images-idx3-ubyte.gz`` and ``{train,t10k}-labels-idx1-ubyte.gz``
    (the uncompressed files without ``.gz`` are accepted too). For ``dataset="mnist"`` and
    ``split="test"`` only, a copy shipped inside the package is used when the files are
    not under the root.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: data folder; default :func:`onespike.data.data_root`.
        dataset: ``"mnist"`` or ``"fashion-mnist"``.

    Returns:
        ``(images, labels)``: float32 [N, 1, 28, 28] with pixel intensities scaled to
        [0, 1] (raw value / 255), and int64 [N] class indices 0..9.

    Raises:
        DataError: unknown split/dataset, missing or corrupt files, or image and label
            counts that differ.
    """
    split = check_choice("split", split, SPLITS)
    dataset = _dataset_name(dataset)
    root_path, how = resolve_root(root)
    folder = root_path / dataset
    img_name, lbl_name = mnist_file_names(split)
    img_path, lbl_path = _find(folder, img_name), _find(folder, lbl_name)
    if (img_path is None or lbl_path is None) and dataset == "mnist" and split == "test":
        shipped = shipped_mnist_dir()
        if (shipped / img_name).is_file() and (shipped / lbl_name).is_file():
            img_path, lbl_path = shipped / img_name, shipped / lbl_name
    for found, name in ((img_path, img_name), (lbl_path, lbl_name)):
        if found is None:
            download = "download_mnist()" if dataset == "mnist" else f"download_mnist({dataset=})"
            what = f"{dataset} {split} file '{name}'"
            raise DataError(
                missing_file_message(what, folder / name, root_path, how, dataset, download)
            )
    assert img_path is not None and lbl_path is not None
    images = read_idx(img_path, "images")
    labels = read_idx(lbl_path, "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} "
            f"labels; replace the mismatched file."
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(
            f"{lbl_path} holds label {int(labels.max())}, outside 0..9; it is not an "
            f"MNIST-format labels file."
        )
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_fashion_mnist(
    split: str = "test", root: PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST: :func:`load_mnist` with ``dataset="fashion-mnist"`` (no shipped copy)."""
    return load_mnist(split, root=root, dataset="fashion-mnist")
