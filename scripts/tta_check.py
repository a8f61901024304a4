"""The data check without a GPU: a shipped CIFAR-10 ANN with airbench94's test-time augmentation.

airbench94 is published at 94.01 % on the original CIFAR-10 *with* its test-time
augmentation (six views of each image: ``onespike.experiments.augment.tta_logits``);
the shipped ``fast_vgg_e24`` is trained with that recipe (``--recipe airbench``, 24 epochs
instead of about 10). Scored the same way on all 10,000 test images, it should land near that figure
if the data is the original release; on a lossy copy it would fall well short (the JPEG
copy cost airbench94 3.4 points). This does not replace ``scripts/airbench_reference.py``
(airbench94 itself: seconds on a CUDA GPU, about two hours of one core here with ``--cpu``);
it is the quicker check this machine can run.
Converted networks are never scored with TTA: an SNN sees each image once.

    python scripts/tta_check.py --models fast_vgg_e24 --json docs/results/tta_check.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from onespike.data import load_cifar10
from onespike.experiments.augment import tta_logits
from onespike.models import load_pretrained, pretrained_info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["fast_vgg_e24"], help="shipped CIFAR-10 models")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_cifar10("test")
    rows = []
    for name in args.models:
        model = load_pretrained(name).eval()
        t0 = time.perf_counter()
        acc = {}
        for level in (0, 2):
            hits = 0
            for i in range(0, len(x), args.batch):
                out = tta_logits(model, x[i : i + args.batch], level)
                hits += int((out.argmax(1) == y[i : i + args.batch]).sum())
            acc[level] = round(100.0 * hits / len(x), 2)
        row = {
            "model": name,
            "sidecar_test_acc": pretrained_info(name)["test_acc"],
            "test_images": len(x),
            "acc_plain": acc[0],
            "acc_tta_airbench94": acc[2],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(
            f"{name}: plain {acc[0]:.2f} %, "
            f"airbench94 TTA (6 views) {acc[2]:.2f} %  ({row['seconds']} s)"
        )
    if args.json:
        cmd = "python scripts/tta_check.py --models " + " ".join(args.models)
        with open(args.json, "w") as f:
            json.dump({"command": cmd + f" --json {args.json}", "rows": rows}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
