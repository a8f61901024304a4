"""Refinement figures of docs/RESULTS.md: loss with and without onespike.refine, per draw.

For every window T and calibration draw (``--seeds``: 1,000 training images drawn with
that seed), the script converts the shipped model with the default search, measures the
SNN on the test set (event path), refines it (``onespike.refine``, default settings
unless overridden) and measures it again. Beside the accuracy it records the wall time
of the refinement, the spikes per neuron and the energy ratios before and after (on
``--cost-images`` test images), and the step simulator's agreement with the event path on
``--step-images`` images. Results go to ``--json`` after every run; rerunning the same
command skips the runs already there, so a stopped job resumes.

    python scripts/refine_results.py --model resnet20 --phases 8,6 --seeds 0,7,11 \\
        --json docs/results/refine_resnet20.json
    python scripts/refine_results.py --table docs/results/refine_*.json   # markdown only

``--held-out-test N``: images the ANN was never trained on choose the step kept. A fixed
random N of the test images (permutation seed 0) go to ``refine(held_out=...)``, every
calibration image is fitted, and every figure is measured on the **other** test images
only (``test_images`` says how many; one setting per file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import onespike
from onespike.data import fixed_subset
from onespike.evaluate import evaluate, measure_costs
from onespike.experiments.draws import (
    Rows,
    calibration_draw,
    draw_parser,
    grid,
    shipped_eval,
    table_or_run,
)


def _costs(snn: onespike.SpikingNetwork, x: torch.Tensor) -> dict:
    t = measure_costs(snn, x).totals
    keys = ("spikes_per_neuron_mean", "spikes_per_neuron_max")
    return {k: t[k] for k in (*keys, "energy_ratio_compute", "energy_ratio_total")}


def _step_check(snn: onespike.SpikingNetwork, x: torch.Tensor) -> dict:
    ev, st = snn.simulate(x, mode="event"), snn.simulate(x, mode="step")
    same = int((ev.output.argmax(1) == st.output.argmax(1)).sum())
    mx = max(int(c.max()) for c in st.spike_counts.values())
    return {"images": int(x.shape[0]), "same_predictions": same, "max_spikes_per_neuron": mx}


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    done = Rows(
        args.json,
        {"bias_correction": args.bias_correction, "held_out_test": args.held_out_test},
        defaults={"held_out_test": 0},
    )
    shipped = shipped_eval(args.model, args.test, args.cost_images)
    ann, x, y, x_cost = shipped.ann, shipped.x, shipped.y, shipped.x_cost
    x_held = None
    if args.held_out_test:
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        hold = perm[: args.held_out_test].sort().values
        rest = perm[args.held_out_test :].sort().values
        x_held, x, y = x[hold], x[rest], y[rest]
        x_cost = x[fixed_subset(x.shape[0], min(args.cost_images, x.shape[0]))]
    x_step = x[fixed_subset(x.shape[0], min(args.step_images, x.shape[0]))]
    overrides = json.loads(args.refine) if args.refine else {}
    ann_acc = None
    for T, seed in grid(args):
        if done.have(T, seed):
            continue
        xc, row = calibration_draw(args, shipped, T, seed)
        t0 = time.perf_counter()
        snn = onespike.convert(
            ann, xc, phases=T, progress=False, bias_correction=args.bias_correction
        )
        t_conv = time.perf_counter() - t0
        ev = evaluate(ann, snn, x, y, step=False, costs=False, progress=False, ann_accuracy=ann_acc)
        ann_acc = ev.ann_accuracy
        t0 = time.perf_counter()
        ref = onespike.refine(snn, ann, xc, held_out=x_held, progress=args.progress, **overrides)
        t_ref = time.perf_counter() - t0
        er = evaluate(ann, ref, x, y, step=False, costs=False, progress=False, ann_accuracy=ann_acc)
        row = {
            **row,
            "test_images": int(x.shape[0]),
            "held_out_test": args.held_out_test,
            "ann_accuracy": ann_acc,
            "snn_accuracy": ev.snn_accuracy,
            "refined_accuracy": er.snn_accuracy,
            "loss": ev.loss,
            "refined_loss": er.loss,
            "convert_seconds": round(t_conv, 1),
            "refine_seconds": round(t_ref, 1),
            "refine": ref.plan.search["refine"],
            "costs": _costs(snn, x_cost),
            "refined_costs": _costs(ref, x_cost),
            "refined_step_check": _step_check(ref, x_step),
        }
        done.add(row)
        print(
            f"{args.model} T={T} seed {seed}: loss {ev.loss:+.2f} -> {er.loss:+.2f} "
            f"(refine {t_ref:.0f} s, kept step {row['refine']['kept_step']})",
            flush=True,
        )
    print(table(done.rows))
    return 0


def table(rows: list[dict]) -> str:
    """Markdown: per model and T, the loss of every draw without and with refinement."""
    lines = [
        "| model | T | ANN % | loss per draw, search only | mean / worst | "
        "loss per draw, refined | mean / worst | refine time | spikes/neuron | energy ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["phases"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for m, T in keys:
        rs = sorted(
            (r for r in rows if (r["model"], r["phases"]) == (m, T)), key=lambda r: r["seed"]
        )
        a = [r["loss"] for r in rs]
        b = [r["refined_loss"] for r in rs]
        secs = [r["refine_seconds"] for r in rs]
        spk = (
            f"{statistics.mean(r['costs']['spikes_per_neuron_mean'] for r in rs):.3f} -> "
            f"{statistics.mean(r['refined_costs']['spikes_per_neuron_mean'] for r in rs):.3f}"
        )
        en = (
            f"{statistics.mean(r['costs']['energy_ratio_compute'] for r in rs):.2f}x -> "
            f"{statistics.mean(r['refined_costs']['energy_ratio_compute'] for r in rs):.2f}x"
        )
        lines.append(
            f"| {m} | {T} | {rs[0]['ann_accuracy']:.2f} | "
            f"{', '.join(f'{v:+.2f}' for v in a)} | {statistics.mean(a):+.2f} / {max(a):+.2f} | "
            f"{', '.join(f'{v:+.2f}' for v in b)} | {statistics.mean(b):+.2f} / {max(b):+.2f} | "
            f"{statistics.mean(secs):.0f} s | {spk} | {en} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = draw_parser(__doc__, phases="8", threads=2)
    p.add_argument("--step-images", type=int, default=200)
    p.add_argument(
        "--refine",
        default=None,
        help="RefineConfig overrides as JSON, e.g. '{\"iterations\": 300}'",
    )
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--held-out-test",
        type=int,
        default=0,
        metavar="N",
        help="a fixed random N test images choose the step kept (refine's held_out=); "
        "the rest are measured",
    )
    return table_or_run(p, argv, table, run)


if __name__ == "__main__":
    sys.exit(main())
