"""Data parallelism on ``torch.distributed``: shards, reductions, the rank check.

When a default process group is initialised (by ``torchrun`` through the command
line, or by the user's own ``torch.distributed.init_process_group``),
:func:`onespike.convert` and :func:`onespike.evaluate` give each rank a shard of the
data and reduce what the ranks observe, so that every rank ends with what one process
would compute on the whole data; :func:`onespike.refine` shares out every mini-batch
and sums the gradients (:func:`sum_tensors`), and checks that the ranks end alike
(:func:`check_identical`). Without a process group every helper here is a
no-op: one rank, the whole data, no communication.

The contract: **every rank is given the same model, the same options and the same
whole data** (a tensor, a ``Dataset``, a ``DataLoader``); each takes its own shard.
:func:`check_same` verifies the first two (and the data's size and first batch) at
the start and fails on every rank with one error naming what differs.

Shards are contiguous and aligned to the chunks the single process would cut
(:func:`shard_range`): rank ``r`` of ``W`` takes chunks ``r*C//W`` to ``(r+1)*C//W``
of the ``C`` chunks of ``align`` samples. Each chunk is then computed exactly as one
process computes it, and results gathered in rank order are in the single process's
order: sums replayed in that order and percentiles of gathered values are bit-equal
to one process's. A ``Dataset`` read through a plain ``DataLoader`` reads only its
shard; any other stream is read in full by every rank and the other samples skipped.

Backends: gloo on CPU, NCCL on GPUs; the same code (tensors are moved to the
backend's device for the collectives and back). :func:`init_from_env` sets a
timeout on the group, so a rank that dies or hangs makes the others fail with an
error instead of waiting forever.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from onespike.errors import OnespikeError, OptionError
from onespike.stream import Batches

Tensor = torch.Tensor

#: Seconds a collective waits for the other ranks before failing (``init_from_env``);
#: the environment variable ``ONESPIKE_DIST_TIMEOUT`` overrides it.
DEFAULT_TIMEOUT_S = 1800.0

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RankDivergenceError",
    "RankMismatchError",
    "active",
    "all_gather_rows",
    "all_reduce",
    "check_identical",
    "check_same",
    "gather_objects",
    "init_from_env",
    "is_main",
    "print0",
    "rank",
    "shard",
    "shard_range",
    "sum_tensors",
    "world_size",
]


class RankMismatchError(OnespikeError, ValueError):
    """The ranks of a process group were given different models, options or data."""


class RankDivergenceError(OnespikeError, RuntimeError):
    """Ranks that computed the same thing from the same inputs ended with different
    results (ranks on different kinds of device or CPU, whose kernels round differently)."""


# --- who am I ---------------------------------------------------------------------------
def active() -> bool:
    """True when a default process group is initialised (with any number of ranks)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and without a process group): the rank that prints and writes."""
    return rank() == 0


def print0(*args: object, **kwargs: object) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)  # type: ignore[call-overload]


# --- shards -----------------------------------------------------------------------------
def shard_range(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """Samples ``[lo, hi)`` of rank ``rank`` among ``world``: the ``ceil(n / align)``
    chunks of ``align`` samples split into ``world`` contiguous runs (the first ranks
    take the smaller ones, rank ``world - 1`` the last chunk). ``lo == hi``: no
    samples (more ranks than chunks)."""
    chunks = -(-n // align)
    a, b = rank * chunks // world, (rank + 1) * chunks // world
    return min(a * align, n), min(b * align, n)


def shard(data: Batches, align: int = 1) -> Batches | None:
    """This rank's contiguous shard of ``data`` (:func:`shard_range`), ``None`` if it is
    empty; ``data`` itself without a process group."""
    if not active():
        return data
    lo, hi = shard_range(data.count, rank(), world_size(), align)
    if lo >= hi:
        return None
    return data if (lo, hi) == (0, data.count) else data.window(lo, hi)


def chunks(data: Batches | None, size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``data.chunks(size)``, nothing for an empty shard (``None``)."""
    if data is not None:
        yield from data.chunks(size)


# --- collectives ------------------------------------------------------------------------
def _device() -> torch.device:
    """Where the backend's collectives take tensors (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum", *, integer: bool = False) -> list:
    """Element-wise sum (``op="sum"``) or maximum (``"max"``) of ``values`` over the
    ranks, as int64 (``integer``: counts, exact) or float64; ``values`` unchanged
    without a process group. Every rank must call it with as many values."""
    if not active():
        return list(values)
    dtype = torch.int64 if integer else torch.float64
    t = torch.tensor(list(values), dtype=dtype, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def sum_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Element-wise sums over the ranks of ``tensors`` (any shapes, dtypes, devices), in
    one all-reduce of a flat float64 bucket; each sum comes back in its tensor's shape,
    dtype and device (a sum of two float32 values is exact in float64, so on 2 ranks each
    element is the correctly rounded sum). Every rank must pass tensors of the same
    shapes, in the same order. Without a process group, the tensors themselves."""
    if not active():
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1).to(_device(), torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, at = [], 0
    for t in tensors:
        out.append(flat[at : at + t.numel()].view(t.shape).to(t.device, t.dtype))
        at += t.numel()
    return out


def gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable, small), in rank order; ``[obj]`` without a group."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(rows: list[Tensor] | None) -> list[Tensor]:
    """Each row concatenated over the ranks, in rank order: rows of different lengths
    on each rank (a layer's positive values per channel). ``None``: this rank has no
    samples (its rows are empty; their number comes from the others). The result is
    on the rows' device; without a process group, ``rows`` itself."""
    if not active():
        assert rows is not None
        return rows
    meta = gather_objects(
        None if rows is None else ([r.numel() for r in rows], str(rows[0].dtype).split(".")[-1])
    )
    known = [m for m in meta if m is not None]
    if not known:
        raise RuntimeError("all_gather_rows: every rank has an empty shard")
    n_rows, dtype = len(known[0][0]), getattr(torch, known[0][1])
    home = rows[0].device if rows else torch.device("cpu")
    dev = _device()
    flat = (
        torch.cat([r.reshape(-1) for r in rows]).to(dev, dtype)
        if rows
        else torch.empty(0, dtype=dtype, device=dev)
    )
    sizes = [0 if m is None else sum(m[0]) for m in meta]
    longest = max(sizes)
    padded = torch.zeros(longest, dtype=dtype, device=dev)
    padded[: flat.numel()] = flat
    parts = [torch.empty_like(padded) for _ in meta]
    dist.all_gather(parts, padded)
    out: list[list[Tensor]] = [[] for _ in range(n_rows)]
    for m, part, size in zip(meta, parts, sizes):
        if m is None:
            continue
        for acc, piece in zip(out, part[:size].split(m[0])):
            acc.append(piece)
    return [torch.cat(acc).to(home) for acc in out]


# --- the start-up check -----------------------------------------------------------------
def digest(value: object) -> str:
    """A SHA-256 of a tensor, a ``state_dict`` (or any mapping), a module, or the
    ``repr`` of anything else (options): equal values give equal digests everywhere."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h: hashlib._Hash, value: object) -> None:
    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, Tensor) and value.layout == torch.sparse_coo:  # a GCN's adjacency
        t = value.detach().to("cpu").coalesce()
        h.update(f"sparse {t.dtype} {tuple(t.shape)};".encode())
        _feed(h, t.indices())
        _feed(h, t.values())
    elif isinstance(value, Tensor):
        t = value.detach().to("cpu")
        t = (t if t.layout == torch.strided else t.to_dense()).contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(f"{k!s}=".encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}](".encode())
        for v in value:
            _feed(h, v)
        h.update(b")")
    else:
        h.update(repr(value).encode())
    h.update(b";")


def check_same(parts: dict[str, object]) -> None:
    """Fail on every rank, with one :class:`RankMismatchError` naming what differs,
    unless every rank passes equal ``parts`` (e.g. ``{"model": state_dict, "options":
    ..., "data": ...}``), compared by :func:`digest`. No-op without a process group."""
    if not active():
        return
    mine = {k: digest(v) for k, v in parts.items()}
    every = gather_objects(mine)
    ref = every[0]
    bad: dict[str, list[int]] = {}
    for r, d in enumerate(every):
        for k in sorted(set(ref) | set(d)):
            if ref.get(k) != d.get(k):
                bad.setdefault(k, []).append(r)
    if bad:
        what = "; ".join(
            f"the {k} of rank(s) {', '.join(map(str, rs))} differ(s) from rank 0's"
            for k, rs in bad.items()
        )
        raise RankMismatchError(
            f"the {world_size()} ranks were not given the same inputs: {what} (give every "
            "rank the same model, options and whole data; each takes its own shard)"
        )


def check_identical(what: str, state: dict[str, Tensor]) -> None:
    """Fail on every rank, with one :class:`RankDivergenceError` naming the largest
    difference, unless every rank holds bit-equal ``state`` (tensors of the same names
    and shapes on every rank, e.g. a ``state_dict`` all ranks computed alike): one
    all-gather of a digest per rank. No-op without a process group."""
    if not active():
        return
    every = gather_objects(digest(state))
    if len(set(every)) == 1:
        return
    worst, where = 0.0, ""
    for name in sorted(state):  # every rank takes this branch: each saw all the digests
        t = state[name].detach()
        t = (t if t.layout == torch.strided else t.to_dense()).reshape(-1)
        t = t.to(_device(), torch.float64)
        hi, lo = t.clone(), t.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        d = float((hi - lo).max()) if t.numel() else 0.0
        if d > worst or not where:
            worst, where = d, name
    ranks = ", ".join(str(r) for r, d in enumerate(every) if d != every[0])
    raise RankDivergenceError(
        f"{what} of rank(s) {ranks} differ(s) from rank 0's (largest difference {worst:.3g} "
        f"in {where}): the ranks computed it from the same inputs, so their devices round "
        "differently; run every rank on the same kind of device and CPU, or in one process"
    )


# --- starting the group -----------------------------------------------------------------
def launched() -> bool:
    """True when the environment says this process is one of several ranks (torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(timeout_s: float | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``) when this process
    is one of several ranks and no group exists yet. Backend: NCCL when CUDA is
    available (each rank on GPU ``LOCAL_RANK``), else gloo; the environment variable
    ``ONESPIKE_DIST_BACKEND`` (``gloo`` or ``nccl``) chooses instead. ``timeout_s`` (default
    ``ONESPIKE_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`): how long a collective
    waits for the other ranks before failing. Returns True if it made the group."""
    if not launched() or active():
        return False
    if not dist.is_available():
        raise OptionError("this PyTorch build has no torch.distributed: run one process")
    if timeout_s is None:
        raw = os.environ.get("ONESPIKE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
        try:
            timeout_s = float(raw)
        except ValueError:
            raise OptionError(f"ONESPIKE_DIST_TIMEOUT must be seconds, got {raw!r}") from None
    if timeout_s <= 0:
        raise OptionError(f"the process group's timeout must be > 0 seconds, got {timeout_s}")
    backend = os.environ.get("ONESPIKE_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo"
    )
    if backend not in ("gloo", "nccl"):
        raise OptionError(f"ONESPIKE_DIST_BACKEND must be gloo or nccl, got {backend!r}")
    if backend == "nccl":
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:
            raise OptionError(
                f"local rank {local} has no GPU: this node has {gpus}; start at most {gpus} "
                "processes per node (--nproc-per-node), or set ONESPIKE_DIST_BACKEND=gloo "
                "to run on the CPU"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def local_device() -> torch.device | None:
    """This rank's GPU under an NCCL group (``cuda:LOCAL_RANK``); None otherwise."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def close(synchronize: bool = False) -> None:
    """Destroy the default process group if one exists.

    With ``synchronize`` (a run that ended normally on every rank) the ranks first meet
    at a barrier, so no rank tears down its connections while another still has the
    last bytes of a collective in flight (gloo aborts the process when a peer's socket
    closes under it). Not after an error: the other ranks may never reach the barrier.
    """
    if active():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
