"""Shared pieces of the data loaders: the error type, folder lookup, safe unpickling."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, BinaryIO

from onespike.errors import OnespikeError

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "PICKLE_ERRORS",
    "DataError",
    "PathLike",
    "cache_dir",
    "check_choice",
    "data_root",
    "missing_file_message",
    "resolve_root",
    "safe_unpickle",
]

DATA_ENV = "ONESPIKE_DATA"
CACHE_ENV = "ONESPIKE_CACHE"

PathLike = str | os.PathLike[str]

# Folders tried, in order, when ONESPIKE_DATA is not set (relative ones are taken from the
# current directory at call time).
_ROOT_CANDIDATES: tuple[str, ...] = ("data", "../shared/data", "~/.onespike/data")
_DEFAULT_ROOT = "~/.onespike/data"
_DEFAULT_CACHE = "~/.cache/onespike"


class DataError(OnespikeError):
    """A data set is missing, corrupt or asked for by a wrong name.

    The message is one sentence that says what is wrong and what to do about it.
    """


def data_root() -> Path:
    """Return the folder that holds the data sets (``mnist/``, ``cifar10/``, ``planetoid/``...).

    Order: the environment variable ``ONESPIKE_DATA`` if set and non-empty; else the first
    existing folder of ``./data``, ``../shared/data`` (both relative to the current
    directory) and ``~/.onespike/data``; else ``~/.onespike/data``, which may not exist.
    The path returned is absolute.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    for candidate in _ROOT_CANDIDATES:
        path = Path(candidate).expanduser()
        if path.is_dir():
            return path.resolve()
    return Path(_DEFAULT_ROOT).expanduser().absolute()


def cache_dir() -> Path:
    """Return the folder for decoded-data caches, creating it if needed.

    ``ONESPIKE_CACHE`` if set and non-empty, else ``~/.cache/onespike``.

    Raises:
        DataError: the folder cannot be created.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    path = Path(env or _DEFAULT_CACHE).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the cache folder {path} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable folder."
        ) from exc
    return path


def resolve_root(root: PathLike | None) -> tuple[Path, str]:
    """Return ``(root folder, how it was chosen)`` for messages.

    ``root`` wins when given; otherwise :func:`data_root` decides.
    """
    if root is not None:
        return Path(root).expanduser().absolute(), "given as root="
    if os.environ.get(DATA_ENV, "").strip():
        return data_root(), f"from {DATA_ENV}"
    return data_root(), f"found automatically, {DATA_ENV} not set"


def missing_file_message(
    what: str, path: Path, root: Path, how: str, subdir: str, download: str
) -> str:
    """One-sentence message for a data file that is not where it should be."""
    return (
        f"{what} not found: looked for {path} (data root {root}, {how}); set {DATA_ENV} "
        f"(or pass root=...) to the data folder that holds '{subdir}/', "
        f"or fetch it with onespike.data.{download}."
    )


def check_choice(kind: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` lower-cased if it is one of ``allowed``, else raise :class:`DataError`."""
    if isinstance(value, str) and value.lower() in allowed:
        return value.lower()
    choices = ", ".join(repr(a) for a in allowed)
    raise DataError(f"unknown {kind} {value!r}: use one of {choices}.")


# Modules whose classes the data pickles may name: numpy arrays, scipy sparse matrices,
# defaultdict, and plain built-in containers. Anything else is refused, so a tampered
# pickle cannot run arbitrary code.
_SAFE_PREFIXES = ("numpy", "scipy.sparse", "scipy._lib")
_SAFE_BUILTINS = (
    "list",
    "dict",
    "set",
    "frozenset",
    "tuple",
    "int",
    "float",
    "complex",
    "bytes",
    "bytearray",
    "str",
    "slice",
    "object",
)
_SAFE_NAMES = {
    ("collections", "defaultdict"),
    ("collections", "OrderedDict"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    # Python 3 pickles of protocol < 3 store bytes as _codecs.encode(text, "latin1").
    ("_codecs", "encode"),
    # Python 2 pickles name built-ins "__builtin__"; pickle maps them after find_class.
    *(("builtins", n) for n in _SAFE_BUILTINS),
    *(("__builtin__", n) for n in _SAFE_BUILTINS),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_NAMES or any(
            module == p or module.startswith(p + ".") for p in _SAFE_PREFIXES
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def safe_unpickle(f: BinaryIO | bytes, encoding: str = "latin1") -> Any:
    """Unpickle data-set files (Python 2 or 3 pickles) allowing only numpy/scipy/containers.

    Raises the usual pickle/EOF/OS errors; callers turn them into :class:`DataError`.
    """
    stream = io.BytesIO(f) if isinstance(f, bytes) else f
    with warnings.catch_warnings():
        # Old pickles name scipy.sparse.csr / numpy.core paths that now warn.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _SafeUnpickler(stream, encoding=encoding).load()


# Errors raised by a corrupt pickle, gzip or zip stream.
PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    MemoryError,
    OSError,
)
