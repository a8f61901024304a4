"""Issue 27's held-out check: the shipped vit_tiny (MNIST) converted by onespike.convert.

Attention included: q, k, v as signed single-spike neurons (the qkv Linear's output), the
products q @ k^T and attention @ v of spikes, the softmax by spike timing with its own
searched base, the MLPs' ReLU layers; every layer's scale and base searched by
onespike.calibrate (default search). For each T: the loss against the ANN on all 10,000
MNIST test images (event path), spikes per neuron (max and mean over the test images,
per layer kind), step == event on the first --step-images test images (outputs, spike
phases and signs), and the cost report (ops, energy) on the first --cost-images.
With --signed inputs, signed neurons carry the residual stream and attention's output
too (every Linear but the patch embedding reads spikes). --model picks another shipped
vit_ model (vit_tiny_relu: ReLU attention); --spike-tolerance and --per-channel are
convert's spike_tolerance= and per_channel= (fewer spikes per neuron); --bias-correction
is convert's bias_correction=True (each layer's mean coding error taken out of the next
layer's bias); --windows auto is convert's windows="auto" (per-layer windows within
the uniform latency). With --refine,
each conversion is refined (onespike.refine's defaults, never worse than unrefined on
held-out calibration images). With --finetune-epochs N, each conversion is then
fine-tuned with labels (onespike.finetune, N epochs over the data set's training split,
a tenth held out, never worse than its input there); the row records the SNN before and
after.

    python scripts/vit_convert.py --phases 8 16 --calibration 2048 \
        --json docs/results/vit_convert.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import onespike
from onespike.data import calibration_set, load_dataset
from onespike.models import load_pretrained, pretrained_info
from onespike.refine import RefineConfig


def spike_figures(snn, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, dict]:
    """Event-path logits on ``x`` and, per spiking layer, the most spikes any neuron fired
    on any image and the mean spikes per neuron (counted, not assumed)."""
    logits, per, qkv = [], {}, {}
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            run = snn.simulate(x[i : i + batch])
            logits.append(run.output)
            for name, c in run.spike_counts.items():
                mx, tot, n = per.get(name, (0, 0.0, 0))
                per[name] = (max(mx, int(c.max())), tot + float(c.sum()), n + c.numel())
                if name.endswith("qkv_signed"):  # q, k, v: the thirds of the last dimension
                    for part, t in zip("qkv", c.chunk(3, dim=-1), strict=True):
                        tot, n = qkv.get(part, (0.0, 0))
                        qkv[part] = (tot + float(t.sum()), n + t.numel())
    kinds = {lp.name: lp.kind for lp in snn.plan.layers}
    layers = {k: {"kind": kinds[k], "max": m, "mean": t / n} for k, (m, t, n) in per.items()}
    total = sum(t for _, t, _ in per.values()) / sum(n for _, _, n in per.values())
    by_kind = {}
    for kind in ("signed", "softmax", "relu"):
        rows = [v for v in per if kinds[v] == kind]
        if rows:
            spikes = sum(per[r][1] for r in rows)
            neurons = sum(per[r][2] for r in rows)
            by_kind[kind] = {"max": max(per[r][0] for r in rows), "mean": spikes / neurons}
    figures = {
        "max": max(m for m, _, _ in per.values()),
        "mean": total,
        "by_kind": by_kind,
        "q_k_v": {part: t / n for part, (t, n) in qkv.items()},
        "layers": layers,
    }
    return torch.cat(logits), figures


def step_event(snn, x: torch.Tensor) -> dict:
    """The step simulator against the event path on ``x``, in float32 (a membrane within
    rounding of a threshold can fire one phase apart: counted) and in float64."""
    out = {"images": int(x.shape[0])}
    for dtype in (torch.float32, torch.float64):
        with torch.no_grad():
            ev = snn.simulate(x, dtype=dtype)
            st = snn.simulate(x, mode="step", dtype=dtype)
        phases = sum(int((st.spike_phases[k] != v).sum()) for k, v in ev.spike_phases.items())
        signs = sum(int((st.spike_signs[k] != v).sum()) for k, v in ev.spike_signs.items())
        neurons = sum(v.numel() for v in ev.spike_phases.values())
        out[str(dtype).removeprefix("torch.")] = {
            "max_abs_output_diff": float((ev.output - st.output).abs().max()),
            "same_predictions": int((ev.output.argmax(1) == st.output.argmax(1)).sum()),
            "phase_mismatches": phases,
            "sign_mismatches": signs,
            "neurons": neurons,
            "step_max_spikes": max(int(c.max()) for c in st.spike_counts.values()),
        }
    return out


def _base(text: str) -> str | float:
    """``--base``: ``global`` (one searched base for every layer) or a number."""
    return text if text in ("auto", "global") else float(text)


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model, args.weights_dir).eval()
    dataset = pretrained_info(args.model, args.weights_dir).get("dataset", "mnist")
    cal, where = calibration_set(dataset, args.calibration, args.seed)
    x, y = load_dataset(dataset, "test")
    x, y = x[: args.test], y[: args.test]
    with torch.no_grad():
        ann = torch.cat([model(x[i : i + args.batch]) for i in range(0, len(x), args.batch)])
    ann_acc = 100 * float((ann.argmax(1) == y).float().mean())
    print(
        f"ANN {args.model} ({dataset}): {ann_acc:.2f} % on {len(x)} test images; "
        f"calibration: {where}"
    )
    rows = []
    labelled = None
    if args.finetune_epochs:
        xtr, ytr = load_dataset(dataset, "train")
        if args.finetune_samples:  # a fixed random subset, drawn with the calibration seed
            gen = torch.Generator().manual_seed(args.seed)
            pick = torch.randperm(len(xtr), generator=gen)[: args.finetune_samples]
            xtr, ytr = xtr[pick], ytr[pick]
        labelled = (xtr, ytr)
    for T in args.phases:
        t0 = time.perf_counter()
        base = {} if args.base is None else {"base": _base(args.base)}
        if args.spike_tolerance is not None:
            base["spike_tolerance"] = args.spike_tolerance
        if args.per_channel is not None:
            base["per_channel"] = {"true": True, "false": False}[args.per_channel]
        if args.bias_correction:
            base["bias_correction"] = True
        if args.windows is not None:
            base["windows"] = args.windows
        refine = args.refine
        if args.refine and args.refine_samples is not None:
            refine = RefineConfig(max_samples=args.refine_samples)
        snn = onespike.convert(
            model, cal, phases=T, refine=refine, signed=args.signed, progress=False, **base
        )
        seconds = time.perf_counter() - t0
        before = None
        if labelled is not None:
            with torch.no_grad():
                pred = torch.cat([snn(x[i : i + args.batch]) for i in range(0, len(x), args.batch)])
            before = {"snn_accuracy": 100 * float((pred.argmax(1) == y).float().mean())}
            before["loss_points"] = ann_acc - before["snn_accuracy"]
            t0 = time.perf_counter()
            epochs = args.finetune_epochs
            snn = onespike.finetune(snn, model, labelled, epochs=epochs, progress=False)
            ft = snn.plan.search["finetune"]
            before |= {"finetune_seconds": round(time.perf_counter() - t0, 1)}
            before |= {k: ft[k] for k in ("kept", "kept_because", "held_out_samples")}
            print(f"T={T}: before fine-tuning {before}")
        logits, spikes = spike_figures(snn, x, args.batch)
        acc = 100 * float((logits.argmax(1) == y).float().mean())
        agree = 100 * float((logits.argmax(1) == ann.argmax(1)).float().mean())
        se = step_event(snn, x[: args.step_images])
        rep = onespike.cost(model, snn, x[: args.cost_images])
        row = {
            "phases": T,
            "dataset": dataset,
            "latency_steps": snn.plan.latency_steps,
            "ann_accuracy": ann_acc,
            "snn_accuracy": acc,
            "loss_points": ann_acc - acc,
            "agreement_with_ann": agree,
            "spikes_per_neuron": spikes,
            "step_event": se,
            "bases": {lp.name: lp.base for lp in snn.plan.layers},
            "kinds": {lp.name: lp.kind for lp in snn.plan.layers},
            "convert_seconds": round(seconds, 1),
            "signed": args.signed,
            "base_option": args.base or "auto",
            "spike_tolerance": args.spike_tolerance or 0.0,
            "per_channel": snn.plan.search["per_channel"],
            "bias_correction": snn.plan.search["bias_correction"],
            "windows": [lp.phases for lp in snn.plan.layers],
            "input_window": snn.plan.input_steps,
            "refine": snn.plan.search.get("refine", {}).get("kept") if args.refine else None,
            "refine_kept_because": (
                snn.plan.search.get("refine", {}).get("kept_because") if args.refine else None
            ),
            "before_finetune": before,
            "cost": rep.totals,
            "cost_images": args.cost_images,
        }
        rows.append(row)
        print(snn.plan)
        print(
            f"T={T}: SNN {acc:.2f} % (loss {ann_acc - acc:+.2f} points, agreement {agree:.2f} %),"
            f" latency {snn.plan.latency_steps} steps; spikes per neuron max {spikes['max']}, "
            f"mean {spikes['mean']:.3f} {spikes['by_kind']}; step vs event on "
            f"{se['images']} images: float32 {se['float32']}, float64 {se['float64']}; "
            f"energy ratio (compute) "
            f"{rep.totals['energy_ratio_compute']:.2f}x; converted in {seconds:.0f} s"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_tiny", help="a shipped vit_ model")
    ap.add_argument(
        "--weights-dir",
        default=None,
        help="folder of {model}.pt/.json (default: the shipped weights); the data set is "
        "the sidecar's",
    )
    ap.add_argument("--phases", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--calibration", type=int, default=2048, help="training images")
    ap.add_argument("--seed", type=int, default=0, help="the calibration draw")
    ap.add_argument("--test", type=int, default=10_000, help="the first N test images")
    ap.add_argument("--step-images", type=int, default=64)
    ap.add_argument("--cost-images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--base",
        default=None,
        help="convert's base=: 'global' (one base for every layer, SpikedAttention's "
        "choice) or a number; default: searched per layer",
    )
    ap.add_argument(
        "--signed",
        default="operands",
        choices=("operands", "inputs"),
        help="where signed neurons go (convert's signed=): 'inputs' also on the residual "
        "stream and attention's output",
    )
    ap.add_argument(
        "--spike-tolerance",
        type=float,
        default=None,
        help="convert's spike_tolerance=: each layer the fewest spikes while adding at most "
        "(1 + t) times the least error it can add",
    )
    ap.add_argument(
        "--per-channel",
        default=None,
        choices=("true", "false"),
        help="convert's per_channel= (default 'auto': a scale per token of a token tensor)",
    )
    ap.add_argument(
        "--bias-correction",
        action="store_true",
        help="convert's bias_correction=True: the next layer's bias corrected for the code's "
        "mean error",
    )
    ap.add_argument(
        "--windows",
        default=None,
        choices=("auto",),
        help="convert's windows='auto': each spiking layer its own window, the latency at "
        "most the uniform network's (default: every window T)",
    )
    ap.add_argument("--refine", action="store_true", help="convert with refine=True (the defaults)")
    ap.add_argument(
        "--refine-samples",
        type=int,
        default=None,
        help="with --refine: RefineConfig(max_samples=N), the calibration samples refinement "
        "uses (a fifth held out; default 1024)",
    )
    ap.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="fine-tune each conversion with labels for N epochs over the training split",
    )
    ap.add_argument(
        "--finetune-samples",
        type=int,
        default=None,
        help="with --finetune-epochs: a fixed random N of the training split (default: all)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = run(args)
    if args.json:
        flags = []
        for k, v in vars(args).items():
            flag = "--" + k.replace("_", "-")
            if k == "json" or v is None or v is False:
                continue
            if v is True:
                flags.append(flag)
            elif isinstance(v, list):
                flags.append(f"{flag} {' '.join(map(str, v))}")
            else:
                flags.append(f"{flag} {v}")
        record = {
            "command": "python scripts/vit_convert.py " + " ".join(flags),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
