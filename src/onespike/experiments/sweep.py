"""Accuracy, spikes and energy of converted models over a range of phases.

``onespike sweep --model mnist_cnn --model resnet20 --phases 4,6,8,12,16,24,32``
converts each model at every ``T`` (searched base and scale), evaluates the
event path on the test set (and the step simulator on the first images for
one ``T``), and writes a JSON table and a PNG plot (accuracy vs phases, one
line per model, the ANN as a dashed line).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from onespike._io import atomic_write, read_resume_json, write_json
from onespike.calibrate import SearchConfig
from onespike.convert import convert
from onespike.errors import OptionError, run_command
from onespike.evaluate import evaluate, measure_costs


@dataclass
class SweepResult:
    """One model's figures over ``phases``."""

    model: str
    dataset: str
    ann_accuracy: float
    samples: int
    rows: list[dict] = field(default_factory=list)
    step_check: dict | None = None

    def smallest_phases(self, max_loss: float) -> int | None:
        """The smallest ``T`` whose loss is at most ``max_loss`` points (None if none)."""
        ok = [r["phases"] for r in self.rows if r["loss"] <= max_loss]
        return min(ok) if ok else None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "ann_accuracy": self.ann_accuracy,
            "samples": self.samples,
            "smallest_phases_loss_le_0.5": self.smallest_phases(0.5),
            "smallest_phases_loss_le_0.1": self.smallest_phases(0.1),
            "rows": self.rows,
            "step_check": self.step_check,
        }


def _convert_evaluate(
    ann: nn.Module,
    calibration: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    phases: int,
    convert_kwargs: dict,
    *,
    batch_size: int,
    progress: bool,
    convert_progress: bool,
    desc: str,
    ann_accuracy: float | None,
):
    """Convert ``ann`` at ``phases`` and score the event path on ``(x, y)`` (no step
    simulator, no costs): the one loop body of the sweep and the ablation."""
    snn = convert(ann, calibration, phases=phases, progress=convert_progress, **convert_kwargs)
    ev = evaluate(
        ann,
        snn,
        x,
        y,
        batch_size=batch_size,
        step=False,
        costs=False,
        progress=progress,
        desc=desc,
        ann_accuracy=ann_accuracy,
    )
    return snn, ev


def sweep_model(
    name: str,
    ann: nn.Module,
    dataset: str,
    calibration: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    phases: list[int],
    *,
    step_phases: int | None = None,
    step_images: int = 1000,
    step_indices: torch.Tensor | None = None,
    cost_indices: torch.Tensor | None = None,
    convert_kwargs: dict | None = None,
    batch_size: int = 500,
    progress: bool = True,
) -> SweepResult:
    """Convert ``ann`` at every ``T`` in ``phases`` and evaluate on ``(x, y)``.

    The step simulator runs at ``T = step_phases`` on ``x[step_indices]`` (default: the
    first ``step_images``). Accuracy is measured on all of ``x``; operations, spikes and
    energy on ``x[cost_indices]`` (default: all of ``x``), since counting them costs
    several times a forward pass.
    """
    kw = convert_kwargs or {}
    res: SweepResult | None = None
    for T in phases:
        snn, ev = _convert_evaluate(
            ann,
            calibration,
            x,
            y,
            T,
            kw,
            batch_size=batch_size,
            progress=progress,
            convert_progress=progress,
            desc=f"{name} T={T}",
            ann_accuracy=None if res is None else res.ann_accuracy,
        )
        if res is None:
            res = SweepResult(name, dataset, ev.ann_accuracy, ev.samples)
        xc = x if cost_indices is None else x[cost_indices]
        c = measure_costs(snn, xc, batch_size=batch_size, progress=progress).totals
        res.rows.append(
            {
                "phases": T,
                "snn_accuracy": ev.snn_accuracy,
                "loss": ev.loss,
                "latency_steps": snn.plan.latency_steps,
                "spikes_per_neuron_mean": c["spikes_per_neuron_mean"],
                "spikes_per_neuron_max": c["spikes_per_neuron_max"],
                "energy_ratio_compute": c["energy_ratio_compute"],
                "energy_ratio_total": c["energy_ratio_total"],
                "cost_images": int(xc.shape[0]),
                "search": snn.plan.search,
                "layers": [
                    {"name": lp.name, "base": lp.base, "scale": lp.scale, "act_error": lp.act_error}
                    for lp in snn.plan.layers
                ],
            }
        )
        if step_phases == T:
            idx = (
                torch.arange(min(step_images, x.shape[0])) if step_indices is None else step_indices
            )
            n = int(idx.numel())
            st = evaluate(
                ann,
                snn,
                x[idx],
                y[idx],
                batch_size=batch_size,
                step=True,
                costs=False,
                progress=progress,
                desc=f"{name} T={T} step",
            )  # the ANN runs again: this is another subset
            res.step_check = {
                "phases": T,
                "images": n,
                "event_accuracy": st.snn_accuracy,
                "step_accuracy": st.step_accuracy,
                "same_predictions": st.step_event_same_predictions,
                "phase_agreement": st.phase_agreement,
                "max_spikes_per_neuron": st.max_spikes_per_neuron,
            }
    assert res is not None
    return res


def plot(results: list[SweepResult], out: str | Path) -> None:
    """Accuracy vs phases, one line per model, each ANN as a dashed line of the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results):
        color = f"C{i}"
        ts = [row["phases"] for row in r.rows]
        ax.plot(
            ts, [row["snn_accuracy"] for row in r.rows], "o-", color=color, label=f"{r.model} SNN"
        )
        ax.axhline(r.ann_accuracy, ls="--", color=color, lw=1, label=f"{r.model} ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("phases T (window length, steps)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("single-spike phase coding, searched base")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write(results: list[SweepResult], json_out: str | Path | None, png_out: str | Path | None):
    if json_out:
        write_json(json_out, [r.to_dict() for r in results])
    if png_out:
        atomic_write(png_out, lambda tmp: plot(results, tmp))


def table(results: list[SweepResult]) -> str:
    """Markdown table of the sweep."""
    lines = [
        "| model | T | ANN % | SNN % | loss (points) | latency | spikes/neuron (mean, max) "
        "| energy ANN/SNN (compute, with memory) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r.rows:
            lines.append(
                f"| {r.model} | {row['phases']} | {r.ann_accuracy:.2f} | {row['snn_accuracy']:.2f} "
                f"| {row['loss']:+.2f} | {row['latency_steps']} | "
                f"{row['spikes_per_neuron_mean']:.3f}, {row['spikes_per_neuron_max']} | "
                f"{row['energy_ratio_compute']:.2f}x, {row['energy_ratio_total']:.2f}x |"
            )
    for r in results:
        lines.append("")
        lines.append(
            f"{r.model}: smallest T with loss <= 0.5: {r.smallest_phases(0.5)}; "
            f"<= 0.1: {r.smallest_phases(0.1)} ({r.samples} test images)"
        )
        n_cost = {row.get("cost_images", r.samples) for row in r.rows}
        if n_cost != {r.samples}:
            lines.append(
                f"{r.model}: operations, spikes and energy counted on "
                f"{', '.join(map(str, sorted(n_cost)))} of those images"
            )
        if r.step_check:
            s = r.step_check
            lines.append(
                f"{r.model}: step simulator at T={s['phases']} on {s['images']} images: "
                f"{s['step_accuracy']:.2f} % (event {s['event_accuracy']:.2f} %), "
                f"{s['same_predictions']} identical predictions, phase agreement "
                f"{100 * s['phase_agreement']:.4f} %, max spikes per neuron "
                f"{s['max_spikes_per_neuron']}"
            )
    return "\n".join(lines)


# The ablation: the paper's search (the preset ``SearchConfig.preset("paper")``), then one
# change at a time. The settings are recorded with each row; :func:`variant_config` turns
# them into the search configuration and the other ``convert`` keywords (``refine``).
ABLATIONS: dict[str, dict] = {
    "1 paper: activation error, per-layer scale+base": {
        "objective": "activation",
        "per_channel": False,
    },
    "2 next-layer error": {"objective": "next", "per_channel": False},
    "3 + per-channel scales": {"objective": "next", "per_channel": True},
    "4 + bias correction": {"objective": "next", "per_channel": True, "bias_correction": True},
    "5 global base (next-layer error)": {
        "objective": "next",
        "per_channel": False,
        "base": "global",
    },
    "6 no threshold shift (floor)": {
        "objective": "next",
        "per_channel": False,
        "threshold_shift": False,
    },
}

# Learned refinement after the default search: the rows `onespike ablation --refine` adds.
REFINE_ABLATIONS: dict[str, dict] = {
    "7 default search (per-channel convolutions)": {},
    "8 default + refinement (KL to ANN logits)": {"refine": {"loss": "kl"}},
    "9 default + refinement (MSE to ANN logits)": {"refine": {"loss": "mse"}},
}


def variant_config(settings: dict) -> tuple[SearchConfig, dict]:
    """The search of an ablation row (its fields changed from the default preset) and the
    remaining ``convert`` keywords (``refine``)."""
    fields = set(SearchConfig.__dataclass_fields__)
    search = {k: v for k, v in settings.items() if k in fields}
    rest = {k: v for k, v in settings.items() if k not in fields}
    return SearchConfig().replace(**search), rest


def ablate(
    name: str,
    ann: nn.Module,
    calibration: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    phases: list[int],
    *,
    variants: dict[str, dict] | None = None,
    batch_size: int = 500,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    done: dict | None = None,
) -> dict:
    """Loss (points) of each variant of the search at each ``T``, on ``(x, y)``.

    ``on_row(result_so_far)`` is called after each variant (the CLI saves it, so a
    long ablation that is stopped keeps the variants it finished). ``done``: such a
    saved result; the variants it finished with the same settings are taken from it, not
    run again, when it is of the same model, phases and number of test samples.
    """
    variants = variants or ABLATIONS
    out: dict = {"model": name, "samples": int(x.shape[0]), "phases": phases, "rows": []}
    finished = _finished_rows(out, done)
    if finished:
        out["ann_accuracy"] = done["ann_accuracy"]  # type: ignore[index]
    for label, kw in variants.items():
        if label in finished and finished[label]["settings"] == kw:
            out["rows"].append(finished[label])
            continue
        row = {"variant": label, "settings": kw, "loss": {}, "snn_accuracy": {}}
        search, rest = variant_config(kw)
        for T in phases:
            _, ev = _convert_evaluate(
                ann,
                calibration,
                x,
                y,
                T,
                {"search": search, **rest},
                batch_size=batch_size,
                progress=progress,
                convert_progress=False,
                desc=f"{label[:12]} T={T}",
                ann_accuracy=out.get("ann_accuracy"),
            )
            out["ann_accuracy"] = ev.ann_accuracy
            row["loss"][T] = ev.loss
            row["snn_accuracy"][T] = ev.snn_accuracy
        out["rows"].append(row)
        if on_row is not None:
            on_row(out)
    return out


def saved_ablation(path: str | Path) -> dict[str, dict]:
    """A stopped ablation's JSON at ``path`` (``onespike ablation --resume``): its result
    per model (none if there is no file); an :class:`OptionError` if it cannot be read."""
    prev = read_resume_json(path)
    if prev is None:
        return {}
    if not isinstance(prev, list) or not all(isinstance(r, dict) for r in prev):
        raise OptionError(f"--resume: {path} is not an ablation's JSON; remove it to start again")
    done = {r.get("model"): r for r in prev}
    for model, r in done.items():
        print(f"resuming {path}: {model}, {len(r.get('rows', []))} variant(s) done", flush=True)
    return done


def _finished_rows(out: dict, done: dict | None) -> dict[str, dict]:
    """The rows of a saved ablation ``done`` by variant, if it is of the same model,
    phases and test samples as ``out`` (their losses keyed by ``T`` again: JSON keys are
    strings); else none."""
    if not done or "ann_accuracy" not in done:
        return {}
    if any(done.get(k) != out[k] for k in ("model", "samples", "phases")):
        return {}
    rows = {}
    for row in done.get("rows", []):
        r = dict(row)
        for key in ("loss", "snn_accuracy"):
            r[key] = {int(t): v for t, v in row[key].items()}
        rows[r["variant"]] = r
    return rows


def ablation_table(results: list[dict]) -> str:
    """Markdown: one row per variant, loss in points at each T, one column block per model."""
    lines = []
    for r in results:
        ts = r["phases"]
        lines.append(
            f"**{r['model']}** (ANN {r['ann_accuracy']:.2f} %, {r['samples']} test images), "
            "loss in points:"
        )
        lines.append("")
        lines.append("| variant | " + " | ".join(f"T={t}" for t in ts) + " |")
        lines.append("|---|" + "---|" * len(ts))
        for row in r["rows"]:
            loss = {int(k): v for k, v in row["loss"].items()}  # JSON keys are strings
            cells = " | ".join(f"{loss[t]:+.2f}" if t in loss else "not run" for t in ts)
            lines.append(f"| {row['variant']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def layers_table(result: dict, phases: int) -> str:
    """Markdown: each spiking layer's searched base and scale at ``phases`` (a sweep JSON row)."""
    row = next((r for r in result["rows"] if r["phases"] == phases), None)
    if row is None:
        raise OptionError(f"{result['model']}: no row with phases={phases}")
    lines = [
        f"**{result['model']}**, T={phases}: searched code per spiking layer",
        "",
        "| layer | base | scale | activation error |",
        "|---|---|---|---|",
    ]
    for lp in row["layers"]:
        sc = lp["scale"]
        scale = (
            f"{sc:.3f}"
            if isinstance(sc, float)
            else f"{min(sc):.2f}-{max(sc):.2f} ({len(sc)} channels, mean {sum(sc) / len(sc):.2f})"
        )
        lines.append(f"| {lp['name']} | {lp['base']:.2f} | {scale} | {lp['act_error']:.4f} |")
    return "\n".join(lines)


def _results_from_json(data: list[dict]) -> list[SweepResult]:
    out = []
    for d in data:
        r = SweepResult(d["model"], d["dataset"], d["ann_accuracy"], d["samples"], d["rows"])
        r.step_check = d.get("step_check")
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m onespike.experiments.sweep A.json [B.json ...] [--layers T] [--json F]
    [--plot P]``: print sweeps' tables again, optionally merged into one JSON file and one
    plot (or the tables of ``onespike ablation`` JSON files)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m onespike.experiments.sweep", description=main.__doc__
    )
    p.add_argument("json_files", nargs="+")
    p.add_argument("--layers", type=int, default=None, help="also the per-layer table at this T")
    p.add_argument("--json", default=None, help="write the merged results here")
    p.add_argument("--plot", default=None, help="PNG: every model's accuracy vs phases")
    a = p.parse_args(argv)
    data = [d for f in a.json_files for d in json.loads(Path(f).read_text())]
    if all("variant" in row for d in data for row in d["rows"]):  # ablation files
        print(ablation_table(data))
        return 0
    results = _results_from_json(data)
    print(table(results))
    if a.layers is not None:
        for d in data:
            print()
            print(layers_table(d, a.layers))
    write(results, a.json, a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
