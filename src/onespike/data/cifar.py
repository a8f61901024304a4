"""CIFAR-10 from the official python release (or, for users who have one, a JPEG zip).

Two on-disk forms are understood, under ``<root>/cifar10/``:

* ``cifar-10-batches-py/`` (the official ``cifar-10-python.tar.gz`` extracted): pickles
  ``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch`` (test). Used when present;
  this is the standard benchmark, and every figure in the docs is measured on it.
* ``cifar10-jpeg.zip``: a lossy re-encoding some users have, read when the release is
  absent (figures on it are not comparable with published ones): an ImageFolder
  layout ``{train,test}/<class>/<name>.jpg``
  (optionally below one leading folder). The JPEGs are decoded once with Pillow and the
  uint8 result is cached as an uncompressed ``.npz`` in :func:`cache_dir`, keyed by the zip's
  size and modification time.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ._common import (
    PICKLE_ERRORS,
    DataError,
    PathLike,
    cache_dir,
    check_choice,
    missing_file_message,
    resolve_root,
    safe_unpickle,
)

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_SPLITS = ("train", "test")
_ZIP_NAME = "cifar10-jpeg.zip"
_BATCH_DIR = "cifar-10-batches-py"
_BATCH_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_SIDE = 32
_CACHE_VERSION = 1
_IMAGE_RE = re.compile(
    r"^(?P<prefix>(?:[^/]+/)*?)(?P<split>train|test)/(?P<cls>[^/]+)/(?P<file>[^/]+)$"
)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,3,32,32] and integer [N] arrays -> float32 in [0,1] and int64 tensors."""
    return (
        torch.from_numpy(x).to(torch.float32).div_(255.0),
        torch.from_numpy(np.asarray(y, dtype=np.int64)),
    )


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``9.jpg`` before ``10.jpg`` (same as plain order for 0000.jpg)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


# ----------------------------------------------------------------------------- python release


def _load_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the official pickles of one split: uint8 [N,3,32,32] and int64 [N]."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for name in _BATCH_FILES[split]:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"CIFAR-10 batch file {path} is missing from {folder}; re-extract "
                f"cifar-10-python.tar.gz there, or run onespike.data.download_cifar10()."
            )
        try:
            with path.open("rb") as f:
                batch = safe_unpickle(f, encoding="latin1")
            if not isinstance(batch, dict):
                raise TypeError(f"expected a dict, got {type(batch).__name__}")
            keyed = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
            data = np.asarray(keyed["data"], dtype=np.uint8)
            labels = np.asarray(keyed.get("labels", keyed.get("fine_labels")), dtype=np.int64)
            data = data.reshape(-1, 3, _SIDE, _SIDE)
        except PICKLE_ERRORS as exc:
            raise DataError(
                f"CIFAR-10 batch file {path} is corrupt or not a CIFAR-10 pickle "
                f"({type(exc).__name__}: {exc}); re-extract it or run "
                f"onespike.data.download_cifar10()."
            ) from exc
        if labels.shape != (len(data),) or (
            labels.size and not 0 <= labels.min() <= labels.max() <= 9
        ):
            raise DataError(
                f"CIFAR-10 batch file {path} holds {len(data)} images but labels of shape "
                f"{labels.shape} or outside 0..9; re-extract it."
            )
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------- JPEG zip


def _zip_members(zf: zipfile.ZipFile, path: Path, split: str) -> list[tuple[int, str]]:
    """``(class index, member name)`` of the split's images, ordered by class then file name."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for info in zf.infolist():
        name = info.filename
        if info.is_dir() or "__MACOSX" in name.split("/"):
            continue
        m = _IMAGE_RE.match(name)
        if m is None or m["split"] != split:
            continue
        fname = m["file"]
        if fname.startswith(".") or not fname.lower().endswith(_IMAGE_EXTS):
            continue
        cls = m["cls"]
        if cls not in CIFAR10_CLASSES:
            raise DataError(
                f"{path} holds an unknown class folder {m['prefix']}{split}/{cls}/; expected "
                f"only {', '.join(CIFAR10_CLASSES)}."
            )
        found.setdefault(m["prefix"], []).append((CIFAR10_CLASSES.index(cls), fname, name))
    if not found:
        raise DataError(
            f"{path} holds no {split}/<class>/<image>.jpg entries; expected the ImageFolder "
            f"layout {{train,test}}/{{airplane,...,truck}}/NNNN.jpg."
        )
    if len(found) > 1:
        prefixes = ", ".join(repr(p) for p in sorted(found))
        raise DataError(
            f"{path} holds the {split} split under several folders ({prefixes}); keep one."
        )
    (entries,) = found.values()
    entries.sort(key=lambda e: (e[0], _natural_key(e[1])))
    return [(label, name) for label, _, name in entries]


def _decode_zip(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode every JPEG of one split: uint8 [N,3,32,32] and int64 [N]."""
    from PIL import Image, UnidentifiedImageError

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise DataError(
            f"{path} is not a valid zip file ({exc}); delete it and copy it again."
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check the file.") from exc
    with zf:
        members = _zip_members(zf, path, split)
        x = np.empty((len(members), _SIDE, _SIDE, 3), dtype=np.uint8)
        y = np.fromiter((label for label, _ in members), dtype=np.int64, count=len(members))
        bar = tqdm(members, desc=f"Decoding CIFAR-10 {split}", unit="img", leave=False)
        for i, (_, name) in enumerate(bar):
            try:
                with Image.open(io.BytesIO(zf.read(name))) as im:
                    im = im.convert("RGB") if im.mode != "RGB" else im
                    arr = np.asarray(im, dtype=np.uint8)
            except (
                zipfile.BadZipFile,
                UnidentifiedImageError,
                OSError,
                EOFError,
                ValueError,
                zlib.error,
            ) as exc:
                raise DataError(
                    f"{path} member {name} cannot be read or decoded ({exc}); the zip is "
                    f"corrupt, so delete it and copy it again."
                ) from exc
            if arr.shape != (_SIDE, _SIDE, 3):
                raise DataError(
                    f"{path} member {name} is {arr.shape[1]}x{arr.shape[0]}, not "
                    f"{_SIDE}x{_SIDE}; this is not a CIFAR-10 image zip."
                )
            x[i] = arr
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def _cache_file(src: Path, split: str) -> Path:
    """Cache path for one split of ``src``: keyed by its size and mtime (ns)."""
    st = src.stat()
    return cache_dir() / (
        f"cifar10-jpeg-{split}-{st.st_size}-{st.st_mtime_ns}-v{_CACHE_VERSION}.npz"
    )


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when absent or unusable (then the zip is decoded again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, _SIDE, _SIDE):
        return None
    if y.shape != (len(x),):
        return None
    return x, y.astype(np.int64, copy=False)


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write the arrays atomically (temp file + rename); only warn if that fails."""
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem + ".", suffix=".tmp", delete=False
        ) as f:
            tmp_name = f.name
            np.savez(f, x=x, y=y.astype(np.uint8))
        os.replace(tmp_name, path)
    except OSError as exc:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        warnings.warn(
            f"could not write the CIFAR-10 cache {path} ({exc}); decoding will be redone "
            f"next time.",
            RuntimeWarning,
            stacklevel=3,
        )


def _load_zip_cached(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        cache = _cache_file(path, split)
    except DataError as exc:
        warnings.warn(f"{exc} Continuing without a cache.", RuntimeWarning, stacklevel=3)
        return _decode_zip(path, split)
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    x, y = _decode_zip(path, split)
    _write_cache(cache, x, y)
    return x, y


def load_cifar10(
    split: str = "test", root: PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 from ``<root>/cifar10/``.

    Uses ``cifar-10-batches-py/`` when that folder exists, else ``cifar10-jpeg.zip`` (decoded
    once, then served from the cache in :func:`onespike.data.cache_dir`). Images from the
    zip are ordered by class (airplane=0 ... truck=9, :data:`CIFAR10_CLASSES`) then by file
    name; images from the pickles keep the release's order.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
        root: data folder; default :func:`onespike.data.data_root`.

    Returns:
        ``(images, labels)``: float32 [N, 3, 32, 32] RGB intensities in [0, 1]
        (raw value / 255) and int64 [N] class indices 0..9.

    Raises:
        DataError: unknown split, missing files, corrupt zip/JPEG/pickle.
    """
    split = check_choice("split", split, _SPLITS)
    root_path, how = resolve_root(root)
    folder = root_path / "cifar10"
    batches = folder / _BATCH_DIR
    if batches.is_dir():
        return _to_tensors(*_load_batches(batches, split))
    zpath = folder / _ZIP_NAME
    if not zpath.is_file():
        raise DataError(
            missing_file_message(
                f"CIFAR-10 ('{_ZIP_NAME}' or '{_BATCH_DIR}/')",
                zpath,
                root_path,
                how,
                "cifar10",
                "download_cifar10()",
            )
        )
    return _to_tensors(*_load_zip_cached(zpath, split))
