"""NIR export and import: the converted network as a Neuromorphic Intermediate Representation.

``export_nir(snn, path)`` writes a `NIR <https://neuroir.org>`_ graph (HDF5, with
``nir.write``); ``import_nir(path)`` rebuilds a :class:`~onespike.network.SpikingNetwork`
from that file alone; :mod:`onespike.nir_reference` runs the file step by step without
onespike. Both need the optional ``nir`` package (``pip install onespike[nir]``).

What the file holds (standard NIR nodes, then onespike's metadata on them):

- ``Input`` (the per-sample input shape) and ``Output`` (the logits' shape).
- The weights as standard nodes: ``Conv2d``/``Conv1d`` (weight, bias, stride, padding,
  dilation, groups), ``Affine`` (``nn.Linear`` with bias) or ``Linear`` (without),
  ``AvgPool2d`` (average and adaptive-average pooling with divisible sizes),
  ``Flatten``; a residual ``add`` is two edges into one node (NIR sums the inputs of
  a node). The weights are the spiking network's (the refined ones after
  :func:`onespike.refine`).
- One ``IF`` node per spiking layer, shaped like the layer: ``r = 1 / scale`` (so the
  membrane is in normalised units), ``v_threshold`` the fire-window threshold of the
  first steps, ``v_reset = 0``. With ``input_coding="single"`` the input neurons are an
  ``IF`` node too.
- ``Delay`` nodes (``delay`` in steps: whole windows of ``T``) where spikes of an
  earlier window join a later one (ResNet shortcuts).
- Max-pooling of spikes as ``SumPool2d`` (same kernel, stride, padding) marked
  ``onespike_op = "max_pool_spikes"``.
- ``I`` ("readout"): the output layer, an integrator that never fires; its membrane at
  the end of its input window is the output.

Metadata (``node.metadata``; ``graph.metadata`` for the whole network):

- graph: ``format = "onespike.nir"``, ``format_version``, ``phases`` (``T``),
  ``latency_steps``, ``input_coding``, ``input_shape``, ``node_order`` (JSON list: the
  nodes in the order the network computes them) and ``plan_search`` (JSON).
- ``Input``: ``coding``: ``"analog"`` (the input is a constant current during window 0,
  its ``phases`` steps: ``T``, or the plan's ``input_window``, 1 with ``windows="auto"``,
  ``x / T`` per step), ``"binary"`` (multi-spike base-2 code: ``n = floor(x * 2^T)``
  clipped to ``[0, 2^T - 1]``, a spike at step ``k`` if bit ``T-1-k`` of ``n`` is set,
  each spike worth ``2^-T`` at the window's end, the membrane doubling every step) or
  ``"single"`` (see the ``IF`` node ``input_encoder``).
- ``IF``: ``onespike_role`` (``"spiking_layer"`` or ``"input_encoder"``), ``name``
  (the plan's layer name), ``base`` ``B``, ``phases`` ``T``, ``threshold_shift``, ``scale`` (a
  scalar or one per channel, float64), ``fire_thresholds`` (``T`` values, normalised),
  ``input_window`` and ``fire_window`` (window indices: steps ``w*T .. w*T+T-1`` when
  every window is ``T``), ``input_start`` and ``fire_start`` (steps: the layer listens
  in ``input_start .. fire_start-1`` and fires in ``fire_start .. fire_start+phases-1``;
  with per-layer windows, ``phases`` is the layer's own ``T_l``), ``neurons``,
  ``act_error``, ``out_error``.
- Nodes with several inputs: ``inputs``, a JSON nested list giving the order of the
  sum (``[["a", "b"], "c"]`` is ``(a + b) + c``), which makes it bit-exact.
- ``Conv``/``Affine``/``Linear``: ``has_bias``; ``AvgPool2d``: ``onespike_op =
  "adaptive_avg_pool2d"`` and ``output_size`` where it came from an adaptive pooling;
  ``Delay``: ``steps`` (and ``windows`` when whole windows of ``T``); ``I``:
  ``onespike_role = "readout"``, ``input_window``, ``input_start`` and ``input_end``
  (steps);
  every weight and pooling node: ``torch_node``, the name of its node in the traced
  graph.

The dynamics (METHOD.md section 3; :mod:`onespike.simulate`), which the metadata carry
and which :mod:`onespike.nir_reference` implements from the file:

- A spiking layer listens in window ``input_window``: its membrane has one compartment
  per sender base; every step the compartment is multiplied by the sender's base, then
  the weighted input spikes of that step are added (a spike is worth ``scale_sender *
  B_sender^-(T-1)``, ``T`` the sender's window; a sender of a shorter window than the
  longest sends in the last steps only); an analog input adds its current ``W (x / T)``
  each step instead.
  The bias (the region's output for zero input) is added once, at the window's end.
- In window ``fire_window`` the membrane, divided by ``scale``, is compared at step
  ``k`` with ``fire_thresholds[k]`` and then multiplied by ``base``; the first
  crossing is the neuron's only spike, at phase ``k``; afterwards it is silent.
- Max-pooling of spikes passes the first spike of each pool window.

What a generic NIR consumer reproduces, and what it does not:

- It reads the topology, the shapes, every weight and bias, the pooling and flatten
  operators, the delays (whole windows) and the neurons' shapes, so it can rebuild the
  ANN side of the network (the folded weights) or map it onto hardware.
- It does not reproduce the spikes from the standard fields alone: NIR's ``IF`` neuron
  integrates without the per-step multiplication by the base, fires whenever it
  crosses one fixed threshold and resets, while the phase code listens in one window,
  fires at most once in the next, with the last step's threshold lower (the shift); a
  max-pooling of spikes read as ``SumPool2d`` adds spikes instead of passing the
  first; the input codings and the window gating exist only in the metadata. A
  consumer that implements the metadata (as :mod:`onespike.nir_reference` does, in
  one file that imports no onespike code) reproduces onespike's spike phases, spike
  counts and outputs exactly.
- Average pooling from ``AdaptiveAvgPool2d`` differs from ``AvgPool2d`` in the last
  bit of float rounding; the metadata name the adaptive form.
- Refined networks: the file holds the spiking weights, not the original ANN's, so
  :func:`import_nir` gives a network whose ``ann_graph`` is the spiking weights
  (the ANN side of :func:`onespike.cost` then counts those).

- ``torch.cat`` along the channels (features) is a sum of zero-padded maps: one 1x1
  ``Conv2d``/``Conv1d`` (``Affine`` for vectors) per input, its weight the identity into
  the input's slot and zero elsewhere, bias 0, marked ``onespike_op = "concat"`` with
  ``part`` and ``offset``; :func:`import_nir` rebuilds the ``torch.cat``.

What exports is the ``nir`` column of :data:`onespike.trace.OPS`. Not exportable (a
clear :class:`NIRExportError` names the node and why): graph models whose samples
interact (a fixed matrix times the activations, GCNs), concatenation along another
dimension, multiplication by a number, 1-d pooling, max-pooling with
``ceil_mode``/dilation (NIR has no max-pool node), and an output read directly from
spikes.
"""

from __future__ import annotations

import json
import math
import operator
import os
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from onespike.calibrate import fire_steps, fire_windows
from onespike.codes import phase as pc
from onespike.errors import OnespikeError
from onespike.graph import Runner
from onespike.network import SpikingNetwork
from onespike.plan import LayerPlan, Plan
from onespike.trace import OPS, is_add, op_of, role

NIR_FORMAT = "onespike.nir"
NIR_FORMAT_VERSION = 2  # 2: the graph metadata carry a checksum of the whole file

#: The NIR forms this exporter writes: every ``nir`` of :data:`onespike.trace.OPS` is one
#: (tests/test_trace.py checks it).
NIR_FORMS = frozenset(
    [
        "IF",
        "Conv1d",
        "Conv2d",
        "Affine",
        "SumPool2d",
        "AvgPool2d",
        "Flatten",
        "sum",
        "identity",
        "concat",
    ]
)


class NIRExportError(OnespikeError, ValueError):
    """The network (or the NIR file) uses something the NIR mapping does not cover."""


def require_nir():
    """The ``nir`` module, or an ``ImportError`` telling how to install it."""
    try:
        import nir
    except ImportError:
        raise ImportError("NIR export needs the 'nir' package: pip install onespike[nir]") from None
    return nir


def _pair(v) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v), dtype=np.int64)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _is_add(node: fx.Node) -> bool:
    """A sum of tensors (``alpha=`` or ``out=`` would not be one)."""
    return is_add(node) and not node.kwargs


def _exportable() -> str:
    """The operators that have a NIR form, from :data:`onespike.trace.OPS`."""
    names = []
    for op in OPS:
        if op.nir is None or op.role == "relu":
            continue
        name = op.target.__name__ if op.kind == "module" else op.name or ""
        names.append(f"{name} ({op.nir})" if op.kind == "module" else name)
    return ", ".join(dict.fromkeys(names))


def _check_attention(runner: Runner) -> None:
    """One :class:`NIRExportError` naming every node of attention (issue 27) that NIR has
    no node for: signed neurons, exponential (softmax) neurons, products of two spiking
    tensors."""
    what = {
        "signed": "signed single-spike neurons",
        "softmax": "a softmax by spike timing",
        "product": "a product of two spiking tensors",
    }
    found = [
        f"'{getattr(runner.modules.get(n.target), 'name', n.name)}' ({what[r]})"
        for n in runner.nodes
        if (r := runner.role(n)) in what
    ]
    if found:
        raise NIRExportError(
            f"NIR has no node for {', '.join(found)}: networks with attention can be saved "
            "(SpikingNetwork.save) but not exported to NIR"
        )


def _leaves(expr) -> list[str]:
    if isinstance(expr, str):
        return [expr]
    return [x for e in expr for x in _leaves(e)]


class _Exporter:
    def __init__(self, snn: SpikingNetwork, nir):
        self.snn, self.nir = snn, nir
        self.gm = snn.graph_module
        self.runner = Runner(self.gm)
        self.T = snn.phases
        for n in self.runner.nodes:
            if self.runner.role(n) == "weighted" and n.op == "call_function":
                raise NIRExportError(
                    f"node '{n.name}' multiplies the activations by a fixed matrix, which "
                    "mixes samples (a graph convolution); NIR has no form for it"
                )
        _check_attention(self.runner)
        for n in self.runner.nodes:
            if n.op == "get_attr":
                raise NIRExportError(f"node '{n.name}' reads a constant tensor; NIR has no form")
        with torch.no_grad():
            p = next(self.gm.parameters(), None)
            x0 = torch.zeros((1, *snn.input_shape), device=p.device if p is not None else None)
            self.values = self.runner.forward_all(x0)
        self.nodes: dict = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # each NIR node's output shape
        self.order: list[str] = []
        self.edges: list[tuple[str, str]] = []
        self.expr: dict[fx.Node, object] = {}
        self.carrier_window: dict[str, int] = {}
        self.delays: dict[tuple[str, int], str] = {}
        ann_relus = [
            n
            for n in snn.ann_graph.graph.nodes
            if role(n, dict(snn.ann_graph.named_modules())) == "relu"
        ]
        spike_nodes = [n for n in self.runner.nodes if self.runner.role(n) == "relu"]
        self.names = {s: a.name for s, a in zip(spike_nodes, ann_relus)}
        self.lp = dict(zip(spike_nodes, snn.plan.layers))
        # timing in steps (per-layer windows: calibrate.fire_steps): a target listens until
        # ``until`` (its fire window's start; the latency for the readout), from ``until``
        # minus its senders' longest window; a carrier's spikes end at ``carrier_window``
        self.window: dict[fx.Node, int] = {}  # the step at which a node's listener fires
        out = next(n for n in self.runner.nodes if n.op == "output")
        widths = [self.lp[n].phases for n in spike_nodes]
        self.T_in = snn.plan.input_steps  # the input's window (an analog input's may be 1)
        self.fire_start, latency = fire_steps(self.runner, spike_nodes, widths, self.T_in)
        self.out_window = fire_windows(self.runner, spike_nodes)[1]
        self.until = {**self.fire_start, out: latency}
        self.input_start: dict[fx.Node, int] = {}
        for target in [*spike_nodes, out]:
            w = self.until[target]
            reg = self.runner.region(target)
            longest = max((self._width(s) for s in reg.spike_sources), default=self.T)
            self.input_start[target] = w - longest
            for n in [*reg.nodes, target]:
                if self.window.setdefault(n, w) != w:
                    raise NIRExportError(
                        f"node '{n.name}' feeds layers that listen in different windows"
                    )

    def _width(self, src: fx.Node) -> int:
        """The window (steps) of the spikes or current that ``src`` carries."""
        if src.op == "placeholder" or self.runner.role(src) == "input":
            return self.T_in
        return self.lp[self.runner.spiking_chain(src)[0]].phases

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(self.values[node].shape[1:])

    def add(self, name: str, node, after: str | None = None) -> str:
        if name in self.nodes:
            raise NIRExportError(f"two nodes are named '{name}'")
        self.nodes[name] = node
        if after is None:
            self.order.append(name)
        else:
            self.order.insert(self.order.index(after) + 1, name)
        return name

    def connect(self, consumer: str, window: int, expr) -> None:
        """Edges from the nodes of ``expr`` to ``consumer``, delayed so that they end at step
        ``window`` (the step at which ``consumer``'s listener fires)."""

        def sub(e):
            if not isinstance(e, str):
                return [sub(x) for x in e]
            w = self.carrier_window.get(e)
            if w is None or w >= window:
                return e
            d = window - w
            key = (e, d)
            if key not in self.delays:
                whole_windows = d % self.T == 0  # always, when every window is T
                name = f"{e}_delay{d // self.T}" if whole_windows else f"{e}_delay{d}steps"
                shape = self.shapes[e]
                delay = self.nir.Delay(np.full(tuple(shape), float(d)))
                delay.metadata = {"onespike_role": "window_delay", "steps": d}
                if whole_windows:
                    delay.metadata["windows"] = d // self.T
                self.delays[key] = self.add(name, delay, after=e)
                self.edges.append((e, name))
            return self.delays[key]

        expr = sub(expr)
        leaves = _leaves(expr)
        if len(set(leaves)) != len(leaves):
            raise NIRExportError(
                f"node '{consumer}' adds a value to itself, which NIR edges cannot express"
            )
        self.edges.extend((src, consumer) for src in leaves)
        if not isinstance(expr, str):
            self.nodes[consumer].metadata["inputs"] = json.dumps(expr)

    def arg_expr(self, node: fx.Node, i: int = 0):
        a = node.args[i]
        if not isinstance(a, fx.Node) or a not in self.expr:
            raise NIRExportError(f"node '{node.name}' takes an input NIR cannot express")
        return self.expr[a]

    def neuron(
        self, name: str, lp: LayerPlan, shape, role_: str, in_w: int, fire_w: int, start=(0, 0)
    ):
        T = lp.phases
        scale = np.array(lp.scale, dtype=np.float64)  # a scalar or one per channel
        per = scale.reshape((-1,) + (1,) * (len(shape) - 1)) if scale.ndim else scale
        full = np.broadcast_to(per, shape).astype(np.float32)
        mth = pc.membrane_thresholds(
            lp.base, T, threshold_shift=lp.threshold_shift, dtype=torch.float64
        )
        node = self.nir.IF(
            r=(1.0 / full).astype(np.float32),
            v_threshold=np.full(shape, float(mth[0]), dtype=np.float32),
            v_reset=np.zeros(shape, dtype=np.float32),
        )
        node.metadata = {
            "onespike_role": role_,
            "name": lp.name,
            "base": float(lp.base),
            "phases": int(T),
            "threshold_shift": bool(lp.threshold_shift),
            "scale": scale if scale.ndim else float(scale),  # h5py: no 0-d arrays
            "fire_thresholds": mth.numpy(),
            "threshold_rule": (
                "the membrane divided by scale is compared at fire-window step k with "
                "fire_thresholds[k], then multiplied by base; the first crossing is the "
                "only spike (phase k), worth scale * base^-k"
            ),
            "input_window": int(in_w),
            "fire_window": int(fire_w),
            "input_start": int(start[0]),  # steps: listens from here to fire_start - 1
            "fire_start": int(start[1]),  # steps: fires in fire_start .. fire_start + phases - 1
            "neurons": int(lp.neurons),
            "act_error": float(lp.act_error),
            "out_error": float(lp.out_error),
        }
        self.shapes[name] = tuple(shape)
        return self.add(name, node)

    def run(self):
        """The NIR graph: a node (or an expression of nodes) per torch node, in order."""
        for n in self.runner.nodes:
            self._node(n)
        return self.nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=self._metadata())

    def _node(self, n: fx.Node) -> None:
        modules = self.runner.modules
        r = self.runner.role(n)
        where = f"node '{n.name}'"
        if n.op == "placeholder":
            self._placeholder(n)
        elif r == "input":
            self._input(n)
        elif r == "relu":
            self._spiking(n)
        elif r == "shape":
            return
        elif _is_add(n):
            self.expr[n] = [self.arg_expr(n, 0), self.arg_expr(n, 1)]
        elif op_of(n, modules) is not None and op_of(n, modules).nir == "concat":
            self.concat(n, where)
        elif n.op == "call_method" and n.target == "contiguous":
            self.expr[n] = self.arg_expr(n)
        elif n.op == "output":
            self._readout(n)
        else:
            self.operator(n, modules, where)

    def _placeholder(self, n: fx.Node) -> None:
        plan, shape = self.snn.plan, tuple(self.snn.input_shape)
        inp = self.nir.Input(input_type=np.array(shape, dtype=np.int64))
        t_in = int(self.T_in)  # the input's window (steps)
        inp.metadata = {"coding": plan.input_coding, "window": 0, "phases": t_in}
        self.expr[n] = self.add(n.name, inp)
        self.shapes[n.name] = shape
        self.carrier_window[n.name] = t_in  # sent in steps 0 .. t_in-1

    def _input(self, n: fx.Node) -> None:
        src, plan = self.arg_expr(n), self.snn.plan
        if plan.input_coding == "single":
            name = self.neuron(n.name, plan.input, self.snn.input_shape, "input_encoder", -1, 0)
            self.connect(name, 0, src)
            self.expr[n] = name
            self.carrier_window[name] = self.T
        else:  # the phase code: the Input node's metadata
            self.expr[n] = src

    def _spiking(self, n: fx.Node) -> None:
        lp, name = self.lp[n], self.names[n]
        self.neuron(name, lp, self.shape(n), "spiking_layer", lp.fire_window - 1,
                    lp.fire_window, (self.input_start[n], self.fire_start[n]))  # fmt: skip
        self.connect(name, self.fire_start[n], self.arg_expr(n))
        self.expr[n] = name
        self.carrier_window[name] = self.fire_start[n] + lp.phases

    def _readout(self, n: fx.Node) -> None:
        src = self.arg_expr(n)
        if self.runner.is_spiking(n.args[0]):
            raise NIRExportError(
                "the network's output is a spiking layer's spikes; NIR export "
                "needs a weighted readout layer"
            )
        shape = self.shape(n.args[0])
        ro = self.nir.I(r=np.ones(shape, dtype=np.float32))
        ro.metadata = {
            "onespike_role": "readout",
            "input_window": int(self.out_window),
            "input_start": int(self.input_start[n]),
            "input_end": int(self.until[n]),
            "rule": "never fires: its membrane at the end of its input window, "
            "in real units, is the output",
        }
        self.add("readout", ro)
        self.connect("readout", self.until[n], src)
        self.add("output", self.nir.Output(output_type=np.array(shape, dtype=np.int64)))
        self.edges.append(("readout", "output"))

    def _metadata(self) -> dict:
        plan = self.snn.plan
        return {
            "format": NIR_FORMAT,
            "format_version": NIR_FORMAT_VERSION,
            "onespike_version": _version(),
            "phases": int(self.T),
            "latency_steps": int(plan.latency_steps),
            "input_coding": plan.input_coding,
            "input_shape": np.array(self.snn.input_shape, dtype=np.int64),
            "node_order": json.dumps(self.order),
            "plan_search": _search_json(plan.search),
        }

    def operator(self, n: fx.Node, modules: dict[str, nn.Module], where: str) -> None:
        m = modules.get(n.target) if n.op == "call_module" else None
        src_node = n.args[0] if n.args else None
        spiking_in = self.runner.is_spiking(src_node)
        in_shape = self.shape(src_node) if isinstance(src_node, fx.Node) else ()
        out_shape = self.shape(n)
        node = self._module_node(n, m, in_shape, out_shape, spiking_in, where)
        if node is None:
            what = (
                f"module {type(m).__name__}"
                if m is not None
                else f"{n.op} {getattr(n.target, '__name__', n.target)}"
            )
            op = op_of(n, modules)
            why = f": {op.no_nir}" if op is not None and op.no_nir else ""
            raise NIRExportError(
                f"{where} ({what}) has no NIR form in onespike's export{why} (supported: "
                f"{_exportable()})"
            )
        node.metadata = {**getattr(node, "metadata", {}), "torch_node": n.name}
        name = self.add(n.name, node)
        self.shapes[name] = out_shape
        if spiking_in and not (isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)):
            # max-pool or flatten of spikes: still spikes, from the same window
            src = _leaves(self.arg_expr(n))[0]
            self.edges.append((src, name))
            self.carrier_window[name] = self.carrier_window[src]
        else:
            self.connect(name, self.window[n], self.arg_expr(n))
        self.expr[n] = name

    def _module_node(self, n: fx.Node, m, in_shape, out_shape, spiking_in: bool, where: str):
        """The NIR node of the operator ``n`` (module ``m`` or None), or None when it
        has no NIR form."""
        nir = self.nir
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return _conv_node(nir, m, in_shape, where)
        if isinstance(m, nn.Linear):
            if m.bias is not None:
                node = nir.Affine(weight=_np(m.weight), bias=_np(m.bias))
            else:
                node = nir.Linear(weight=_np(m.weight))
            node.metadata = {"has_bias": m.bias is not None}
            return node
        if isinstance(m, nn.MaxPool2d) and spiking_in:
            return _max_pool_node(nir, m, where)
        if isinstance(m, nn.AvgPool2d):
            return _avg_pool_node(nir, m, where)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return _adaptive_avg_pool_node(nir, m, in_shape, where)
        if self._is_flatten(n, m, in_shape, out_shape):
            start, end = self._flatten_dims(n, m)
            return nir.Flatten(
                input_type={"input": np.array(in_shape, dtype=np.int64)},
                start_dim=start,
                end_dim=end,
            )
        return None

    def concat(self, n: fx.Node, where: str) -> None:
        """``torch.cat`` along the channels (or features) as a sum of zero-padded maps: input
        ``i`` goes through a 1x1 convolution (an ``Affine`` for vectors) whose weight is
        the identity into its slot of the output and zero elsewhere, bias 0; the parts'
        sum is the concatenation, exactly (each output element has one non-zero term)."""
        tensors = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
        out_shape = self.shape(n)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            raise NIRExportError(f"{where}: a concatenation NIR export cannot read")
        if dim - 1 if dim >= 0 else dim + len(out_shape):
            raise NIRExportError(
                f"{where}: concatenation along dim {dim}; only the channel (feature) "
                "dimension 1 has a NIR form (a sum of zero-padded identity maps)"
            )
        parts, offset, total = [], 0, out_shape[0]
        for i, t in enumerate(tensors):
            if not isinstance(t, fx.Node) or t not in self.expr:
                raise NIRExportError(f"{where} takes an input NIR cannot express")
            shape = self.shape(t)
            w = np.zeros((total, shape[0]) + (1,) * (len(shape) - 1), dtype=np.float32)
            w[offset + np.arange(shape[0]), np.arange(shape[0])] = 1.0
            zero = np.zeros(total, dtype=np.float32)
            if len(shape) == 1:
                node = self.nir.Affine(weight=w, bias=zero)
            elif len(shape) == 2:
                node = self.nir.Conv1d(
                    input_shape=int(shape[1]), weight=w, stride=1, padding=0, dilation=1,
                    groups=1, bias=zero,
                )  # fmt: skip
            elif len(shape) == 3:
                node = self.nir.Conv2d(
                    input_shape=tuple(int(s) for s in shape[1:]), weight=w, stride=(1, 1),
                    padding=(0, 0), dilation=(1, 1), groups=1, bias=zero,
                )  # fmt: skip
            else:
                raise NIRExportError(f"{where}: a concatenation of {len(shape)}-d maps")
            node.metadata = {
                "onespike_op": "concat",
                "torch_node": n.name,
                "part": i,
                "offset": offset,
                "rule": "input i in channels offset .. offset + C_i of the output; the "
                "parts of one concatenation are summed",
            }
            name = self.add(f"{n.name}_part{i}", node)
            self.shapes[name] = out_shape
            self.connect(name, self.window[n], self.expr[t])
            parts.append(name)
            offset += shape[0]
        self.expr[n] = parts

    def _is_flatten(self, n, m, in_shape, out_shape) -> bool:
        if isinstance(m, nn.Flatten) or (n.op == "call_function" and n.target is torch.flatten):
            return True
        if n.op == "call_method" and n.target in ("view", "reshape", "flatten"):
            if n.target == "flatten":
                return True
            return len(in_shape) >= 1 and out_shape == (math.prod(in_shape),)
        return False

    def _flatten_dims(self, n, m) -> tuple[int, int]:
        if isinstance(m, nn.Flatten):
            start, end = m.start_dim, m.end_dim
        elif n.op == "call_method" and n.target in ("view", "reshape"):
            return 0, -1
        else:
            args = list(n.args[1:])
            start = n.kwargs.get("start_dim", args[0] if args else 0)
            end = n.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        if start < 1:
            raise NIRExportError(f"node '{n.name}': a flatten of the batch dimension")
        return start - 1, end - 1 if end >= 1 else end


def _conv_node(nir, m: nn.Conv1d | nn.Conv2d, in_shape, where: str):
    if m.padding_mode != "zeros":
        raise NIRExportError(f"{where}: padding_mode {m.padding_mode!r} has no NIR form")
    bias = m.bias if m.bias is not None else m.weight.new_zeros(m.out_channels)
    if isinstance(m, nn.Conv2d):
        node = nir.Conv2d(
            input_shape=tuple(int(s) for s in in_shape[1:]),
            weight=_np(m.weight),
            stride=tuple(m.stride),
            padding=m.padding if isinstance(m.padding, str) else tuple(m.padding),
            dilation=tuple(m.dilation),
            groups=int(m.groups),
            bias=_np(bias),
        )
    else:
        node = nir.Conv1d(
            input_shape=int(in_shape[1]),
            weight=_np(m.weight),
            stride=int(m.stride[0]),
            padding=m.padding if isinstance(m.padding, str) else int(m.padding[0]),
            dilation=int(m.dilation[0]),
            groups=int(m.groups),
            bias=_np(bias),
        )
    node.metadata = {"has_bias": m.bias is not None}
    return node


def _max_pool_node(nir, m: nn.MaxPool2d, where: str):
    """Max-pooling of single spikes, written as SumPool2d with metadata (NIR has no
    max-pool node)."""
    if m.ceil_mode or _pair(m.dilation).tolist() != [1, 1] or m.return_indices:
        raise NIRExportError(
            f"{where}: NIR has no max-pool node; onespike writes a max-pooling of "
            "spikes as SumPool2d with metadata, which has no ceil_mode or dilation"
        )
    node = nir.SumPool2d(
        kernel_size=_pair(m.kernel_size),
        stride=_pair(m.stride if m.stride is not None else m.kernel_size),
        padding=_pair(m.padding),
    )
    node.metadata = {
        "onespike_op": "max_pool_spikes",
        "rule": "max-pooling of single spikes: the first spike of each pool window "
        "passes, later ones are dropped",
    }
    return node


def _avg_pool_node(nir, m: nn.AvgPool2d, where: str):
    pad = _pair(m.padding)
    if m.ceil_mode or m.divisor_override is not None or (pad.any() and not m.count_include_pad):
        raise NIRExportError(
            f"{where}: average pooling with ceil_mode, divisor_override or "
            "count_include_pad=False has no NIR form"
        )
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    return nir.AvgPool2d(kernel_size=k, stride=s, padding=pad)


def _adaptive_avg_pool_node(nir, m: nn.AdaptiveAvgPool2d, in_shape, where: str):
    """Adaptive average pooling that divides evenly, as AvgPool2d with its output size."""
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
    hw = in_shape[1:]
    size = tuple(h if o is None else o for o, h in zip(size, hw))
    if any(h % o for h, o in zip(hw, size)):
        raise NIRExportError(
            f"{where}: adaptive average pooling from {tuple(hw)} to {size} does not "
            "divide evenly and has no NIR form"
        )
    k = np.array([h // o for h, o in zip(hw, size)], dtype=np.int64)
    node = nir.AvgPool2d(kernel_size=k, stride=k, padding=np.zeros(2, dtype=np.int64))
    node.metadata = {
        "onespike_op": "adaptive_avg_pool2d",
        "output_size": np.array(size, dtype=np.int64),
    }
    return node


def _version() -> str:
    from onespike._version import __version__

    return __version__


def _search_json(search: dict) -> str:
    from onespike.serialize import _dumps

    return _dumps(search, "the plan's search record")


def export_nir(snn: SpikingNetwork, path: str | os.PathLike):
    """Write ``snn`` as a NIR graph to ``path`` (HDF5); returns the ``nir.NIRGraph``.

    See the module docstring for the nodes, the metadata and what a generic NIR
    consumer does and does not reproduce. Raises :class:`NIRExportError` naming the
    node for an operator without a NIR form, and ``ImportError`` without ``nir``.
    """
    from onespike import nir_reference
    from onespike._io import atomic_write, check_output

    nir = require_nir()
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"export_nir() takes a SpikingNetwork, got {type(snn).__name__}")
    check_output(path, error=NIRExportError)  # a folder, no folder: before any work
    graph = _Exporter(snn, nir).run()
    graph.metadata[nir_reference.DIGEST_KEY] = nir_reference.graph_digest(graph)

    def write(tmp: Path) -> None:
        nir.write(str(tmp), graph)
        nir_reference.check_digest(nir.read(str(tmp)))  # what was written reads back whole

    # beside, fsync, rename: a failure (a full disk) leaves the old file as it was
    atomic_write(path, write, error=NIRExportError)
    return graph


# ---------------------------------------------------------------------------------------
# import


def _meta_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_graph(path: str | os.PathLike):
    """Read a NIR file written by :func:`export_nir`; checks its format and version."""
    from onespike import nir_reference
    from onespike.serialize import NetworkFileNotFoundError

    nir = require_nir()
    path = Path(path)
    if not path.exists():
        raise NetworkFileNotFoundError(f"no such file: '{path}'")
    if not path.is_file():  # a folder, a FIFO (reading it could block forever), a device
        raise NIRExportError(f"'{path}' is not a regular file, not a NIR file")
    try:
        graph = nir.read(str(path))
    except Exception as e:  # h5py and nir raise many kinds
        raise NIRExportError(f"'{path}' is not a readable NIR file ({e})") from None
    meta = graph.metadata or {}
    if _meta_str(meta.get("format", "")) != NIR_FORMAT:
        raise NIRExportError(f"'{path}' is a NIR graph but was not exported by onespike")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise NIRExportError(f"'{path}' has an unreadable format version") from None
    if version > NIR_FORMAT_VERSION:
        raise NIRExportError(
            f"'{path}' needs onespike NIR format version {version}; this onespike reads "
            f"versions up to {NIR_FORMAT_VERSION}"
        )
    if version < NIR_FORMAT_VERSION:
        raise NIRExportError(
            f"'{path}' is in onespike NIR format version {version}, which has no checksum; "
            f"this onespike reads version {NIR_FORMAT_VERSION}: export the network again "
            "with this version"
        )
    try:
        nir_reference.check_digest(graph)
    except ValueError as e:
        raise NIRExportError(f"'{path}': {e}") from None
    return graph


def _layer_plan(meta: dict) -> LayerPlan:
    scale = np.asarray(meta["scale"], dtype=np.float64)
    return LayerPlan(
        name=_meta_str(meta["name"]),
        neurons=int(meta["neurons"]),
        scale=tuple(float(s) for s in scale) if scale.ndim else float(scale),
        base=float(meta["base"]),
        phases=int(meta["phases"]),
        threshold_shift=bool(meta["threshold_shift"]),
        act_error=float(meta["act_error"]),
        out_error=float(meta["out_error"]),
        fire_window=int(meta["fire_window"]),
    )


def _tuple(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(a))


def import_nir(
    path: str | os.PathLike, *, device: str | torch.device | None = None
) -> SpikingNetwork:
    """Rebuild the :class:`SpikingNetwork` of a NIR file written by :func:`export_nir`.

    The file's checksum (graph metadata ``onespike_sha256``, over every node, field,
    metadata entry and edge) must match, and the plan read from it must agree with
    itself and the graph (:func:`onespike.serialize.check_plan`: bases in (1, 2],
    windows, latency, scales) and the stored thresholds with its bases: anything else is
    one :class:`NIRExportError`. A missing file is the
    :class:`~onespike.serialize.NetworkFileNotFoundError` of :func:`onespike.load`.
    """
    from onespike.errors import check_device
    from onespike.serialize import SerializationError, check_plan

    check_device(device, "import_nir(device=...)")
    g = read_graph(path)
    try:
        net = _build_from_graph(g)
    except (SerializationError, NIRExportError):
        raise
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        missing = isinstance(e, KeyError)
        what = f"lacks the metadata entry {msg}" if missing else f"is damaged: {msg}"
        raise NIRExportError(f"'{path}' {what}") from None
    try:
        check_plan(net)
        _check_thresholds(g)
    except ValueError as e:
        raise NIRExportError(f"'{path}' holds an inconsistent plan: {e}") from None
    return net if device is None else net.to(device)


def _check_thresholds(g) -> None:
    """Each IF node's ``fire_thresholds`` must be those of its base, window and shift (the
    reference simulator reads them; onespike derives them)."""
    for name, node in g.nodes.items():
        md = node.metadata or {}
        if "fire_thresholds" not in md:
            continue
        want = pc.membrane_thresholds(
            float(md["base"]),
            int(md["phases"]),
            threshold_shift=bool(md["threshold_shift"]),
            dtype=torch.float64,
        ).numpy()
        got = np.asarray(md["fire_thresholds"], dtype=np.float64)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise ValueError(f"node '{name}': fire_thresholds are not those of its base")


class _Rebuilder:
    """The torch graph of a NIR file being rebuilt: each NIR node's torch node, and how a
    node's inputs (its recorded input expression, or its one predecessor) become one."""

    def __init__(self, g) -> None:
        self.g = g
        self.preds: dict[str, list[str]] = {k: [] for k in g.nodes}
        for a, b in g.edges:
            self.preds[b].append(a)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.concat: dict[str, tuple[int, str, fx.Node]] = {}  # part -> (index, torch node, input)

    def inputs(self, name: str) -> fx.Node:
        node_meta = self.g.nodes[name].metadata or {}
        expr = json.loads(_meta_str(node_meta["inputs"])) if "inputs" in node_meta else None
        if expr is None:
            if len(self.preds[name]) != 1:
                raise NIRExportError(
                    f"node '{name}' has {len(self.preds[name])} inputs and no order"
                )
            return self.env[self.preds[name][0]]
        return self._build(expr)

    def _build(self, e) -> fx.Node:
        if isinstance(e, str):
            return self.env[e]
        if all(isinstance(x, str) and x in self.concat for x in e):  # the parts of a torch.cat
            ins = [self.concat[x] for x in e]
            in_order = [i for i, _, _ in ins] == list(range(len(e)))
            if in_order and len({c for _, c, _ in ins}) == 1:
                return self.graph.call_function(torch.cat, ([v for _, _, v in ins], 1))
        acc = self._build(e[0])
        for x in e[1:]:
            acc = self.graph.call_function(operator.add, (acc, self._build(x)))
        return acc

    def module(self, name: str, m: nn.Module) -> fx.Node:
        self.root.add_module(name, m)
        return self.graph.call_module(name, (self.inputs(name),))


def _build_from_graph(g) -> SpikingNetwork:
    """Rebuild the :class:`SpikingNetwork` of a NIR file written by :func:`export_nir`.

    The network is built from the file alone (weights, plan from the metadata) through
    the code path of :func:`onespike.convert`; its outputs and spikes equal those of the
    exported network.
    """
    from onespike.serialize import _dec

    nir = require_nir()
    meta = g.metadata
    rb = _Rebuilder(g)
    env = rb.env
    layers: list[LayerPlan] = []
    input_lp = None
    in_steps = int(meta["phases"])
    for name in json.loads(_meta_str(meta["node_order"])):
        node = g.nodes[name]
        md = node.metadata or {}
        kind = _meta_str(md.get("onespike_role", md.get("onespike_op", "")))
        if isinstance(node, nir.Input):
            env[name] = rb.graph.placeholder(name)
            in_steps = int(md.get("phases", meta["phases"]))  # the input's window
        elif kind == "concat":  # a part of a torch.cat: rebuilt as the cat where summed
            rb.concat[name] = (int(md["part"]), _meta_str(md["torch_node"]), rb.inputs(name))
            env[name] = rb.concat[name][2]
        elif isinstance(node, nir.IF) and kind == "input_encoder":
            input_lp = _layer_plan(md)
            env[name] = rb.inputs(name)
        elif isinstance(node, nir.IF):
            layers.append(_layer_plan(md))
            env[name] = rb.module(name, nn.ReLU())
        elif (m := _torch_module(nir, name, node, md, kind)) is not None:
            env[name] = rb.module(name, m)
        elif isinstance(node, (nir.Delay, nir.I)):
            env[name] = rb.inputs(name)  # delays are the windows' structure; the readout sums
        elif isinstance(node, nir.Output):
            rb.graph.output(rb.inputs(name))
        else:
            raise NIRExportError(f"node '{name}' ({type(node).__name__}) is not one onespike reads")
    rb.graph.lint()
    gm = fx.GraphModule(rb.root, rb.graph).eval()
    plan = Plan(
        phases=int(meta["phases"]),
        input_coding=_meta_str(meta["input_coding"]),
        layers=tuple(layers),
        input=input_lp,
        latency_steps=int(meta["latency_steps"]),
        search=_dec(json.loads(_meta_str(meta["plan_search"]))),
        input_window=None if in_steps == int(meta["phases"]) else in_steps,
    )
    return SpikingNetwork(gm, plan, _tuple(meta["input_shape"]))


def _torch_module(nir, name: str, node, md: dict, kind: str) -> nn.Module | None:
    """The torch module of a NIR weight, pooling or flatten node written by
    :func:`export_nir`, or None for any other node."""
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = torch.from_numpy(np.array(node.weight))
        cls = nn.Conv2d if isinstance(node, nir.Conv2d) else nn.Conv1d
        pad = node.padding
        pad = _meta_str(pad) if isinstance(pad, (str, bytes)) else _tuple(pad)
        has_bias = bool(md.get("has_bias", True))
        m = cls(
            w.shape[1] * int(node.groups),
            w.shape[0],
            tuple(w.shape[2:]),
            stride=_tuple(node.stride),
            padding=pad,
            dilation=_tuple(node.dilation),
            groups=int(node.groups),
            bias=has_bias,
        )
        m.weight = nn.Parameter(w)
        if has_bias:
            m.bias = nn.Parameter(torch.from_numpy(np.array(node.bias)))
        return m
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.from_numpy(np.array(node.weight))
        m = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        m.weight = nn.Parameter(w)
        if isinstance(node, nir.Affine):
            m.bias = nn.Parameter(torch.from_numpy(np.array(node.bias)))
        return m
    if isinstance(node, nir.SumPool2d):
        if kind != "max_pool_spikes":
            raise NIRExportError(f"node '{name}': sum pooling is not a onespike operator")
        return nn.MaxPool2d(_tuple(node.kernel_size), _tuple(node.stride), _tuple(node.padding))
    if isinstance(node, nir.AvgPool2d):
        if kind == "adaptive_avg_pool2d":
            return nn.AdaptiveAvgPool2d(_tuple(md["output_size"]))
        k, s, p = _tuple(node.kernel_size), _tuple(node.stride), _tuple(node.padding)
        return nn.AvgPool2d(k, s, p)
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)
        return nn.Flatten(start + 1, end + 1 if end >= 0 else end)
    return None


__all__ = ["NIRExportError", "export_nir", "import_nir", "read_graph"]
