"""A model from what a user typed: a shipped model's name or ``package.module:function``."""

from __future__ import annotations

import importlib

from torch import nn

from onespike.errors import OptionError
from onespike.models.registry import load_pretrained, pretrained_info
from onespike.models.weights import available_pretrained

__all__ = ["load_user_model", "resolve_model"]


def load_user_model(spec: str) -> nn.Module:
    """Call ``package.module:function`` and return the trained ``nn.Module`` (in eval mode)."""
    if ":" not in spec:
        raise OptionError(f"a model must look like package.module:function, got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise OptionError(f"cannot import module {mod_name!r} for the model: {e}") from None
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise OptionError(f"module {mod_name!r} has no callable {fn_name!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise OptionError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def resolve_model(spec: str, dataset: str | None) -> tuple[nn.Module, str]:
    """``(model, data set)`` for a shipped model's name or ``package.module:function``.

    A shipped model takes its data set from its sidecar unless ``dataset`` is given;
    a user's model needs ``dataset``.
    """
    if ":" not in spec and spec in available_pretrained():
        return load_pretrained(spec), dataset or pretrained_info(spec).get("dataset", "mnist")
    if ":" not in spec:
        raise OptionError(
            f"model {spec!r} is not a shipped model ({', '.join(available_pretrained())}) "
            "and does not look like package.module:function"
        )
    if dataset is None:
        raise OptionError(f"a data set is needed for {spec!r} (not a shipped model): --dataset")
    return load_user_model(spec), dataset
