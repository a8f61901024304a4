"""The engine: the one walk over a network's spike nodes, and the operation counts.

It holds what every simulator and counter shares: the walk (:class:`SpikeGraph`), the
two protocols other codes plug into (:class:`FireWindow`, :class:`ClockedNeurons`), and
the counting of a region's operations (:func:`count_region`, :func:`ann_counts`). The
energy those counts cost (the unit energies, :class:`~onespike.accounting.Ops`) is in
:mod:`onespike.accounting`, beside the cost report.

Seen from its spikes, a traced network (the folded ANN, or the converted network
whose ReLUs are spiking layers) is a short list of *spike nodes* in topological
order; :class:`SpikeGraph` finds them once and every simulator and counter walks
them (:meth:`SpikeGraph.walk`):

``"input"``
    the network input (an analog current unless an encoder codes it);
``"encoder"``
    the input encoder of the spike input codings;
``"const"``
    a constant (a buffer: a bias used as ``h + b``, a graph's adjacency);
``"layer"``
    a spiking layer (a ReLU, a signed site or a softmax of the ANN, a SpikeLayer of the
    converted network: the roles :data:`onespike.trace.SPIKING`), fed by its region
    (:meth:`SpikeGraph.regions`: the nodes between its spike sources and it; a product of
    two spiking tensors lies inside a region);
``"pool"``, ``"reshape"``
    max-pooling, a reshape or an index of spikes: spike sources derived from a layer's
    spikes (a ``chunk``/``split`` of spikes, a tuple, is walked too: its pieces are the
    sources);
``"shape"``
    a shape query (``x.size(0)``);
``"output"``
    the output, fed by its region.

The other nodes lie inside regions, which :class:`~onespike.graph.Runner` evaluates.
The users: the step simulator (:mod:`onespike.simulate`), the cost model
(:func:`onespike.cost`) and the drivers of the other codes (:mod:`onespike.simulate_codes`),
whose codes plug in through two small protocols: :class:`FireWindow` (a layer of a
single-spike code run in windows: onespike's phase code, :func:`phase_window`, and
TTFS) and :class:`ClockedNeurons` (neurons updated at every step: rate, burst and the
binary multi-spike code).

The operation counts: :func:`count_region` (accumulates and multiply-accumulates of
a region, from the spikes of its sources) and :func:`ann_counts` (the ANN's MACs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import fx

from onespike.codes import phase as pc
from onespike.graph import Region, Runner, weighted_call
from onespike.plan import LayerPlan
from onespike.trace import SPIKING, is_add, op_of

Node = fx.Node
Tensor = torch.Tensor

#: The kinds of node :meth:`SpikeGraph.walk` visits (module docstring).
SPIKE_NODE_KINDS = ("input", "encoder", "const", "layer", "pool", "reshape", "shape", "output")


# --------------------------------------------------------------------------------------
# the walk
# --------------------------------------------------------------------------------------
class SpikeGraph:
    """The spike nodes of a traced graph, their kinds, and the regions of its targets.

    ``layers``: the spiking layers in order; ``output``: the output node; ``targets``:
    the layers and the output (the nodes fed by a region); ``regions[target]``: its
    :class:`~onespike.graph.Region`; ``derived``: the pool and reshape nodes.
    """

    def __init__(self, graph: fx.GraphModule | Runner):
        self.runner = r = graph if isinstance(graph, Runner) else Runner(graph)
        self.nodes: list[tuple[str, Node]] = []
        for node in r.nodes:
            kind = self._kind(node)
            if kind is not None:
                self.nodes.append((kind, node))
        self.layers: list[Node] = [n for k, n in self.nodes if k == "layer"]
        self.output: Node = next(n for k, n in self.nodes if k == "output")
        self.targets: list[Node] = [*self.layers, self.output]
        self.regions: dict[Node, Region] = {t: r.region(t) for t in self.targets}
        self.derived: list[Node] = [n for k, n in self.nodes if k in ("pool", "reshape")]

    def _kind(self, node: Node) -> str | None:
        r = self.runner
        role = r.role(node)
        if node.op == "placeholder":
            return "input"
        if node.op == "output":
            return "output"
        if role in ("input", "const"):
            return "encoder" if role == "input" else "const"
        if role in SPIKING:
            return "layer"
        if r.is_source(node) or r.moves_spikes(node):  # spikes max-pooled, reshaped, indexed
            return "pool" if role == "maxpool" else "reshape"
        if role == "shape":
            return "shape"
        return None

    def walk(self, *kinds: str) -> Iterator[tuple[str, Node]]:
        """``(kind, node)`` of every spike node in topological order (only ``kinds``, if given)."""
        for kind, node in self.nodes:
            if not kinds or kind in kinds:
                yield kind, node

    def is_spiking(self, node: Node) -> bool:
        return self.runner.is_spiking(node)

    def reshape(self, node: Node, value: Tensor, consts: dict) -> Tensor:
        """A reshape node applied to ``value`` in place of its source's value."""
        return self.runner.run_node(node, {**consts, node.args[0]: value})  # type: ignore[return-value]

    def synaptic_ops(
        self, tags: dict[Node, tuple[str, Tensor]], consts: dict
    ) -> dict[Node, tuple[float, float]]:
        """``(accumulates, multiply-accumulates)`` of every target's region, summed over the
        batch, given ``tags`` of its spike sources (:func:`count_region`)."""
        out = {}
        seen: set[Node] = set()  # products, dense layers, landings: once, in the first region
        for t in self.targets:
            reg = self.regions[t]
            srcs = {s: tags[s] for s in reg.spike_sources}
            out[t] = count_region(self.runner, reg, srcs, consts, seen)
        return out

    def product_regions(self) -> dict[Node, Node]:
        """Every product of two spiking tensors and the first target whose region holds it
        (where its costs are counted)."""
        out: dict[Node, Node] = {}
        for t in self.targets:
            for n in self.regions[t].nodes:
                if self.runner.role(n) == "product":
                    out.setdefault(n, t)
        return out


# --------------------------------------------------------------------------------------
# the per-code protocols
# --------------------------------------------------------------------------------------
class FireWindow(Protocol):
    """One layer of a single-spike code run in windows (onespike's phase code, TTFS).

    Called with the layer's pre-activations at the end of its input window (real
    units; exact, since every input spike has arrived and the region is linear), it runs
    the fire window and returns ``(value, spikes, updates)``: each neuron's decoded
    value, its 0/1 spike and its fire-window updates, all in the dtype of ``pre``.
    """

    def __call__(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


class ClockedNeurons(Protocol):
    """The neurons of a code updated at every step (rate, burst, binary multi-spike).

    ``period`` steps make one period (1 but for the binary code); the bias and the analog
    current are injected at phase 0 of a period when ``inject_every_step`` is False.
    """

    period: int
    inject_every_step: bool

    def start(self, shapes: dict[Node, Tensor]) -> None:
        """Reset the state of every layer (``shapes``: a tensor shaped like each layer)."""

    def step(self, node: Node, current: Tensor, phase: int) -> tuple[Tensor, Tensor]:
        """One step of a layer: ``(spikes, value sent)`` for its input ``current``."""

    def neuron_ops(
        self, hidden: int, outputs: int, n: int, spikes: float, phase: int
    ) -> tuple[float, float]:
        """``(multiplies, adds)`` of one step's neuron updates over ``n`` samples, given the
        ``spikes`` of the step."""


def phase_window(lp: LayerPlan) -> FireWindow:
    """onespike's phase code as a :class:`FireWindow` (the layer of plan ``lp``)."""
    scale = torch.tensor(lp.scale, dtype=torch.float32)

    def fire(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = pc.channel_shape(scale.to(pre.dtype), pre.dim())
        ph = pc.encode(pre / s, lp.base, lp.phases, threshold_shift=lp.threshold_shift)
        value = pc.decode(ph, lp.base, s, lp.phases)
        upd = pc.fire_updates(ph, lp.phases)
        return value, (ph >= 0).to(pre.dtype), upd.to(pre.dtype)

    return fire


# --------------------------------------------------------------------------------------
# operations of a region
# --------------------------------------------------------------------------------------
def _ones_op(runner: Runner, node: Node, m: Tensor, const_env: dict) -> Tensor:
    """Apply a weighted node with every existing synapse weighing 1 (and no bias) to counts."""
    if node.op == "call_module":
        mod = runner.modules[node.target]
        w = (mod.weight != 0).to(m.dtype)
        return weighted_call(mod, m, bias=False, weight=w)
    mat = const_env[node.args[0]]
    if mat.is_sparse:
        mat = mat.coalesce()
        ones = torch.ones_like(mat.values(), dtype=m.dtype)
        # the indices come from a valid sparse tensor: no invariant check needed
        ind = torch.sparse_coo_tensor(mat.indices(), ones, mat.shape, check_invariants=False)
        return torch.sparse.mm(ind, m)
    return (mat != 0).to(m.dtype) @ m


def _pool_area(runner: Runner, node: Node, m_in: Tensor, m_out: Tensor) -> float:
    mod = runner.modules.get(node.target) if node.op == "call_module" else None
    k = getattr(mod, "kernel_size", None)
    if k is None and node.op == "call_function" and len(node.args) > 1:
        k = node.args[1] if node.target in (F.avg_pool1d, F.avg_pool2d) else None
    if k is not None:
        return float(math.prod(k) if isinstance(k, (tuple, list)) else k ** (m_in.dim() - 2))
    return m_in[0].numel() / m_out[0].numel()  # adaptive pooling, divisible sizes


def _weighted_input(node: Node) -> Node:
    return node.args[0] if node.op == "call_module" else node.args[1]


def count_region(
    runner: Runner,
    reg: Region,
    tags: dict[Node, tuple[str, Tensor]],
    const_env: dict,
    seen: set[Node] | None = None,
) -> tuple[float, float]:
    """(accumulates, multiply-accumulates) of a region, summed over the batch.

    ``tags[source] = ("events", counts)`` for spike sources (spikes per
    element) or ``("dense", values)`` for analog values. Events travel through
    reshapes, concatenation, pooling (multiplied by the pool area: pooling is
    folded into the next weighted layer) and weighted layers (their counts
    become the number of synaptic paths reaching each output, exact for the
    sparse aggregation of a GCN); they cost one AC each where they land on a
    membrane (the region's end, or an add such as an identity shortcut). A
    weighted layer on dense values costs one MAC per synapse.

    A product of two spiking tensors (issue 27) accumulates by traces: each pair of
    spikes ``(a_ik, b_kj)`` adds the trace of the earlier spike once, at the later one: one
    AC per pair (the count's product: pairs that both spiked); its output is an
    accumulated value, dense for what follows (a Linear after it does MACs). The
    multiplies of its accumulators (each multiplied by its factor's base every step) and
    the softmax division are neuron-side costs, counted by :func:`onespike.accounting.cost`.
    A product, or a weighted layer on dense values, that several regions hold (a
    transformer's residual stream) computes the same values for each: it is counted in
    the first only (``seen``: the nodes counted so far, updated). So is a node where
    events land (an add of the residual stream, whose accumulated value the later
    regions read): each spike costs one AC per synapse of the weighted layer that
    receives it, once, in the first region that holds the landing.
    """
    kind: dict[Node, str] = {s: k for s, (k, _) in tags.items()}
    val: dict[Node, object] = {**const_env, **{s: v for s, (_, v) in tags.items()}}
    for s in reg.sources:
        if s.op == "get_attr" and s not in val:
            val[s] = runner.run_node(s, val)
    acs = macs = 0.0
    for n in reg.nodes:
        r = runner.role(n)
        if r in ("shape", "const"):
            val[n] = runner.run_node(n, val)
            kind[n] = r
            continue
        ins = [a for a in n.all_input_nodes if kind.get(a) in ("events", "dense")]
        kinds = {kind[a] for a in ins}
        if r == "product":
            if kinds == {"events"} and (seen is None or n not in seen):
                acs += float(runner.run_node(n, val).sum())  # pairs that both spiked
            if seen is not None:
                seen.add(n)
            val[n] = runner.run_node(n, val)
            kind[n] = "dense"
        elif r == "weighted":
            arg = _weighted_input(n)
            m = val[arg]
            if kind[arg] == "events":
                val[n] = _ones_op(runner, n, m, val)
                kind[n] = "events"
            else:  # dense values are computed once: counted in the first region
                if seen is None or n not in seen:
                    macs += float(_ones_op(runner, n, torch.ones_like(m), val).sum())
                if seen is not None:
                    seen.add(n)
                val[n] = runner.run_node(n, {**val, arg: m}, bias=False)
                kind[n] = "dense"
        elif kinds == {"events"} and not is_add(n):
            out = runner.run_node(n, val)
            op = op_of(n, runner.modules)
            if op is not None and op.cost == "pool_area":
                out = out * _pool_area(runner, n, val[ins[0]], out)
            val[n] = out
            kind[n] = "events"
        else:  # events land on membranes here (an add, a mix with dense values)
            if seen is None or n not in seen:  # a landing several regions hold: once
                acs += sum(float(val[a].sum()) for a in ins if kind[a] == "events")
            if seen is not None:
                seen.add(n)
            val[n] = runner.run_node(n, val)
            kind[n] = "dense"
    if kind.get(reg.pre) == "events":
        acs += float(val[reg.pre].sum())
    return acs, macs


def ann_counts(
    runner: Runner, reg: Region, env: dict[Node, object], seen: set[Node] | None = None
) -> tuple[float, float]:
    """(MACs, MACs whose input is non-zero) of the weighted layers and the products of two
    activations of an ANN region (a product ``[.., n, k] @ [.., k, m]`` does ``n k m`` MACs,
    non-zero where both factors are). The ANN computes each layer once: with ``seen`` (the
    nodes counted so far, updated), a node that several regions hold (a transformer's
    residual stream, which has no ReLU) is counted in the first only."""
    dense = nonzero = 0.0
    consts = {k: v for k, v in env.items() if k.op == "get_attr"}
    for n in reg.nodes:
        if seen is not None and runner.role(n) in ("weighted", "product"):
            if n in seen:
                continue
            seen.add(n)
        if runner.role(n) == "product":
            a, b = (env[x] for x in n.args[:2])
            dense += float((torch.ones_like(a) @ torch.ones_like(b)).sum())
            nonzero += float(((a != 0).to(a.dtype) @ (b != 0).to(b.dtype)).sum())
            continue
        if runner.role(n) != "weighted":
            continue
        x = env[_weighted_input(n)]
        dense += float(_ones_op(runner, n, torch.ones_like(x), consts).sum())
        nonzero += float(_ones_op(runner, n, (x != 0).to(x.dtype), consts).sum())
    return dense, nonzero


NeuronFn = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]  # a FireWindow as a plain function

__all__ = [
    "SPIKE_NODE_KINDS",
    "ClockedNeurons",
    "FireWindow",
    "NeuronFn",
    "SpikeGraph",
    "ann_counts",
    "count_region",
    "phase_window",
]
