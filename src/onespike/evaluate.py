"""Evaluation: accuracy of the ANN and of its SNN (both simulators), agreement, costs.

One function, :func:`evaluate`, used by the command line, the sweeps, the
benchmarks and the integration tests, so that every figure is computed the
same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from onespike import distributed
from onespike.accounting import CostReport, LayerCost, _totals, cost
from onespike.errors import InputError, OptionError
from onespike.network import SpikingNetwork
from onespike.stream import as_batches

Tensor = torch.Tensor


@dataclass
class EvalResult:
    """Figures on a labelled test set (accuracies in percent)."""

    samples: int
    ann_accuracy: float | None  # None: no ANN was given (a loaded network)
    snn_accuracy: float  # event-exact fast path
    step_accuracy: float | None = None
    step_event_same_predictions: int | None = None  # images with identical predictions
    phase_agreement: float | None = None  # share of neurons with identical phases
    phase_mismatches: int | None = None
    max_spikes_per_neuron: int | None = None  # measured by the step simulator
    cost: CostReport | None = None
    extra: dict = field(default_factory=dict)

    @property
    def loss(self) -> float | None:
        """Accuracy loss in points (ANN - SNN); negative means the SNN is better; None
        without an ANN."""
        if self.ann_accuracy is None:
            return None
        return self.ann_accuracy - self.snn_accuracy

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("cost",)}
        d["loss_points"] = self.loss
        if self.cost is not None:
            d["cost"] = self.cost.to_dict()
        return d


def merge_reports(reports: list[CostReport]) -> CostReport:
    """Average per-inference figures of reports made on batches (weighted by batch size)."""
    n = sum(r.samples for r in reports)
    first = reports[0]
    rows = []
    for i, row in enumerate(first.layers):
        vals = {}
        for f in row.__dataclass_fields__:
            v = getattr(row, f)
            if f in ("name", "neurons"):
                vals[f] = v
            elif f == "spikes_per_neuron_max":
                vals[f] = max(r.layers[i].spikes_per_neuron_max for r in reports)
            else:
                vals[f] = sum(getattr(r.layers[i], f) * r.samples for r in reports) / n
        rows.append(LayerCost(**vals))
    spk = sum(r.input_spikes * r.samples for r in reports) / n
    out = CostReport(first.phases, first.latency_steps, n, rows, spk)
    out.totals = _totals(rows)
    return out


@torch.no_grad()
def measure_costs(
    snn: SpikingNetwork, x: Tensor | Iterable, *, batch_size: int = 500, progress: bool = False
) -> CostReport:
    """Per-inference costs (operations, spikes, energy) of ``snn`` on inputs ``x``, measured
    with the event path's spikes, averaged over ``x`` (a tensor or a stream of batches,
    as for :func:`evaluate`)."""
    data = as_batches(x, what="input data", device=_device_of(snn))
    reports = [
        cost(None, snn, xb, run=snn.simulate(xb, mode="event"))
        for xb, _ in tqdm(data.chunks(batch_size), desc="costs", disable=not progress)
    ]
    return merge_reports(reports)


def _device_of(m: nn.Module) -> torch.device | None:
    for t in (*m.parameters(), *m.buffers()):
        return t.device
    return None


def _classes(ann: nn.Module | None, snn: SpikingNetwork, xb: Tensor) -> int:
    """The number of classes (outputs) of ``snn``, from one sample (the whole first batch
    where samples mix, as in a GCN); an ANN with another number of outputs is refused (its
    accuracy would be printed beside the SNN's)."""
    x1 = xb[:1]
    try:
        out = snn(x1)
    except (RuntimeError, IndexError):  # samples mix: one sample alone does not fit
        x1 = xb
        out = snn(x1)
    if out.dim() != 2:
        raise InputError(
            f"evaluate needs a classifier with outputs [N, classes]; the network gives "
            f"{tuple(out.shape)}"
        )
    if ann is not None:
        a = ann(x1)
        if not isinstance(a, Tensor) or tuple(a.shape) != tuple(out.shape):
            got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
            raise OptionError(
                f"the ANN gives outputs {got}, the spiking network {tuple(out.shape)}: pass "
                "the ANN the network was converted from"
            )
    return int(out.shape[1])


def check_labels(y: object, classes: int, where: str = "") -> None:
    """Raise :class:`InputError` unless ``y`` holds one class index in ``[0, classes)``
    per sample (integers; floats only if whole numbers)."""
    at = f" ({where})" if where else ""
    if not isinstance(y, Tensor):
        raise InputError(f"labels{at} must be a tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1:
        hint = " (one-hot labels? pass y.argmax(1))" if y.dim() == 2 else ""
        raise InputError(
            f"labels{at} have shape {tuple(y.shape)}; expected one class index per sample, "
            f"shape [N]{hint}"
        )
    if y.numel() == 0:
        return
    if y.dtype == torch.bool or y.is_complex():
        raise InputError(f"labels{at} have dtype {y.dtype}; expected integer class indices")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise InputError(f"labels{at} are not whole numbers; expected integer class indices")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise InputError(
            f"labels{at} span [{lo}, {hi}], the network has {classes} classes (0 to "
            f"{classes - 1}): pass the labels of this network's data set"
        )


@dataclass
class _Tally:
    """What :func:`evaluate` counts over its batches (this rank's, until
    :meth:`all_reduce`)."""

    run_ann: bool  # count the ANN's correct predictions (its accuracy is not given)
    step: bool  # run the step simulator and compare it with the event path
    costs: bool  # a cost report per batch
    ann_ok: int = 0
    snn_ok: int = 0
    step_ok: int = 0
    same: int = 0  # images whose step and event predictions agree
    mismatches: int = 0  # neurons whose step and event phases differ
    neurons: int = 0
    max_spikes: int = 0
    reports: list[CostReport] = field(default_factory=list)

    def add(self, ann: nn.Module | None, snn: SpikingNetwork, xb: Tensor, yb: Tensor) -> None:
        if self.run_ann:
            self.ann_ok += int((ann(xb).argmax(1) == yb).sum())
        if not (self.step or self.costs):  # only the output: the fast path (identical outputs)
            self.snn_ok += int((snn(xb).argmax(1) == yb).sum())
            return
        run = ev = snn.simulate(xb, mode="event")
        pe = ev.output.argmax(1)
        self.snn_ok += int((pe == yb).sum())
        if self.step:
            run = st = snn.simulate(xb, mode="step")
            ps = st.output.argmax(1)
            self.step_ok += int((ps == yb).sum())
            self.same += int((ps == pe).sum())
            for k, ph in st.spike_phases.items():
                self.mismatches += int((ph != ev.spike_phases[k]).sum())
                self.neurons += ph.numel()
                self.max_spikes = max(self.max_spikes, int(st.spike_counts[k].max()))
        if self.costs:
            self.reports.append(cost(None, snn, xb, run=run))

    def all_reduce(self) -> None:
        """Every rank's counts added up (the spike count by a max), the reports gathered
        in the chunks' order."""
        counts = [self.ann_ok, self.snn_ok, self.step_ok, self.same, self.mismatches]
        counts = distributed.all_reduce([*counts, self.neurons], integer=True)
        self.ann_ok, self.snn_ok, self.step_ok, self.same, self.mismatches, self.neurons = counts
        (self.max_spikes,) = distributed.all_reduce([self.max_spikes], "max", integer=True)
        self.reports = [r for part in distributed.gather_objects(self.reports) for r in part]

    def result(self, n: int, ann_accuracy: float | None) -> EvalResult:
        res = EvalResult(samples=n, ann_accuracy=ann_accuracy, snn_accuracy=100.0 * self.snn_ok / n)
        if self.step:
            res.step_accuracy = 100.0 * self.step_ok / n
            res.step_event_same_predictions = self.same
            res.phase_mismatches = self.mismatches
            res.phase_agreement = 1.0 - self.mismatches / max(self.neurons, 1)
            res.max_spikes_per_neuron = self.max_spikes
        if self.costs:
            res.cost = merge_reports(self.reports)
        return res


@torch.no_grad()
def evaluate(
    ann: nn.Module | None,
    snn: SpikingNetwork,
    x: Tensor | Iterable,
    y: Tensor | None = None,
    *,
    batch_size: int = 500,
    step: bool = True,
    costs: bool = True,
    progress: bool = True,
    desc: str = "evaluate",
    ann_accuracy: float | None = None,
) -> EvalResult:
    """ANN and SNN accuracy on ``(x, y)``; with ``step``, the step simulator too.

    With ``step`` the step simulator runs on every image, its predictions and
    spike phases are compared with the event path's, and the spike counts it
    measured go into the cost report; without it the event path's spikes do.
    ``ann_accuracy``: the ANN's accuracy on these same images when already known
    (a sweep converts one ANN many times); the ANN is then not run again.
    ``ann=None`` (a network loaded from a file): the ANN's accuracy is ``None``.

    ``x`` is a tensor of inputs with its labels ``y``, or (``y`` None) a stream of
    labelled samples: a ``Dataset`` of ``(x, y)``, or an iterable of ``(x, y)`` batches
    (a ``DataLoader``). A stream is read once to check it, then ``batch_size`` samples
    at a time: no more than one batch of inputs and activations is held, and the
    figures are those of the tensor path on the same samples. Batches are moved to the
    network's device.

    Under a ``torch.distributed`` process group (``torchrun``): give every rank the same
    networks, options and whole data. The ranks check that they agree
    (:func:`onespike.distributed.check_same`), each evaluates its contiguous shard of
    ``batch_size`` chunks, and the counts are all-reduced (sums; the maximum spike count
    by a max) and the per-chunk cost reports gathered in the chunks' order: every rank
    returns the figures of one process on the whole data, counts exactly, accuracies as
    ``correct / total``, the cost report bit for bit. Progress shows on rank 0 only.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(snn, SpikingNetwork):
        raise OptionError(f"evaluate() takes a SpikingNetwork, got {type(snn).__name__}")
    if ann is not None:
        ann = ann.eval()
    data = as_batches(x, y, what="test data", chunk=batch_size, device=_device_of(snn))
    if not data.labelled:
        raise InputError(
            "evaluate needs labels: pass x and y tensors, (x, y) batches or a Dataset "
            "of (x, y) samples"
        )
    classes = _classes(ann, snn, next(data.chunks(batch_size))[0])
    if isinstance(y, Tensor):  # all labels at once; a stream's batch by batch below
        check_labels(y, classes)
    n = data.count
    distributed.check_same(
        {
            "ANN": None if ann is None else ann.state_dict(),
            "network": (snn.state_dict(), snn.plan),
            "options": (batch_size, step, costs, ann_accuracy),
            "test data": (n, data.sample_shape, data.first_batch()),
        }
    )
    mine = distributed.shard(data, batch_size)
    tally = _Tally(run_ann=ann is not None and ann_accuracy is None, step=step, costs=costs)
    batches = distributed.chunks(mine, batch_size)
    total = 0 if mine is None else -(-mine.count // batch_size)
    show = progress and distributed.is_main()
    for i, (xb, yb) in enumerate(
        tqdm(batches, desc=desc, disable=not show, unit="batch", total=total)
    ):
        if not isinstance(y, Tensor):
            check_labels(yb, classes, f"batch {i}")
        tally.add(ann, snn, xb, yb)
    if distributed.active():  # the whole data's figures on every rank
        tally.all_reduce()
    if ann_accuracy is None and ann is not None:
        ann_accuracy = 100.0 * tally.ann_ok / n
    return tally.result(n, ann_accuracy)
