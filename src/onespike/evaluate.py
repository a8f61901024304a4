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
from onespike.errors import InputError
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
    if ann is not None:
        ann = ann.eval()
    data = as_batches(x, y, what="test data", chunk=batch_size, device=_device_of(snn))
    if not data.labelled:
        raise InputError(
            "evaluate needs labels: pass x and y tensors, (x, y) batches or a Dataset "
            "of (x, y) samples"
        )
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
    ann_ok = snn_ok = step_ok = same = 0
    mism = total_neurons = 0
    max_spk = 0
    reports: list[CostReport] = []
    batches = distributed.chunks(mine, batch_size)
    total = 0 if mine is None else -(-mine.count // batch_size)
    show = progress and distributed.is_main()
    for xb, yb in tqdm(batches, desc=desc, disable=not show, unit="batch", total=total):
        if ann is not None and ann_accuracy is None:
            ann_ok += int((ann(xb).argmax(1) == yb).sum())
        if not (step or costs):  # only the output: the fast path (identical outputs)
            snn_ok += int((snn(xb).argmax(1) == yb).sum())
            continue
        ev = snn.simulate(xb, mode="event")
        pe = ev.output.argmax(1)
        snn_ok += int((pe == yb).sum())
        run = ev
        if step:
            st = snn.simulate(xb, mode="step")
            ps = st.output.argmax(1)
            step_ok += int((ps == yb).sum())
            same += int((ps == pe).sum())
            for k, ph in st.spike_phases.items():
                mism += int((ph != ev.spike_phases[k]).sum())
                total_neurons += ph.numel()
                max_spk = max(max_spk, int(st.spike_counts[k].max()))
            run = st
        if costs:
            reports.append(cost(None, snn, xb, run=run))
    if distributed.active():  # the whole data's figures on every rank
        ann_ok, snn_ok, step_ok, same, mism, total_neurons = distributed.all_reduce(
            [ann_ok, snn_ok, step_ok, same, mism, total_neurons], integer=True
        )
        (max_spk,) = distributed.all_reduce([max_spk], "max", integer=True)
        reports = [r for part in distributed.gather_objects(reports) for r in part]
    res = EvalResult(
        samples=n,
        ann_accuracy=ann_accuracy
        if ann_accuracy is not None or ann is None
        else 100.0 * ann_ok / n,
        snn_accuracy=100.0 * snn_ok / n,
    )
    if step:
        res.step_accuracy = 100.0 * step_ok / n
        res.step_event_same_predictions = same
        res.phase_mismatches = mism
        res.phase_agreement = 1.0 - mism / max(total_neurons, 1)
        res.max_spikes_per_neuron = max_spk
    if costs:
        res.cost = merge_reports(reports)
    return res
