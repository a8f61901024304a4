"""Output files: checked before any work, written so that a failure cannot lose the old one.

Every file onespike writes (``save``, ``export_nir``, the command line's ``--out``,
``--nir``, ``--json`` and ``--plot``) goes through :func:`atomic_write`: the content is
written to a temporary file in the same folder, flushed to the disk (``fsync``), given
the mode a new file would have (or the old file's), then renamed over the target
(``os.replace``, atomic on POSIX and Windows). If anything fails on the way (a full
disk, a write error, an exception of the writer) the temporary file is removed, the
file that was there is left as it was, and the caller gets one :class:`OutputError`
naming the path and the reason.

:func:`check_output` refuses, before any work, a path that cannot be written: a
folder, a missing folder, a folder without write permission, or something that is not
a regular file (a FIFO, a device).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from onespike.errors import OnespikeError, OptionError, OutputError

__all__ = ["atomic_write", "check_output", "write_json", "write_text"]


def check_output(
    path: str | os.PathLike, what: str | None = None, error: type[OnespikeError] = OutputError
) -> Path:
    """``path`` as a ``Path`` if a file can be written there; else ``error`` (one sentence).

    ``what`` names the path in the message (an option such as ``--json``; default: the
    path itself). Nothing is created.
    """
    p = Path(path)
    name = f"{what} {path}" if what else f"cannot write '{path}'"
    if str(path) == "" or p.name in ("", ".", ".."):
        raise error(f"{name}: give a file name")
    if p.is_dir():
        raise error(f"{name}: it is a folder; give a file name inside it")
    parent = p.parent
    if not parent.is_dir():
        missing = "is not a folder" if parent.exists() else "does not exist"
        raise error(f"{name}: the folder '{parent}' {missing}; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{name}: no permission to write in the folder '{parent}'")
    if p.exists() and not p.is_file():
        raise error(f"{name}: it exists and is not a regular file (a FIFO or a device?)")
    return p


def check_output_folder(
    path: str | os.PathLike, what: str | None = None, error: type[OnespikeError] = OutputError
) -> Path:
    """``path`` as a ``Path`` if it is a writable folder or one that can be made (its parent
    exists and is writable); else ``error`` (one sentence). Nothing is created."""
    p = Path(path)
    name = f"{what} {path}" if what else f"cannot write into '{path}'"
    if str(path) == "":
        raise error(f"{name}: give a folder")
    if p.exists():
        if not p.is_dir():
            raise error(f"{name}: it exists and is not a folder; give a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise error(f"{name}: no permission to write in it")
        return p
    parent = p.parent
    if not parent.is_dir():
        missing = "is not a folder" if parent.exists() else "does not exist"
        raise error(f"{name}: the folder '{parent}' {missing}; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{name}: no permission to make a folder in '{parent}'")
    return p


def make_output_folder(
    path: str | os.PathLike, what: str | None = None, error: type[OnespikeError] = OutputError
) -> Path:
    """Check ``path`` (:func:`check_output_folder`) and make it; a failure (a read-only or
    special file system) is ``error`` in one sentence."""
    p = check_output_folder(path, what, error)
    try:
        p.mkdir(exist_ok=True)
    except OSError as e:
        name = f"{what} {path}" if what else f"cannot make the folder '{path}'"
        raise error(f"{name}: cannot make the folder ({_reason(e)})") from None
    return p


def _new_file_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)  # replacing a file: keep its mode
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every system opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return e.strerror or os.strerror(e.errno)
    return (str(e).splitlines() or [type(e).__name__])[0]


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    *,
    error: type[OnespikeError] = OutputError,
    catch: tuple[type[BaseException], ...] = (OSError,),
) -> object:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``write`` writes the whole content to the path it is given (an empty file already
    exists there; it may replace it). Returns what ``write`` returns. On an exception of
    a type in ``catch`` (by default ``OSError``: a full disk, no permission) the
    temporary file is removed, ``path`` is left as it was and ``error`` is raised with
    one sentence; any other exception (a bug) propagates after the same clean-up.
    The temporary name keeps ``path``'s suffix (``.png``: matplotlib picks the format
    from it).
    """
    target = check_output(path, error=error)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    done = False
    try:
        result = write(tmp)
        with open(tmp, "rb+") as fh:  # the writer may have closed or replaced the file
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
        done = True
    except catch as e:
        if isinstance(e, OnespikeError):
            raise
        raise error(
            f"cannot write '{path}' ({_reason(e)}); the file that was there is unchanged"
        ) from None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink()
    _fsync_folder(target.parent)
    return result


def write_bytes(path: str | os.PathLike, data: bytes, **kw) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""

    def put(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            n = fh.write(data)
            fh.flush()
        if n != len(data):  # pragma: no cover (a short write raises on a full disk)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    atomic_write(path, put, **kw)


def write_text(path: str | os.PathLike, text: str, **kw) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    write_bytes(path, text.encode("utf-8"), **kw)


def write_json(path: str | os.PathLike, obj: object, *, indent: int | None = 2, **kw) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_write`)."""
    write_text(path, json.dumps(obj, indent=indent) + "\n", **kw)


def read_resume_json(path: str | os.PathLike) -> object | None:
    """A stopped run's JSON at ``path`` for ``--resume`` (None if there is no file); an
    :class:`~onespike.errors.OptionError` saying what to do if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OptionError(f"--resume: cannot read {path} ({e}); remove it to start again") from None
