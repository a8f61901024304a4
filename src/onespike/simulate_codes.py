"""The drivers of the other spike codes, next to onespike's step simulator.

Two simulators run a converted ANN (the folded graph of :func:`onespike.trace.trace`,
seen through :class:`CodeNet`) under a spike code other than onespike's own, and count
its operations with the engine's cost model (:mod:`onespike.engine`):

- :func:`simulate_clocked`: codes whose neurons update at every step
  (:class:`~onespike.engine.ClockedNeurons`): rate coding (:class:`RateNeurons`,
  :mod:`onespike.codes.rate`), burst coding (:class:`BurstNeurons`,
  :mod:`onespike.codes.burst`) and the binary multi-spike code (:class:`BinaryNeurons`,
  :mod:`onespike.codes.binary`). Every layer runs at every step, a spike reaches the
  next layers within the same step, and the output after ``t`` steps is the output
  layer's accumulated input divided by ``t`` (by the number of periods for the binary
  code): one run of ``t`` steps gives every shorter run too. Max-pooling passes, at
  each step, the spikes of the neuron that has sent the most so far in the pool window
  (the gating of Rueckauer et al. 2017).
- :func:`simulate_windowed`: single-spike codes run in windows
  (:class:`~onespike.engine.FireWindow`): time-to-first-spike (:func:`ttfs_neurons`)
  and onespike's phase code (:func:`onespike_neurons`, a cross-check of the step
  simulator). Max-pooling passes the earliest spike
  (:func:`onespike.codes.phase.maxpool_spikes`).

:mod:`onespike.experiments.compare` runs them over test sets and tabulates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from onespike.accounting import Ops
from onespike.codes import binary as binary_code
from onespike.codes import burst as burst_code
from onespike.codes import phase as pc
from onespike.codes import rate as rate_code
from onespike.codes import ttfs as ttfs_code
from onespike.engine import (
    ClockedNeurons,
    FireWindow,
    NeuronFn,
    SpikeGraph,
    ann_counts,
    phase_window,
)
from onespike.errors import OptionError, UnsupportedModelError
from onespike.graph import Region, Runner
from onespike.trace import TracedModel

Node = fx.Node
Tensor = torch.Tensor


# --------------------------------------------------------------------------------------
# the network as seen by the simulators
# --------------------------------------------------------------------------------------
class CodeNet(SpikeGraph):
    """The folded ANN as the engine walks it (:class:`onespike.engine.SpikeGraph`: its
    spiking layers, the spike sources derived from them, the output and their regions),
    with what the comparison asks of it."""

    def __init__(self, traced: TracedModel):
        if traced.kinds or traced.products:
            names = [traced.names[n] for n in traced.kinds] + [n.name for n in traced.products]
            raise UnsupportedModelError(
                "the code comparison simulates ReLU networks only: its rate, burst, binary "
                "and TTFS neurons have no signed or softmax form and no products of two "
                f"spiking tensors (here: {', '.join(names)}); convert attention with "
                "onespike.convert"
            )
        super().__init__(traced.module)
        self.traced = traced
        self.relus: list[Node] = self.layers
        # the nodes a clocked or windowed run visits, in topological order
        self.order: list[Node] = [n for _, n in self.walk("layer", "pool", "reshape", "output")]

    def spiking(self, reg: Region) -> list[Node]:
        return [s for s in reg.spike_sources if self.runner.is_spiking(s)]

    def analog(self, reg: Region) -> list[Node]:
        return [s for s in reg.spike_sources if not self.runner.is_spiking(s)]

    def consts(self, env: dict[Node, object]) -> dict[Node, object]:
        r = self.runner
        return {n: v for n, v in env.items() if r.role(n) in ("const", "shape")}

    def region_value(
        self, reg: Region, values: dict[Node, Tensor], consts: dict, *, bias: bool
    ) -> Tensor:
        env = {**consts, **values}
        self.runner.run(env, reg.nodes, bias=bias)
        return env[reg.pre]  # type: ignore[return-value]

    def neurons(self, env: dict[Node, object]) -> tuple[int, int]:
        """(hidden spiking neurons, output neurons) per sample."""
        hidden = sum(int(math.prod(env[n].shape[1:])) for n in self.relus)
        out = env[self.regions[self.output].pre]
        return hidden, int(math.prod(out.shape[1:]))

    def ann_macs(self, env: dict[Node, object]) -> float:
        """MACs of the ANN on the batch of ``env`` (summed over the batch)."""
        return sum(ann_counts(self.runner, self.regions[t], env)[0] for t in self.targets)

    def latency_windows(self) -> int:
        """Windows from the input to the output of a windowed code (``L + 1`` for a chain)."""
        from onespike.calibrate import fire_windows

        _, out_window = fire_windows(self.runner, self.relus)
        return out_window + 1

    def count_synapses(self, counts: dict[Node, Tensor], env: dict[Node, object]) -> Ops:
        """ACs and MACs of every region given cumulative spike counts of the spike sources
        (the cost model's :meth:`~onespike.engine.SpikeGraph.synaptic_ops`)."""
        tags: dict[Node, tuple[str, Tensor]] = {}
        for t in self.targets:
            for s in self.regions[t].spike_sources:
                tags[s] = ("events", counts[s]) if self.is_spiking(s) else ("dense", env[s])  # type: ignore[assignment]
        ops = Ops()
        for acs, macs in self.synaptic_ops(tags, self.consts(env)).values():
            ops.acs += acs
            ops.macs += macs
        return ops


def layer_scales(net: CodeNet, x: Tensor, method: str | float) -> dict[Node, float]:
    """Scale of every spiking layer from the ANN's activations on the calibration data ``x``."""
    with torch.no_grad():
        env = net.runner.forward_all(x)
    return {n: rate_code.activation_scale(env[n], method) for n in net.relus}


def _maxpool_indices(runner: Runner, node: Node, value: Tensor) -> Tensor:
    """Flat indices (per channel) of the maximum of each pool window of ``value``."""
    if node.op == "call_module":
        m = runner.modules[node.target]
        fn = F.max_pool1d if isinstance(m, nn.MaxPool1d) else F.max_pool2d
        _, idx = fn(
            value,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            ceil_mode=m.ceil_mode,
            return_indices=True,
        )
        return idx
    args = (value, *node.args[1:])
    kwargs = {k: v for k, v in node.kwargs.items() if k != "return_indices"}
    _, idx = node.target(*args, **kwargs, return_indices=True)
    return idx


def _gather(src: Tensor, idx: Tensor) -> Tensor:
    return src.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)


# --------------------------------------------------------------------------------------
# clocked codes: rate, multi-phase, burst
# --------------------------------------------------------------------------------------
class RateNeurons:
    """IF neurons with reset by subtraction, threshold ``lam``
    (:class:`onespike.engine.ClockedNeurons`). Per neuron and step one add (bias and
    analog current) and one compare, one subtract per spike; output neurons one add."""

    period = 1
    inject_every_step = True

    def __init__(self, scales: dict[Node, float]):
        self.scales = scales
        self.u: dict[Node, Tensor] = {}

    def start(self, shapes: dict[Node, Tensor]) -> None:
        self.u = {n: torch.zeros_like(v) for n, v in shapes.items()}

    def step(self, node: Node, current: Tensor, phase: int) -> tuple[Tensor, Tensor]:
        lam = self.scales[node]
        self.u[node], s = rate_code.if_step(self.u[node], current, lam)
        return s, s * lam

    def neuron_ops(
        self, hidden: int, outputs: int, n: int, spikes: float, phase: int
    ) -> tuple[float, float]:
        return 0.0, 2 * hidden * n + outputs * n + spikes


class BurstNeurons(RateNeurons):
    """Burst neurons (:mod:`onespike.codes.burst`): as rate, plus one multiply per spike
    (the burst factor ``g``)."""

    def __init__(self, scales: dict[Node, float], params: burst_code.BurstParams):
        super().__init__(scales)
        self.params = params
        self.g: dict[Node, Tensor] = {}

    def start(self, shapes: dict[Node, Tensor]) -> None:
        super().start(shapes)
        self.g = {n: torch.ones_like(v) for n, v in shapes.items()}

    def step(self, node: Node, current: Tensor, phase: int) -> tuple[Tensor, Tensor]:
        bp = self.params
        theta = self.scales[node] / bp.g_max
        self.u[node], self.g[node], w = burst_code.burst_step(
            self.u[node], self.g[node], current, theta, bp
        )
        return (w > 0).to(w.dtype), w * theta

    def neuron_ops(
        self, hidden: int, outputs: int, n: int, spikes: float, phase: int
    ) -> tuple[float, float]:
        return spikes, 2 * hidden * n + outputs * n + spikes


class BinaryNeurons(RateNeurons):
    """Binary multi-spike neurons, periods of ``K`` phases (:mod:`onespike.codes.binary`).
    Per neuron and step one multiply (the phase weight) and one compare; per period one
    add (bias and analog current, injected at phase 0); one subtract per spike. Output
    neurons: one multiply per step and one add per period."""

    inject_every_step = False

    def __init__(self, scales: dict[Node, float], period: int):
        super().__init__(scales)
        self.period = period

    def step(self, node: Node, current: Tensor, phase: int) -> tuple[Tensor, Tensor]:
        lam = self.scales[node]
        self.u[node], s = binary_code.neuron_step(self.u[node], current, lam, phase)
        return s, s * (lam * binary_code.phase_weight(phase))

    def neuron_ops(
        self, hidden: int, outputs: int, n: int, spikes: float, phase: int
    ) -> tuple[float, float]:
        every = (hidden + outputs) * n
        return every, hidden * n + spikes + (every if phase == 0 else 0)


def _region_parts(
    net: CodeNet, env0: dict[Node, Tensor], consts: dict[Node, object]
) -> dict[Node, tuple[Tensor, Tensor | None, list[Node], dict[Node, Tensor]]]:
    """Per target region: the constant input it gets at each injection (bias plus the
    analog current), the analog current alone (None without one), its spiking sources,
    and zeros of each spike source's shape."""
    parts = {}
    for t in net.targets:
        reg = net.regions[t]
        zeros = {s: torch.zeros_like(env0[s]) for s in reg.spike_sources}
        bias = net.region_value(reg, zeros, consts, bias=True)
        an = net.analog(reg)
        analog = (
            net.region_value(reg, {**zeros, **{s: env0[s] for s in an}}, consts, bias=False)
            if an
            else None
        )
        const = bias if analog is None else bias + analog
        parts[t] = (const, analog, net.spiking(reg), zeros)
    return parts


@torch.no_grad()
def simulate_clocked(
    net: CodeNet,
    code: ClockedNeurons,
    x: Tensor,
    checkpoints: Sequence[int],
) -> dict[int, tuple[Tensor, Ops]]:
    """Run a clocked code step by step on a batch; ``{t: (output estimate, ops summed)}``.

    All layers update at every step (a spike reaches the next layers in the
    same step), walking the engine's spike nodes in order; ``code`` holds the
    neurons (:class:`RateNeurons`, :class:`BurstNeurons`, :class:`BinaryNeurons`; their
    state is reset here). At each checkpoint ``t`` the output estimate is the output
    layer's accumulated input per step (per period for multi-phase) and the
    ops are those of the first ``t`` steps (checkpoints that are not a whole
    number of multi-phase periods are skipped).
    """
    r = net.runner
    env0 = r.forward_all(x)
    consts = net.consts(env0)
    n = x.shape[0]
    hidden, n_out = net.neurons(env0)
    K = code.period
    parts = _region_parts(net, env0, consts)
    code.start({n_: env0[n_] for n_ in net.relus})
    # what each neuron has sent so far, kept only where a max-pool gates by it
    sent = {node.args[0]: torch.zeros_like(env0[node.args[0]]) for _, node in net.walk("pool")}
    counts = {n_: torch.zeros_like(env0[n_]) for n_ in [*net.relus, *net.derived]}
    out_acc = torch.zeros_like(env0[net.regions[net.output].pre])
    muls = adds = 0.0
    marks = sorted(set(checkpoints))
    results: dict[int, tuple[Tensor, Ops]] = {}

    def current(node: Node, vals: dict[Node, Tensor], inject: bool) -> Tensor:
        """Input of ``node``'s region this step: its sources' spikes (+ bias and analog current)."""
        const, _, spiking, zeros = parts[node]
        cur = (
            net.region_value(
                net.regions[node], {**zeros, **{s: vals[s] for s in spiking}}, consts, bias=False
            )
            if spiking
            else torch.zeros_like(const)
        )
        return cur + const if inject else cur

    for step in range(marks[-1]):
        k = step % K
        inject = code.inject_every_step or k == 0  # bias and analog current this step
        vals: dict[Node, Tensor] = {}
        spk: dict[Node, Tensor] = {}
        for kind, node in net.walk("layer", "pool", "reshape", "output"):
            if kind == "layer":
                spk[node], vals[node] = code.step(node, current(node, vals, inject), k)
            elif kind == "output":
                out_acc += current(node, vals, inject)
                continue
            elif kind == "pool":  # gate: the neuron that sent the most so far
                src = node.args[0]
                idx = _maxpool_indices(r, node, sent[src])
                vals[node] = _gather(vals[src], idx)
                spk[node] = _gather(spk[src], idx)
            else:  # a reshape of spikes
                src = node.args[0]
                vals[node] = net.reshape(node, vals[src], consts)
                spk[node] = net.reshape(node, spk[src], consts)
            if node in sent:
                sent[node] += vals[node]
            counts[node] += spk[node]
        spikes_now = sum(float(spk[n_].sum()) for n_ in net.relus)
        step_muls, step_adds = code.neuron_ops(hidden, n_out, n, spikes_now, k)
        muls += step_muls
        adds += step_adds
        t = step + 1
        if t in marks and t % K == 0:
            ops = net.count_synapses(counts, env0)
            ops.muls, ops.adds = muls, adds
            ops.updates = float(t * (hidden + n_out) * n)
            ops.spikes = sum(float(counts[n_].sum()) for n_ in net.relus)
            results[t] = (out_acc / (t // K), ops)
    return results


# --------------------------------------------------------------------------------------
# windowed codes: TTFS and onespike's phase code
# --------------------------------------------------------------------------------------
@torch.no_grad()
def simulate_windowed(
    net: CodeNet, neurons: dict[Node, FireWindow], x: Tensor, phases: int
) -> tuple[Tensor, Ops]:
    """Run a windowed single-spike code on a batch: ``(output, ops summed over the batch)``.

    Each spiking layer's input at the end of its input window is its region
    evaluated on the decoded spikes of its sources (exact: the region is
    linear and every input spike has arrived); ``neurons[relu]`` (a
    :class:`onespike.engine.FireWindow`) runs the layer's fire window and returns the
    decoded values, the 0/1 spikes and the number of fire-window updates of every
    neuron. Max-pooling passes the earliest (largest) spike. Ops: ACs/MACs from the
    spike counts (the cost model's), one add per neuron and input-window step (hidden
    and output), one add and one compare per fire-window update.
    """
    rec: dict[Node, tuple[Tensor, Tensor]] = {}

    def wrap(node: Node, fn: FireWindow) -> Callable[[Tensor], Tensor]:
        def f(pre: Tensor) -> Tensor:
            value, spikes, upd = fn(pre)
            rec[node] = (spikes, upd)
            return value

        return f

    runner = Runner(net.traced.module, {n: wrap(n, neurons[n]) for n in net.relus})
    env = runner.forward_all(x)
    consts = net.consts(env)
    counts: dict[Node, Tensor] = {}
    for kind, node in net.walk("layer", "pool", "reshape"):
        if kind == "layer":
            counts[node] = rec[node][0]
        elif kind == "pool":  # the first spike of each pool window passes
            src = env[node.args[0]]  # decoded values: positive where a neuron spiked
            counts[node] = pc.maxpool_spikes(runner.on_input(node, env), src).to(x.dtype)  # type: ignore[arg-type]
        else:
            counts[node] = net.reshape(node, counts[node.args[0]], consts)
    ops = net.count_synapses(counts, env)
    hidden, n_out = net.neurons(env)
    n = x.shape[0]
    fire = sum(float(rec[n_][1].sum()) for n_ in net.relus)
    ops.adds = float(phases * (hidden + n_out) * n) + 2 * fire
    ops.updates = float(phases * (hidden + n_out) * n) + fire
    ops.spikes = sum(float(counts[n_].sum()) for n_ in net.relus)
    return env[net.output], ops  # type: ignore[return-value]


def ttfs_neurons(
    net: CodeNet, scales: dict[Node, float], phases: int, threshold_shift: bool = True
) -> dict[Node, NeuronFn]:
    """TTFS fire windows (step by step, :func:`onespike.codes.ttfs.fire`) of every layer."""

    def make(lam: float) -> NeuronFn:
        def f(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            phase, upd = ttfs_code.fire(pre / lam, phases, threshold_shift=threshold_shift)
            value = ttfs_code.decode(phase, phases, lam).to(pre.dtype)
            return value, (phase >= 0).to(pre.dtype), upd.to(pre.dtype)

        return f

    return {n: make(scales[n]) for n in net.relus}


def onespike_neurons(net: CodeNet, snn: object) -> dict[Node, FireWindow]:
    """onespike's layers (from a converted network's plan) as windowed neurons (analog input):
    :func:`onespike.engine.phase_window`, the phase code of the library."""
    plan = snn.plan  # type: ignore[attr-defined]
    if plan.input_coding != "analog":
        raise OptionError("only the analog input coding is supported here")
    return {n: phase_window(lp) for n, lp in zip(net.relus, plan.layers)}


__all__ = [
    "BinaryNeurons",
    "BurstNeurons",
    "CodeNet",
    "RateNeurons",
    "layer_scales",
    "onespike_neurons",
    "simulate_clocked",
    "simulate_windowed",
    "ttfs_neurons",
]
