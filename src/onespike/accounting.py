"""Cost accounting: operations, spikes and energy of the ANN and of its SNN.

Both networks are counted on the same inputs, layer by layer (a layer's row
holds the operations of its incoming synapses and the updates of its own
neurons), per inference (averaged over the batch).

ANN: multiply-accumulates (MACs) of every Conv/Linear/matrix product, and the
share of them whose input is non-zero. Pooling, adds and BatchNorm (folded)
are not counted, as usual.

SNN:
- synaptic operations (ACs): each spike costs one accumulate per outgoing
  synapse. Average pooling in front of a weighted layer is folded into it (a
  spike reaches every output its pooled kernel covers); an identity shortcut
  costs one accumulate per spike.
- MACs where a weighted layer takes analog values (the analog input layer).
- neuron updates: in the input window, one multiply by the sender's base per
  step and compartment (an analog input compartment adds its constant current
  instead: one add per step); in the fire window, one multiply and one compare
  per step until the neuron fires (all ``T`` steps if it never does). With
  per-layer windows a compartment is updated over the longest window among its
  senders and a layer fires over its own (``LayerPlan.phases``).
- spikes per neuron of every spiking layer (mean and max).
- transformers (issue 27): signed neurons cost what phase neurons cost (a spike's sign
  rides on the synapse: still one AC). A product of two spiking tensors by traces costs
  one AC per pair of spikes (:func:`onespike.engine.count_region`) in the row of the
  first layer whose region holds it, and there too its accumulators' updates: two per
  output and step of the product's clock (the term fed by each factor's spikes is
  multiplied by that factor's base every step, as an input-window compartment is, so a
  spike adds its partner's trace without a multiply), counted as multiplies. A softmax's
  exponential is its neurons' timing (no MAC: the fire window's steps, as for any
  layer); its row sum is one add per spike (in its own row, as adds); the division of a
  product by the row sums is one reciprocal per output row and one multiply per output
  (multiplies, in the product's row). A product's ANN MACs are ``n k m`` per
  ``[n, k] @ [k, m]``, counted once like the SNN's. The ANN computes every layer once:
  a layer that several regions hold (the residual stream of a transformer has no ReLU,
  so every later spiking layer's region holds it) costs its MACs in the first; so does
  a layer of the SNN on dense values (the analog input's patch embedding). So do
  spikes: each costs one AC per synapse of the weighted layer that receives it (one per
  spike where it lands on an add directly, an identity shortcut), once, in the row of
  the first layer whose region holds the node where it lands (a residual stream that
  no neurons hold is an accumulated value the later regions read, not a path their
  spikes travel again). Its input-window compartments likewise: where spikes or the
  analog current land on such a stream value (held by several regions, read by MACs),
  one compartment per sender base and element of that value, once, in that first row;
  the layers that read it by MACs have none for those senders (:func:`_compartments`).

Energy, 45 nm CMOS (Horowitz 2014): add 0.9 pJ, multiply 3.7 pJ, MAC 4.6 pJ,
memory access 5 pJ. Compute-only: ANN = MACs x 4.6; SNN = ACs x 0.9 + MACs x
4.6 + input-window multiplies x 3.7 (adds x 0.9) + fire-window steps x (3.7 +
0.9). With memory: one access (5 pJ) per MAC or AC (the weight) and per neuron
update (the membrane). The ANN figures count every MAC (dense hardware).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import fx, nn

from onespike.calibrate import fire_steps
from onespike.codes import binary
from onespike.codes import phase as pc
from onespike.engine import SpikeGraph, _weighted_input, ann_counts, count_region
from onespike.errors import OptionError
from onespike.network import SpikingNetwork
from onespike.simulate import SimulationResult
from onespike.trace import is_add, product_sites

Node = fx.Node
Tensor = torch.Tensor

#: Unit energies in pJ, 45 nm CMOS (Horowitz 2014).
E_ADD = 0.9  # pJ
E_MUL = 3.7
E_MAC = 4.6
E_MEM = 5.0


# --------------------------------------------------------------------------------------
# energy: the one formula (every cost figure of the library and the comparison)
# --------------------------------------------------------------------------------------
def energy_compute(acs: float, macs: float, muls: float, adds: float, fire: float = 0.0) -> float:
    """pJ without memory: AC 0.9, MAC 4.6, multiply 3.7, add or compare 0.9, and ``fire``
    fire-window steps of onespike's neurons (one multiply and one compare each)."""
    return acs * E_ADD + macs * E_MAC + muls * E_MUL + adds * E_ADD + fire * (E_MUL + E_ADD)


def energy_total(compute: float, acs: float, macs: float, *updates: float) -> float:
    """pJ with memory: ``compute`` plus one access (5 pJ) per AC, MAC and neuron update
    (the ``updates``, summed in the order given)."""
    accesses = acs + macs
    for u in updates:
        accesses += u
    return compute + accesses * E_MEM


def ann_energy(macs: float) -> tuple[float, float]:
    """(compute-only, with memory) pJ of an ANN doing ``macs`` MACs (one weight read each)."""
    compute = macs * E_MAC
    return compute, energy_total(compute, macs, 0.0)


def energy_ratio(ann: float, snn: float) -> float:
    """ANN energy over SNN energy (infinite for an SNN that spends nothing)."""
    return ann / snn if snn else float("inf")


@dataclass
class Ops:
    """Operations of one inference (or summed over a batch), and their energy."""

    acs: float = 0.0
    macs: float = 0.0
    muls: float = 0.0
    adds: float = 0.0  # adds, compares and subtracts of the neurons
    updates: float = 0.0  # neuron updates (one membrane access each)
    spikes: float = 0.0  # spikes of the hidden spiking neurons

    def __iadd__(self, other: Ops) -> Ops:
        for f in self.__dataclass_fields__:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self

    def scaled(self, k: float) -> Ops:
        return Ops(**{f: getattr(self, f) * k for f in self.__dataclass_fields__})

    def energy_compute(self) -> float:
        """pJ without memory (:func:`energy_compute`)."""
        return energy_compute(self.acs, self.macs, self.muls, self.adds)

    def energy_total(self) -> float:
        """pJ with one memory access per AC, MAC and neuron update (:func:`energy_total`)."""
        return energy_total(self.energy_compute(), self.acs, self.macs, self.updates)


@dataclass
class LayerCost:
    """Per-inference figures of one layer (its incoming synapses and its neurons)."""

    name: str
    neurons: int
    ann_macs: float
    ann_nonzero_macs: float
    snn_acs: float
    snn_macs: float
    input_updates: float  # multiplies (or adds, analog) in the input window
    input_adds: float
    fire_updates: float  # multiply + compare steps in the fire window
    spikes: float
    spikes_per_neuron_mean: float
    spikes_per_neuron_max: int


@dataclass
class CostReport:
    """Operations, spikes and energy per inference for an ANN and its SNN."""

    phases: int
    latency_steps: int
    samples: int
    layers: list[LayerCost]
    input_spikes: float = 0.0
    totals: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "phases": self.phases,
            "latency_steps": self.latency_steps,
            "samples": self.samples,
            "input_spikes": self.input_spikes,
            "layers": [asdict(r) for r in self.layers],
            "totals": dict(self.totals),
            "unit_energy_pj": {"add": E_ADD, "mul": E_MUL, "mac": E_MAC, "mem": E_MEM},
        }

    def table(self) -> str:
        head = ("layer", "neurons", "ANN MACs", "SNN ACs", "SNN MACs", "updates", "spk/neur", "max")
        rows = [head]
        for r in self.layers:
            rows.append(
                (
                    r.name,
                    str(r.neurons),
                    f"{r.ann_macs:,.0f}",
                    f"{r.snn_acs:,.0f}",
                    f"{r.snn_macs:,.0f}",
                    f"{r.input_updates + r.input_adds + r.fire_updates:,.0f}",
                    f"{r.spikes_per_neuron_mean:.3f}",
                    str(r.spikes_per_neuron_max),
                )
            )
        w = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows
        ]
        lines.insert(1, "  ".join("-" * x for x in w))
        t = self.totals
        lines.append(
            f"energy per inference: ANN {t['ann_energy_compute_pj'] / 1e6:.3f} uJ, "
            f"SNN {t['snn_energy_compute_pj'] / 1e6:.3f} uJ (compute only, ratio "
            f"{t['energy_ratio_compute']:.2f}x); with memory: ANN "
            f"{t['ann_energy_total_pj'] / 1e6:.3f} uJ, SNN {t['snn_energy_total_pj'] / 1e6:.3f} uJ "
            f"(ratio {t['energy_ratio_total']:.2f}x)"
        )
        return "\n".join(lines)


@torch.no_grad()
def cost(
    ann: nn.Module | None,
    snn: SpikingNetwork,
    x: Tensor,
    *,
    run: SimulationResult | None = None,
    mode: str = "event",
) -> CostReport:
    """Count operations, spikes and energy of ``snn`` and of its ANN on inputs ``x``.

    ``ann`` is the original model (checked against ``snn``; the counts use the
    folded copy ``snn.ann_graph``, which computes the same function). ``run``
    reuses a simulation of ``x``; otherwise one is made with ``mode``
    (``"event"`` or ``"step"``, which give the same spikes).
    """
    snn.check_input(x)
    if ann is not None:
        _check_same_outputs(ann, snn, x)
    run = run if run is not None else snn.simulate(x, mode=mode)
    n = x.shape[0]
    T = snn.phases
    ann_g = SpikeGraph(snn.ann_graph)
    ann_env = ann_g.runner.forward_all(x)
    spk = SpikeGraph(snn.graph_module)
    runner = spk.runner
    tags, bases, windows = _spike_tags(spk, run, x)
    consts = {k: v[1] for k, v in tags.items() if v[0] in ("const", "shape")}
    synaptic = spk.synaptic_ops(tags, consts)
    shapes = {k.name: v.shape for k, v in ann_env.items() if isinstance(v, Tensor)}
    attention = _attention_ops(spk, snn, run, shapes)
    membranes, accumulators = _compartments(spk, tags)
    seen: set[Node] = set()
    rows: list[LayerCost] = []
    for a_t, s_t in zip(ann_g.targets, spk.targets):
        a_reg = ann_g.regions[a_t]
        dense, nonzero = ann_counts(ann_g.runner, a_reg, ann_env, seen)
        acs, macs = synaptic[s_t]
        neurons = int(math.prod(ann_env[a_reg.pre].shape[1:]))
        # the target's neurons and the accumulators its region reads by MACs (first time)
        parts = [(neurons, membranes[s_t])] + [
            (int(math.prod(shapes[a.name][1:])), rs) for a, rs in accumulators[s_t]
        ]
        in_mul, in_add = _input_updates(parts, tags, bases, windows, snn.plan.input_steps)
        muls, adds = attention.get(s_t, (0.0, 0.0))
        in_mul, in_add = in_mul * n + muls, in_add * n + adds
        if s_t.op == "output":
            name, fire, spikes, mean, mx = "output", 0.0, 0.0, 0.0, 0
        else:
            name = runner.modules[s_t.target].name
            fire, spikes, mean, mx = _spike_figures(run, name, runner.modules[s_t.target].phases)
        rows.append(
            LayerCost(
                name=name,
                neurons=neurons,
                ann_macs=dense / n,
                ann_nonzero_macs=nonzero / n,
                snn_acs=acs / n,
                snn_macs=macs / n,
                input_updates=in_mul / n,
                input_adds=in_add / n,
                fire_updates=fire / n,
                spikes=spikes / n,
                spikes_per_neuron_mean=mean,
                spikes_per_neuron_max=mx,
            )
        )
    in_spk = float(run.input_spikes.sum()) / n if run.input_spikes is not None else 0.0
    report = CostReport(T, snn.plan.latency_steps, n, rows, in_spk)
    report.totals = _totals(rows)
    return report


def _check_same_outputs(ann: nn.Module, snn: SpikingNetwork, x: Tensor) -> None:
    """The ANN given to :func:`cost` computes outputs of the SNN's shape."""
    try:
        probe = x[:1]
        y = ann.eval()(probe)
    except RuntimeError:  # a model that mixes samples (GCN adjacency) needs them all
        probe = x
        y = ann.eval()(probe)
    if y.shape[1:] != snn(probe).shape[1:]:
        raise OptionError("the ANN and the SNN produce outputs of different shapes")


def _input_updates(
    parts: list[tuple[int, list[Node]]],
    tags: dict[Node, tuple[str, object]],
    bases: dict[Node, float],
    windows: dict[Node, int],
    input_steps: int,
) -> tuple[float, float]:
    """Per sample, the input-window updates of compartments holding ``size`` values that
    the senders ``srcs`` reach, for each ``(size, srcs)`` of ``parts``: one compartment
    per sender base, multiplied at each step of its senders' longest window; the analog
    input's current added at each step of the input's window. ``(muls, adds)``."""
    muls = adds = 0.0
    for size, srcs in parts:
        spike_comps: dict[float, int] = {}
        for s in srcs:
            if tags[s][0] == "events":
                spike_comps[bases[s]] = max(spike_comps.get(bases[s], 0), windows[s])
        muls += sum(spike_comps.values()) * size
        if any(tags[s][0] == "dense" for s in srcs):
            adds += input_steps * size
    return muls, adds


def _spike_figures(
    run: SimulationResult, name: str, phases: int
) -> tuple[float, float, float, int]:
    """A spiking layer's threshold updates and spikes over the batch, and its spikes per
    neuron (mean, max)."""
    fire = float(pc.fire_updates(run.spike_phases[name], phases).sum())
    cnt = run.spike_counts[name]
    spikes = float(cnt.sum())
    return fire, spikes, spikes / cnt.numel(), int(cnt.max())


def _compartments(
    spk: SpikeGraph, tags: dict[Node, tuple[str, object]]
) -> tuple[dict[Node, list[Node]], dict[Node, list[tuple[Node, list[Node]]]]]:
    """Where the input-window compartments are: for every target, the senders (spike
    sources, or the analog input) whose spikes or current reach its neurons' membranes, and
    the accumulators its region holds first, each with the senders accumulated there.

    Events and the analog input's current pass reshapes, pooling, weighted layers and adds
    to the target's membranes. Where they land on a dense value that several regions hold
    and a weighted layer reads by MACs (a transformer's residual stream, which no neurons
    hold), they are accumulated there, once: compartments for the elements of that value,
    in the first region that holds it; they reach no membrane beyond it. A product's
    factors feed its own accumulators (:func:`_attention_ops`). In networks where no
    region shares a node (CNNs, GCNs) the membranes' senders are the region's direct
    sources, as they were."""
    runner = spk.runner
    done: set[Node] = set()
    holders: dict[Node, int] = {}  # how many regions hold each node
    for reg in spk.regions.values():
        for node in reg.nodes:
            holders[node] = holders.get(node, 0) + 1
    membranes: dict[Node, list[Node]] = {}
    accumulators: dict[Node, list[tuple[Node, list[Node]]]] = {}
    for t in spk.targets:
        reg = spk.regions[t]
        kind = {s: tags[s][0] if s in tags else "const" for s in reg.sources}
        pure = {s: kind[s] != "events" for s in reg.sources}  # made from the input alone
        for node in reg.nodes:
            ins = [a for a in node.all_input_nodes if a in kind]
            ks = {kind[a] for a in ins} - {"const", "shape"}
            r = runner.role(node)
            pure[node] = r != "product" and all(pure[a] for a in ins)
            if r in ("shape", "const"):
                kind[node] = "const"
            elif r == "product":
                kind[node] = "dense"
            elif r == "weighted":
                kind[node] = kind[_weighted_input(node)]
            elif ks == {"events"} and not is_add(node):
                kind[node] = "events"
            else:
                kind[node] = "dense" if ks else "const"
        # the dense values read by MACs, and everything they are made of in the region
        read: set[Node] = set()
        stack = [
            _weighted_input(w)
            for w in reg.nodes
            if runner.role(w) == "weighted"
            and kind[_weighted_input(w)] == "dense"
            and not pure[_weighted_input(w)]
        ]
        while stack:
            node = stack.pop()
            if node in read or node not in kind or node in reg.sources:
                continue
            read.add(node)
            if runner.role(node) not in ("weighted", "product"):
                stack.extend(node.all_input_nodes)
        roots = {s: frozenset([s]) if kind[s] in ("events", "dense") else frozenset()
                 for s in reg.sources}  # fmt: skip
        found: list[tuple[Node, list[Node]]] = []
        for node in reg.nodes:
            ins = [a for a in node.all_input_nodes if a in roots]
            r = runner.role(node)
            rs = frozenset().union(*(roots[a] for a in ins))
            if r in ("shape", "const", "product"):
                rs = frozenset()
            landing = kind[node] == "dense" and not pure[node] and rs
            if node in done:  # accumulated in an earlier region
                rs = frozenset()
            elif landing and node in read and holders[node] > 1:  # accumulated here
                done.add(node)
                found.append((node, sorted(rs, key=lambda s: s.name)))
                rs = frozenset()
            roots[node] = rs
        membranes[t] = [s for s in reg.sources if s in roots.get(reg.pre, frozenset())]
        accumulators[t] = found
    return membranes, accumulators


def _attention_ops(
    spk: SpikeGraph, snn: SpikingNetwork, run: SimulationResult, shapes: dict[str, tuple]
) -> dict[Node, tuple[float, float]]:
    """The neuron-side costs of attention (module docstring), summed over the batch, by
    the target whose row they go to: ``(multiplies, adds)``. ``shapes``: the shape of
    every node's value in the ANN, by node name."""
    out: dict[Node, tuple[float, float]] = {}

    def add(t: Node, muls: float, adds: float) -> None:
        m, a = out.get(t, (0.0, 0.0))
        out[t] = (m + muls, a + adds)

    runner = spk.runner
    layers = {n: runner.modules[n.target] for n in spk.layers}
    for node, mod in layers.items():
        if mod.kind == "softmax":  # the row sum: one add per spike
            add(node, 0.0, float(run.spike_counts[mod.name].sum()))
    where = spk.product_regions()
    if not where:
        return out
    starts, _ = fire_steps(runner, spk.layers, snn.plan.windows, snn.plan.input_steps)
    for ps in product_sites(snn.graph_module):
        t = where[ps.product]
        shape = shapes[ps.product.name]
        outputs = float(math.prod(shape))
        spans = [(starts[s], starts[s] + layers[s].phases) for s in ps.sites if s in starts]
        steps = max(e for _, e in spans) - min(b for b, _ in spans) if spans else 1
        muls = 2.0 * outputs * steps
        if ps.kinds[0] == "softmax":  # one reciprocal per output row, one multiply per output
            muls += outputs + outputs / shape[-1]
        add(t, muls, 0.0)
    return out


def _spike_tags(
    graph: SpikeGraph, run: SimulationResult, x: Tensor
) -> tuple[dict[Node, tuple[str, object]], dict[Node, float], dict[Node, int]]:
    """Spikes per element of every spike source (events), the input (dense), constants;
    the base and the window (steps) of every spike source."""
    runner = graph.runner
    tags: dict[Node, tuple[str, object]] = {}
    bases: dict[Node, float] = {}
    windows: dict[Node, int] = {}
    for kind, node in graph.walk():
        vals = {a: v for a, (_, v) in tags.items()}
        if kind == "input":
            tags[node] = ("dense", x)
        elif kind == "encoder":
            tags[node] = ("events", run.input_spikes.to(x.dtype))
            enc = runner.modules[node.target]
            bases[node] = binary.BASE if enc.coding == "binary" else enc.layer.base
            windows[node] = enc.phases if enc.coding == "binary" else enc.layer.phases
        elif kind == "layer":
            mod = runner.modules[node.target]
            tags[node] = ("events", run.spike_counts[mod.name].to(x.dtype))
            bases[node] = mod.base
            windows[node] = mod.phases
        elif kind == "const":
            tags[node] = ("const", runner.run_node(node, vals))
        elif kind in ("pool", "reshape"):
            if kind == "pool":  # the first spike of each pool window passes
                out = pc.maxpool_spikes(runner.on_input(node, vals), vals[node.args[0]])
            else:
                out = runner.run_node(node, vals)
            tags[node] = ("events", out)
            bases[node] = bases[node.args[0]]
            windows[node] = windows[node.args[0]]
        elif kind == "shape" and all(a in tags for a in node.all_input_nodes):
            tags[node] = ("shape", runner.run_node(node, vals))
    return tags, bases, windows


def _totals(rows: list[LayerCost]) -> dict:
    ann_macs = sum(r.ann_macs for r in rows)
    acs = sum(r.snn_acs for r in rows)
    macs = sum(r.snn_macs for r in rows)
    mul = sum(r.input_updates for r in rows)
    add = sum(r.input_adds for r in rows)
    fire = sum(r.fire_updates for r in rows)
    hidden = [r for r in rows if r.name != "output"]
    neurons = sum(r.neurons for r in hidden)
    spikes = sum(r.spikes for r in hidden)
    ann_c, ann_t = ann_energy(ann_macs)
    snn_c = energy_compute(acs, macs, mul, add, fire)
    snn_t = energy_total(snn_c, acs, macs, mul, add, fire)
    return {
        "ann_macs": ann_macs,
        "ann_nonzero_macs": sum(r.ann_nonzero_macs for r in rows),
        "snn_acs": acs,
        "snn_macs": macs,
        "snn_neuron_updates": mul + add + fire,
        "spikes": spikes,
        "hidden_neurons": neurons,
        "spikes_per_neuron_mean": spikes / neurons if neurons else 0.0,
        "spikes_per_neuron_max": max((r.spikes_per_neuron_max for r in hidden), default=0),
        "ann_energy_compute_pj": ann_c,
        "snn_energy_compute_pj": snn_c,
        "ann_energy_total_pj": ann_t,
        "snn_energy_total_pj": snn_t,
        "energy_ratio_compute": energy_ratio(ann_c, snn_c),
        "energy_ratio_total": energy_ratio(ann_t, snn_t),
    }


# count_region and ann_counts (the cost model's region walk) and the unit energies live in
# onespike.engine, shared with the simulators; they are re-exported here.
__all__ = [
    "E_ADD",
    "E_MAC",
    "E_MEM",
    "E_MUL",
    "CostReport",
    "LayerCost",
    "ann_counts",
    "cost",
    "count_region",
]
