"""GCNs on the Planetoid citation graphs: training, conversion, and the results table.

Usage (from the repository root)::

    python -m onespike.experiments.gcn train --model gcn --dataset cora --seeds 0 \\
        --out src/onespike/assets/weights
    python -m onespike.experiments.gcn table --json docs/results/gcn.json

``train`` fits a model on the standard split (140/120 labelled nodes for Cora/CiteSeer)
with the recipe of Kipf & Welling: Adam, learning rate 0.01, 200 full-graph epochs,
dropout 0.5, weight decay 5e-4 on the first layer (on every layer for the 4-layer
``gcn_res``), Glorot initialisation, no early stopping (the last epoch's weights are
kept). Every random choice is driven by the seed (one CPU thread makes the run
bit-reproducible on a given machine).

``table`` trains (or reuses, from ``--cache``) one model per seed, converts each with
:func:`onespike.convert` (calibration: the feature matrix of the whole graph, no labels;
the graph is one batch whose dim 0 is the node axis), and measures on the full node set:
the ANN's and the SNN's accuracy on the 1,000 test nodes (and the 500 validation nodes),
spikes per neuron, the energy ratio of :func:`onespike.cost` (the aggregation counted
through the adjacency's existing edges only), latency, and whether the step-by-step and
the event simulators give the same spike phase on every neuron of every node. It writes
everything to a JSON file and prints markdown tables (mean and sample standard deviation
over seeds).

:func:`onespike.evaluate.evaluate` batches along dim 0 and so cannot evaluate a GCN (a
batch of nodes is not a graph); :func:`evaluate_graph` here runs the whole graph at once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import onespike
from onespike._io import atomic_write, write_json, write_text
from onespike.accounting import E_MAC
from onespike.data import Graph, load_planetoid
from onespike.errors import OptionError, run_command
from onespike.models.gcn import (
    GCN,
    GCN_DATASETS,
    GCN_MODELS,
    DeepGCN,
    gcn,
    gcn_res,
    gcn_weights_name,
)
from onespike.models.weights import load_state_dict_file
from onespike.network import SpikingNetwork
from onespike.provenance import source_version as _source_version

__all__ = [
    "CONFIGS",
    "GCNTrainResult",
    "accuracy",
    "build_model",
    "evaluate_graph",
    "main",
    "markdown_tables",
    "run_table",
    "save_gcn",
    "summarize",
    "train_gcn",
]

Tensor = torch.Tensor

PHASES: tuple[int, ...] = (4, 6, 8, 12, 16)
CODINGS: tuple[str, ...] = ("analog", "single")

#: Named conversion settings (keyword arguments of :func:`onespike.convert`). ``default``
#: is what the table reports; the others are alternatives that ``--configs`` can add,
#: chosen per (dataset, model, coding, T) on the validation nodes, never on the test nodes.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "per_channel": {"per_channel": True},
    "activation": {"objective": "activation"},
    "global": {"base": "global"},
    "max": {"scale": "max"},
    "refine": {"refine": True},
}


# --------------------------------------------------------------------------- training


def accuracy(logits: Tensor, labels: Tensor, idx: Tensor) -> float:
    """Accuracy in percent of ``logits.argmax(1)`` on the nodes ``idx``."""
    if len(idx) == 0:
        return float("nan")
    return 100.0 * float((logits[idx].argmax(1) == labels[idx]).double().mean())


def build_model(model: str, graph: Graph, **kwargs: Any) -> nn.Module:
    """A freshly initialised ``"gcn"`` or ``"gcn_res"`` for ``graph`` (its adjacency)."""
    if model not in GCN_MODELS:
        raise OptionError(f"unknown graph model {model!r}; known: {', '.join(GCN_MODELS)}")
    builder = gcn if model == "gcn" else gcn_res
    return builder(
        graph.name,
        adj=graph.normalized_adjacency(),
        in_features=graph.num_features,
        num_classes=graph.num_classes,
        **kwargs,
    )


def _first_layer(model: nn.Module) -> tuple[nn.Linear, str]:
    """The first Linear of a GCN and the attribute path of the dropout in front of it."""
    if isinstance(model, GCN):
        return model.fc1, "drop1"
    if isinstance(model, DeepGCN):
        return model.fc[0], "drop.0"
    raise TypeError(f"expected a GCN or DeepGCN, got {type(model).__name__}")


@contextlib.contextmanager
def _without_input_dropout(model: nn.Module) -> Iterator[float]:
    """Swap the input dropout for an identity (training applies it to the sparse features)."""
    _, path = _first_layer(model)
    parent: nn.Module = model
    *head, last = path.split(".")
    for part in head:
        parent = getattr(parent, part)
    if isinstance(parent, nn.ModuleList):
        drop = parent[int(last)]
        parent[int(last)] = nn.Identity()
    else:
        drop = getattr(parent, last)
        setattr(parent, last, nn.Identity())
    try:
        yield float(drop.p)
    finally:
        if isinstance(parent, nn.ModuleList):
            parent[int(last)] = drop
        else:
            setattr(parent, last, drop)


def _sparse_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of the stored entries of a sparse COO matrix (zeros stay zero, as dense)."""
    if p <= 0:
        return x
    keep = torch.bernoulli(torch.full_like(x.values(), 1.0 - p))
    vals = x.values() * keep / (1.0 - p)
    return torch.sparse_coo_tensor(
        x.indices(), vals, x.shape, is_coalesced=True, check_invariants=False
    )


@dataclass
class GCNTrainResult:
    """A trained model and the record written next to its weights."""

    model: nn.Module
    info: dict[str, Any]


def train_gcn(
    model: str,
    graph: Graph,
    seed: int = 0,
    *,
    epochs: int = 200,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    decay_all: bool | None = None,
    model_kwargs: dict[str, Any] | None = None,
    command: str | None = None,
) -> GCNTrainResult:
    """Train ``model`` (``"gcn"`` / ``"gcn_res"``) on ``graph``'s labelled training nodes.

    Full-graph Adam steps on the cross-entropy of the training nodes; weight decay on the
    first layer only for ``"gcn"`` (Kipf & Welling), on every layer for ``"gcn_res"``
    (chosen on the validation nodes: the 4-layer model overfits otherwise); the last
    epoch's weights are returned in eval mode.
    The input dropout is applied to the non-zero features of a sparse copy of the feature
    matrix (the same distribution as dense dropout, 10-30x faster on CPU); the returned
    model is the ordinary dense one.

    Args:
        model: ``"gcn"`` or ``"gcn_res"``.
        graph: the row-normalised graph (:meth:`Graph.row_normalized`).
        seed: seeds initialisation and dropout.
        epochs, lr, weight_decay: the optimiser settings.
        decay_all: weight decay on every layer (default: only for ``"gcn_res"``).
        model_kwargs: extra constructor arguments (``hidden``, ``dropout``, ``layers``).
        command: the command line recorded in the result.
    """
    if len(graph.train_idx) == 0:
        raise OptionError(f"graph {graph.name!r} has no labelled training nodes")
    kwargs = dict(model_kwargs or {})
    torch.manual_seed(seed)
    net = build_model(model, graph, **kwargs)
    first, _ = _first_layer(net)
    if decay_all is None:
        decay_all = model == "gcn_res"
    decayed = list(net.parameters()) if decay_all else [first.weight]
    rest = [p for p in net.parameters() if all(p is not q for q in decayed)]
    opt = torch.optim.Adam(
        [{"params": decayed, "weight_decay": weight_decay}, {"params": rest}],
        lr=lr,
        weight_decay=0.0,
    )
    xs = graph.features.to_sparse().coalesce()
    y, train_idx = graph.labels, graph.train_idx
    t0 = time.perf_counter()
    history = []
    net.train()
    with _without_input_dropout(net) as p_in:
        for epoch in range(1, epochs + 1):
            opt.zero_grad(set_to_none=True)
            out = net(_sparse_dropout(xs, p_in))
            loss = F.cross_entropy(out[train_idx], y[train_idx])
            loss.backward()
            opt.step()
            if epoch == epochs or epoch % 50 == 0:
                history.append({"epoch": epoch, "train_loss": float(loss.detach())})
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        logits = net(graph.features)
    info: dict[str, Any] = {
        "name": gcn_weights_name(model, graph.name, seed),
        "model": model,
        "model_kwargs": {"dataset": graph.name, **kwargs},
        "dataset": graph.name,
        "features": "row-normalised",
        "command": command,
        "seed": seed,
        "epochs": epochs,
        "optimizer": "Adam",
        "lr": lr,
        "weight_decay": weight_decay,
        "weight_decay_on": "all layers" if decay_all else "first layer",
        "early_stopping": False,
        "acc_units": "percent",
        "train_acc": accuracy(logits, y, train_idx),
        "val_acc": accuracy(logits, y, graph.val_idx),
        "test_acc": accuracy(logits, y, graph.test_idx),
        "history": history,
        "train_seconds": seconds,
        "num_params": sum(p.numel() for p in net.parameters()),
    }
    return GCNTrainResult(net, info)


def save_gcn(result: GCNTrainResult, out: str | Path) -> Path:
    """Write ``{name}.pt`` (fp32 ``state_dict``, without the adjacency) and ``{name}.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = result.info["name"]
    pt = out / f"{name}.pt"
    sd = {k: v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}
    atomic_write(pt, lambda tmp: torch.save(sd, tmp))
    info = dict(result.info)
    info["weights_dtype"] = "float32"
    info["weights_sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    info["torch_version"] = torch.__version__
    info["python_version"] = platform.python_version()
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out / f"{name}.json", info)
    return pt


def _load_or_train(
    model: str,
    graph: Graph,
    seed: int,
    cache: Path | None,
    epochs: int,
    log: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Weights of ``seed`` from ``cache`` when they were trained with the same recipe."""
    name = gcn_weights_name(model, graph.name, seed)
    if cache is not None and (cache / f"{name}.pt").is_file():
        info = json.loads((cache / f"{name}.json").read_text())
        if info.get("epochs") == epochs:
            kwargs = {k: v for k, v in info["model_kwargs"].items() if k != "dataset"}
            net = build_model(model, graph, **kwargs)
            net.load_state_dict(load_state_dict_file(cache / f"{name}.pt"))
            return net.eval(), info
    cmd = (
        f"python -m onespike.experiments.gcn train --model {model} --dataset {graph.name} "
        f"--seeds {seed} --epochs {epochs}"
    )
    res = train_gcn(model, graph, seed, epochs=epochs, command=cmd)
    log(
        f"  trained {name}: val {res.info['val_acc']:.1f} test {res.info['test_acc']:.1f} "
        f"({res.info['train_seconds']:.1f} s)"
    )
    if cache is not None:
        save_gcn(res, cache)
    return res.model, res.info


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_graph(
    ann: nn.Module,
    snn: SpikingNetwork,
    graph: Graph,
    *,
    step: bool = True,
) -> dict[str, Any]:
    """Accuracy, spikes, costs and simulator agreement of ``snn`` on the whole graph.

    The ANN and the SNN see the full feature matrix at once (the graph is one batch).
    With ``step`` the step-by-step simulator runs too, and the result counts the neurons
    (over every node and layer) whose spike phase differs from the event simulator's.

    Returns a JSON-serialisable dict: ``ann_val``/``ann_test``/``snn_val``/``snn_test``
    (percent), ``loss_test`` (points), ``step_test``, ``phase_mismatches``,
    ``prediction_mismatches`` (nodes whose step and event predictions differ),
    ``output_max_abs_diff``, ``max_spikes_per_neuron`` (hidden neurons, and input neurons
    for spike input codings), ``spikes_per_neuron_mean``, ``input_spikes_per_node``,
    ``energy_ratio_compute``/``energy_ratio_total``, ``ann_macs``/``snn_acs``/``snn_macs``
    (per node), ``latency_steps``, and the plan's per-layer ``bases`` and ``scales``.
    """
    x, y = graph.features, graph.labels
    a = ann.eval()(x)
    ev = snn.simulate(x, mode="event")
    rep = onespike.cost(ann, snn, x, run=ev)
    t = rep.totals
    out: dict[str, Any] = {
        "ann_val": accuracy(a, y, graph.val_idx),
        "ann_test": accuracy(a, y, graph.test_idx),
        "snn_val": accuracy(ev.output, y, graph.val_idx),
        "snn_test": accuracy(ev.output, y, graph.test_idx),
    }
    out["loss_test"] = out["ann_test"] - out["snn_test"]
    out["loss_val"] = out["ann_val"] - out["snn_val"]
    max_spk = max((int(c.max()) for c in ev.spike_counts.values() if c.numel()), default=0)
    if step:
        st = snn.simulate(x, mode="step")
        out["step_test"] = accuracy(st.output, y, graph.test_idx)
        out["phase_mismatches"] = sum(
            int((st.spike_phases[k] != ev.spike_phases[k]).sum()) for k in ev.spike_phases
        )
        out["prediction_mismatches"] = int((st.output.argmax(1) != ev.output.argmax(1)).sum())
        out["output_max_abs_diff"] = float((st.output - ev.output).abs().max())
        # float32 sums in a different order can sit on either side of a threshold; in
        # float64 both simulators must agree exactly
        st64 = snn.simulate(x, mode="step", dtype=torch.float64)
        ev64 = snn.simulate(x, mode="event", dtype=torch.float64)
        out["phase_mismatches_f64"] = sum(
            int((st64.spike_phases[k] != ev64.spike_phases[k]).sum()) for k in ev64.spike_phases
        )
        out["prediction_mismatches_f64"] = int(
            (st64.output.argmax(1) != ev64.output.argmax(1)).sum()
        )
        max_spk = max(
            [max_spk]
            + [int(c.max()) for c in st.spike_counts.values() if c.numel()]
            + ([int(st.input_spikes.max())] if st.input_spikes is not None else [])
        )
    out["max_spikes_per_neuron"] = max_spk
    out["neurons_checked"] = sum(int(p.numel()) for p in ev.spike_phases.values())
    out["spikes_per_neuron_mean"] = t["spikes_per_neuron_mean"]
    out["input_spikes_per_node"] = rep.input_spikes
    for k in ("energy_ratio_compute", "energy_ratio_total", "ann_macs", "snn_acs", "snn_macs"):
        out[k] = t[k]
    out["ann_nonzero_macs"] = t["ann_nonzero_macs"]
    # against an ANN that skips every zero input (bag-of-words features are ~99 % zeros)
    out["energy_ratio_compute_sparse_ann"] = (
        t["ann_nonzero_macs"] * E_MAC / t["snn_energy_compute_pj"]
        if t["snn_energy_compute_pj"]
        else float("inf")
    )
    out["latency_steps"] = snn.plan.latency_steps
    lps = ([snn.plan.input] if snn.plan.input is not None else []) + list(snn.plan.layers)
    out["bases"] = {lp.name: lp.base for lp in lps}
    out["scales"] = {lp.name: lp.scale for lp in lps}
    return out


# --------------------------------------------------------------------------- the table


def _stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def run_table(
    *,
    datasets: Sequence[str] = GCN_DATASETS,
    models: Sequence[str] = GCN_MODELS,
    seeds: Sequence[int] = tuple(range(10)),
    phases: Sequence[int] = PHASES,
    codings: Sequence[str] = CODINGS,
    configs: Sequence[str] = ("default",),
    epochs: int = 200,
    cache: str | Path | None = None,
    data_root: str | Path | None = None,
    step: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train, convert and evaluate every (dataset, model, seed, coding, T, config).

    Returns ``{"runs": [...], "ann": [...], "settings": {...}}``: one record per
    conversion (the dict of :func:`evaluate_graph` plus its keys) and one per trained
    ANN. See :func:`summarize` for the aggregation.
    """
    for c in configs:
        if c not in CONFIGS:
            raise OptionError(f"unknown config {c!r}; known: {', '.join(CONFIGS)}")
    cache_path = Path(cache) if cache is not None else None
    runs: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for ds in datasets:
        graph = load_planetoid(ds, root=data_root).row_normalized()
        for model in models:
            for seed in seeds:
                log(f"{ds} {model} seed {seed}")
                ann, info = _load_or_train(model, graph, seed, cache_path, epochs, log)
                anns.append(
                    {
                        "dataset": ds,
                        "model": model,
                        "seed": seed,
                        "val_acc": info["val_acc"],
                        "test_acc": info["test_acc"],
                        "train_seconds": info.get("train_seconds"),
                    }
                )
                for coding in codings:
                    for T in phases:
                        for cfg in configs:
                            t0 = time.perf_counter()
                            snn = onespike.convert(
                                ann,
                                graph.features,
                                phases=T,
                                input_coding=coding,
                                progress=False,
                                **CONFIGS[cfg],
                            )
                            r = evaluate_graph(ann, snn, graph, step=step)
                            r.update(
                                dataset=ds,
                                model=model,
                                seed=seed,
                                coding=coding,
                                phases=T,
                                config=cfg,
                                seconds=time.perf_counter() - t0,
                            )
                            runs.append(r)
                            log(
                                f"    {coding:6s} T={T:2d} {cfg:11s} SNN {r['snn_test']:.1f} "
                                f"(loss {r['loss_test']:+.1f}) val {r['snn_val']:.1f} "
                                f"mismatch {r.get('phase_mismatches')} "
                                f"max spk {r['max_spikes_per_neuron']}"
                            )
    settings = {
        "datasets": list(datasets),
        "models": list(models),
        "seeds": list(seeds),
        "phases": list(phases),
        "codings": list(codings),
        "configs": {c: CONFIGS[c] for c in configs},
        "epochs": epochs,
        "step_simulator": step,
    }
    return {"settings": settings, "ann": anns, "runs": runs}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Mean and sample std over seeds for every (dataset, model, coding, T).

    The reported config of each group is ``default``; when other configs were run, the
    one with the best mean validation accuracy is also given (``selected``), with its
    test figures, so no choice is made on the test nodes.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        groups.setdefault((r["dataset"], r["model"], r["coding"], r["phases"], r["config"]), [])
        groups[(r["dataset"], r["model"], r["coding"], r["phases"], r["config"])].append(r)
    keys = (
        "snn_test",
        "snn_val",
        "loss_test",
        "loss_val",
        "spikes_per_neuron_mean",
        "energy_ratio_compute",
        "energy_ratio_total",
        "energy_ratio_compute_sparse_ann",
        "input_spikes_per_node",
    )
    cells: dict[tuple, dict[str, Any]] = {}
    for (ds, model, coding, T, cfg), rs in groups.items():
        cell: dict[str, Any] = {"n": len(rs)}
        for k in keys:
            cell[k] = _stats([r[k] for r in rs])
        cell["max_spikes_per_neuron"] = max(r["max_spikes_per_neuron"] for r in rs)
        cell["phase_mismatches"] = sum(r.get("phase_mismatches", 0) for r in rs)
        cell["prediction_mismatches"] = sum(r.get("prediction_mismatches", 0) for r in rs)
        cell["phase_mismatches_f64"] = sum(r.get("phase_mismatches_f64", 0) for r in rs)
        cell["prediction_mismatches_f64"] = sum(r.get("prediction_mismatches_f64", 0) for r in rs)
        cell["neurons_checked"] = sum(r.get("neurons_checked", 0) for r in rs)
        cell["latency_steps"] = rs[0]["latency_steps"]
        cells[(ds, model, coding, T, cfg)] = cell
    ann: dict[tuple, dict[str, Any]] = {}
    by: dict[tuple, list[dict[str, Any]]] = {}
    for a in result["ann"]:
        by.setdefault((a["dataset"], a["model"]), []).append(a)
    for k, rs in by.items():
        ann[k] = {
            "test_acc": _stats([a["test_acc"] for a in rs]),
            "val_acc": _stats([a["val_acc"] for a in rs]),
        }
    rows = []
    for ds, model, coding, T in sorted(
        {k[:4] for k in cells},
        key=lambda k: (k[0], GCN_MODELS.index(k[1]), CODINGS.index(k[2]), k[3]),
    ):
        options = {
            c: v for (d, m, co, t, c), v in cells.items() if (d, m, co, t) == (ds, model, coding, T)
        }
        row = {"dataset": ds, "model": model, "coding": coding, "phases": T}
        row["default"] = options.get("default")
        best = max(options, key=lambda c: (options[c]["snn_val"][0], c == "default"))
        row["n_configs"] = len(options)
        row["selected_config"] = best
        row["selected"] = options[best]
        rows.append(row)
    return {
        "ann": [{"dataset": d, "model": m, **v} for (d, m), v in ann.items()],
        "rows": rows,
    }


def _pm(stat: Sequence[float], digits: int = 1) -> str:
    return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def _md_row(cells: Sequence[str]) -> str:
    """One row of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


def _md_head(head: Sequence[str]) -> list[str]:
    """The header row and the separator row of a Markdown table."""
    return [_md_row(head), "|" + "---|" * len(head)]


def _row_key(r: dict[str, Any]) -> list[str]:
    """The first cells of a detail row: dataset, model, input coding, window ``T``."""
    return [r["dataset"], r["model"], r["coding"], str(r["phases"])]


def markdown_tables(
    summary: dict[str, Any], command: str | None = None, version: str | None = None
) -> str:
    """The results as markdown: a summary per (dataset, model, coding) and the detail."""
    rows = summary["rows"]
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["coding"]), {})[r["phases"]] = r
    lines: list[str] = []
    if command:
        where = f" (source `{version}`)" if version else ""
        lines += [f"Command: `{command}`{where}", ""]
    lines += _md_summary(summary, groups)
    lines += _md_detail(rows)
    if any(r["n_configs"] > 1 for r in rows):
        lines += _md_selected(rows)
    lines.append("")
    lines.append("Target (mean loss <= 0.3 points at some T <= 12, default settings):")
    lines.append("")
    for (ds, model, coding), by_t in groups.items():
        ok = [
            T
            for T, r in sorted(by_t.items())
            if T <= 12 and r["default"] is not None and r["default"]["loss_test"][0] <= 0.3
        ]
        verdict = f"met at T in {ok}" if ok else "not met"
        lines.append(f"- {ds} / {model} / {coding} input: {verdict}")
    return "\n".join(lines) + "\n"


def _md_summary(summary: dict[str, Any], groups: dict[tuple, dict[int, dict]]) -> list[str]:
    """The accuracy table: ANN and SNN (loss) per window, a row per (dataset, model, coding)."""
    ann = {(a["dataset"], a["model"]): a for a in summary["ann"]}
    phases = sorted({r["phases"] for r in summary["rows"]})
    lines = [
        "Test accuracy (%) of the ANN and of the SNN at each window length T "
        "(mean ± sample std over seeds; default conversion settings). "
        "Loss = ANN - SNN in points.",
        "",
    ]
    lines += _md_head(["dataset", "model", "input", "ANN"] + [f"T={T}" for T in phases])
    for (ds, model, coding), by_t in groups.items():
        cells = [ds, model, coding, _pm(ann[(ds, model)]["test_acc"])]
        for T in phases:
            d = by_t.get(T, {}).get("default")
            cells.append("" if d is None else f"{_pm(d['snn_test'])} ({d['loss_test'][0]:+.2f})")
        lines.append(_md_row(cells))
    return lines


_DETAIL_HEAD = [
    "dataset",
    "model",
    "input",
    "T",
    "latency",
    "SNN test",
    "loss",
    "spikes/neuron",
    "max",
    "input spikes/node",
    "energy ratio",
    "w/ memory",
    "vs sparse ANN",
    "step≠event f32",
    "f64",
]


def _md_detail(rows: list[dict[str, Any]]) -> list[str]:
    """The detail table of the default settings, a row per run."""
    lines = [
        "",
        "Detail (default settings): loss in points (mean ± std), spikes per hidden neuron "
        "(mean; max over every neuron of every node and seed, input neurons included for "
        "single-spike input), input spikes per node, energy ratio ANN/SNN (compute only; "
        "with memory access; compute only against an ANN that skips zero inputs), latency "
        "in steps, and the step-by-step vs event simulator check over every neuron of every "
        "node (neurons with a different spike phase / nodes with a different prediction, "
        "summed over seeds; float32, then float64).",
        "",
    ]
    lines += _md_head(_DETAIL_HEAD)
    for r in rows:
        d = r["default"]
        if d is None:
            continue
        cells = [
            *_row_key(r),
            str(d["latency_steps"]),
            _pm(d["snn_test"]),
            _pm(d["loss_test"], 2),
            f"{d['spikes_per_neuron_mean'][0]:.3f}",
            str(d["max_spikes_per_neuron"]),
            f"{d['input_spikes_per_node'][0]:.1f}" if r["coding"] != "analog" else "-",
            f"{d['energy_ratio_compute'][0]:.2f}x",
            f"{d['energy_ratio_total'][0]:.2f}x",
            f"{d['energy_ratio_compute_sparse_ann'][0]:.2f}x",
            f"{d['phase_mismatches']} / {d['prediction_mismatches']}",
            f"{d['phase_mismatches_f64']} / {d['prediction_mismatches_f64']}",
        ]
        lines.append(_md_row(cells))
    return lines


def _md_selected(rows: list[dict[str, Any]]) -> list[str]:
    """The settings chosen on the validation nodes, with their test accuracy."""
    lines = [
        "",
        "Settings chosen on the validation nodes (best mean validation accuracy "
        "among the configs run), with their test accuracy:",
        "",
    ]
    lines += _md_head(["dataset", "model", "input", "T", "config", "SNN val", "SNN test", "loss"])
    for r in rows:
        s = r["selected"]
        cells = [
            *_row_key(r),
            r["selected_config"],
            _pm(s["snn_val"]),
            _pm(s["snn_test"]),
            _pm(s["loss_test"], 2),
        ]
        lines.append(_md_row(cells))
    return lines


# --------------------------------------------------------------------------- command line


def _seeds(spec: str) -> list[int]:
    """``"0-9"`` -> 0..9, ``"0,3,5"`` -> [0, 3, 5], ``"10"`` (table) is handled by caller."""
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m onespike.experiments.gcn`` argument parser (``train`` and ``table``)."""
    p = argparse.ArgumentParser(
        prog="python -m onespike.experiments.gcn", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train GCNs and write their weights")
    t.add_argument("--model", choices=GCN_MODELS, default="gcn")
    t.add_argument("--dataset", choices=GCN_DATASETS, default="cora")
    t.add_argument("--seeds", default="0", help="e.g. 0, 0-9 or 0,3,5")
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--out", default="src/onespike/assets/weights")
    t.add_argument("--data-root", default=None)
    t.add_argument("--threads", type=int, default=1)
    b = sub.add_parser("table", help="train, convert and tabulate over seeds")
    b.add_argument("--json", required=True, help="where to write every figure")
    b.add_argument("--markdown", default=None, help="also write the tables to this file")
    b.add_argument("--datasets", nargs="+", choices=GCN_DATASETS, default=list(GCN_DATASETS))
    b.add_argument("--models", nargs="+", choices=GCN_MODELS, default=list(GCN_MODELS))
    b.add_argument("--seeds", default="0-9")
    b.add_argument("--phases", nargs="+", type=int, default=list(PHASES))
    b.add_argument("--codings", nargs="+", choices=CODINGS, default=list(CODINGS))
    b.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default"])
    b.add_argument("--epochs", type=int, default=200)
    b.add_argument("--cache", default="runs/gcn", help="trained weights per seed ('' = none)")
    b.add_argument("--no-step", action="store_true", help="skip the step-by-step simulator")
    b.add_argument("--data-root", default=None)
    b.add_argument("--threads", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m onespike.experiments.gcn``."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m onespike.experiments.gcn " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    if args.cmd == "train":
        graph = load_planetoid(args.dataset, root=args.data_root).row_normalized()
        for seed in _seeds(args.seeds):
            res = train_gcn(args.model, graph, seed, epochs=args.epochs, command=command)
            pt = save_gcn(res, args.out)
            print(
                f"{pt}: val {res.info['val_acc']:.1f} %, test {res.info['test_acc']:.1f} % "
                f"({res.info['train_seconds']:.1f} s)"
            )
        return 0
    version = _source_version()  # before the run: the tree may move while it runs
    result = run_table(
        datasets=args.datasets,
        models=args.models,
        seeds=_seeds(args.seeds),
        phases=args.phases,
        codings=args.codings,
        configs=args.configs,
        epochs=args.epochs,
        cache=args.cache or None,
        data_root=args.data_root,
        step=not args.no_step,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    summary = summarize(result)
    result["summary"] = summary
    result["command"] = command
    result["source_version"] = version  # the search is still changing
    result["torch_version"] = torch.__version__
    md = markdown_tables(summary, command, result["source_version"])
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result, indent=1, default=_jsonable) + "\n")
    if args.markdown:
        write_text(args.markdown, md)
    print(md)
    return 0


def _jsonable(o: object) -> object:
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    raise SystemExit(run_command(main))
