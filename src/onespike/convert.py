"""``convert``: the one public entry point from a trained ANN to a spiking network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onespike.calibrate import OBJECTIVES, SearchConfig, calibrate
from onespike.codes import phase as pc
from onespike.errors import CalibrationError, OptionError
from onespike.network import INPUT_CODINGS, SpikingNetwork
from onespike.refine import RefineConfig, as_config
from onespike.refine import refine as refine_network
from onespike.stream import as_batches
from onespike.trace import trace


def _check_base(base: object) -> str | float | tuple[float, ...]:
    if isinstance(base, str):
        if base not in ("auto", "global"):
            raise OptionError(
                f"base must be 'auto', 'global', a number in (1, 2] or a list, got {base!r}"
            )
        return base
    if isinstance(base, Sequence):
        vals = tuple(float(b) for b in base)
        for b in vals:
            pc.check_params(b, 1)
        return vals
    pc.check_params(base, 1)
    return float(base)


def _check_scale(scale: object) -> str | float:
    if scale in ("auto", "max"):
        return scale  # type: ignore[return-value]
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale <= 100:
        return float(scale)
    raise OptionError(f"scale must be 'auto', 'max' or a percentile in (0, 100], got {scale!r}")


def convert(
    model: nn.Module,
    calibration: object,
    *,
    phases: int,
    base: str | float | Sequence[float] = "auto",
    scale: str | float = "auto",
    input_coding: str = "analog",
    threshold_shift: bool = True,
    objective: str = "next",
    per_channel: bool | str = "auto",
    bias_correction: bool = False,
    max_calibration: int | None = None,
    search_samples: int | None = 256,
    refine: bool | RefineConfig | dict = False,
    progress: bool = True,
) -> SpikingNetwork:
    """Convert a trained ReLU network into a single-spike phase-coded SNN.

    Args:
        model: the trained ANN (left untouched; a folded copy is converted).
        calibration: a few hundred inputs or more: a tensor ``[N, ...]``, a
            ``Dataset`` of ``x`` or ``(x, y)`` samples, or an iterable of ``x`` or
            ``(x, y)`` batches (a ``DataLoader``, a list). A Dataset or a DataLoader
            is streamed: read once to check every batch, then chunk by chunk, never
            all in memory (:mod:`onespike.stream`); the plan is the same as from a
            tensor of the same samples.
        phases: ``T``, the window length in steps (>= 1).
        base: ``"auto"`` (searched per layer), ``"global"`` (one searched base
            for all layers), a number in (1, 2] for all layers, or one per layer.
        scale: ``"auto"`` (searched among high percentiles), ``"max"``, or a
            percentile in (0, 100] of each layer's positive activations.
        input_coding: ``"analog"`` (pixels as a current; the first layer does
            MACs), ``"phase"`` (multi-spike base-2 code) or ``"single"``.
        threshold_shift: round to the nearest level (True) or floor (False).
        objective: ``"next"`` (error at the next layers' pre-activations),
            ``"activation"`` (error of the layer's own activation, the paper's) or
            ``"output"`` (error of the logits, later layers not yet converted; runs
            the rest of the network for every candidate, so it is slower).
        per_channel: ``"auto"`` (one scale per channel for convolution outputs, one
            per layer for Linear and graph layers), ``True`` (per channel everywhere)
            or ``False`` (one scale per layer everywhere).
        bias_correction: correct the next layer's bias for the code's mean error.
        max_calibration: use at most this many calibration samples.
        search_samples: score the search's candidates on the first this many
            calibration samples (None: all); scales come from all of them.
            Ignored for models whose samples interact (graph models).
        refine: after the search, fit the weights and scales to the ANN's logits on
            the calibration inputs (:func:`onespike.refine`): ``True`` for the
            defaults, a :class:`~onespike.refine.RefineConfig`, or a dict of its
            fields; ``False`` (default) keeps the searched network as it is.
        progress: show progress bars.

    Returns:
        A :class:`SpikingNetwork` (an ``nn.Module``): ``snn(x)`` is the
        event-exact fast path, ``snn.simulate(x, mode="step")`` the step
        simulator, ``snn.plan`` what the search chose.
    """
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise OptionError(f"phases must be an integer >= 1, got {phases!r}")
    base_v = _check_base(base)
    scale_v = _check_scale(scale)
    if input_coding not in INPUT_CODINGS:
        raise OptionError(f"input_coding must be one of {INPUT_CODINGS}, got {input_coding!r}")
    if objective not in OBJECTIVES:
        raise OptionError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    bad = isinstance(search_samples, bool) or not isinstance(search_samples, int | None)
    if bad or (search_samples is not None and search_samples < 1):
        raise OptionError(f"search_samples must be an integer >= 1 or None, got {search_samples!r}")
    if per_channel not in (True, False, "auto"):
        raise OptionError(f"per_channel must be True, False or 'auto', got {per_channel!r}")
    refine_cfg = as_config(refine)
    if base_v == "global" and bias_correction:
        raise OptionError("base='global' cannot be combined with bias_correction=True")
    traced = trace(model)  # fails here, before any data, on unsupported layers
    if isinstance(base_v, tuple) and len(base_v) != len(traced.relus):
        raise OptionError(
            f"base has {len(base_v)} values but the model has {len(traced.relus)} spiking layers"
        )
    data = as_batches(calibration, limit=max_calibration, device=_device_of(model))
    if input_coding != "analog" and (data.low < 0 or data.high > 1):
        raise CalibrationError(
            f"input coding {input_coding!r} needs inputs in [0, 1]; calibration data spans "
            f"[{data.low:.3g}, {data.high:.3g}] (use input_coding='analog')"
        )
    first = data.first_batch()
    msg = None
    for probe in (first[:1], first):  # the whole batch for models that mix samples (GCN)
        try:
            with torch.no_grad():
                traced.module.forward(probe)  # .forward: fx prints no traceback
            msg = None
            break
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            msg = msg or str(e).splitlines()[0]
    if msg is not None:
        raise CalibrationError(
            f"calibration samples of shape {data.sample_shape} do not fit the model: {msg}"
        ) from None
    cfg = SearchConfig(
        phases=phases,
        base=base_v,
        scale=scale_v,
        shift=threshold_shift,
        objective=objective,
        per_channel=per_channel,
        bias_correction=bias_correction,
        input_coding=input_coding,
        search_samples=search_samples,
    )
    plan = calibrate(traced, data, cfg, progress=progress)
    snn = SpikingNetwork(traced.module, plan, data.sample_shape)
    if refine_cfg is not None:  # refinement takes the calibration set in memory
        snn = refine_network(snn, model, data.head(None), refine_cfg, progress=progress)
    return snn


def _device_of(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None: it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None
