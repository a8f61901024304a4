"""The smallest window T that is lossless on every calibration draw (docs/RESULTS.md).

For every window T (``--phases``) and calibration draw (``--seeds``: ``--calibration``
training images drawn with that seed) the shipped model is converted with the default
search and measured on the test set (event path, all of it unless ``--test N``): the loss
(ANN accuracy minus SNN accuracy, in points), the latency, the spikes per neuron and the
energy ratios (on ``--cost-images`` test images). Then, for each bound (``--bounds``,
points), the smallest T whose loss is within the bound on **every** draw, with the mean
and the worst draw beside it. Results go to ``--json`` after every run; rerunning the same
command skips the runs already there, so a stopped job resumes.

    python scripts/lossless_window.py --model mnist_cnn --phases 2,3,4,6,8 --seeds 0,7,11 \\
        --threads 1 --json docs/results/lossless_mnist_cnn.json
    python scripts/lossless_window.py --table docs/results/lossless_*.json   # markdown only
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import onespike
from onespike.calibrate import SearchConfig
from onespike.experiments.draws import (
    Rows,
    ShippedEval,
    calibration_draw,
    draw_cells,
    draw_parser,
    grid,
    measure,
    shipped_eval,
    table_or_run,
)


def _settings(args: argparse.Namespace) -> dict:
    """The search settings a results file holds one of: ``search_samples`` and convert's
    ``base=`` and ``scale=`` (recorded in every row; rows without a field used the
    default)."""
    return {
        "search_samples": (
            SearchConfig().search_samples if args.search_samples is None else args.search_samples
        ),
        "base": "auto" if args.base is None else args.base,
        "scale": "auto" if args.scale is None else args.scale,
    }


def _run_one(ev: ShippedEval, T: int, seed: int, args: argparse.Namespace) -> dict:
    xc, row = calibration_draw(args, ev, T, seed)
    settings = _settings(args)
    snn = onespike.convert(
        ev.ann, xc, phases=T, progress=False, bias_correction=args.bias_correction, **settings
    )
    return {**row, **settings, **measure(ev.ann, snn, ev.x, ev.y, ev.x_cost)}


def smallest(rows: list[dict], bound: float) -> dict | None:
    """The smallest T whose loss is <= ``bound`` on every draw measured at that T."""
    by_t: dict[int, list[dict]] = {}
    for r in rows:
        by_t.setdefault(r["phases"], []).append(r)
    for T in sorted(by_t):
        losses = [r["loss"] for r in by_t[T]]
        if max(losses) <= bound + 1e-9:
            return {
                "phases": T,
                "draws": len(losses),
                "mean": statistics.fmean(losses),
                "worst": max(losses),
                "latency_steps": by_t[T][0]["latency_steps"],
            }
    return None


def table(rows: list[dict], bounds: list[float]) -> str:
    lines = [
        "| model | T | latency | loss per draw | mean / worst | spikes/neuron | energy ANN/SNN |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["phases"]), []).append(r)
    for (model, T), rs in sorted(by_key.items()):
        rs.sort(key=lambda r: r["seed"])
        lines.append(f"| {model} | {T} | {rs[0]['latency_steps']} | {draw_cells(rs)} |")
    lines.append("")
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        for b in bounds:
            s = smallest(mine, b)
            if s is None:
                lines.append(f"- {model}: no measured T is within {b} points on every draw")
            else:
                lines.append(
                    f"- {model}: smallest T within {b} points on every one of {s['draws']} "
                    f"draws: **T = {s['phases']}** ({s['latency_steps']} steps; mean "
                    f"{s['mean']:+.2f}, worst {s['worst']:+.2f})"
                )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    # one setting of the search per file (rows without a field used the default)
    defaults = _settings(argparse.Namespace(search_samples=None, base=None, scale=None))
    rows = Rows(args.json, {"bias_correction": args.bias_correction, **_settings(args)}, defaults)
    ev = shipped_eval(args.model, args.test, args.cost_images)
    for T, seed in grid(args):
        if rows.have(T, seed):
            continue
        row = _run_one(ev, T, seed, args)
        rows.add(row)
        print(f"T={T} seed={seed}: loss {row['loss']:+.2f}", file=sys.stderr, flush=True)
    print(table(rows.rows, args.bounds))
    return 0


def _scale(text: str) -> str | float:
    """``--scale``: 'auto', 'max' or a percentile (a number)."""
    return text if text in ("auto", "max") else float(text)


def main(argv: list[str] | None = None) -> int:
    p = draw_parser(__doc__, phases="4,6,8,12,16,24,32")
    p.add_argument("--bounds", default="0.5,0.1", help="loss bounds in points")
    p.add_argument(
        "--search-samples",
        type=int,
        default=None,
        help="convert's search_samples= (default 256): the calibration images the search "
        "scores candidates and measures the bias correction on (one setting per file)",
    )
    p.add_argument(
        "--base",
        type=float,
        default=None,
        help="convert's base=: one fixed base for every layer (default: searched per layer; "
        "one setting per file)",
    )
    p.add_argument(
        "--scale",
        type=_scale,
        default=None,
        help="convert's scale=: 'auto' (searched; the default), 'max' or a percentile "
        "(one setting per file)",
    )
    bounds = [float(b) for b in p.parse_known_args(argv)[0].bounds.split(",")]

    def run_with_bounds(args: argparse.Namespace) -> int:
        args.bounds = bounds
        return run(args)

    return table_or_run(p, argv, lambda rows: table(rows, bounds), run_with_bounds)


if __name__ == "__main__":
    raise SystemExit(main())
