"""Weight files: where the shipped ones live, which exist, and loading a ``state_dict``.

A leaf module (it imports no other part of :mod:`onespike.models`), so that the
registry and every architecture module can use it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from onespike.errors import OnespikeError

__all__ = [
    "PretrainedWeightsNotFoundError",
    "available_pretrained",
    "load_state_dict_file",
    "weights_dir",
]


class PretrainedWeightsNotFoundError(OnespikeError, FileNotFoundError):
    """Raised when a model's weight file is not shipped; the message says how to train it."""


def weights_dir() -> Path:
    """The directory holding the shipped ``{name}.pt`` / ``{name}.json`` files."""
    return Path(__file__).resolve().parent.parent / "assets" / "weights"


def available_pretrained(root: str | Path | None = None) -> list[str]:
    """Names for which a weight file exists in ``root`` (default: :func:`weights_dir`)."""
    d = Path(root) if root is not None else weights_dir()
    return sorted(p.stem for p in d.glob("*.pt")) if d.is_dir() else []


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a saved ``state_dict`` and cast its floating tensors to fp32."""
    sd = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
