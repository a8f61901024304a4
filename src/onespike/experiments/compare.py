"""Side by side: onespike's single-spike code against other spike codes, one ANN, one cost model.

Every code is converted from the same trained ANN (BatchNorm folded by
:func:`onespike.trace.trace`), with scales taken from the same calibration
data, run on the same test images, and counted by the library's engine
(:mod:`onespike.engine`, which :func:`onespike.cost` uses too): the same walk over the
graph (:class:`~onespike.engine.SpikeGraph`), one accumulate (AC) per spike and
outgoing synapse (:func:`~onespike.engine.count_region` with the real spike counts),
one MAC per synapse of a layer fed analog values, the neuron updates of each code (its
:class:`~onespike.engine.ClockedNeurons` or :class:`~onespike.engine.FireWindow`), and
the one energy formula (:class:`~onespike.accounting.Ops`). The codes:

``onespike``
    the package's own single-spike phase code: :func:`onespike.convert` at
    every window ``T``, evaluated by :func:`onespike.evaluate.evaluate` and
    counted by :func:`onespike.accounting.cost`.
``onespike-refined``
    the same code after learned refinement: the ``onespike`` network of the same
    window (one conversion serves both rows), refined by :func:`onespike.refine`
    with its defaults on the same calibration data (what ``onespike.convert(...,
    refine=True)`` makes), then evaluated and counted the same way, on the refined
    network's own spikes. Refinement costs minutes per window on a deep network, so
    these rows run at the windows of :data:`REFINE_PHASES` that fit ``max_steps``
    unless told otherwise.
``rate-max``, ``rate-p99.9``
    rate coding, IF neurons with reset by subtraction
    (:mod:`onespike.codes.rate`), threshold = the layer's maximum activation
    or its 99.9th percentile.
``multiphase-K4``, ``multiphase-K8``
    multi-spike base-2 phase coding, weighted spikes with periods of ``K``
    phases (code kind ``binary``, :mod:`onespike.codes.binary`), scale = 99.9th
    percentile.
``burst``
    burst coding (:mod:`onespike.codes.burst`), scale = 99.9th percentile.
``ttfs``
    time-to-first-spike, one spike whose latency is the value, linearly
    (:mod:`onespike.codes.ttfs`), scale = 99.9th percentile.

Time (the simulators are the library's, :mod:`onespike.simulate_codes`). The rate,
multi-phase and burst codes are *clocked*: every layer runs
at every step, a spike reaches the next layers within the same step, and the
output after ``t`` steps is the output layer's accumulated input divided by
``t`` (by the number of periods for multi-phase). A run of 256 steps therefore
gives the result of every shorter run (the dynamics do not depend on the
length of the run), and its latency is ``t`` steps. onespike and TTFS are
*windowed*: each layer listens for a window of ``T`` steps and fires in the
next, so the latency is ``(L + 1) * T`` for ``L`` spiking layers in a chain.
"Steps" below always means latency, the steps from the first input to the
output.

Input. Every code takes the input as an analog current into the first layer
(onespike's default): the first layer's input current is computed once (one
MAC per synapse, as in the ANN) and added to the membranes every step (every
period for multi-phase, where the current and the biases are injected at
phase 0 and the spikes of each period carry one value).

Max-pooling of spikes. The single-spike codes pool exactly (earliest spike =
largest value). The clocked codes pass, at each step, the spikes of the
neuron with the largest value sent so far in the pool window (the gating of
Rueckauer et al. 2017).

Neuron updates (one membrane memory access each, as in onespike's model;
compare = add):

- rate: per neuron and step, one add (bias and analog current) and one
  compare; one subtract per spike. Output neurons: one add per step.
- burst: as rate, plus one multiply per spike (the burst factor ``g``).
- multi-phase: per neuron and step, one multiply (the membrane is scaled by
  the phase weight, as onespike's membrane by its base) and one compare;
  per period one add (bias and analog current); one subtract per spike.
  Output neurons: one multiply per step and one add per period.
- TTFS: input window, one add per step (the membrane integrates the held
  synaptic current); fire window, one add (the ramp) and one compare per step
  until the neuron fires. Output neurons: one add per input-window step.
- onespike: :func:`onespike.accounting.cost` (multiplies by the base in the
  input window; multiply and compare per fire-window step).

Energy: ACs x 0.9 + MACs x 4.6 + multiplies x 3.7 + adds x 0.9 pJ (compute
only), plus 5 pJ per AC, MAC and neuron update with memory access; ANN: MACs x
4.6 (+ 5 pJ each). The ratio is ANN / SNN.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from onespike._io import read_resume_json, write_json
from onespike.accounting import E_ADD, E_MAC, E_MEM, E_MUL, Ops, ann_energy, energy_ratio
from onespike.codes import burst as burst_code
from onespike.data import SUBSETS, calibration_set, load_dataset, subset_indices
from onespike.engine import ClockedNeurons
from onespike.errors import OnespikeError, OptionError, run_command
from onespike.experiments.compare_plot import plot
from onespike.models import resolve_model
from onespike.provenance import source_version
from onespike.simulate_codes import (
    BinaryNeurons,
    BurstNeurons,
    CodeNet,
    RateNeurons,
    layer_scales,
    simulate_clocked,
    simulate_windowed,
    ttfs_neurons,
)
from onespike.trace import trace

Node = fx.Node
Tensor = torch.Tensor

KINDS = ("onespike", "rate", "binary", "burst", "ttfs")
CLOCK_STEPS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
WINDOW_PHASES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)
REFINE_PHASES: tuple[int, ...] = (4, 6, 8, 12)  # windows of the onespike-refined rows
TOLERANCES: tuple[float, ...] = (0.5, 0.1)
IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10")
GRAPH_DATASETS = ("cora", "citeseer")


# --------------------------------------------------------------------------------------
# codes
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodeSpec:
    """One code of the comparison and its parameters."""

    name: str
    kind: str  # one of KINDS
    scale: str | float = 99.9  # "max" or a percentile of the positive activations
    period: int = 8  # binary (multi-phase): phases per period
    beta: float = 2.0  # burst constant
    max_burst: int = 5  # burst: spikes of growing weight at most
    threshold_shift: bool = True  # TTFS: round to the nearest level (onespike's threshold shift)
    refine: bool = False  # onespike: refine the converted network (onespike.refine defaults)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OptionError(f"unknown code kind {self.kind!r}; choose one of {KINDS}")

    @property
    def clocked(self) -> bool:
        return self.kind in ("rate", "binary", "burst")

    def describe(self) -> dict:
        d: dict = {"kind": self.kind}
        if self.kind != "onespike":
            d["scale"] = self.scale
        if self.kind == "binary":
            d["period"] = self.period
        if self.kind == "burst":
            p = burst_code.BurstParams(self.beta, self.max_burst)
            d.update(beta=self.beta, max_burst=self.max_burst, theta="scale / g_max", g_max=p.g_max)
        if self.kind == "ttfs":
            d["threshold_shift"] = self.threshold_shift
        if self.kind == "onespike":
            d["convert"] = "onespike.convert defaults (base and scale searched per layer)"
            if self.refine:
                from onespike.refine import RefineConfig

                d["refine"] = RefineConfig().describe()  # onespike.refine's defaults
        return d


CODES: dict[str, CodeSpec] = {
    c.name: c
    for c in (
        CodeSpec("onespike", "onespike"),
        CodeSpec("onespike-refined", "onespike", refine=True),
        CodeSpec("rate-max", "rate", scale="max"),
        CodeSpec("rate-p99.9", "rate", scale=99.9),
        CodeSpec("multiphase-K4", "binary", period=4),
        CodeSpec("multiphase-K8", "binary", period=8),
        CodeSpec("burst", "burst"),
        CodeSpec("ttfs", "ttfs"),
    )
}


def parse_codes(spec: str | Sequence[str]) -> list[CodeSpec]:
    """Code specs from names (``"all"`` or a comma list of :data:`CODES` keys)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    if names == ["all"]:
        return list(CODES.values())
    out = []
    for n in names:
        n = n.strip()
        if n not in CODES:
            raise OptionError(f"unknown code {n!r}; choose from {', '.join(CODES)} or 'all'")
        out.append(CODES[n])
    return out


# --------------------------------------------------------------------------------------
# results (operations and energy: onespike.accounting.Ops, the cost model's formula)
# --------------------------------------------------------------------------------------
@dataclass
class Point:
    """One code at one length: accuracy, spikes and energy per inference."""

    steps: int  # latency in steps
    window: int | None  # T of a windowed code (None for clocked codes)
    accuracy: float  # percent
    agreement: float  # percent of predictions equal to the ANN's
    spikes_per_neuron: float
    ops: dict
    energy_compute_pj: float
    energy_total_pj: float
    energy_ratio_compute: float
    energy_ratio_total: float


@dataclass
class CodeResult:
    """All points of one code (increasing steps)."""

    name: str
    params: dict
    points: list[Point] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# the neurons of the clocked codes
# --------------------------------------------------------------------------------------
def clocked_neurons(spec: CodeSpec, scales: dict[Node, float]) -> ClockedNeurons:
    """The neurons of a clocked code (:class:`onespike.engine.ClockedNeurons`)."""
    if spec.kind == "rate":
        return RateNeurons(scales)
    if spec.kind == "binary":
        return BinaryNeurons(scales, spec.period)
    if spec.kind == "burst":
        return BurstNeurons(scales, burst_code.BurstParams(spec.beta, spec.max_burst))
    raise OptionError(f"code {spec.name!r} ({spec.kind}) is not clocked")


@dataclass
class _Tally:
    correct: int = 0
    agree: int = 0
    ops: Ops = field(default_factory=Ops)


# --------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@dataclass(frozen=True)
class _Task:
    """The rows every code runs on, how they are scored, and the ANN's figures to compare with.

    ``mask`` marks the scored rows (every row is simulated and counted);
    ``hidden`` and ``ann_macs`` are per row.
    """

    x: Tensor
    y: Tensor
    ann_pred: Tensor
    mask: Tensor
    max_steps: int
    batch_size: int
    hidden: int
    ann_macs: float
    progress: bool = True

    def batches(self) -> list[slice]:
        return _batches(self.x.shape[0], self.batch_size)

    def window_grid(self, windows: int) -> list[int]:
        """The windows ``T`` of :data:`WINDOW_PHASES` whose latency is at most ``max_steps``."""
        return [T for T in WINDOW_PHASES if T * windows <= self.max_steps]

    def score(self, tally: _Tally, sl: slice, out: Tensor, ops: Ops | None = None) -> None:
        """Add the correct and ANN-agreeing predictions of scored rows in ``sl`` (and ``ops``)."""
        pred = out.argmax(1)
        mask = self.mask[sl]
        tally.correct += int(((pred == self.y[sl]) & mask).sum())
        tally.agree += int(((pred == self.ann_pred[sl]) & mask).sum())
        if ops is not None:
            tally.ops += ops

    def point(self, steps: int, window: int | None, tally: _Tally) -> Point:
        """A point from a tally: accuracy over the scored rows, ops per row."""
        n_eval = int(self.mask.sum())
        per = tally.ops.scaled(1.0 / self.x.shape[0])
        ann_c, ann_t = ann_energy(self.ann_macs)
        ec, et = per.energy_compute(), per.energy_total()
        return Point(
            steps=steps,
            window=window,
            accuracy=100.0 * tally.correct / n_eval,
            agreement=100.0 * tally.agree / n_eval,
            spikes_per_neuron=per.spikes / self.hidden if self.hidden else 0.0,
            ops=asdict(per),
            energy_compute_pj=ec,
            energy_total_pj=et,
            energy_ratio_compute=energy_ratio(ann_c, ec),
            energy_ratio_total=energy_ratio(ann_t, et),
        )


def run_clocked(
    net: CodeNet, spec: CodeSpec, scales: dict[Node, float], task: _Task
) -> list[Point]:
    """Points of a clocked code at every checkpoint up to ``task.max_steps``."""
    K = spec.period if spec.kind == "binary" else 1
    marks = [t for t in CLOCK_STEPS if t <= task.max_steps and t % K == 0]
    tallies = {t: _Tally() for t in marks}
    for sl in tqdm(task.batches(), desc=spec.name, disable=not task.progress):
        for t, (out, ops) in simulate_clocked(
            net, clocked_neurons(spec, scales), task.x[sl], marks
        ).items():
            task.score(tallies[t], sl, out, ops)
    return [task.point(t, None, tl) for t, tl in tallies.items()]


def run_ttfs(net: CodeNet, spec: CodeSpec, scales: dict[Node, float], task: _Task) -> list[Point]:
    """Points of TTFS at every window whose latency is at most ``task.max_steps``."""
    windows = net.latency_windows()
    points = []
    for T in tqdm(task.window_grid(windows), desc=spec.name, disable=not task.progress):
        neurons = ttfs_neurons(net, scales, T, spec.threshold_shift)
        tl = _Tally()
        for sl in task.batches():
            task.score(tl, sl, *simulate_windowed(net, neurons, task.x[sl], T))
        points.append(task.point(T * windows, T, tl))
    return points


def onespike_ops(report: object) -> Ops:
    """The per-inference figures of an :class:`onespike.accounting.CostReport` as :class:`Ops`."""
    rows = report.layers  # type: ignore[attr-defined]
    in_mul = sum(r.input_updates for r in rows)
    in_add = sum(r.input_adds for r in rows)
    fire = sum(r.fire_updates for r in rows)
    return Ops(
        acs=sum(r.snn_acs for r in rows),
        macs=sum(r.snn_macs for r in rows),
        muls=in_mul + fire,
        adds=in_add + fire,
        updates=in_mul + in_add + fire,
        spikes=sum(r.spikes for r in rows if r.name != "output"),
    )


def refine_windows(windows: int, max_steps: int, phases: Sequence[int] | None = None) -> list[int]:
    """The windows ``T`` of the ``onespike-refined`` rows: ``phases`` if given, else those
    of :data:`REFINE_PHASES` whose latency (``windows * T`` steps) is at most ``max_steps``."""
    if phases:
        return list(phases)
    return [T for T in REFINE_PHASES if T * windows <= max_steps]


class Conversions:
    """onespike's networks by window ``T``, each converted once (:func:`onespike.convert`
    with its defaults) and shared by the ``onespike`` and ``onespike-refined`` rows; a
    failed conversion is remembered and raised again."""

    def __init__(self, ann: nn.Module, xc: Tensor):
        self.ann, self.xc = ann, xc
        self._made: dict[int, object] = {}

    def get(self, T: int) -> object:
        from onespike.convert import convert

        if T not in self._made:
            try:
                self._made[T] = convert(self.ann, self.xc, phases=T, progress=False)
            except OnespikeError as e:  # a window too short for the search, say
                self._made[T] = e
        made = self._made[T]
        if isinstance(made, OnespikeError):
            raise made
        return made


def _refine_brief(snn: object) -> dict:
    """What :func:`onespike.refine` recorded in the plan, without its configuration."""
    from onespike.refine import RefineConfig

    info = snn.plan.search["refine"]  # type: ignore[attr-defined]
    return {k: v for k, v in info.items() if k not in RefineConfig.__dataclass_fields__}


def run_onespike(
    ann: nn.Module,
    net: CodeNet,
    xc: Tensor,
    task: _Task,
    phases: Sequence[int] | None = None,
    errors: list[str] | None = None,
    *,
    refine: bool = False,
    conversions: Conversions | None = None,
    refined: dict[int, dict] | None = None,
) -> list[Point]:
    """Points of onespike: :func:`onespike.convert` at each window (``conversions``: the
    networks already made), with ``refine`` refined by :func:`onespike.refine` (its
    defaults, on ``xc``), evaluated and costed on the network itself. ``refined``
    receives what each refinement recorded, by window."""
    from onespike.evaluate import evaluate
    from onespike.refine import refine as refine_network

    conversions = conversions if conversions is not None else Conversions(ann, xc)
    grid = list(phases) if phases is not None else task.window_grid(net.latency_windows())
    points = []
    desc = "onespike-refined" if refine else "onespike"
    for T in tqdm(grid, desc=desc, disable=not task.progress):
        try:
            snn = conversions.get(T)
            if refine:
                snn = refine_network(snn, ann, xc, progress=False)  # type: ignore[arg-type]
        except OnespikeError as e:  # a window too short for the search, say
            if errors is not None:
                errors.append(f"T={T}: {e}")
            continue
        if refine and refined is not None:
            refined[T] = _refine_brief(snn)
        # the ANN's predictions are known: evaluate runs the network and its cost only
        res = evaluate(
            None, snn, task.x, task.y, batch_size=task.batch_size, step=False, progress=False
        )
        tl = _Tally(ops=onespike_ops(res.cost).scaled(task.x.shape[0]))
        with torch.no_grad():
            for sl in task.batches():
                task.score(tl, sl, snn(task.x[sl]))
        points.append(task.point(snn.plan.latency_steps, T, tl))  # type: ignore[attr-defined]
    return points


def first_within(points: Sequence[Point], target: float) -> Point | None:
    """The first point (fewest steps) whose accuracy is at least ``target``."""
    for p in sorted(points, key=lambda p: p.steps):
        if p.accuracy >= target - 1e-9:
            return p
    return None


def settled_within(points: Sequence[Point], target: float) -> Point | None:
    """The first point from which every longer run has accuracy at least ``target``."""
    found = None
    for p in sorted(points, key=lambda p: p.steps, reverse=True):
        if p.accuracy < target - 1e-9:
            break
        found = p
    return found


def _brief(p: Point | None) -> dict | None:
    if p is None:
        return None
    return {
        "steps": p.steps,
        "window": p.window,
        "accuracy": p.accuracy,
        "spikes_per_neuron": p.spikes_per_neuron,
        "energy_ratio_compute": p.energy_ratio_compute,
        "energy_ratio_total": p.energy_ratio_total,
    }


def summarize(result: dict, tolerances: Sequence[float] = TOLERANCES) -> list[dict]:
    """For each code and tolerance, where it comes within ``tol`` points of the ANN.

    ``within_{tol}``: the first run (fewest steps) from which every longer run
    is within ``tol`` (the steps the code *needs*); ``first_within_{tol}``: the
    first run that is within, even if a longer one falls out again. Each gives
    steps, spikes per neuron and energy ratio there; None: not within ``tol`` at
    the longest run.
    """
    ann = result["ann_accuracy"]
    rows = []
    for name, c in result["codes"].items():
        pts = [Point(**p) for p in c["points"]]
        row: dict = {"code": name}
        for tol in tolerances:
            row[f"within_{tol:g}"] = _brief(settled_within(pts, ann - tol))
            row[f"first_within_{tol:g}"] = _brief(first_within(pts, ann - tol))
        best = max(pts, key=lambda p: (p.accuracy, -p.steps)) if pts else None
        row["best"] = None if best is None else {"steps": best.steps, "accuracy": best.accuracy}
        row["max_steps_run"] = max((p.steps for p in pts), default=0)
        rows.append(row)
    return rows


def _setup(
    ann: nn.Module,
    xc: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    max_steps: int,
    batch_size: int,
    eval_idx: Tensor | None,
    progress: bool,
) -> tuple[CodeNet, _Task, dict]:
    """The traced network, the task every code runs, and the result's ANN figures."""
    from onespike.calibrate import batch_independent

    net = CodeNet(trace(ann.eval()))
    n = x.shape[0]
    samples_interact = not batch_independent(net.runner)  # a graph model: one batch
    if samples_interact:
        batch_size = n
    mask = torch.zeros(n, dtype=torch.bool)
    mask[eval_idx if eval_idx is not None else slice(None)] = True
    with torch.no_grad():
        ann_pred = torch.cat([ann(x[sl]).argmax(1) for sl in _batches(n, batch_size)])
        probe_x = x if samples_interact else x[:2]
        probe = net.runner.forward_all(probe_x)
        hidden, n_out = net.neurons(probe)
        ann_macs = net.ann_macs(probe) / probe_x.shape[0]
    ann_acc = 100.0 * int(((ann_pred == y) & mask).sum()) / int(mask.sum())
    out: dict = {
        "samples": int(mask.sum()),
        "rows_simulated": n,
        "calibration_samples": int(xc.shape[0]),
        "ann_accuracy": ann_acc,
        "ann_macs": ann_macs,
        "ann_energy_compute_pj": ann_energy(ann_macs)[0],
        "ann_energy_total_pj": ann_energy(ann_macs)[1],
        "hidden_neurons": hidden,
        "output_neurons": n_out,
        "spiking_layers": len(net.relus),
        "latency_windows": net.latency_windows(),
        "max_steps": max_steps,
        "unit_energy_pj": {"add": E_ADD, "mul": E_MUL, "mac": E_MAC, "mem": E_MEM},
        "codes": {},
    }
    task = _Task(x, y, ann_pred, mask, max_steps, batch_size, hidden, ann_macs, progress)
    return net, task, out


def _run_onespike_code(
    cr: CodeResult,
    spec: CodeSpec,
    ann: nn.Module,
    net: CodeNet,
    xc: Tensor,
    task: _Task,
    conversions: Conversions,
    grid: Sequence[int] | None,
) -> None:
    """The ``onespike`` or ``onespike-refined`` rows into ``cr`` (points, errors, and what
    each refinement recorded)."""
    refined: dict[int, dict] = {}
    cr.points = run_onespike(
        ann,
        net,
        xc,
        task,
        phases=grid,
        errors=cr.errors,
        refine=spec.refine,
        conversions=conversions,
        refined=refined,
    )
    if spec.refine:
        cr.params["refined"] = {str(T): r for T, r in refined.items()}
        if not grid:
            cr.errors.append(
                f"no window of {REFINE_PHASES} fits {task.max_steps} steps "
                f"({net.latency_windows()} windows per run); pass refine_phases"
            )


def compare(
    ann: nn.Module,
    xc: Tensor,
    x: Tensor,
    y: Tensor,
    codes: Sequence[CodeSpec],
    *,
    max_steps: int = 256,
    batch_size: int = 500,
    onespike_phases: Sequence[int] | None = None,
    refine_phases: Sequence[int] | None = None,
    eval_idx: Tensor | None = None,
    progress: bool = True,
    done: dict[str, dict] | None = None,
    on_code: Callable[[dict], None] | None = None,
) -> dict:
    """Run every code on ``(x, y)`` after calibrating on ``xc``; the JSON-ready result.

    ``done``: results of codes already run (the ``"codes"`` of an earlier, stopped run
    with the same settings), taken as they are instead of running those codes again;
    ``on_code(result_so_far)`` is called after each code (the CLI saves it, so that a
    stopped run resumes with ``--resume``).

    ``onespike_phases``: the windows ``T`` of the ``onespike`` rows (default: every
    window of :data:`WINDOW_PHASES` whose latency fits ``max_steps``);
    ``refine_phases``: those of the ``onespike-refined`` rows (default: the windows of
    :data:`REFINE_PHASES` that fit ``max_steps``).

    ``eval_idx``: score only these rows (the test nodes of a graph); every row
    is still simulated and counted. A model whose rows interact (a fixed
    matrix such as a GCN's adjacency mixes them) runs as one batch, and its
    figures per inference are per row (per node), as in onespike's cost model.
    """
    net, task, out = _setup(
        ann,
        xc,
        x,
        y,
        max_steps=max_steps,
        batch_size=batch_size,
        eval_idx=eval_idx,
        progress=progress,
    )
    scale_cache: dict[str | float, dict[Node, float]] = {}
    conversions = Conversions(ann, xc)
    refine_grid = refine_windows(net.latency_windows(), max_steps, refine_phases)
    for spec in codes:
        if done and spec.name in done:
            out["codes"][spec.name] = done[spec.name]
            continue
        t0 = time.time()
        cr = CodeResult(spec.name, spec.describe())
        if spec.kind == "onespike":
            grid = refine_grid if spec.refine else (onespike_phases or None)
            _run_onespike_code(cr, spec, ann, net, xc, task, conversions, grid)
        else:
            if spec.scale not in scale_cache:
                scale_cache[spec.scale] = layer_scales(net, xc, spec.scale)
            scales = scale_cache[spec.scale]
            cr.params["layer_scales"] = [scales[n] for n in net.relus]
            run = run_clocked if spec.clocked else run_ttfs
            cr.points = run(net, spec, scales, task)
        cr.seconds = time.time() - t0
        out["codes"][spec.name] = {
            "params": cr.params,
            "points": [asdict(p) for p in cr.points],
            "seconds": cr.seconds,
            "errors": cr.errors,
        }
        if on_code is not None:
            on_code(out)
    out["summary"] = summarize(out)
    return out


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------
def _fmt(p: dict | None, key: str, fmt: str) -> str:
    return "never" if p is None else format(p[key], fmt)


def markdown_table(result: dict) -> str:
    """The summary as a Markdown table (one row per code).

    For each tolerance: steps, spikes per neuron and energy ratio (ANN / SNN,
    compute only) of the first run within it, and the steps from which every
    longer run stays within it ("never": not within at the longest run).
    """
    head = (
        "| code | 0.5: steps | spikes/neuron | energy ratio | stays from | "
        "0.1: steps | spikes/neuron | energy ratio | stays from | best accuracy (steps) |"
    )
    lines = [head, "|" + "---|" * 10]
    for row in result["summary"]:
        cells = [row["code"]]
        for tol in TOLERANCES:
            first, settled = row[f"first_within_{tol:g}"], row[f"within_{tol:g}"]
            cells += [
                _fmt(first, "steps", "d"),
                _fmt(first, "spikes_per_neuron", ".3f"),
                _fmt(first, "energy_ratio_compute", ".2f"),
                _fmt(settled, "steps", "d"),
            ]
        best = row["best"]
        cells.append("-" if best is None else f"{best['accuracy']:.2f} ({best['steps']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(result: dict, budgets: Sequence[int] = (8, 16, 32, 64, 128, 256)) -> str:
    """Accuracy and spikes per neuron of each code within latency budgets (Markdown).

    For each budget the longest run of the code that fits it (steps <= budget)
    is shown, as ``accuracy / spikes per neuron``; ``-`` where none fits.
    """
    head = "| code | " + " | ".join(f"<= {b} steps" for b in budgets) + " |"
    lines = [head, "|---|" + "---|" * len(budgets)]
    ann = result["ann_accuracy"]
    lines.append("| ANN | " + " | ".join(f"{ann:.2f}" for _ in budgets) + " |")
    for name, c in result["codes"].items():
        cells = []
        for b in budgets:
            fit = [p for p in c["points"] if p["steps"] <= b]
            if not fit:
                cells.append("-")
                continue
            p = max(fit, key=lambda q: q["steps"])
            cells.append(f"{p['accuracy']:.2f} / {p['spikes_per_neuron']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def energy_table(result: dict, tol: float = 0.5) -> str:
    """Where the energy goes (Markdown): each code's operations per inference, and their
    energy in uJ (compute only), at its first run within ``tol`` points of the ANN."""
    head = (
        "| code | steps | ACs | MACs | multiplies | adds | neuron updates | "
        "uJ: ACs | MACs | mult. | adds | total | ratio |"
    )
    lines = [head, "|---|" + "---|" * 12]
    ann = result["ann_accuracy"]
    for name, c in result["codes"].items():
        p = first_within([Point(**q) for q in c["points"]], ann - tol)
        if p is None:
            lines.append(f"| {name} | never |" + " |" * 11)
            continue
        o = p.ops
        uj = [o["acs"] * E_ADD, o["macs"] * E_MAC, o["muls"] * E_MUL, o["adds"] * E_ADD]
        lines.append(
            f"| {name} | {p.steps} | {o['acs']:,.0f} | {o['macs']:,.0f} | {o['muls']:,.0f} | "
            f"{o['adds']:,.0f} | {o['updates']:,.0f} | "
            + " | ".join(f"{v / 1e6:.3f}" for v in uj)
            + f" | {sum(uj) / 1e6:.3f} | {p.energy_ratio_compute:.2f} |"
        )
    lines.append(
        f"| ANN | - | - | {result['ann_macs']:,.0f} | - | - | - | - | "
        f"{result['ann_energy_compute_pj'] / 1e6:.3f} | - | - | "
        f"{result['ann_energy_compute_pj'] / 1e6:.3f} | 1 |"
    )
    return "\n".join(lines)


def report(paths: Sequence[str | Path]) -> str:
    """Markdown of saved comparison results: for each file, the summary and budget tables."""
    parts = []
    for path in paths:
        r = json.loads(Path(path).read_text())
        r["summary"] = summarize(r)  # from the points, with this version's definitions
        parts += [
            f"### {r.get('model', '?')} on {r.get('dataset', '?')} ({Path(path).name})",
            "",
            f"ANN accuracy {r['ann_accuracy']:.2f} % on {r['samples']} test samples; "
            f"ANN {r['ann_macs']:,.0f} MACs, {r['ann_energy_compute_pj'] / 1e6:.4f} uJ per "
            f"inference (compute only); {r['spiking_layers']} spiking layers, "
            f"{r['hidden_neurons']:,} hidden neurons per sample (per node for a graph); "
            f"latency of a windowed code = {r['latency_windows']} x T steps.",
            "",
            "Where each code comes within 0.5 / 0.1 points of the ANN: the first run within "
            "(its latency in steps, spikes per hidden neuron, energy ratio ANN / SNN compute "
            "only) and the steps from which every longer run stays within:",
            "",
            markdown_table(r),
            "",
            "Accuracy (%) / spikes per neuron of the longest run within each latency budget:",
            "",
            budget_table(r),
            "",
            "Operations per inference and their energy at each code's first run within 0.5 points:",
            "",
            energy_table(r),
            "",
        ]
        errs = [f"{n}: {e}" for n, c in r["codes"].items() for e in c.get("errors", [])]
        if errs:
            parts += ["Skipped: " + "; ".join(errs), ""]
    return "\n".join(parts)


def text_table(result: dict) -> str:
    """Every point of every code, for the terminal."""
    lines = [
        f"ANN accuracy {result['ann_accuracy']:.2f} % on {result['samples']} test samples; "
        f"ANN energy {result['ann_energy_compute_pj'] / 1e6:.3f} uJ (compute only)",
        f"{'code':16s} {'steps':>6s} {'T':>4s} {'acc %':>7s} {'agree %':>8s} "
        f"{'spk/neuron':>10s} {'E ratio':>8s} {'E ratio mem':>11s}",
    ]
    for name, c in result["codes"].items():
        for p in c["points"]:
            w = "" if p["window"] is None else str(p["window"])
            lines.append(
                f"{name:16s} {p['steps']:6d} {w:>4s} {p['accuracy']:7.2f} {p['agreement']:8.2f} "
                f"{p['spikes_per_neuron']:10.3f} {p['energy_ratio_compute']:8.2f} "
                f"{p['energy_ratio_total']:11.2f}"
            )
        for e in c.get("errors", []):
            lines.append(f"{name:16s} skipped: {e}")
    lines += ["", markdown_table(result)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line (``onespike compare``)
# --------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``onespike compare``."""
    p.add_argument(
        "--model",
        required=True,
        help="a shipped model name (e.g. mnist_cnn) or package.module:function",
    )
    p.add_argument("--dataset", choices=(*IMAGE_DATASETS, *GRAPH_DATASETS), required=True)
    p.add_argument("--codes", default="all", help=f"all or a comma list of {', '.join(CODES)}")
    p.add_argument("--max-steps", type=int, default=256, help="longest latency run (steps)")
    p.add_argument("--onespike-phases", default=None, help="comma list of T (default: a grid)")
    p.add_argument(
        "--refine-phases",
        default=None,
        help="comma list of T of the onespike-refined rows (default: "
        f"{','.join(map(str, REFINE_PHASES))}, those that fit --max-steps; refinement costs "
        "about 3-4 minutes per T on ResNet-20 on one core, so not every T of the grid); "
        "each reuses the onespike row's conversion at that T",
    )
    p.add_argument("--calibration", type=int, default=1000, help="calibration images")
    p.add_argument("--test", type=int, default=None, help="only N test images (see --subset)")
    p.add_argument(
        "--subset",
        choices=SUBSETS,
        default="first",
        help="which test images --test takes: the first N, or a fixed random N (seed 0; "
        "use it for CIFAR-10, stored sorted by class)",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default="compare_results", help="folder for the JSON and PNGs")
    p.add_argument("--prefix", default=None, help="file name prefix (default: model_dataset)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--resume",
        action="store_true",
        help="the JSON is rewritten after every code; with --resume, a stopped run's JSON "
        "(same settings) is read and the codes it finished are not run again",
    )
    p.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="JSON",
        help="the JSON of another run with the same settings (for example a second process "
        "given other --codes and another --prefix): the codes it finished are taken as "
        "done, as with --resume; repeatable",
    )


def load_graph_task(model: str, dataset: str) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A shipped GCN and its graph: ``(ann, features, labels, test node ids)``.

    ``model`` is ``gcn`` or ``gcn_res``, with or without the ``_{dataset}`` suffix
    of its weight file.
    """
    from onespike.models.gcn import load_pretrained_gcn

    kind = model.removesuffix(f"_{dataset}")
    ann, graph = load_pretrained_gcn(kind, dataset)
    return ann, graph.features, graph.labels, graph.test_idx


def main(args: argparse.Namespace) -> int:
    """``onespike compare``: run, print the table, write JSON and PNGs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    source = source_version()  # at the start: the code this run loads
    codes = parse_codes(args.codes)
    ann, xc, where, x, y, eval_idx = _load_task(args)
    print(f"calibration: {where}", flush=True)
    phases = [int(t) for t in args.onespike_phases.split(",")] if args.onespike_phases else None
    refine_phases = [int(t) for t in args.refine_phases.split(",")] if args.refine_phases else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or f"{Path(args.model.split(':')[-1]).name}_{args.dataset}"
    jpath = out / f"{prefix}.json"
    # what must match for a stopped run's finished codes to be reused
    settings = {
        "model": args.model,
        "dataset": args.dataset,
        "calibration": args.calibration,
        "seed": args.seed,
        "test": args.test,
        "subset": args.subset,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "onespike_phases": phases,
        "refine_phases": refine_phases,
    }
    done, spent = _finished_codes(args, jpath, settings)

    def finish(result: dict, complete: bool) -> dict:
        result.update(
            model=args.model,
            dataset=args.dataset,
            calibration=where,
            test_subset=args.test,
            subset=args.subset if args.test is not None else None,
            seconds=time.time() - t0 + spent,
            threads=torch.get_num_threads(),
            source=source,
            torch=torch.__version__,
            settings=settings,
            complete=complete,
        )
        return result

    def save_partial(partial: dict) -> None:
        write_json(jpath, finish(dict(partial), False), indent=1)

    result = compare(
        ann,
        xc,
        x,
        y,
        codes,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        onespike_phases=phases,
        refine_phases=refine_phases,
        eval_idx=eval_idx,
        done=done,
        on_code=save_partial,
    )
    finish(result, True)
    print(text_table(result))
    write_json(jpath, result, indent=1)
    print(f"wrote {jpath}")
    if not args.no_plots:
        title = f"{args.model} on {args.dataset} ({result['samples']} test samples)"
        for p in plot(result, out, prefix, title):
            print(f"wrote {p}")
    return 0


def _load_task(args: argparse.Namespace) -> tuple:
    """``(ann, xc, where, x, y, eval_idx)``: the model, its calibration inputs and where
    they come from, the test rows and labels, and the scored rows (a graph's test nodes;
    None: all)."""
    if args.dataset in GRAPH_DATASETS:  # transductive: the graph is its own calibration
        ann, x, y, eval_idx = load_graph_task(args.model, args.dataset)
        return ann, x, "the graph's own node features (transductive, no labels)", x, y, eval_idx
    ann, _ = resolve_model(args.model, args.dataset)
    xc, where = calibration_set(args.dataset, args.calibration, args.seed)
    x, y = load_dataset(args.dataset, "test")
    if args.test is not None:
        idx = subset_indices(x.shape[0], args.test, args.subset)
        x, y = x[idx], y[idx]
    return ann, xc, where, x, y, None


def _finished_codes(
    args: argparse.Namespace, jpath: Path, settings: dict
) -> tuple[dict[str, dict], float]:
    """The codes already run (this run's own JSON with ``--resume``, then each ``--merge``
    JSON's codes not in it) and the seconds they took."""
    done, spent = _resumable(jpath, settings) if getattr(args, "resume", False) else ({}, 0.0)
    for other in getattr(args, "merge", []):
        if not Path(other).is_file():
            raise OptionError(f"--merge: {other} is not a file; give the JSON of another run")
        theirs, their_spent = _resumable(Path(other), settings)
        done |= {k: v for k, v in theirs.items() if k not in done}
        spent += their_spent
    return done, spent


def _resumable(path: Path, settings: dict) -> tuple[dict[str, dict], float]:
    """The finished codes of a stopped run's JSON at ``path`` and the seconds it had
    spent (none and 0 if there is no file); an :class:`OptionError` when that run had
    other settings."""
    prev = read_resume_json(path)
    if prev is None:
        return {}, 0.0
    theirs = prev.get("settings") if isinstance(prev, dict) else None
    if theirs != settings:
        diff = sorted(k for k in settings if (theirs or {}).get(k, "?") != settings[k])
        raise OptionError(
            f"{path} was made with other settings ({', '.join(diff) or 'unknown'}); "
            "rerun with its settings, or remove it to start again"
        )
    codes = dict(prev.get("codes", {}))
    print(f"reusing {path}: {len(codes)} code(s) done ({', '.join(codes)})", flush=True)
    return codes, float(prev.get("seconds", 0.0))


def _report_main(argv: Sequence[str] | None = None) -> int:
    """``python -m onespike.experiments.compare FILE.json ...``: print the Markdown tables
    of saved results."""
    p = argparse.ArgumentParser(description=_report_main.__doc__)
    p.add_argument("json", nargs="+")
    p.add_argument("--plots", default=None, help="also redraw the PNGs into this folder")
    a = p.parse_args(argv)
    print(report(a.json))
    if a.plots:
        for path in a.json:
            r = json.loads(Path(path).read_text())
            r["summary"] = summarize(r)
            title = (
                f"{r.get('model', '?')} on {r.get('dataset', '?')} ({r['samples']} test samples)"
            )
            for png in plot(r, Path(a.plots), Path(path).stem, title):
                print(f"wrote {png}")
    return 0


__all__ = [
    "CODES",
    "REFINE_PHASES",
    "CodeSpec",
    "Conversions",
    "Ops",
    "Point",
    "budget_table",
    "compare",
    "energy_table",
    "markdown_table",
    "parse_codes",
    "refine_windows",
    "report",
    "summarize",
    "text_table",
]

if __name__ == "__main__":
    raise SystemExit(run_command(_report_main))
