"""Compare settings of onespike.refine on one converted network (docs/RESULTS.md#refinement).

Converts a shipped model once with the default search (1,000 training images drawn with
``--seed``), then refines it with each JSON dict of RefineConfig fields given on the
command line and prints, for each, the test accuracy (event path), the loss against the
ANN, the wall time, the step kept and the KL/MSE loss on the fitted and held-out
calibration images before and after.

    python scripts/refine_variants.py --model resnet20 --phases 8 --test 2000 \\
        '{"lr": 1e-4}' '{"lr": 1e-4, "augment": "shift-flip", "temperature": 4}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import onespike
from onespike.data import calibration_set, fixed_subset, load_dataset
from onespike.evaluate import evaluate
from onespike.models import load_pretrained, pretrained_info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--phases", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="calibration draw")
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument(
        "--refine-calibration",
        type=int,
        default=None,
        help="refine on this many training images of the same draw (the search keeps "
        "--calibration); default: the search's images",
    )
    p.add_argument("--test", type=int, default=None, help="a fixed random N test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("variants", nargs="+", help="JSON dicts of RefineConfig fields")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [json.loads(v) for v in args.variants]
    ann = load_pretrained(args.model)
    dataset = pretrained_info(args.model).get("dataset", "mnist")
    xc, where = calibration_set(dataset, args.calibration, args.seed)
    x, y = load_dataset(dataset, "test")
    if args.test is not None:
        idx = fixed_subset(x.shape[0], args.test)
        x, y = x[idx], y[idx]
    t0 = time.perf_counter()
    snn = onespike.convert(ann, xc, phases=args.phases, progress=False)
    base = evaluate(ann, snn, x, y, step=False, costs=False, progress=False)
    print(
        f"{args.model} T={args.phases}, calibration {where}, {x.shape[0]} test images: "
        f"ANN {base.ann_accuracy:.2f} %, search only {base.snn_accuracy:.2f} % "
        f"(loss {base.loss:+.2f}; convert {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    xr = xc
    if args.refine_calibration is not None:
        xr, where_r = calibration_set(dataset, args.refine_calibration, args.seed)
        print(f"refining on {where_r}", flush=True)
    for kw in variants:
        ref = onespike.refine(snn, ann, xr, progress=False, **kw)
        r = evaluate(
            ann, ref, x, y, step=False, costs=False, progress=False, ann_accuracy=base.ann_accuracy
        )
        i = ref.plan.search["refine"]
        held = "none held out"  # holdout=0 fits on everything
        if i.get("held_out_loss_before") is not None:
            held = f"{i['held_out_loss_before']:.4g} -> {i['held_out_loss_after']:.4g}"
        print(
            f"{json.dumps(kw)}: {r.snn_accuracy:.2f} % (loss {r.loss:+.2f}), "
            f"{i['seconds']:.0f} s, kept {i.get('kept')} (step {i['kept_step']} of {i['steps']}), "
            f"fit loss {i['loss_before']:.4g} -> {i['loss_after']:.4g}, held-out {held}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
