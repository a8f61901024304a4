"""Input data as a stream of batches: a tensor, a ``Dataset``, a ``DataLoader`` or a list.

:func:`convert` (calibration) and :func:`onespike.evaluate.evaluate` take their data
through :class:`Batches`, so a data set larger than memory is never materialised:

- a tensor ``[N, ...]`` (and, for evaluation, its labels ``[N]``);
- a ``torch.utils.data.Dataset`` of samples ``x`` or ``(x, y)`` (read in order,
  ``chunk`` samples at a time, through a ``DataLoader``);
- a re-iterable of batches ``x`` or ``(x, y)`` (a ``DataLoader``, a list): read once
  to check it, then once per pass the caller makes;
- a one-shot iterator (a generator): it can be read only once, so it is collected into
  memory (as before this module existed); pass a ``DataLoader`` or a list to stream.

Every batch is checked in a first pass that does no model work: a non-tensor, a
non-float tensor, a sample shape that changes, NaN/Inf values, a batch without labels
where labels are needed, or an empty source each raise one :class:`CalibrationError`
(calibration) or :class:`InputError` (evaluation) naming the batch.

Whatever the source's own batch size, :meth:`Batches.chunks` re-cuts the stream into
chunks of a fixed number of samples (concatenating and slicing, which does no
arithmetic): the model sees exactly the same batches from a tensor and from a loader
of the same samples, so both give bit-identical results.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    Subset,
    default_collate,
)

from onespike.errors import CalibrationError, InputError, OnespikeError

Tensor = torch.Tensor

__all__ = ["Batches", "as_batches"]


class Batches:
    """A checked, re-iterable source of input batches (with labels where given).

    Build it with :func:`as_batches`. ``count`` is the number of samples (after
    ``limit``), ``sample_shape`` the per-sample shape, ``labelled`` whether every
    batch carried labels; ``low``/``high`` the smallest and largest input value.
    """

    def __init__(
        self,
        source: Iterable,
        *,
        what: str,
        error: type[OnespikeError],
        limit: int | None,
        labels: Tensor | None = None,
        device: torch.device | None = None,
    ):
        self._source = source
        self.what = what
        self._error = error
        self.limit = limit
        self._labels = labels
        self.device = device
        self.count = 0
        self.sample_shape: tuple[int, ...] = ()
        self.labelled = True
        self.low = float("inf")
        self.high = float("-inf")
        self._check()

    # --- reading -----------------------------------------------------------------------
    def _raw(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """The source's batches as ``(x, y or None)``, cut at ``limit`` samples."""
        seen = 0
        if isinstance(self._source, Tensor):
            lim, y = self.limit, self._labels
            yield self._source[:lim], (None if y is None else y[:lim])
            return
        for b in self._source:
            x, y = _split(b)
            if isinstance(x, Tensor) and self.limit is not None:
                if seen >= self.limit:
                    return
                keep = self.limit - seen
                if x.dim() > 0 and x.shape[0] > keep:
                    x = x[:keep]
                    y = y[:keep] if isinstance(y, Tensor) and y.dim() > 0 else y
            if isinstance(x, Tensor) and x.dim() > 0:
                seen += x.shape[0]
            yield x, y

    def _check(self) -> None:
        err, what = self._error, self.what
        first: tuple[int, ...] | None = None
        for i, (x, y) in enumerate(self._raw()):
            if not isinstance(x, Tensor):
                raise err(f"{what} batch {i} is a {type(x).__name__}, expected a tensor or (x, y)")
            if not x.is_floating_point():
                raise err(f"{what} batch {i} has dtype {x.dtype}; expected floats")
            if x.dim() < 1:
                raise err(f"{what} batch {i} is a scalar; expected a batch [N, ...]")
            if first is None:
                first = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != first:
                raise err(
                    f"{what} batch {i} has sample shape {tuple(x.shape[1:])}, batch 0 has {first}"
                )
            if x.shape[0] and not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise err(
                    f"{what} batch {i} contains {bad} NaN or Inf value(s); clean the data first"
                )
            if y is None:
                self.labelled = False
            elif not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]:
                shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise err(f"{what} batch {i}: labels {shape} do not match {x.shape[0]} inputs")
            if x.numel():
                self.low = min(self.low, float(x.min()))
                self.high = max(self.high, float(x.max()))
            self.count += x.shape[0]
        if self.count == 0:
            raise err(
                f"the {what} set is empty: pass a few hundred representative inputs "
                "(a tensor [N, ...], a Dataset, a list of batches or a DataLoader)"
            )
        self.sample_shape = first or ()

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """The batches as the source gives them, ``(x, y or None)``, on ``device``."""
        for x, y in self._raw():
            if x.shape[0]:
                yield self._to(x), (None if y is None else self._to(y))

    def _to(self, t: Tensor) -> Tensor:
        t = t.detach()
        return t if self.device is None else t.to(self.device)

    def chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """The samples in order, re-cut into batches of exactly ``size`` (the last: fewer)."""
        if isinstance(self._source, Tensor):  # cut on the host, move chunk by chunk
            x, y = next(self._raw())
            for i in range(0, x.shape[0], size):
                yield self._to(x[i : i + size]), (None if y is None else self._to(y[i : i + size]))
            return
        xs: list[Tensor] = []
        ys: list[Tensor | None] = []
        held = 0
        for x, y in self:
            xs.append(x)
            ys.append(y)
            held += x.shape[0]
            while held >= size:
                xc, yc = _cat(xs, ys)
                yield xc[:size], (None if yc is None else yc[:size])
                xs, ys = [xc[size:]], [None if yc is None else yc[size:]]
                held -= size
        if held:
            yield _cat(xs, ys)

    def head(self, n: int | None) -> Tensor:
        """The first ``n`` samples (all with ``None``) as one tensor."""
        if isinstance(self._source, Tensor):
            return self._to(next(self._raw())[0][:n])
        parts: list[Tensor] = []
        got = 0
        for x, _ in self:
            if n is not None and got + x.shape[0] >= n:
                parts.append(x[: n - got])
                break
            parts.append(x)
            got += x.shape[0]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def window(self, lo: int, hi: int) -> Batches:
        """Samples ``lo`` to ``hi`` (``0 <= lo < hi <= count``) as a new checked
        :class:`Batches` with the same device and error type (one rank's shard,
        :mod:`onespike.distributed`). A tensor is sliced; a ``Dataset`` read through a
        plain ``DataLoader`` (as :func:`as_batches` makes one) reads only those samples
        (a ``Subset``); any other stream is read in full and the other samples skipped.
        """
        if not 0 <= lo < hi <= self.count:
            raise ValueError(f"window [{lo}, {hi}) outside the {self.count} samples")
        src = self._source
        if isinstance(src, Tensor):
            x, y = next(self._raw())
            source: Iterable = x[lo:hi]
            labels = None if y is None else y[lo:hi]
            err, dev = self._error, self.device
            return Batches(source, what=self.what, error=err, limit=None, labels=labels, device=dev)
        if _plain_loader(src):
            ds = Subset(src.dataset, range(lo, hi))  # type: ignore[union-attr]
            source = DataLoader(ds, batch_size=src.batch_size, shuffle=False)  # type: ignore[union-attr]
        else:
            source = _Window(self, lo, hi)
        return Batches(source, what=self.what, error=self._error, limit=None, device=self.device)

    @property
    def in_memory(self) -> bool:
        """True when the source is one tensor (already in memory)."""
        return isinstance(self._source, Tensor)

    def first_batch(self) -> Tensor:
        return next(iter(self))[0]


def _plain_loader(src: object) -> bool:
    """A DataLoader reading a map-style Dataset in order (no sampler, no collate tricks)."""
    return (
        isinstance(src, DataLoader)
        and not isinstance(src.dataset, IterableDataset)
        and isinstance(src.sampler, SequentialSampler)
        and src.batch_size is not None
        and not src.drop_last
        and src.collate_fn is default_collate
    )


class _Window:
    """The samples ``lo`` to ``hi`` of a :class:`Batches`, re-iterable, in the source's
    own batches (cut at the window's ends)."""

    def __init__(self, data: Batches, lo: int, hi: int):
        self.data, self.lo, self.hi = data, lo, hi

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        seen = 0
        for x, y in self.data._raw():
            n = x.shape[0]
            a, b = max(self.lo - seen, 0), min(self.hi - seen, n)
            seen += n
            if a < b:
                yield x[a:b], (None if y is None else y[a:b])
            if seen >= self.hi:
                return


def _split(b: object) -> tuple[object, object]:
    if isinstance(b, (tuple, list)) and b:
        return b[0], (b[1] if len(b) > 1 else None)
    return b, None


def _cat(xs: list[Tensor], ys: list[Tensor | None]) -> tuple[Tensor, Tensor | None]:
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    if any(y is None for y in ys):
        return x, None
    y = ys[0] if len(ys) == 1 else torch.cat(ys)  # type: ignore[arg-type]
    return x, y


def as_batches(
    data: object,
    labels: Tensor | None = None,
    *,
    what: str = "calibration",
    limit: int | None = None,
    chunk: int = 256,
    device: torch.device | None = None,
) -> Batches:
    """Wrap ``data`` (see the module docstring) as a checked :class:`Batches`.

    ``what`` names the data in errors (``"calibration"`` raises
    :class:`~onespike.errors.CalibrationError`, anything else
    :class:`~onespike.errors.InputError`); ``limit`` keeps the first samples only;
    ``chunk`` is the batch size used to read a ``Dataset``; ``device`` is where the
    batches are moved when read (the model's).
    """
    err: type[OnespikeError] = CalibrationError if what == "calibration" else InputError
    if isinstance(data, Batches):
        return data
    if isinstance(data, (str, bytes, os.PathLike)):
        raise err(
            f"{what} must be a tensor, a Dataset or an iterable of tensors or (x, y) "
            f"batches, not the path {data!r}: load the data first (e.g. onespike.data.load_mnist)"
        )
    if labels is not None and not isinstance(data, Tensor):
        raise err(f"labels go with a tensor of inputs; a {type(data).__name__} carries its own")
    if isinstance(data, Tensor):
        if labels is not None and (
            not isinstance(labels, Tensor) or labels.shape[:1] != data.shape[:1]
        ):
            raise err(f"{what} inputs {tuple(data.shape)} and labels do not match")
        source: Iterable = data
    elif isinstance(data, (Dataset, IterableDataset)) and not isinstance(data, DataLoader):
        source = DataLoader(data, batch_size=chunk, shuffle=False)  # type: ignore[arg-type]
    elif isinstance(data, Iterable):
        source = data
        if iter(data) is data:  # a one-shot iterator: read it once, into memory
            source = list(data)
    else:
        raise err(
            f"{what} must be a tensor, a Dataset or an iterable of tensors or (x, y) "
            f"batches, got {type(data).__name__}"
        )
    return Batches(source, what=what, error=err, limit=limit, labels=labels, device=device)
