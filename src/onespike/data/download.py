"""Download helpers for machines with a network (never called at import or by the tests).

Each helper writes into the same layout the loaders read, skips files already present,
downloads to a ``.part`` file that is renamed only when complete, checks what it got, and
turns every network or file-system failure into :class:`~onespike.data.DataError`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ._common import DataError, PathLike, check_choice, resolve_root
from .mnist import MNIST_DATASETS, mnist_file_names, read_idx
from .planetoid import PLANETOID_FILES, PLANETOID_NAMES, load_planetoid

__all__ = ["download_cifar10", "download_mnist", "download_planetoid"]

_TIMEOUT_S = 60.0
_CHUNK = 1 << 20

# Mirrors tried in order (the original yann.lecun.com site often refuses scripted access).
MNIST_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
PLANETOID_URL = "https://raw.githubusercontent.com/kimiyoung/planetoid/master/data/"


def _fetch(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` via ``dest.part``; raise DataError on any failure."""
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        req = urllib.request.Request(url, headers={"User-Agent": "onespike-data/0.1"})
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp, part.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(part, dest)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {url} to {dest} ({reason}); check the network connection, "
            f"or copy the file there by hand."
        ) from exc


def download_mnist(root: PathLike | None = None, dataset: str = "mnist") -> Path:
    """Download the four IDX.gz files of MNIST or Fashion-MNIST into ``<root>/<dataset>/``.

    Args:
        root: data folder; default :func:`onespike.data.data_root`.
        dataset: ``"mnist"`` or ``"fashion-mnist"``.

    Returns:
        The folder holding the files.
    """
    dataset = check_choice("dataset", dataset, MNIST_DATASETS)
    folder = resolve_root(root)[0] / dataset
    for split in ("train", "test"):
        for kind, name in zip(("images", "labels"), mnist_file_names(split)):
            dest = folder / name
            if dest.is_file():
                continue
            errors: list[str] = []
            for mirror in MNIST_MIRRORS[dataset]:
                try:
                    _fetch(mirror + name, dest)
                    break
                except DataError as exc:
                    errors.append(str(exc))
            else:
                raise DataError(
                    f"could not download {name} from any mirror "
                    f"({'; '.join(errors)}); check the network connection."
                )
            try:
                read_idx(dest, kind)
            except DataError:
                dest.unlink(missing_ok=True)
                raise
    return folder


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(root: PathLike | None = None, keep_archive: bool = False) -> Path:
    """Download the official ``cifar-10-python.tar.gz`` and extract it.

    The pickles land in ``<root>/cifar10/cifar-10-batches-py/``, which
    :func:`onespike.data.load_cifar10` then prefers over the JPEG zip.

    Args:
        root: data folder; default :func:`onespike.data.data_root`.
        keep_archive: keep the 163 MB archive after extraction.

    Returns:
        The ``cifar-10-batches-py`` folder.
    """
    folder = resolve_root(root)[0] / "cifar10"
    target = folder / "cifar-10-batches-py"
    if (target / "test_batch").is_file() and (target / "data_batch_5").is_file():
        return target
    archive = folder / "cifar-10-python.tar.gz"
    if not archive.is_file():
        _fetch(CIFAR10_URL, archive)
    digest = _md5(archive)
    if digest != CIFAR10_MD5:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"{archive} has MD5 {digest}, not {CIFAR10_MD5}, so the download is damaged; "
            f"it was deleted, run download_cifar10() again."
        )
    tmp = folder / "cifar-10-batches-py.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if member.isdir():
                    continue
                if not member.isreg() or member.name.startswith("/") or ".." in parts:
                    raise DataError(
                        f"{archive} holds an unsafe entry {member.name!r}; delete it and "
                        f"run download_cifar10() again."
                    )
                if len(parts) < 2 or parts[0] != "cifar-10-batches-py":
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                out = tmp.joinpath(*parts[1:])
                out.parent.mkdir(parents=True, exist_ok=True)
                with src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"could not extract {archive} into {target} ({exc}); delete the archive and "
            f"run download_cifar10() again."
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return target


def download_planetoid(name: str, root: PathLike | None = None) -> Path:
    """Download ``ind.{name}.*`` from the kimiyoung/planetoid repository into ``<root>/planetoid/``.

    Args:
        name: ``"cora"``, ``"citeseer"`` or ``"pubmed"``.
        root: data folder; default :func:`onespike.data.data_root`.

    Returns:
        The ``planetoid`` folder.
    """
    name = check_choice("Planetoid data set", name, PLANETOID_NAMES)
    root_path = resolve_root(root)[0]
    folder = root_path / "planetoid"
    for ext in PLANETOID_FILES:
        dest = folder / f"ind.{name}.{ext}"
        if not dest.is_file():
            _fetch(PLANETOID_URL + dest.name, dest)
    load_planetoid(name, root=root_path)  # raises DataError if the files are unusable
    return folder
