"""Per-layer windows against uniform ones at the same latency: loss, spikes, latency per draw.

For every window T (``--phases``) and calibration draw (``--seeds``: ``--calibration``
training images drawn with that seed) the shipped model is converted three times with
the default search: with every layer's window T (uniform, the input's window T too, as
``convert`` does by default); the same with the analog input integrated in one step
(``input_window=1``: the same plan, latency ``T - 1`` steps shorter); and with
``windows="auto"`` (the input's window 1, each layer's window chosen by measured
sensitivity, the latency at most the uniform one's, the allocations searched and the
uniform windows compared by top-1 agreement with the ANN on the calibration images
the search does not score). Each is measured on the test set (event path): the loss
(ANN accuracy minus SNN accuracy, in points), the spikes per neuron and the energy ratio
(on ``--cost-images`` test images), the latency in steps and the windows chosen.
Results go to ``--json`` after every run; rerunning the same command skips the runs
already there.

    python scripts/windows_results.py --model mnist_cnn --phases 3,4 --seeds 0,7,11 \\
        --threads 1 --json docs/results/windows_mnist_cnn.json
    python scripts/windows_results.py --table docs/results/windows_mnist_cnn.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import onespike
from onespike.experiments.draws import (
    Rows,
    calibration_draw,
    draw_parser,
    grid,
    measure,
    shipped_eval,
    table_or_run,
)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    done = Rows(args.json, {"bias_correction": args.bias_correction})
    ev = shipped_eval(args.model, args.test, args.cost_images)
    ann, x, y, x_cost = ev.ann, ev.x, ev.y, ev.x_cost
    ann_acc = None
    for T, seed in grid(args):
        if done.have(T, seed):
            continue
        xc, row = calibration_draw(args, ev, T, seed)
        runs = (("uniform", None, None), ("uniform_input_1", None, 1), ("auto", "auto", None))
        for key, windows, in_win in runs:
            t0 = time.perf_counter()
            snn = onespike.convert(
                ann, xc, phases=T, windows=windows, input_window=in_win, progress=False,
                bias_correction=args.bias_correction,
            )  # fmt: skip
            secs = time.perf_counter() - t0
            row[key] = measure(ann, snn, x, y, x_cost, ann_acc)
            row[key]["convert_seconds"] = round(secs, 1)
            ann_acc = row[key]["ann_accuracy"]
            if windows == "auto":
                info = snn.plan.search["auto_windows"]
                row["auto"]["kept"] = info["kept"]
                row["auto"]["allocated"] = info.get("allocated", row["auto"]["windows"])
                row["auto"]["calibration_output_error"] = {
                    "uniform": info["uniform_output_error"],
                    "allocated": info.get("allocated_output_error"),
                }
                row["auto"]["criterion"] = info["criterion"]
                row["auto"]["held_out_samples"] = info["held_out_samples"]
                row["auto"]["candidates"] = info["candidates"]
        assert row["auto"]["latency_steps"] <= row["uniform"]["latency_steps"]
        done.add(row)
        u, u1, a = row["uniform"], row["uniform_input_1"], row["auto"]
        print(
            f"{args.model} T={T} seed {seed}: loss {u['loss']:+.2f} (uniform, "
            f"{u['latency_steps']} steps; {u1['loss']:+.2f} in {u1['latency_steps']} "
            f"steps with a 1-step input) -> {a['loss']:+.2f} (auto {a['windows']}, "
            f"{a['latency_steps']} steps, kept {a['kept']})",
            flush=True,
        )
    print(table(done.rows))
    return 0


def table(rows: list[dict]) -> str:
    """Markdown: per model and T, each draw's loss with uniform and with auto windows."""
    lines = [
        "| model | T | ANN % | latency (steps) uniform / 1-step input / auto | "
        "windows auto (per draw) | loss per draw, uniform | mean | "
        "loss per draw, uniform 1-step input | loss per draw, auto | mean | "
        "spikes/neuron uniform / auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["phases"]) for r in rows})
    for m, T in keys:
        rs = sorted(
            (r for r in rows if (r["model"], r["phases"]) == (m, T)), key=lambda r: r["seed"]
        )
        u = [r["uniform"]["loss"] for r in rs]
        a = [r["auto"]["loss"] for r in rs]
        u1 = [r["uniform_input_1"]["loss"] for r in rs if "uniform_input_1" in r]
        lat_u = "/".join(sorted({str(r["uniform"]["latency_steps"]) for r in rs}))
        lat_1 = "/".join(
            sorted({str(r["uniform_input_1"]["latency_steps"]) for r in rs if u1}) or ["-"]
        )
        lat_a = "/".join(sorted({str(r["auto"]["latency_steps"]) for r in rs}))
        wins = ", ".join(
            "("
            + ",".join(str(w) for w in r["auto"]["windows"])
            + ")"
            + ("" if r["auto"]["kept"] == "auto" else " kept uniform")
            for r in rs
        )
        spk_u = statistics.mean(r["uniform"]["spikes_per_neuron"] for r in rs)
        spk_a = statistics.mean(r["auto"]["spikes_per_neuron"] for r in rs)
        lines.append(
            f"| {m} | {T} | {rs[0]['uniform']['ann_accuracy']:.2f} | "
            f"{lat_u} / {lat_1} / {lat_a} | "
            f"{wins} | {', '.join(f'{v:+.2f}' for v in u)} | {statistics.mean(u):+.2f} | "
            f"{', '.join(f'{v:+.2f}' for v in u1) or '-'} | "
            f"{', '.join(f'{v:+.2f}' for v in a)} | {statistics.mean(a):+.2f} | "
            f"{spk_u:.3f} / {spk_a:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return table_or_run(draw_parser(__doc__, phases="3,4", threads=2), argv, table, run)


if __name__ == "__main__":
    sys.exit(main())
