"""Save and load a converted network: one safe, versioned file.

``save(snn, path)`` writes one `safetensors <https://huggingface.co/docs/safetensors>`_
file; ``load(path)`` rebuilds a :class:`~onespike.network.SpikingNetwork` from it
alone (no ANN, no calibration data). Loading never unpickles anything: the file
holds raw tensors and JSON text, and the graph is rebuilt from an explicit list of
the operators the converter supports.

Layout (format version 2). The tensors of the file are named:

- ``ann/<key>``: every parameter and buffer of the folded ANN graph
  (``snn.ann_graph``: BatchNorm folded, dropout removed), under its state-dict key;
- ``snn/<key>``: every parameter and buffer of the spiking graph
  (``snn.graph_module``: the same weights, unless the network was refined, plus each
  spiking layer's ``scale``), stored only where they differ from the ``ann/`` tensor
  of the same key (the ``tensors`` header says which file tensor each key uses);
- a sparse (COO) tensor is stored as ``<name>/indices`` and ``<name>/values``.

The file's string metadata (the safetensors header, readable without torch):

- ``format``: ``"onespike.SpikingNetwork"``; ``format_version``: ``"2"``;
  ``onespike_version``, ``torch_version``: who wrote it;
- ``input_shape``: JSON list, the per-sample input shape;
- ``plan``: JSON of the frozen :class:`~onespike.plan.Plan` (every
  :class:`~onespike.plan.LayerPlan` field: scale or per-channel scales, base, phases,
  threshold_shift, fire window, errors, kind (ReLU, signed or softmax neurons); the input
  coding, latency and the ``search`` record);
- ``graph``: JSON of the folded ANN's ``torch.fx`` graph, node by node (op, target,
  arguments with references to earlier nodes), and of every module it calls (type
  from an allow-list and constructor arguments);
- ``tensors``: JSON, for each state-dict key of both graphs: the file tensor(s)
  holding it, its layout and whether it is a parameter;
- ``sha256``: a checksum of the whole file: every other metadata entry (key and
  value: the plan, the graph, the tensors map, the versions, the input shape) and every
  stored tensor (name, dtype, shape, bytes), so a damaged or edited file is refused
  instead of loading wrong weights or a wrong plan (:func:`file_digest`). Format
  version 1 checked the tensors only; its files are refused ("save it again").

On load the plan is also checked against itself and the graph
(:func:`check_plan`): each layer's kind that of its place in the graph (a softmax's
scale 1), bases in (1, 2], windows in ``[1, MAX_PHASES]``, finite scales
(one per channel where per channel), the fire windows and the latency those of the
graph, the neuron counts and tensor shapes those of the modules. So even a file whose
checksum was recomputed after an edit cannot make the event path and the step
simulator disagree or fail later with a raw error.

JSON values that JSON cannot hold natively are tagged: ``{"$tuple": [...]}``,
``{"$node": name}``, ``{"$slice": [start, stop, step]}``, ``{"$dtype": "float32"}``,
``{"$dict": [[key, value], ...]}`` (a dict whose keys are not all plain strings),
``{"$float": "nan" | "inf" | "-inf"}``.

Loading rebuilds the ANN graph (modules from the allow-list, weights exactly as
stored), then the spiking network with ``SpikingNetwork(graph, plan, input_shape)``,
the code path of :func:`onespike.convert`; its outputs, spike phases and spike
counts are bit-identical to the saved network's on the event and step paths, and
:func:`onespike.cost` reports the same figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from onespike._io import atomic_write, check_output
from onespike.errors import MAX_PHASES, OnespikeError, check_device
from onespike.network import SpikingNetwork
from onespike.plan import LAYER_KINDS, LayerPlan, Plan
from onespike.trace import OPS, SPIKING

if TYPE_CHECKING:
    from onespike.graph import Runner

Tensor = torch.Tensor

FORMAT = "onespike.SpikingNetwork"
FORMAT_VERSION = 2  # 2: the checksum covers the header too (1: the tensors only)


class SerializationError(OnespikeError, ValueError):
    """A network cannot be saved, or a file cannot be loaded (base of the errors below)."""


class NetworkFileNotFoundError(SerializationError, FileNotFoundError):
    """The file to load does not exist."""


class NotANetworkFileError(SerializationError):
    """The file is not a network saved by onespike."""


class CorruptFileError(SerializationError):
    """The file is damaged or truncated."""


class UnsupportedFormatVersionError(SerializationError):
    """The file was written in a format version this onespike does not read (a newer one,
    or version 1, whose checksum did not cover the header)."""


class NotSerializableError(SerializationError):
    """The network holds an operator or module that the file format does not describe."""


# ---------------------------------------------------------------------------------------
# allow-lists: every operator of onespike.trace's table that survives tracing, by its
# stable name (the table's ``name``)

_FUNCTIONS: dict[str, object] = {
    op.name: op.target for op in OPS if op.kind == "function" and op.name is not None
}
_METHODS = frozenset(op.name for op in OPS if op.kind == "method" and op.name is not None)
# module type -> (constructor arguments read from the instance, has weight and bias)
_MODULES: dict[str, tuple[type[nn.Module], tuple[str, ...], bool]] = {
    op.name: (op.target, op.args, op.params)  # type: ignore[misc]
    for op in OPS
    if op.kind == "module" and op.name is not None
}


def _function_name(fn: object) -> str | None:
    for name, f in _FUNCTIONS.items():
        if f is fn:
            return name
    return None


# ---------------------------------------------------------------------------------------
# JSON with tags for what JSON cannot hold


def _enc(v: object, where: str) -> object:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else {"$float": repr(v)}
    if isinstance(v, fx.Node):
        return {"$node": v.name}
    if isinstance(v, tuple):
        return {"$tuple": [_enc(a, where) for a in v]}
    if isinstance(v, list):
        return [_enc(a, where) for a in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: _enc(a, where) for k, a in v.items()}
        return {"$dict": [[_enc(k, where), _enc(a, where)] for k, a in v.items()]}
    if isinstance(v, slice):
        return {"$slice": [_enc(v.start, where), _enc(v.stop, where), _enc(v.step, where)]}
    if isinstance(v, torch.dtype):
        return {"$dtype": str(v).removeprefix("torch.")}
    raise NotSerializableError(
        f"{where}: an argument of type {type(v).__name__} ({v!r}) cannot be saved"
    )


def _dec(v: object, nodes: dict[str, fx.Node] | None = None) -> object:
    if isinstance(v, list):
        return [_dec(a, nodes) for a in v]
    if not isinstance(v, dict):
        return v
    if len(v) != 1 or not next(iter(v)).startswith("$"):
        return {k: _dec(a, nodes) for k, a in v.items()}
    ((tag, a),) = v.items()
    if tag == "$tuple":
        return tuple(_dec(x, nodes) for x in a)
    if tag == "$dict":
        return {_dec(k, nodes): _dec(x, nodes) for k, x in a}
    if tag == "$slice":
        return slice(*(_dec(x, nodes) for x in a))
    if tag == "$float":
        return float(a)
    if tag == "$dtype":
        dt = getattr(torch, a, None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown dtype {a!r}")
        return dt
    if tag == "$node":
        if nodes is None or a not in nodes:
            raise ValueError(f"reference to unknown node {a!r}")
        return nodes[a]
    raise ValueError(f"unknown tag {tag!r}")


def _dumps(v: object, where: str = "the network") -> str:
    return json.dumps(_enc(v, where), allow_nan=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------
# describing a graph


def _module_entry(path: str, m: nn.Module) -> dict:
    name = type(m).__name__
    spec = _MODULES.get(name)
    if spec is None or type(m) is not spec[0]:
        raise NotSerializableError(
            f"module '{path}' ({type(m).__module__}.{type(m).__qualname__}) is not one "
            f"the file format can describe (supported: {', '.join(_MODULES)})"
        )
    _, attrs, weighted = spec
    args = {a: getattr(m, a) for a in attrs}
    if weighted:
        args["bias"] = m.bias is not None
    return {"type": name, "args": _enc(args, f"module '{path}'")}


def _graph_entry(gm: fx.GraphModule) -> dict:
    modules = dict(gm.named_modules())
    nodes, mods = [], {}
    for n in gm.graph.nodes:
        where = f"node '{n.name}'"
        if n.op in ("placeholder", "output", "get_attr"):
            target = n.target
        elif n.op == "call_module":
            target = n.target
            mods[target] = _module_entry(target, modules[target])
        elif n.op == "call_function":
            target = _function_name(n.target)
            if target is None:
                fn = getattr(n.target, "__name__", repr(n.target))
                raise NotSerializableError(
                    f"{where} calls function {fn}, which the file format does not describe"
                )
        elif n.op == "call_method":
            if n.target not in _METHODS:
                raise NotSerializableError(
                    f"{where} calls method .{n.target}(), which the file format does not describe"
                )
            target = n.target
        else:
            raise NotSerializableError(f"{where} has op {n.op!r}, which cannot be saved")
        nodes.append(
            {
                "name": n.name,
                "op": n.op,
                "target": target,
                "args": _enc(n.args, where),
                "kwargs": _enc(dict(n.kwargs), where),
            }
        )
    return {"class_name": type(gm).__name__, "nodes": nodes, "modules": mods}


def _check_state(gm: fx.GraphModule, graph: dict, state: dict[str, Tensor]) -> None:
    """Every tensor of the graph's state must belong to a described module or a get_attr."""
    owned = {n["target"] for n in graph["nodes"] if n["op"] == "get_attr"}
    for path, entry in graph["modules"].items():
        if _MODULES[entry["type"]][2]:
            owned.add(f"{path}.weight")
            if _dec(entry["args"])["bias"]:
                owned.add(f"{path}.bias")
    for key in state:
        if key not in owned:
            raise NotSerializableError(
                f"tensor '{key}' of the graph belongs to no operator the file describes"
            )
    for key in owned:
        if key not in state:
            raise NotSerializableError(f"tensor '{key}' used by the graph is not in its state")


def _graph_state(gm: fx.GraphModule) -> dict[str, Tensor]:
    """Parameters and buffers (persistent or not) of a graph module, by state-dict key."""
    state = dict(gm.named_parameters(remove_duplicate=False))
    state.update(dict(gm.named_buffers(remove_duplicate=False)))
    return {k: v.detach() for k, v in state.items()}


def _same_bits(a: Tensor, b: Tensor) -> bool:
    if a.layout != b.layout or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_sparse:
        return a.is_coalesced() == b.is_coalesced() and all(
            _same_bits(x, y) for x, y in ((a._indices(), b._indices()), (a._values(), b._values()))
        )
    if a.numel() == 0:
        return True
    x, y = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    if x.dtype.is_floating_point or x.dtype.is_complex:
        return x.view(torch.uint8).equal(y.view(torch.uint8))
    return x.equal(y)


def _store(
    prefix: str,
    state: dict[str, Tensor],
    params: set[str],
    tensors: dict[str, Tensor],
    reuse: dict[str, tuple[Tensor, dict]] | None = None,
) -> dict[str, dict]:
    """Add ``state`` to the file's tensors; returns the header entry of every key."""
    entries: dict[str, dict] = {}
    for key, t in state.items():
        if reuse is not None and key in reuse and _same_bits(t, reuse[key][0]):
            entries[key] = {**reuse[key][1], "param": key in params}
            continue
        name = f"{prefix}/{key}"
        entry: dict = {"param": key in params}
        if t.layout == torch.sparse_coo:
            entry.update(
                layout="sparse_coo",
                indices=f"{name}/indices",
                values=f"{name}/values",
                shape=list(t.shape),
                coalesced=bool(t.is_coalesced()),
            )
            tensors[f"{name}/indices"] = t._indices().contiguous().cpu()
            tensors[f"{name}/values"] = t._values().contiguous().cpu()
        elif t.layout == torch.strided:
            entry.update(layout="strided", data=name)
            tensors[name] = t.contiguous().cpu()  # the file is written from host memory
        else:
            raise NotSerializableError(
                f"tensor '{key}' has layout {t.layout}, which cannot be saved"
            )
        entries[key] = entry
    return entries


def save(snn: SpikingNetwork, path: str | os.PathLike) -> None:
    """Write ``snn`` to one file at ``path`` (see the module docstring for its layout).

    Raises :class:`NotSerializableError` (naming the operator and its node) when the
    network holds an operator outside the file format's allow-list.
    """
    from safetensors.torch import save_file

    from onespike._version import __version__

    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"save() takes a SpikingNetwork, got {type(snn).__name__}")
    graph = _graph_entry(snn.ann_graph)
    ann_state = _graph_state(snn.ann_graph)
    _check_state(snn.ann_graph, graph, ann_state)
    snn_state = _graph_state(snn.graph_module)
    missing = [k for k in ann_state if k not in snn_state]
    if missing:
        raise NotSerializableError(
            f"the spiking graph lacks the ANN graph's tensor '{missing[0]}': its structure "
            "differs from the ANN graph's"
        )
    tensors: dict[str, Tensor] = {}
    ann_params = {k for k, _ in snn.ann_graph.named_parameters(remove_duplicate=False)}
    snn_params = {k for k, _ in snn.graph_module.named_parameters(remove_duplicate=False)}
    ann_entries = _store("ann", ann_state, ann_params, tensors)
    reuse = {k: (ann_state[k], ann_entries[k]) for k in ann_state}
    snn_entries = _store("snn", snn_state, snn_params, tensors, reuse)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "onespike_version": __version__,
        "torch_version": torch.__version__,
        "input_shape": json.dumps(list(snn.input_shape)),
        "plan": _dumps(_plan_dict(snn.plan), "the plan"),
        "graph": json.dumps(graph, allow_nan=False, separators=(",", ":")),
        "tensors": json.dumps({"ann": ann_entries, "snn": snn_entries}, separators=(",", ":")),
    }
    meta["sha256"] = file_digest(meta, tensors)
    check_output(path, error=SerializationError)  # a folder, no folder: before writing
    # beside, fsync, rename: a failure (a full disk) leaves the old file as it was
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta),
                 error=SerializationError)  # fmt: skip


def file_digest(meta: dict[str, str], tensors: dict[str, Tensor]) -> str:
    """SHA-256 of the whole file: every metadata entry but ``sha256`` itself (key and value,
    each prefixed by its length) and every tensor (:func:`_digest`)."""
    h = hashlib.sha256(b"onespike.SpikingNetwork file digest\n")
    for key in sorted(k for k in meta if k != "sha256"):
        for part in (key.encode(), meta[key].encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    h.update(_digest(tensors).encode())
    return h.hexdigest()


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes (a damaged file fails it)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)};".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _plan_dict(plan: Plan) -> dict:
    def lp(x: LayerPlan | None) -> dict | None:
        return None if x is None else {f.name: getattr(x, f.name) for f in fields(LayerPlan)}

    out = {f.name: getattr(plan, f.name) for f in fields(Plan)}
    out["layers"] = [lp(x) for x in plan.layers]
    out["input"] = lp(plan.input)
    return out


def _plan_from(d: dict) -> Plan:
    def lp(x: dict | None) -> LayerPlan | None:
        return None if x is None else LayerPlan(**x)

    d = dict(d)
    d["layers"] = tuple(lp(x) for x in d["layers"])
    d["input"] = lp(d["input"])
    return Plan(**d)


def _check_number(v: object, what: str, lo: float, hi: float, *, integer: bool = False) -> None:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not (lo <= v <= hi):  # NaN fails the comparison
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{what} is {v!r}; it must be {kind} in [{lo:g}, {hi:g}]")


def _check_layer_plan(lp: object, what: str) -> None:
    if not isinstance(lp, LayerPlan) or not isinstance(lp.name, str):
        raise ValueError(f"{what} is not a layer plan")
    what = f"{what} '{lp.name}'"
    base = lp.base
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1.0 < base <= 2.0:
        raise ValueError(f"{what} has base {base!r}; a base must be in (1, 2]")
    _check_number(lp.phases, f"{what}'s window (phases)", 1, MAX_PHASES, integer=True)
    _check_number(lp.neurons, f"{what}'s neuron count", 0, math.inf, integer=True)
    _check_number(lp.fire_window, f"{what}'s fire window", 0, 1 << 30, integer=True)
    if lp.kind not in LAYER_KINDS:
        raise ValueError(f"{what} has kind {lp.kind!r}; a kind is one of {LAYER_KINDS}")
    if lp.kind == "softmax" and lp.scale != 1.0:
        raise ValueError(f"{what} is a softmax of scale {lp.scale!r}; its scale is 1")
    if not isinstance(lp.threshold_shift, bool):
        raise ValueError(
            f"{what} has threshold_shift {lp.threshold_shift!r}; it must be true or false"
        )
    scales = lp.scale if isinstance(lp.scale, tuple) else (lp.scale,)
    if not scales:
        raise ValueError(f"{what} has no scale")
    for v in scales:
        _check_number(v, f"{what}'s scale", 0.0, math.inf)
        if not math.isfinite(v):
            raise ValueError(f"{what} has scale {v!r}; a scale must be finite")
    for name in ("act_error", "out_error"):
        if isinstance(getattr(lp, name), bool) or not isinstance(getattr(lp, name), (int, float)):
            raise ValueError(f"{what}'s {name} is not a number")


def check_plan(net: SpikingNetwork) -> None:
    """Raise ``ValueError`` naming the first field of ``net.plan`` that does not agree with
    itself or with the network's graph (see the module docstring).

    A plan that passes makes the event path and the step simulator run the same code:
    each base in (1, 2] and window in ``[1, MAX_PHASES]``; finite scales, one per channel
    where per channel, equal to the spiking layers' ``scale`` tensors; fire windows and
    latency those :mod:`onespike.calibrate` derives from the graph; neuron counts those
    of the layers' outputs (checked by running one zero sample where samples do not mix).
    Used by :func:`load` and :func:`onespike.import_nir`.
    """
    from onespike import calibrate
    from onespike.graph import Runner

    _check_plan_fields(net.plan)
    runner = Runner(net.ann_graph)
    _check_plan_graph(net.plan, runner)
    _check_scale_tensors(net)
    if calibrate.batch_independent(runner):  # where samples mix (a GCN): no one-sample probe
        _check_neuron_counts(net)


def _check_plan_fields(plan: Plan) -> None:
    """The plan's own fields: windows, input coding, search record, each layer plan."""
    from onespike.plan import INPUT_CODINGS

    _check_number(plan.phases, "the plan's window (phases)", 1, MAX_PHASES, integer=True)
    if plan.input_coding not in INPUT_CODINGS:
        raise ValueError(
            f"the plan's input coding {plan.input_coding!r} is not one of {INPUT_CODINGS}"
        )
    if not isinstance(plan.search, dict):
        raise ValueError("the plan's search record is not a JSON object")
    for i, lp in enumerate(plan.layers):
        _check_layer_plan(lp, f"spiking layer {i}")
    if (plan.input_coding == "single") != (plan.input is not None):
        raise ValueError(f"the input coding is {plan.input_coding!r} but the input layer plan is "
                         f"{'present' if plan.input is not None else 'missing'}")  # fmt: skip
    if plan.input_window is not None:  # an analog input's own window (windows="auto")
        _check_number(plan.input_window, "the input's window", 1, MAX_PHASES, integer=True)
        if plan.input_coding != "analog":
            raise ValueError(f"the {plan.input_coding!r} input has a window of its own")
    if plan.input is not None:
        _check_layer_plan(plan.input, "the input layer")
        if plan.input.phases != plan.phases or plan.input.fire_window != 0:
            raise ValueError("the input layer's window or fire window is not the plan's")


def _check_plan_graph(plan: Plan, runner: Runner) -> None:
    """The layers' kinds, fire windows and the latency against the places in the graph."""
    from onespike import calibrate

    relus = [n for n in runner.nodes if runner.role(n) in SPIKING]
    if len(relus) != len(plan.layers):
        raise ValueError(f"the plan has {len(plan.layers)} spiking layers, the graph {len(relus)}")
    fire, _ = calibrate.fire_windows(runner, relus)
    for node, lp in zip(relus, plan.layers):
        if runner.role(node) != lp.kind:
            raise ValueError(
                f"layer '{lp.name}' is of kind {lp.kind!r}; its place in the graph is a "
                f"{runner.role(node)!r} layer"
            )
        if lp.fire_window != fire[node]:
            raise ValueError(
                f"layer '{lp.name}' has fire window {lp.fire_window}; its place in the graph "
                f"gives {fire[node]}"
            )
    windows = [lp.phases for lp in plan.layers]
    latency = calibrate.fire_steps(runner, relus, windows, plan.input_steps)[1]
    if plan.latency_steps != latency:
        raise ValueError(
            f"the plan's latency is {plan.latency_steps!r} steps; its windows give {latency}"
        )


def _check_scale_tensors(net: SpikingNetwork) -> None:
    """Each spiking layer's ``scale`` buffer equals its plan's scale."""
    plan = net.plan
    layers = [*net.spikes.values()] + ([net.input_encoder.layer] if plan.input else [])
    lps = [*plan.layers] + ([plan.input] if plan.input else [])
    for layer, lp in zip(layers, lps):
        buf = layer.scale.detach()
        if buf.is_meta or buf.is_sparse:
            raise ValueError(f"layer '{lp.name}' has no scale tensor")
        want = torch.tensor(lp.scale, dtype=torch.float32, device="cpu").to(buf.dtype)
        if buf.shape != want.shape or not torch.equal(buf.cpu(), want):
            raise ValueError(f"layer '{lp.name}''s scale tensor is not the plan's scale")


def _check_neuron_counts(net: SpikingNetwork) -> None:
    """Run one zero sample: each layer's neurons (and per-channel scales) fit its output."""
    p = next((t for t in net.parameters() if t.is_floating_point()), None)
    x = torch.zeros(
        (1, *net.input_shape),
        dtype=None if p is None else p.dtype,
        device=torch.device("cpu") if p is None else p.device,
    )
    try:
        with torch.no_grad():
            run = net.simulate(x, mode="event")
    except (RuntimeError, ValueError, IndexError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"the plan does not fit the graph ({msg})") from None
    for lp in net.plan.layers:
        phase = run.spike_phases[lp.name]
        if phase.dim() < 2 or phase[0].numel() != lp.neurons:
            raise ValueError(
                f"layer '{lp.name}' has {lp.neurons} neurons in the plan, "
                f"{phase[0].numel()} in the graph"
            )
        if isinstance(lp.scale, tuple) and len(lp.scale) != phase.shape[1]:
            raise ValueError(
                f"layer '{lp.name}' has {len(lp.scale)} per-channel scales for "
                f"{phase.shape[1]} channels"
            )


# ---------------------------------------------------------------------------------------
# loading


def _submodule(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in path.split(".") if path else ():
        nxt = getattr(m, part, None)
        if nxt is None:
            nxt = nn.Module()
            m.add_module(part, nxt)
        m = nxt
    return m


def _tensor(entry: dict, tensors: dict[str, Tensor]) -> Tensor:
    if entry["layout"] == "sparse_coo":
        return torch.sparse_coo_tensor(
            tensors[entry["indices"]],
            tensors[entry["values"]],
            tuple(entry["shape"]),
            is_coalesced=entry["coalesced"],
            check_invariants=True,  # indices from a file: checked before any use
        )
    if entry["layout"] != "strided":
        raise ValueError(f"unknown layout {entry['layout']!r}")
    return tensors[entry["data"]]


def _build_graph(graph: dict, entries: dict[str, dict], tensors: dict[str, Tensor]):
    root = nn.Module()
    for path, entry in graph["modules"].items():
        cls, attrs, weighted = _MODULES[entry["type"]]  # KeyError: not on the allow-list
        args = _dec(entry["args"])
        if set(args) != set(attrs) | ({"bias"} if weighted else set()):
            raise ValueError(f"module '{path}' has arguments {sorted(args)}")
        # weights come from the file: no initialisation on a real device
        m = cls(**args, device="meta") if weighted else cls(**args)
        parent, _, name = path.rpartition(".")
        _submodule(root, parent).add_module(name, m)
    for key, entry in entries.items():
        owner, _, name = key.rpartition(".")
        mod = _submodule(root, owner)
        t = _tensor(entry, tensors)
        old = getattr(mod, name, None)
        if isinstance(old, Tensor) and old.is_meta and old.shape != t.shape:
            raise ValueError(
                f"'{key}' has shape {tuple(t.shape)}, its module needs {tuple(old.shape)}"
            )
        if entry["param"]:
            mod.register_parameter(name, nn.Parameter(t, requires_grad=True))
        else:
            if name in mod._parameters:
                raise ValueError(f"'{key}' is a parameter, stored as a buffer")
            mod.register_buffer(name, t)
    for key, p in root.named_parameters():
        if p.is_meta:
            raise ValueError(f"no tensor stored for '{key}'")
    g = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for nd in graph["nodes"]:
        op = nd["op"]
        if op == "call_function":
            target = _FUNCTIONS[nd["target"]]
        elif op == "call_method":
            if nd["target"] not in _METHODS:
                raise KeyError(nd["target"])
            target = nd["target"]
        elif op in ("placeholder", "output", "get_attr", "call_module"):
            target = nd["target"]
        else:
            raise ValueError(f"unknown op {op!r}")
        args = _dec(nd["args"], nodes)
        kwargs = _dec(nd["kwargs"], nodes)
        node = g.create_node(op, target, tuple(args), kwargs, name=nd["name"])
        nodes[nd["name"]] = node
    g.lint()
    gm = fx.GraphModule(root, g, class_name=graph.get("class_name", "GraphModule"))
    return gm.eval()


def _read(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise NetworkFileNotFoundError(f"no such file: '{path}'")
    if path.is_dir():
        raise NotANetworkFileError(f"'{path}' is a directory, not a saved network")
    if not path.is_file():  # a FIFO or a device: reading it could block forever
        raise NotANetworkFileError(f"'{path}' is not a regular file, not a saved network")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise NotANetworkFileError(
                    f"'{path}' is a safetensors file but not a network saved by onespike"
                )
            _check_version(path, meta)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except SerializationError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        # a safetensors file starts with the header's length, then the JSON header
        try:
            with path.open("rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                text = fh.read(1) if 2 <= n <= 100_000_000 else b""
        except OSError as err:
            raise SerializationError(f"'{path}' cannot be read ({err.strerror})") from None
        if text == b"{":
            raise CorruptFileError(
                f"'{path}' is damaged or truncated ({str(e).splitlines()[0]})"
            ) from None
        raise NotANetworkFileError(f"'{path}' is not a network saved by onespike") from None
    if meta.get("sha256") != file_digest(meta, tensors):
        raise CorruptFileError(
            f"'{path}' is damaged or was edited: its header and tensors do not match their "
            "checksum (save the network again with onespike.save)"
        )
    return meta, tensors


def _check_version(path: Path, meta: dict[str, str]) -> None:
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CorruptFileError(
            f"'{path}' has an unreadable format version {meta.get('format_version')!r}"
        ) from None
    if version > FORMAT_VERSION:
        writer = meta.get("onespike_version", "a newer onespike")
        raise UnsupportedFormatVersionError(
            f"'{path}' needs file format version {version} (written by onespike {writer}); "
            f"this onespike reads versions up to {FORMAT_VERSION}: upgrade onespike"
        )
    if version < 1:
        raise CorruptFileError(f"'{path}' has an invalid format version {version}")
    if version < FORMAT_VERSION:
        writer = meta.get("onespike_version", "an older onespike")
        raise UnsupportedFormatVersionError(
            f"'{path}' is in file format version {version} (written by onespike {writer}), "
            f"whose checksum does not cover the plan and the graph; this onespike reads "
            f"version {FORMAT_VERSION}: convert the network again and re-save it with this version"
        )


def load(path: str | os.PathLike, *, device: str | torch.device | None = None) -> SpikingNetwork:
    """Rebuild the :class:`SpikingNetwork` saved at ``path`` by :func:`save`.

    Raises :class:`NetworkFileNotFoundError`, :class:`NotANetworkFileError`,
    :class:`CorruptFileError` or :class:`UnsupportedFormatVersionError` (all
    :class:`SerializationError`, a ``ValueError``) with a one-sentence message.
    ``device``: where the network goes (default: the CPU, where the file is read).
    """
    check_device(device, "load(device=...)")
    path = Path(path)
    meta, tensors = _read(path)
    try:
        input_shape = tuple(int(s) for s in json.loads(meta["input_shape"]))
        plan = _plan_from(_dec(json.loads(meta["plan"])))
        graph = json.loads(meta["graph"])
        entries = json.loads(meta["tensors"])
        ann = _build_graph(graph, entries["ann"], tensors)
        snn_entries = entries["snn"]
        traced_keys = set(entries["ann"])
        same = all(snn_entries[k] == entries["ann"][k] for k in traced_keys)
        if same:
            net = SpikingNetwork(ann, plan, input_shape)
        else:
            traced = _build_graph(graph, {k: snn_entries[k] for k in traced_keys}, tensors)
            net = SpikingNetwork(traced, plan, input_shape, ann_graph=ann)
        own = _graph_state(net.graph_module)
        extra = {k: _tensor(e, tensors) for k, e in snn_entries.items() if k not in traced_keys}
        if set(own) != traced_keys | set(extra):
            raise ValueError("the spiking graph's tensors do not match the stored ones")
        for k, t in extra.items():  # the spiking layers' scales: rebuilt from the plan
            if not _same_bits(own[k], t):  # unless changed after it (another dtype, ...)
                owner, _, name = k.rpartition(".")
                mod = net.graph_module.get_submodule(owner)
                if name in mod._parameters:
                    mod._parameters[name] = nn.Parameter(t, requires_grad=own[k].requires_grad)
                else:
                    mod._buffers[name] = t
    except SerializationError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(f"'{path}' is damaged: {msg}") from None
    try:
        check_plan(net)
    except ValueError as e:
        raise CorruptFileError(f"'{path}' is damaged: {e}") from None
    return net if device is None else net.to(device)


SpikingNetwork.file_format = sys.modules[__name__]  # snn.save(path), SpikingNetwork.load(path)

__all__ = [
    "FORMAT_VERSION",
    "CorruptFileError",
    "NetworkFileNotFoundError",
    "NotANetworkFileError",
    "NotSerializableError",
    "SerializationError",
    "UnsupportedFormatVersionError",
    "load",
    "save",
]
