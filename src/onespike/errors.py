"""onespike's error types, and the checks of user input that raise them.

Every mistake a user can make (an option's value, an input batch, the calibration
data, an unsupported model, a missing data or weight file) raises a subclass of
:class:`OnespikeError` whose message is one sentence saying what is wrong and what
to do. The command line prints exactly these as one ``error:`` line; any other
exception is a bug and keeps its traceback. The option, input, calibration and
model errors are also ``ValueError`` subclasses (what onespike raised before they
had their own types).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

import torch

Tensor = torch.Tensor


class OnespikeError(Exception):
    """A user's mistake, explained in one sentence (the base of onespike's error types)."""


class OptionError(OnespikeError, ValueError):
    """An argument or command-line option has a value onespike does not accept."""


class InputError(OnespikeError, ValueError):
    """An input batch cannot be run (not a float tensor, wrong shape, NaN/Inf, range)."""


class CalibrationError(OnespikeError, ValueError):
    """The calibration data cannot be used (empty, not tensors, NaN/Inf, wrong shape)."""


class UnsupportedModelError(OnespikeError, ValueError):
    """The model contains operators that cannot be converted (all listed in the message)."""


class ModelError(OnespikeError, ValueError):
    """The model cannot be converted as it is (NaN/Inf weights, weights on the meta device)."""


class OutputError(OnespikeError, OSError):
    """An output file cannot be written (a folder, a missing folder, no permission, a full
    disk); the file that was there before is left as it was."""

    __str__ = Exception.__str__  # the message as written (OSError would add its fields)


class UnknownNameError(OnespikeError, KeyError):
    """A model, code or setting was asked for by a name onespike does not know."""

    __str__ = Exception.__str__  # the message as written (KeyError would quote it)


#: The longest window ``T`` (steps) a network may have. Every spiking layer's window is
#: ``T`` steps and the latency grows with it; the smallest level ``B^-(T-1)`` of a base-2
#: code falls below float32's resolution (``2^-24``) after 25 steps and underflows after
#: 127, and the step simulator's time grows with ``T``: a larger ``T`` adds nothing but cost.
MAX_PHASES = 64


def check_phase_bound(phases: object, what: str = "phases") -> None:
    """Raise :class:`OptionError` unless ``phases`` is an integer in ``[1, MAX_PHASES]``."""
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise OptionError(f"{what} must be an integer >= 1, got {phases!r}")
    if phases > MAX_PHASES:
        raise OptionError(
            f"{what} = {phases} is more than {MAX_PHASES}: the latency grows with the window "
            f"and the smallest code level B^-(T-1) vanishes in float32 long before "
            f"(2^-24 after 25 steps at base 2); choose {MAX_PHASES} or fewer"
        )


def check_device(device: object, what: str = "device") -> object:
    """``device`` (None, a string or a ``torch.device``) if tensors can be made there; else
    :class:`OptionError` saying why (an unknown name, no CUDA, no such GPU)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(
            f"{what} {device!r} is not a device name: use 'cpu', 'cuda', 'cuda:0', ..."
        ) from None
    if dev.type == "meta":
        raise OptionError(f"{what} 'meta' holds no data: choose 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"{what} {str(dev)!r}: CUDA is not available here (this torch has no CUDA "
                "or no GPU is visible): use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(
                f"{what} {str(dev)!r}: there are {torch.cuda.device_count()} GPU(s), "
                f"numbered from 0"
            )
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise OptionError(f"{what} {str(dev)!r} cannot be used here ({reason})") from None
    return device


def report_error(e: OnespikeError) -> int:
    """Print a user's mistake as ``error: <message>`` on stderr; the exit status, 2."""
    print(f"error: {str(e).strip()}", file=sys.stderr)
    return 2


def run_command(main: Callable[[], int]) -> int:
    """Run a command's ``main`` and return its exit status.

    A user's mistake (an :class:`OnespikeError`) is reported by :func:`report_error`;
    any other exception propagates with its traceback (it is a bug).
    """
    try:
        return main()
    except OnespikeError as e:
        return report_error(e)


def check_batch(x: object, sample_shape: tuple[int, ...] | None, *, what: str) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite float tensor ``[N, *sample_shape]``."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise InputError(
            f"{what} has shape {tuple(x.shape)}; expected a batch [N, "
            f"{', '.join(map(str, sample_shape))}] like the calibration data"
        )
    if x.shape[0] == 0:
        raise InputError(f"{what} is an empty batch")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{what} contains {bad} NaN or Inf value(s); clean the data first")


def collect_calibration(data: object, limit: int | None = None) -> Tensor:
    """Concatenate calibration data into one tensor ``[N, ...]``.

    ``data`` is a tensor, or an iterable of tensors or of ``(x, y)`` batches (a
    DataLoader works). At most ``limit`` samples are kept.
    """
    if isinstance(data, (str, bytes, os.PathLike)):
        raise CalibrationError(
            f"calibration must be a tensor or an iterable of tensors or (x, y) batches, "
            f"not the path {data!r}: load the data first (e.g. onespike.data.load_mnist)"
        )
    if isinstance(data, Tensor):
        batches: Iterable = [data]
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise CalibrationError(
            f"calibration must be a tensor or an iterable of tensors or (x, y) batches, "
            f"got {type(data).__name__}"
        )
    parts: list[Tensor] = []
    total = 0
    for i, b in enumerate(batches):
        if isinstance(b, (tuple, list)):
            if not b:
                raise CalibrationError(f"calibration batch {i} is an empty tuple")
            b = b[0]
        if not isinstance(b, Tensor):
            raise CalibrationError(
                f"calibration batch {i} is a {type(b).__name__}, expected a tensor or (x, y)"
            )
        if not b.is_floating_point():
            raise CalibrationError(f"calibration batch {i} has dtype {b.dtype}; expected floats")
        if parts and b.shape[1:] != parts[0].shape[1:]:
            raise CalibrationError(
                f"calibration batch {i} has sample shape {tuple(b.shape[1:])}, "
                f"batch 0 has {tuple(parts[0].shape[1:])}"
            )
        if not bool(torch.isfinite(b).all()):
            bad = int((~torch.isfinite(b)).sum())
            raise CalibrationError(
                f"calibration batch {i} contains {bad} NaN or Inf value(s); clean the data first"
            )
        parts.append(b.detach())
        total += b.shape[0]
        if limit is not None and total >= limit:
            break
    if total == 0:
        raise CalibrationError(
            "the calibration set is empty: pass a few hundred representative inputs "
            "(a tensor [N, ...], a list of batches or a DataLoader)"
        )
    x = torch.cat(parts)
    return x[:limit] if limit is not None else x
