"""The comparison's simulators as they were before the lane-stepped clocked simulator
(commit c61ea4d): the reference that ``tests/test_compare.py`` checks the faster paths of
:mod:`onespike.experiments.compare` against, figure for figure."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onespike.accounting import Ops
from onespike.engine import ClockedNeurons
from onespike.errors import OnespikeError
from onespike.experiments.compare import (
    Node,
    Point,
    Tensor,
    _Tally,
    _Task,
    onespike_ops,
)
from onespike.simulate_codes import CodeNet, _gather, _maxpool_indices, _region_parts


@torch.no_grad()
def simulate_clocked(
    net: CodeNet,
    code: ClockedNeurons,
    x: Tensor,
    checkpoints: Sequence[int],
    chunk: int | None = None,  # not in the reference: one lane
) -> dict[int, tuple[Tensor, Ops]]:
    """Run a clocked code step by step on a batch; ``{t: (output estimate, ops summed)}``.

    All layers update at every step (a spike reaches the next layers in the
    same step), walking the engine's spike nodes in order; ``code`` holds the
    neurons. At each checkpoint ``t`` the output estimate is the output
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
    parts = _region_parts(net, env0, consts)  # the regions' setup, unchanged since
    code.start({n_: env0[n_] for n_ in net.relus})
    sent = {n_: torch.zeros_like(env0[n_]) for n_ in [*net.relus, *net.derived]}
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


def run_onespike(
    ann: nn.Module,
    net: CodeNet,
    xc: Tensor,
    task: _Task,
    phases: Sequence[int] | None = None,
    errors: list[str] | None = None,
    *,
    refine: bool = False,
    conversions: object = None,  # not in the reference: every row converts afresh
    refined: dict | None = None,  # not in the reference: refinement's record
) -> list[Point]:
    """Points of onespike: :func:`onespike.convert` at each window (with ``refine``: the
    library's ``convert(..., refine=True)``), evaluated and costed."""
    from onespike.convert import convert
    from onespike.evaluate import evaluate

    grid = list(phases) if phases else task.window_grid(net.latency_windows())
    points = []
    for T in grid:
        try:
            snn = convert(ann, xc, phases=T, refine=refine, progress=False)
        except OnespikeError as e:  # a window too short for the search, say
            if errors is not None:
                errors.append(f"T={T}: {e}")
            continue
        res = evaluate(
            ann, snn, task.x, task.y, batch_size=task.batch_size, step=False, progress=False
        )
        tl = _Tally(ops=onespike_ops(res.cost).scaled(task.x.shape[0]))
        with torch.no_grad():
            for sl in task.batches():
                task.score(tl, sl, snn(task.x[sl]))
        points.append(task.point(snn.plan.latency_steps, T, tl))
    return points
