"""The frontier: loss against latency for uniform, auto, refined and fine-tuned windows.

For every window T (``--phases``) and calibration draw (``--seeds``: ``--calibration``
training images drawn with that seed) the shipped model is converted and measured at
four points: (1) ``uniform``: every layer's window T (``convert(ann, xc, phases=T)``);
(2) ``auto``: ``windows="auto"`` (per-layer windows, latency at most the uniform
one's); (3) ``refined``: (2) then ``onespike.refine(snn, ann, xc)`` on the same
calibration images; (4) ``finetuned``: (3) then ``onespike.finetune(snn, ann, (x, y),
epochs=--finetune-epochs)`` on a fixed random ``--finetune-samples`` subset of the data
set's **training** split, drawn with the draw's seed (never the test set; left out with
``--no-finetune``). Each point is measured on the test set (event path, all of it unless
``--test N``): the loss (ANN accuracy minus SNN accuracy, in points), the latency in
steps, the windows, the spikes per neuron and the energy ratios ANN/SNN (compute and
total, on ``--cost-images`` test images), the seconds its step took and what refine /
finetune kept (``plan.search[...]["kept"]``). Results go to ``--json`` after every
point; rerunning the same command skips the points already there (a stopped job
resumes). ``--bias-correction`` converts with ``bias_correction=True`` (each row records
it; one setting per results file). ``--plot`` draws loss against latency, one line per
method through the mean over draws, each draw as a faint point.

    python scripts/frontier.py --model mnist_cnn --phases 2,3,4 --seeds 0,7 --threads 1 \\
        --json docs/results/frontier_mnist_cnn.json --plot docs/results/frontier_mnist_cnn.png
    python scripts/frontier.py --table docs/results/frontier_mnist_cnn.json  # markdown only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import onespike
from onespike._io import atomic_write
from onespike.data import load_dataset
from onespike.experiments.draws import (
    Rows,
    calibration_draw,
    draw_cells,
    draw_parser,
    grid,
    measure,
    shipped_eval,
    table_or_run,
)

METHODS = ("uniform", "auto", "refined", "finetuned")
LABELS = {
    "uniform": "uniform windows",
    "auto": "auto windows",
    "refined": "auto + refine",
    "finetuned": "auto + refine + finetune",
}


def _train_subset(dataset: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    x, y = load_dataset(dataset, "train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[: min(n, x.shape[0])].sort().values
    return x[idx], y[idx], f"{dataset} train: {len(idx)} of {x.shape[0]} (seed {seed})"


def _kept(info: dict, what: str, measured: str) -> dict:
    """What refine or finetune (``what``) kept, why, and its held-out ``measured`` figure
    before and after."""
    return {
        f"{what}_kept": info["kept"],
        f"{what}_kept_because": info["kept_because"],
        f"{what}_held_out_{measured}": [
            info[f"held_out_{measured}_before"],
            info[f"held_out_{measured}_after"],
        ],
    }


def _point(method: str, ann, snn, xc, T: int, seed: int, dataset: str, args) -> tuple:
    """One point of the frontier: the network of ``method`` (built on ``snn``, the previous
    point of the chain auto -> refined -> finetuned) and what its step kept."""
    bc = args.bias_correction
    if method == "uniform":
        return onespike.convert(ann, xc, phases=T, progress=False, bias_correction=bc), {}
    if method == "auto":
        net = onespike.convert(
            ann, xc, phases=T, windows="auto", progress=False, bias_correction=bc
        )
        return net, {"auto_kept": net.plan.search["auto_windows"]["kept"]}
    if method == "refined":
        net = onespike.refine(snn, ann, xc, progress=False)
        return net, _kept(net.plan.search["refine"], "refine", "agreement")
    xt, yt, twhere = _train_subset(dataset, args.finetune_samples, seed)
    net = onespike.finetune(
        snn, ann, (xt, yt), epochs=args.finetune_epochs, seed=seed, progress=False
    )
    info = net.plan.search["finetune"]
    extra = _kept(info, "finetune", "accuracy")
    extra.update(
        finetune_steps=info["steps"], finetune_data=twhere, finetune_epochs=args.finetune_epochs
    )
    return net, extra


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    done = Rows(args.json, {"bias_correction": args.bias_correction})
    methods = METHODS[:3] if args.no_finetune else METHODS
    shipped = shipped_eval(args.model, args.test, args.cost_images)
    ann, x, y, x_cost = shipped.ann, shipped.x, shipped.y, shipped.x_cost
    ann_acc = None
    for T, seed in grid(args):
        todo = [m for m in methods if not done.have(T, seed, method=m)]
        if not todo:
            continue
        xc, base = calibration_draw(args, shipped, T, seed)
        snn = None
        for method in methods[: max(methods.index(m) for m in todo) + 1]:
            t0 = time.perf_counter()
            net, extra = _point(method, ann, snn, xc, T, seed, shipped.dataset, args)
            if method != "uniform":
                snn = net
            secs = time.perf_counter() - t0
            if done.have(T, seed, method=method):
                continue  # rebuilt only as the start of a later point
            row = {**base, "method": method, **measure(ann, net, x, y, x_cost, ann_acc)}
            row["seconds"] = round(secs, 1)
            row.update(extra)
            ann_acc = row["ann_accuracy"]
            done.add(row)
            kept = {k: v for k, v in extra.items() if k.endswith("_kept")}
            print(
                f"{args.model} T={T} seed {seed} {method}: loss {row['loss']:+.2f}, "
                f"{row['latency_steps']} steps, windows {row['windows']}, "
                f"{row['spikes_per_neuron']:.3f} spikes/neuron, {secs:.0f} s {kept}",
                file=sys.stderr,
                flush=True,
            )
    if args.plot:
        plot(done.rows, args.plot)
    print(table(done.rows))
    return 0


def _groups(rows: list[dict]) -> dict[tuple[str, int, str, bool], list[dict]]:
    by: dict[tuple[str, int, str, bool], list[dict]] = {}
    for r in rows:
        key = (r["model"], r["phases"], r["method"], r.get("bias_correction", False))
        by.setdefault(key, []).append(r)
    for rs in by.values():
        rs.sort(key=lambda r: r["seed"])
    return by


def table(rows: list[dict]) -> str:
    """Markdown: per model, T and method, latency, each draw's loss, mean / worst, costs."""
    lines = [
        "| model | T | method | latency (steps) | windows (per draw) | loss per draw | "
        "mean / worst | spikes/neuron | energy ANN/SNN compute; total | kept (per draw) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(METHODS)}
    by = _groups(rows)
    groups = sorted(by.items(), key=lambda kv: (*kv[0][:2], kv[0][3], order[kv[0][2]]))
    for (model, T, method, bc), rs in groups:
        lat = "/".join(sorted({str(r["latency_steps"]) for r in rs}, key=int))
        wins = ", ".join("(" + ",".join(str(w) for w in r["windows"]) + ")" for r in rs)
        if len({tuple(r["windows"]) for r in rs}) == 1:
            wins = "(" + ",".join(str(w) for w in rs[0]["windows"]) + ")"
        key = {"auto": "auto_kept", "refined": "refine_kept", "finetuned": "finetune_kept"}
        kept = ", ".join(str(r.get(key.get(method, ""), "")) for r in rs) if method in key else ""
        lines.append(
            f"| {model} | {T} | {LABELS[method]}{', bias correction' if bc else ''} | {lat} | "
            f"{wins} | {draw_cells(rs)} | {kept} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Loss against latency, one line per method (mean over draws), draws as faint points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by = _groups(rows)
    models = sorted({r["model"] for r in rows})
    markers = {"uniform": "o", "auto": "s", "refined": "^", "finetuned": "D"}
    for i, method in enumerate(METHODS):
        keys = sorted((k for k in by if k[2] == method), key=lambda k: k[1])
        if not keys:
            continue
        pts = []
        for k in keys:
            rs = by[k]
            lat = statistics.fmean(r["latency_steps"] for r in rs)
            pts.append((lat, statistics.fmean(r["loss"] for r in rs)))
            ax.scatter(
                [r["latency_steps"] for r in rs],
                [r["loss"] for r in rs],
                color=f"C{i}",
                alpha=0.3,
                s=18,
                marker=markers[method],
            )
        pts.sort()
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=f"C{i}",
            marker=markers[method],
            label=LABELS[method] + " (mean)",
        )
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    n = sorted({r["test_images"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    ax.set_xlabel("latency (time steps)")
    ax.set_ylabel("loss (ANN - SNN accuracy, points)")
    ax.set_title(
        f"{', '.join(models)}: {'/'.join(map(str, n))} test images, draws {seeds}", fontsize=10
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = draw_parser(__doc__, phases="2,3,4", threads=2)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-samples", type=int, default=10000)
    p.add_argument("--no-finetune", action="store_true", help="only the first three points")
    p.add_argument("--plot", default=None, help="write the frontier plot here (.png)")
    plot_to = p.parse_known_args(argv)[0].plot

    def table_and_plot(rows: list[dict]) -> str:
        if plot_to:
            plot(rows, plot_to)
        return table(rows)

    return table_or_run(p, argv, table_and_plot, run)


if __name__ == "__main__":
    sys.exit(main())
