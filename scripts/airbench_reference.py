"""Run Keller Jordan's airbench94 reference, unmodified, on the CIFAR-10 copy onespike reads.

This checks the data apart from onespike's own training code: airbench94 is published at
94.01 % (test-time augmentation, mean of 200 runs) on the original CIFAR-10, which
``../shared/data/cifar10/cifar-10-batches-py`` holds, so this should print about that (on a
JPEG re-encoding used before, it printed 90.66 %).  docs/MODELS.md records the figures
("What the data costs").  Needs a CUDA GPU, torchvision and the file
``legacy/airbench94.py`` of https://github.com/KellerJordan/cifar10-airbench (the figures
in the docs: commit f1c599c); it is downloaded when ``--airbench`` is not given.

    python scripts/airbench_reference.py --runs 3 --work /tmp/airbench

airbench94's loader reads ``cifar10/{train,test}.pt`` (uint8 NHWC images, labels,
classes) from the working folder before it would download anything; this script writes
them from :func:`onespike.data.load_cifar10`, so both see the same pixels.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import urllib.request
from pathlib import Path

import torch

from onespike.data import CIFAR10_CLASSES, load_cifar10

URL = "https://raw.githubusercontent.com/KellerJordan/cifar10-airbench/f1c599c4af24aca803e3e65a6a7e52a502e09d0e/legacy/airbench94.py"


def write_airbench_data(folder: Path) -> None:
    """``folder/cifar10/{train,test}.pt`` in airbench's format, from onespike's loader."""
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x, y = load_cifar10(split)
        img = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        data = {"images": img, "labels": y, "classes": list(CIFAR10_CLASSES)}
        torch.save(data, folder / "cifar10" / f"{split}.pt")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--airbench", type=Path, help="path to legacy/airbench94.py")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("airbench_work"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("airbench94 needs a CUDA GPU; none is available here.", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.airbench
    if src is None:
        src = args.work / "airbench94.py"
        if not src.exists():
            urllib.request.urlretrieve(URL, src)
    write_airbench_data(args.work)
    spec = importlib.util.spec_from_file_location("airbench94", src)
    assert spec is not None and spec.loader is not None
    airbench = importlib.util.module_from_spec(spec)
    os.chdir(args.work)  # airbench reads ./cifar10/*.pt
    spec.loader.exec_module(airbench)
    airbench.print_columns(airbench.logging_columns_list, is_head=True)
    accs = torch.tensor([float(airbench.main(run)) for run in range(args.runs)])
    print("airbench94 with test-time augmentation, per run:", [f"{100 * a:.2f}" for a in accs])
    print(f"mean {100 * accs.mean():.2f} %  (published on the original CIFAR-10: 94.01 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
