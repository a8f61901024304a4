"""The step-by-step simulator: windows of ``T`` steps, one spike per neuron at most.

Realisation (METHOD.md section 3, the one of the authors' later code):

- A spiking layer listens during its *input window*. Its membrane has one
  compartment per sender base: at every step the compartment is multiplied by
  the sender's base, then the synaptic input of the spikes of that step is
  added (weight times the value of a spike at the window's last step, so a
  spike of phase ``k`` ends up weighted ``B^-k``). An analog input is a
  constant current, added every step of the first window with base 1. The
  bias is added once, at the end of the window.
- In its *fire window* the membrane (normalised by the layer's scale) is
  multiplied by the layer's base after every step and compared with the
  thresholds of :func:`onespike.codes.phase.membrane_thresholds`; a neuron
  fires the first time it crosses and is silent afterwards.
- Max-pooling of spikes passes the first spike of each pool window and
  suppresses later ones (the code is monotonic: earliest = largest); the pool
  has no state, so the passing spike is found in one pass
  (:func:`onespike.codes.phase.maxpool_phases`).
- The output layer never fires: its membrane at the end of its input window,
  in real units, is the output.
- Transformers (issue 27): a layer of signed neurons runs the fire window on the
  magnitude of its membrane and fires with its sign (:func:`onespike.codes.signed.
  fire_signed`); its spikes carry their sign into the synapses. A layer of exponential
  neurons (a softmax) fires the phase code of ``exp(u - rowmax)`` (scale 1: the winner at
  phase 0) and accumulates the row sum of its spikes' values as they arrive. A product of
  two spiking tensors inside a region is accumulated by traces on the global clock
  (:func:`onespike.codes.signed.trace_matmul`: each pair enters once, at the later of
  its two spikes; both operands' spikes placed at their absolute steps,
  :func:`onespike.calibrate.fire_steps`), and divided by the row sums once per output row
  when its left factor is a softmax; the region is affine in the product's value, which
  enters it like the bias share, once.

Layers are simulated in topological order, each over its own windows; the
global clock is implicit: a layer's input window is the latest fire window
among its senders, and spikes of a sender that fired earlier are delayed by
whole windows (:func:`onespike.calibrate.fire_windows` computes both; the
delays change when spikes arrive, not what they carry). With per-layer windows
(``LayerPlan.phases``, ``convert(..., windows=...)``) every layer fires over its own
``T_l`` steps, a receiver keeps one compartment per sender base, updated over the
longest window among those senders, and a sender that ended earlier is delayed by
the steps between (:func:`onespike.calibrate.fire_steps`). Only spike phases are
stored between layers (one integer per neuron), never ``T`` copies.

The walk over the graph (which nodes are layers, pools, reshapes, the output, and
their regions) is :class:`onespike.engine.SpikeGraph`'s, shared with the cost model
and the code comparison.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import fx

from onespike.calibrate import fire_steps
from onespike.codes import binary
from onespike.codes import phase as pc
from onespike.codes import signed as sc
from onespike.codes import softmax as smx
from onespike.engine import SpikeGraph
from onespike.graph import Region, Runner
from onespike.plan import LayerPlan, Plan

Node = fx.Node
Tensor = torch.Tensor


@dataclass
class SimulationResult:
    """Output of :meth:`onespike.SpikingNetwork.simulate` (either mode).

    ``spike_phases[name]``: int64 phase of every neuron of a spiking layer
    (``[N, ...]`` like its activation), -1 for no spike. ``spike_counts[name]``:
    number of spikes each neuron fired (0 or 1; the step simulator counts them
    as they happen). ``spike_signs[name]``: the signs of a signed layer's spikes.
    """

    output: Tensor
    spike_phases: dict[str, Tensor]
    spike_counts: dict[str, Tensor]
    mode: str
    input_spikes: Tensor | None = None  # spikes per input element (spike input codings)
    #: the sign of every signed neuron's spike (int8: -1, +1, 0 for none), by layer name
    spike_signs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Source:
    """A node whose value is spikes (or the analog input) as seen by a region."""

    kind: str  # "analog" | "single" | "multi"
    base: float  # the sender's base (1 for analog)
    code: Tensor  # phases (single, -1 = none), integer code (multi) or the input (analog)
    unit: Tensor | None = None  # value of one spike at the window's last step (single/multi)
    small: Tensor | None = None  # the phases in a narrow integer type, for fast comparisons
    phases: int = 1  # the sender's window (steps): its own T_l, or the input's T
    start: int = 0  # the first step of the sender's window on the global clock
    # exponential neurons (a softmax): each neuron's row sum of the spikes' values (the
    # sum broadcast over the row, moved with the spikes); a value is ``unit * B^-k / divisor``
    divisor: Tensor | None = None

    def step_input(self, t: int) -> Tensor:
        """Unweighted synaptic input of step ``t`` of the sender's window (spikes times
        the unit value)."""
        if self.kind == "single":
            if self.small is None:
                narrow = torch.int8 if self.phases < 127 else torch.int16
                self.small = self.code.to(narrow)
            unit = self.unit if self.divisor is None else self.unit / self.divisor
            return torch.where(self.small == t, unit, 0.0)
        if self.kind == "multi":
            return binary.spikes_at(self.code, t, self.phases).to(self.unit.dtype) * self.unit
        raise ValueError("analog input has no spikes")

    def zeros(self, dtype: torch.dtype) -> Tensor:
        return torch.zeros(self.code.shape, dtype=dtype, device=self.code.device)

    def values(self) -> Tensor:
        """The value of every neuron's spike (0: none), without the row divisor: the
        unit grown over the window from the spike's phase, ``unit * B^(T-1-k)``."""
        one = torch.ones((), dtype=self.unit.dtype, device=self.unit.device)
        level = pc.decode(self.code, self.base, one, self.phases)
        return level * self.unit * pc.window_gain(self.base, self.phases)

    def moved(self, fn) -> _Source:
        """These spikes moved by ``fn`` (a reshape or an index of the code's shape)."""
        div = None if self.divisor is None else fn(self.divisor)
        return _Source(self.kind, self.base, fn(self.code), fn(self.unit), phases=self.phases,
                       start=self.start, divisor=div)  # fmt: skip


def _integrate(
    runner: Runner,
    reg: Region,
    sources: dict[Node, _Source],
    env_const,
    dtype,
    products: dict[Node, Tensor] | None = None,
):
    """Membrane (real units) of every neuron of a region's target at the end of its input window.

    One compartment per sender base, updated over the longest window among its senders:
    a sender's spikes arrive during its own window, delayed so that every sender's window
    ends with the input window (per-layer windows: a shorter window starts later).
    ``products``: the value of every product of two spiking tensors accumulated so far
    (by traces, :func:`_product`; those of this region are added to it): the region is
    affine in them, and they enter it once, like the bias share."""
    products = {} if products is None else products
    inner_products = [n for n in reg.nodes if runner.role(n) == "product"]
    for p in inner_products:
        if p not in products:
            products[p] = _product(runner, p, sources, env_const)
    nodes = [n for n in reg.nodes if n not in inner_products]
    srcs = runner.direct_sources(reg)  # a product's factors reach the target through it
    groups: dict[tuple[str, float], list[Node]] = {}
    for s in srcs:
        src = sources[s]
        key = ("analog" if src.kind == "analog" else "spike", src.base)
        groups.setdefault(key, []).append(s)

    # constants added to activations (a bias parameter used as ``h + self.b``) are
    # bias too: zero in the synaptic part, added once with the other biases
    addends = [
        c
        for c in reg.sources
        if c.op == "get_attr" and any(runner.role(u) == "linear" for u in c.users)
    ]

    def evaluate(values: dict[Node, Tensor], *, bias: bool) -> Tensor:
        env = dict(env_const)
        for s in reg.spike_sources:
            env[s] = values[s] if s in values else sources[s].zeros(dtype)
        for p in inner_products:
            env[p] = values[p] if p in values else torch.zeros_like(products[p])
        if not bias:
            for c in addends:
                env[c] = torch.zeros_like(env[c])
        runner.run(env, nodes, bias=bias)
        return env[reg.pre]

    u_total = None
    for (kind, base), members in groups.items():
        T = max(sources[s].phases for s in members)
        if kind == "analog":
            # a constant current: computed once (the MACs of the first layer), added every step
            current = evaluate({s: sources[s].code / T for s in members}, bias=False)
            u = torch.zeros_like(current)
            for _ in range(T):
                u.add_(current)
        else:
            u = None
            for t in range(T):
                # a sender of window T_s sends in the last T_s steps: its phase t - (T - T_s)
                late = {s: t - (T - sources[s].phases) for s in members}
                now = {s: sources[s].step_input(k) for s, k in late.items() if k >= 0}
                inp = evaluate(now, bias=False)
                u = inp if u is None else u.mul_(base).add_(inp)
        u_total = u if u_total is None else u_total.add_(u)
    if inner_products:  # the products' share (accumulated by traces), once
        share = evaluate({p: products[p] for p in inner_products}, bias=False)
        u_total = share if u_total is None else u_total.add_(share)
    bias = evaluate({}, bias=True)  # the bias share, added at the end of the window
    return bias if u_total is None else u_total.add_(bias)


def _operand(runner: Runner, node: Node, sources: dict[Node, _Source], env_const):
    """``(step, value, divisor)`` of a product's factor: each neuron's spike step on the
    global clock (-1: none), its value, and the row sums to divide the product by once
    (None: the value is final). A factor is a spike source or one scaled by a number."""
    if node in sources:
        src = sources[node]
        step = torch.where(src.code >= 0, src.code + src.start, pc.NO_SPIKE)
        values = src.values()
        div = src.divisor
        if div is not None and runner.role(node) != "softmax":  # moved: divide each value
            return step, values / div, None
        return step, values, None if div is None else div[..., :1]
    step, value, div = _operand(runner, node.args[0], sources, env_const)
    value = runner.run_node(node, {**env_const, node.args[0]: value})  # a scaling
    return step, value, div


def _product(runner: Runner, node: Node, sources: dict[Node, _Source], env_const) -> Tensor:
    """A product of two spiking tensors by traces (:func:`onespike.codes.signed.
    trace_matmul`) on the global clock, divided once per output row by the left factor's
    row sums when it is a softmax's spikes."""
    (pa, va, da), (pb, vb, db) = (_operand(runner, a, sources, env_const) for a in node.args[:2])
    if db is not None:  # a softmax as the right factor: each value divided
        vb = vb / db
    first = min(int(p[p >= 0].min()) if bool((p >= 0).any()) else 0 for p in (pa, pb))
    last = max(int(p.max()) for p in (pa, pb))
    shift = [torch.where(p >= 0, p - first, pc.NO_SPIKE) for p in (pa, pb)]
    out = sc.trace_matmul(shift[0], va, shift[1], vb, max(last - first + 1, 1))
    return out if da is None else out / da


def _maxpool_spikes(runner: Runner, node: Node, src: _Source) -> _Source:
    """Max-pool of single-spike trains: the first spike of each pool window passes
    (:func:`onespike.codes.phase.maxpool_phases`, one pooling instead of one per step;
    ``tests/test_simulate.py`` checks it step by step)."""

    pool = runner.on_input(node, {})
    out_phase = pc.maxpool_phases(pool, src.code, src.phases, src.unit.dtype)
    return _Source("single", src.base, out_phase, pool(src.unit), phases=src.phases)


def _scale(lp: LayerPlan, like: Tensor) -> Tensor:
    """A layer's scale in ``like``'s dtype, shaped to broadcast over it (per channel or one)."""
    scale = torch.tensor(lp.scale, dtype=torch.float32, device=like.device).to(like.dtype)
    return pc.channel_shape(scale, like.dim())


def _fire(lp: LayerPlan, u: Tensor) -> tuple[Tensor, Tensor, _Source]:
    """The fire window of a layer of kind ``lp.kind`` for its membranes ``u`` (real units):
    ``(phase, count, the source of its spikes)``. Phase neurons fire on ``u / scale``,
    signed neurons on its magnitude with its sign (the sign rides on the spike's unit),
    exponential neurons on ``exp(u - rowmax)`` (scale 1) with their row sums."""
    shift = lp.threshold_shift
    if lp.kind == "softmax":
        z = smx.shifted_exp(u)
        phase, count = pc.fire(z, lp.base, lp.phases, threshold_shift=shift)
        unit = torch.full_like(u, pc.unit_value(lp.base, lp.phases))
        src = _Source("single", lp.base, phase, unit, phases=lp.phases)
        src.divisor = src.values().sum(dim=-1, keepdim=True).expand(u.shape)  # as they arrive
        return phase, count, src
    scale = _scale(lp, u)
    unit = (scale * pc.unit_value(lp.base, lp.phases)).expand(u.shape).to(u.dtype)
    if lp.kind == "signed":
        phase, sign, count = sc.fire_signed(u / scale, lp.base, lp.phases, threshold_shift=shift)
        unit = unit * sign.to(u.dtype)
    else:
        phase, count = pc.fire(u / scale, lp.base, lp.phases, threshold_shift=shift)
    return phase, count, _Source("single", lp.base, phase, unit, phases=lp.phases)


def _encode_input(plan: Plan, x: Tensor) -> tuple[_Source, Tensor]:
    """The coded input (``"binary"``: base-2 spikes; ``"single"``: one phase-coded spike
    per value, by the input's layer plan) and its spike counts."""
    T, dtype = plan.phases, x.dtype
    if plan.input_coding == "binary":
        code = binary.encode(x, T)
        unit = torch.full(x.shape, binary.unit_weight(T), dtype=dtype, device=x.device)
        return _Source("multi", binary.BASE, code, unit, phases=T), binary.spike_count(code)
    lp = plan.input
    assert lp is not None, "single-spike input coding without a layer plan"
    z = x / _scale(lp, x)
    phase, count = pc.fire(z, lp.base, lp.phases, threshold_shift=lp.threshold_shift)
    unit = (_scale(lp, x) * pc.unit_value(lp.base, lp.phases)).expand(x.shape)
    return _Source("single", lp.base, phase, unit.to(dtype), phases=lp.phases), count


def simulate_steps(graph: fx.GraphModule, plan: Plan, x: Tensor) -> SimulationResult:
    """Run the network of ``graph`` and ``plan`` step by step on a batch ``x``.

    ``graph`` is the traced network with the plan applied
    (:attr:`onespike.SpikingNetwork.graph_module`): its nodes of role ``relu`` are the
    plan's spiking layers, in order, and a node of role ``input`` codes the input
    when the plan's input coding is not analog. What those nodes compute is not
    used: every code parameter comes from ``plan``. See the module docstring.
    """
    walk = SpikeGraph(graph)
    runner = walk.runner
    starts, _ = fire_steps(runner, walk.layers, plan.windows, plan.input_steps)
    products: dict[Node, Tensor] = {}  # products of two spiking tensors, by traces
    dtype = x.dtype
    layers = iter(plan.layers)
    sources: dict[Node, _Source] = {}
    env_const: dict[Node, object] = {}  # constants and shape values
    phases_out: dict[str, Tensor] = {}
    counts_out: dict[str, Tensor] = {}
    signs_out: dict[str, Tensor] = {}
    input_spikes = None
    output = None
    for kind, node in walk.walk():
        if kind == "input":
            # a constant current over the input's window (plan.input_steps: T, or 1)
            sources[node] = _Source("analog", 1.0, x, phases=plan.input_steps)
            env_const[node] = x
        elif kind == "encoder":
            sources[node], input_spikes = _encode_input(plan, x)
            env_const[node] = x
        elif kind == "const":
            env_const[node] = runner.run_node(node, env_const)
        elif kind == "layer":
            lp = next(layers)
            reg = walk.regions[node]
            u = _integrate(runner, reg, sources, env_const, dtype, products)
            phase, count, src = _fire(lp, u)  # the layer's own window
            if lp.kind == "signed":
                signs_out[lp.name] = torch.sign(src.unit).to(torch.int8)
            src.start = starts[node]
            sources[node] = src
            env_const[node] = phase  # shape queries (x.size(0)) read it
            phases_out[lp.name] = phase
            counts_out[lp.name] = count
        elif kind == "pool":
            sources[node] = _maxpool_spikes(runner, node, sources[node.args[0]])
            env_const[node] = sources[node].code
        elif kind == "reshape":  # same spikes, new shape (or indexed)
            move = functools.partial(walk.reshape, node, consts=env_const)
            sources[node] = sources[node.args[0]].moved(move)
            env_const[node] = sources[node].code
        elif kind == "shape" and all(a in env_const for a in node.all_input_nodes):
            env_const[node] = runner.run_node(node, env_const)
        elif kind == "output":
            reg = walk.regions[node]
            if runner.is_spiking(reg.pre):
                src = sources[reg.pre]
                output = src.values() if src.divisor is None else src.values() / src.divisor
            else:
                output = _integrate(runner, reg, sources, env_const, dtype, products)
    assert output is not None
    return SimulationResult(output, phases_out, counts_out, "step", input_spikes, signs_out)


__all__ = ["SimulationResult", "simulate_steps"]
