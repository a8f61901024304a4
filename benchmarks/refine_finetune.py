"""What refine and finetune cost in time and gain in accuracy, on a small network.

A small residual MNIST network (tests/nets.py:MnistRes: conv-BN-ReLU, max-pool, residual
add), trained for one epoch on 5,000 training images, is converted at T phases on two
calibration draws (1,000 training images each); every network is measured on all
10,000 test images. ``refine`` runs with its defaults on the calibration images,
``finetune`` for one epoch on 10,000 labelled training images.

    .venv/bin/python benchmarks/refine_finetune.py [--phases 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.nets

from tests.nets import MnistRes, train_briefly

import onespike
from onespike.data import calibration_set, load_mnist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--phases", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    xtr, ytr = load_mnist("train")
    xte, yte = load_mnist("test")
    idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(100))
    torch.manual_seed(0)
    ann = train_briefly(MnistRes(), xtr[idx[:5000]], ytr[idx[:5000]], epochs=1)
    ft = idx[5000:15000]

    def acc(net):
        with torch.no_grad():
            return float((net(xte).argmax(1) == yte).float().mean()) * 100

    a = acc(ann)
    rows = []
    for draw in (0, 1):
        xc, _ = calibration_set("mnist", 1000, draw)
        t = time.perf_counter()
        snn = onespike.convert(ann, xc, phases=args.phases, progress=False)
        row = {"draw": draw, "ann": a, "convert_s": time.perf_counter() - t}
        row["unrefined_loss"] = a - acc(snn)
        t = time.perf_counter()
        r = onespike.refine(snn, ann, xc, progress=False)
        row["refine_s"], row["refined_loss"] = time.perf_counter() - t, a - acc(r)
        row["refine_kept"] = r.plan.search["refine"]["kept_because"]
        t = time.perf_counter()
        f = onespike.finetune(snn, ann, (xtr[ft], ytr[ft]), epochs=1, progress=False)
        row["finetune_s"], row["finetuned_loss"] = time.perf_counter() - t, a - acc(f)
        row["finetune_kept"] = f.plan.search["finetune"]["kept_because"]
        rows.append(row)
        print(
            f"T={args.phases} draw {draw}: ANN {a:.2f} %; loss unrefined "
            f"{row['unrefined_loss']:+.2f}"
            f", refined {row['refined_loss']:+.2f} ({row['refine_s']:.0f} s), fine-tuned "
            f"{row['finetuned_loss']:+.2f} ({row['finetune_s']:.0f} s)\n  refine kept: "
            f"{row['refine_kept']}\n  finetune kept: {row['finetune_kept']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
