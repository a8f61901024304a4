"""``convert``: the one public entry point from a trained ANN to a spiking network."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from onespike import distributed
from onespike.calibrate import SearchConfig, calibrate, check_input_window, check_windows
from onespike.codes import phase as pc
from onespike.errors import (
    CalibrationError,
    ModelError,
    OptionError,
    check_phase_bound,
)
from onespike.network import SpikingNetwork
from onespike.plan import check_input_coding
from onespike.refine import RefineConfig, as_config
from onespike.refine import refine as refine_network
from onespike.stream import as_batches
from onespike.trace import trace


class _FromSearch:
    """The default of convert's search keywords: take the value from ``search``."""

    def __repr__(self) -> str:
        return "<from search>"


FROM_SEARCH: Any = _FromSearch()


def convert(
    model: nn.Module,
    calibration: object,
    *,
    phases: int,
    search: SearchConfig | str = "default",
    base: str | float | Sequence[float] = FROM_SEARCH,
    scale: str | float = FROM_SEARCH,
    input_coding: str = "analog",
    threshold_shift: bool = FROM_SEARCH,
    objective: str = FROM_SEARCH,
    per_channel: bool | str = FROM_SEARCH,
    bias_correction: bool = FROM_SEARCH,
    max_calibration: int | None = None,
    search_samples: int | None = FROM_SEARCH,
    spike_tolerance: float = FROM_SEARCH,
    refine: bool | RefineConfig | dict = False,
    progress: bool = True,
    windows: str | Sequence[int] | None = None,
    input_window: int | None = None,
    signed: str = "operands",
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
        search: how the search chooses each layer's code: a
            :class:`~onespike.calibrate.SearchConfig`, or the name of a preset
            (``"default"``, ``"paper"``: :data:`~onespike.calibrate.SEARCH_PRESETS`).
        base, scale, threshold_shift, objective, per_channel, bias_correction,
            search_samples, spike_tolerance: change one field of ``search`` (see
            :class:`~onespike.calibrate.SearchConfig`). The defaults: ``base="auto"``
            (searched per layer; ``"global"``, a number in (1, 2] or one per layer),
            ``scale="auto"`` (searched among high percentiles; ``"max"`` or a
            percentile), ``threshold_shift=True`` (round to the nearest level; False
            floors), ``objective="next"`` (error at the next layers' pre-activations;
            ``"activation"``, the paper's, or ``"output"``, the logits, slower),
            ``per_channel="auto"`` (per channel for convolutions, per layer for Linear
            and graph layers), ``bias_correction=False``, ``search_samples=256``
            (candidates scored on the first 256 calibration samples; None: all),
            ``spike_tolerance=0`` (the least error; ``t > 0``: the fewest spikes among
            candidates within ``(1 + t)`` of the error the layer adds).
        input_coding: ``"analog"`` (pixels as a current; the first layer does
            MACs), ``"binary"`` (multi-spike base-2 code) or ``"single"`` (the hidden
            layers' single-spike code).
        max_calibration: use at most this many calibration samples.
        refine: after the search, fit the weights and scales to the ANN's logits on
            the calibration inputs (:func:`onespike.refine`): ``True`` for the
            defaults, a :class:`~onespike.refine.RefineConfig`, or a dict of its
            fields; ``False`` (default) keeps the searched network as it is.
        progress: show progress bars (on rank 0 only under a process group).
        windows: each spiking layer's window (its number of phases). None (default):
            every layer's is ``phases``. A list: one integer >= 1 per spiking layer, in
            the order of ``snn.plan.layers``. ``"auto"``: chosen per layer by measured
            sensitivity (how much the error of the logits gains from more phases) so that
            ``plan.latency_steps`` is at most the uniform network's
            (:func:`onespike.calibrate.calibrate`), the allocations searched compared
            by top-1 agreement with the ANN on held-out calibration samples (those
            after the first ``search_samples``); each layer is searched for its own
            window and the windows before it.
        input_window: the analog input's window in steps. None (default): 1 with
            ``windows="auto"`` (a constant current delivers ``W x`` in one step; the
            steps saved go to the spiking layers, the latency counts the input's
            step), ``phases`` otherwise. The binary and single-spike input codes keep
            ``phases``.
        signed: where signed single-spike neurons (one spike of either sign) carry values
            that can be negative (transformers): ``"operands"`` (default) at the factors
            of products of two activations (attention's q, k, v); ``"inputs"`` also at
            the input of every Conv/Linear that reads neither spikes nor the network
            input (a transformer's residual stream, attention's output), so that those
            layers do accumulates instead of MACs (:data:`onespike.trace.SIGNED_SITES`).
            The plan records ``"inputs"`` in ``plan.search["signed"]``.

    Under a ``torch.distributed`` process group (``torchrun``): give every rank the same
    model, options and whole calibration set; the ranks check that they agree
    (:func:`onespike.distributed.check_same`, one error naming what differs), share
    out the statistics over the whole set and each end with the plan one process
    makes, bit for bit (:func:`onespike.calibrate.calibrate`). ``refine`` then runs
    data-parallel too: the ranks share out every mini-batch and sum the gradients, and
    each ends with the same refined network, one process's up to the rounding of those
    sums (:func:`onespike.refine`).

    Returns:
        A :class:`SpikingNetwork` (an ``nn.Module``): ``snn(x)`` is the
        event-exact fast path, ``snn.simulate(x, mode="step")`` the step
        simulator, ``snn.plan`` what the search chose.
    """
    pc.check_phases(phases)
    check_phase_bound(phases)  # at most MAX_PHASES, with the reason
    _check_model(model)  # weights with values, all finite: before any work
    loose = {
        "base": base,
        "scale": scale,
        "threshold_shift": threshold_shift,
        "objective": objective,
        "per_channel": per_channel,
        "bias_correction": bias_correction,
        "search_samples": search_samples,
        "spike_tolerance": spike_tolerance,
    }
    cfg = SearchConfig.of(search).replace(
        **{k: v for k, v in loose.items() if v is not FROM_SEARCH}
    )
    input_coding = check_input_coding(input_coding)
    refine_cfg = as_config(refine)
    progress = progress and distributed.is_main()
    windows = check_windows(windows)  # the format before the model is traced
    check_input_window(input_window, input_coding, phases, windows)
    traced = trace(model, signed=signed)  # fails here, before any data, on unsupported ops
    windows = check_windows(windows, len(traced.relus))  # one per spiking layer
    if isinstance(cfg.base, tuple) and len(cfg.base) != len(traced.relus):
        raise OptionError(
            f"base has {len(cfg.base)} values but the model has {len(traced.relus)} spiking layers"
        )
    data = as_batches(calibration, limit=max_calibration, device=_device_of(model))
    _check_calibration(
        model,
        traced,
        data,
        input_coding,
        options=(phases, cfg, input_coding, max_calibration, windows, input_window, signed),
    )
    plan = calibrate(
        traced,
        data,
        cfg,
        phases=phases,
        input_coding=input_coding,
        progress=progress,
        windows=windows,
        input_window=input_window,
    )
    if signed != "operands":
        plan = dataclasses.replace(plan, search={**plan.search, "signed": signed})
    snn = SpikingNetwork(traced.module, plan, data.sample_shape)
    if refine_cfg is not None:  # refinement takes the calibration set in memory
        snn = refine_network(snn, model, data.head(None), refine_cfg, progress=progress)
    return snn


def _check_calibration(model: nn.Module, traced, data, input_coding: str, options: tuple) -> None:
    """The calibration data, before the search: in [0, 1] for a spiking input code, of the
    model's float dtype, the same on every rank (with the model and ``options``), and of
    a shape the model takes (one sample, or the whole first batch for models that mix
    samples, such as GCNs)."""
    if input_coding != "analog" and (data.low < 0 or data.high > 1):
        raise CalibrationError(
            f"input coding {input_coding!r} needs inputs in [0, 1]; calibration data spans "
            f"[{data.low:.3g}, {data.high:.3g}] (use input_coding='analog')"
        )
    first = data.first_batch()
    _check_calibration_dtype(model, first)
    distributed.check_same(
        {
            "model": model.state_dict(),
            "options": options,
            "calibration data": (data.count, data.sample_shape, first),
        }
    )
    msg = None
    for probe in (first[:1], first):
        try:
            with torch.no_grad():
                traced.module.forward(probe)  # .forward: fx prints no traceback
            return
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            msg = msg or str(e).splitlines()[0]
    raise CalibrationError(
        f"calibration samples of shape {data.sample_shape} do not fit the model: {msg}"
    ) from None


def _check_model(model: object) -> None:
    """Raise :class:`ModelError` for a model whose weights have no values (the meta device)
    or hold NaN/Inf, naming the first such tensor."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"convert() takes a torch.nn.Module, got {type(model).__name__}")
    for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers)):
        for key, t in named():
            if t.is_meta:
                raise ModelError(
                    f"the model's {kind} '{key}' is on the meta device (a shape without "
                    "values): load the trained weights first (e.g. model.to_empty(device="
                    "'cpu') then load_state_dict)"
                )
            vals = t.coalesce().values() if t.is_sparse else t
            if t.is_floating_point() and not bool(torch.isfinite(vals).all()):
                bad = int((~torch.isfinite(vals)).sum())
                raise ModelError(
                    f"the model's {kind} '{key}' holds {bad} NaN or Inf value(s): the model "
                    "cannot be calibrated; check its training or the loaded weights"
                )


def _check_calibration_dtype(model: nn.Module, first: torch.Tensor) -> None:
    """Calibration data of another float dtype than the model's weights: one
    :class:`CalibrationError` naming both (not a shape error from the first layer)."""
    p = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if p is not None and first.dtype != p.dtype:
        raise CalibrationError(
            f"calibration data has dtype {first.dtype}, the model's weights {p.dtype}: "
            f"cast the data (x.to({p.dtype})) or the model (model.to({first.dtype}))"
        )


def _device_of(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None: it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None
