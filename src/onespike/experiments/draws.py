"""What the per-draw result scripts share (``scripts/refine_results.py``,
``windows_results.py``, ``lossless_window.py``, ``frontier.py``): a shipped model with its
test set, a results file that a stopped run resumes, and the common command line.

Each script measures something for every window ``T`` and calibration draw (a seed of
:func:`onespike.data.calibration_set`), appends one row per ``(T, seed)`` to a JSON list
written after every run (beside, then renamed), and prints a markdown table; ``--table
FILES`` only prints the table of finished files.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from onespike._io import write_text
from onespike.data import calibration_set, fixed_subset, load_dataset
from onespike.evaluate import evaluate, measure_costs
from onespike.models import load_pretrained, pretrained_info

__all__ = [
    "Rows",
    "ShippedEval",
    "calibration_draw",
    "draw_cells",
    "draw_parser",
    "grid",
    "measure",
    "shipped_eval",
    "table_or_run",
]


@dataclass
class ShippedEval:
    """A shipped model and the images it is measured on."""

    ann: nn.Module
    dataset: str
    x: torch.Tensor  # the test images (all, or a fixed random subset)
    y: torch.Tensor
    x_cost: torch.Tensor  # a fixed random subset of those, for spikes and energy


def shipped_eval(model: str, test: int | None, cost_images: int) -> ShippedEval:
    """``model`` (a shipped name) in eval mode with its data set's test split: all of it,
    or a fixed random ``test`` images; ``cost_images`` of those for the cost figures."""
    ann = load_pretrained(model)
    dataset = pretrained_info(model).get("dataset", "mnist")
    x, y = load_dataset(dataset, "test")
    if test is not None:
        idx = fixed_subset(x.shape[0], test)
        x, y = x[idx], y[idx]
    x_cost = x[fixed_subset(x.shape[0], min(cost_images, x.shape[0]))]
    return ShippedEval(ann, dataset, x, y, x_cost)


def grid(args: argparse.Namespace) -> Iterator[tuple[int, int]]:
    """Every ``(T, seed)`` of ``--phases`` x ``--seeds``, in the order given."""
    for T in [int(t) for t in args.phases.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            yield T, seed


def calibration_draw(
    args: argparse.Namespace, shipped: ShippedEval, phases: int, seed: int
) -> tuple[torch.Tensor, dict]:
    """The calibration images of draw ``seed`` (``--calibration`` training images) and the
    fields every row of that draw starts with: what was measured, on what, with what."""
    xc, where = calibration_set(shipped.dataset, args.calibration, seed)
    row = {
        "model": args.model,
        "dataset": shipped.dataset,
        "phases": phases,
        "seed": seed,
        "calibration": where,
        "test_images": int(shipped.x.shape[0]),
        "cost_images": int(shipped.x_cost.shape[0]),
        "threads": args.threads,
        "bias_correction": args.bias_correction,
    }
    return xc, row


def measure(
    ann: nn.Module,
    snn: object,
    x: torch.Tensor,
    y: torch.Tensor,
    x_cost: torch.Tensor,
    ann_acc: float | None = None,
) -> dict:
    """One converted network's figures: accuracy and loss on ``(x, y)`` (event path;
    ``ann_acc`` skips the ANN's pass when known), latency and windows, and spikes per
    neuron and energy ratios on ``x_cost``."""
    ev = evaluate(ann, snn, x, y, step=False, costs=False, progress=False, ann_accuracy=ann_acc)
    t = measure_costs(snn, x_cost).totals
    return {
        "ann_accuracy": ev.ann_accuracy,
        "snn_accuracy": ev.snn_accuracy,
        "loss": ev.loss,
        "latency_steps": snn.plan.latency_steps,
        "windows": list(snn.plan.windows),
        "input_window": snn.plan.input_steps,
        "spikes_per_neuron": t["spikes_per_neuron_mean"],
        "energy_ratio_compute": t["energy_ratio_compute"],
        "energy_ratio_total": t["energy_ratio_total"],
    }


class Rows:
    """The rows of a results file, one per ``(phases, seed)``; :meth:`add` rewrites the
    file after every row, so rerunning the same command skips what is there.

    A file holds one value of each of ``settings`` (the options the rows were measured
    with, e.g. ``{"bias_correction": True}``): a run with another value is refused rather
    than resumed from, or mixed with, rows it did not measure. A row without a field was
    measured with its entry in ``defaults`` (``bias_correction``: False)."""

    def __init__(
        self,
        path: str | Path,
        settings: Mapping[str, object] | None = None,
        defaults: Mapping[str, object] | None = None,
    ):
        self.path = Path(path)
        self.rows: list[dict] = json.loads(self.path.read_text()) if self.path.exists() else []
        defaults = {"bias_correction": False, **(defaults or {})}
        for key, want in (settings or {}).items():
            for r in self.rows:
                have = r.get(key, defaults.get(key))
                if have != want:
                    raise SystemExit(
                        f"{self.path} holds rows measured with {key}={have!r}; this run has "
                        f"{key}={want!r}: write it to another file (--json)"
                    )

    def have(self, phases: int, seed: int, **match: object) -> bool:
        """A row for ``phases`` and ``seed`` (and the fields of ``match``) is there."""
        return any(
            r["phases"] == phases
            and r["seed"] == seed
            and all(r.get(k) == v for k, v in match.items())
            for r in self.rows
        )

    def add(self, row: dict) -> None:
        self.rows.append(row)
        write_text(self.path, json.dumps(self.rows, indent=2) + "\n")


def draw_cells(rows: list[dict]) -> str:
    """The cells every per-draw table shares, for the rows of one setting (their draws):
    ``loss per draw | mean / worst | spikes/neuron | energy ANN/SNN compute; total``, the
    costs as the mean over the draws."""
    losses = [r["loss"] for r in rows]
    per = ", ".join(f"{v:+.2f} (seed {r['seed']})" for v, r in zip(losses, rows))
    spikes = statistics.fmean(r["spikes_per_neuron"] for r in rows)
    en_c = statistics.fmean(r["energy_ratio_compute"] for r in rows)
    en_t = statistics.fmean(r["energy_ratio_total"] for r in rows)
    return (
        f"{per} | {statistics.fmean(losses):+.2f} / {max(losses):+.2f} | {spikes:.3f} | "
        f"{en_c:.2f}x; {en_t:.2f}x"
    )


def draw_parser(doc: str, phases: str, threads: int = 1) -> argparse.ArgumentParser:
    """The options every per-draw script takes (``--model``, ``--phases``, ``--seeds``,
    ``--calibration``, ``--test``, ``--cost-images``, ``--threads``, ``--bias-correction``,
    ``--json``, ``--table``); a script adds its own."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", help="shipped model name (mnist_cnn, resnet20, fast_vgg, ...)")
    p.add_argument("--phases", default=phases, help="windows T, comma-separated")
    p.add_argument("--seeds", default="0,7,11", help="calibration draws")
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument("--test", type=int, default=None, help="a fixed random N test images")
    p.add_argument("--cost-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument(
        "--bias-correction",
        action="store_true",
        help="convert with bias_correction=True (recorded in every row; one setting per file)",
    )
    p.add_argument("--json", help="results file (resumed if it exists)")
    p.add_argument("--table", nargs="+", default=None, help="only print the table of these files")
    return p


def table_or_run(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    table: Callable[[list[dict]], str],
    run: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv``; with ``--table FILES`` print ``table`` of their rows, else ``run``."""
    args = p.parse_args(argv)
    if args.table:
        print(table([r for f in args.table for r in json.loads(Path(f).read_text())]))
        return 0
    if not (args.model and args.json):
        p.error("--model and --json are needed (or --table FILES)")
    return run(args)
