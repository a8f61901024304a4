"""Run Keller Jordan's airbench94 reference, unmodified, on the CIFAR-10 copy onespike reads.

This checks the data apart from onespike's own training code: airbench94 is published at
94.01 % (test-time augmentation, mean of 200 runs) on the original CIFAR-10, which
``../shared/data/cifar10/cifar-10-batches-py`` holds, so this should print about that (on a
JPEG re-encoding used before, it printed 90.66 %).  docs/MODELS.md records the figures
("The data check").  Needs the file ``legacy/airbench94.py`` of
https://github.com/KellerJordan/cifar10-airbench (the figures in the docs: commit
f1c599c); it is downloaded when ``--airbench`` is not given.

    python scripts/airbench_reference.py --runs 3 --work /tmp/airbench

On a CUDA GPU (with torchvision) the file runs as published: float16, channels-last.
``--cpu`` runs the same file, unmodified, on the CPU of a machine without a GPU (about two
hours a run on one core): before the file is loaded, its CUDA calls are given CPU
stand-ins (``Module.cuda`` returns the module, ``torch.cuda.Event`` times with the wall
clock, ``torch.cuda.synchronize`` does nothing, its loader's device 0 becomes the CPU), float16
becomes float32 (``half()`` returns ``float()``: CPUs have no fast float16 convolution),
and the one torchvision call it makes, ``transforms.Normalize``, gets a two-line
stand-in, so torchvision is not needed.  The training, the schedule, the augmentation
and the test-time augmentation are airbench94's own; only the arithmetic is float32.

    python scripts/airbench_reference.py --cpu --runs 1 --threads 1 --airbench airbench94.py

airbench94's loader reads ``cifar10/{train,test}.pt`` (uint8 NHWC images, labels,
classes) from the working folder before it would download anything; this script writes
them from :func:`onespike.data.load_cifar10`, so both see the same pixels.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
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


class _WallClockEvent:
    """``torch.cuda.Event(enable_timing=True)`` on the CPU: ``elapsed_time`` in ms."""

    def __init__(self, *args, **kwargs) -> None:
        self.t = 0.0

    def record(self, *args) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _WallClockEvent) -> float:
        return 1e3 * (end.t - self.t)


class _Normalize:
    """``torchvision.transforms.Normalize(mean, std)`` on ``[N, C, H, W]`` tensors."""

    def __init__(self, mean, std) -> None:
        self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1)
        return (x - self.mean.to(x).view(shape)) / self.std.to(x).view(shape)


def use_cpu() -> None:
    """Give airbench94's CUDA and torchvision calls CPU stand-ins (float32), process-wide."""
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.nn.Module.half = lambda self: self.float()
    torch.Tensor.half = lambda self, *a, **k: self.float()
    torch.cuda.Event = _WallClockEvent
    torch.cuda.synchronize = lambda *a, **k: None
    vision = types.ModuleType("torchvision")
    vision.transforms = types.ModuleType("torchvision.transforms")
    vision.transforms.Normalize = _Normalize
    sys.modules.setdefault("torchvision", vision)
    sys.modules.setdefault("torchvision.transforms", vision.transforms)


def loader_on_cpu(airbench: types.ModuleType) -> None:
    """airbench94's ``CifarLoader(..., gpu=0)`` loads onto device 0: make the default the CPU."""
    init = airbench.CifarLoader.__init__
    init.__defaults__ = (*init.__defaults__[:-1], "cpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--airbench", type=Path, help="path to legacy/airbench94.py")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("airbench_work"))
    p.add_argument("--cpu", action="store_true", help="run on the CPU in float32 (see above)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (with --cpu)")
    args = p.parse_args()
    if args.cpu:
        use_cpu()
        if args.threads:
            torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        print(
            "airbench94 needs a CUDA GPU; none is available here (--cpu runs it on the CPU).",
            file=sys.stderr,
        )
        return 2
    if args.airbench is not None:
        if not args.airbench.is_file():
            print(
                f"--airbench: {args.airbench} is not a file (legacy/airbench94.py)", file=sys.stderr
            )
            return 2
        args.airbench = args.airbench.resolve()  # the work folder becomes the current one
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.airbench
    if src is None:
        src = args.work / "airbench94.py"
        if not src.exists():
            try:
                urllib.request.urlretrieve(URL, src)
            except OSError as e:
                src.unlink(missing_ok=True)  # no half-written file for the next run to read
                print(
                    f"could not download airbench94.py ({e}); fetch {URL} by other means "
                    "and pass it with --airbench PATH",
                    file=sys.stderr,
                )
                return 2
    write_airbench_data(args.work)
    spec = importlib.util.spec_from_file_location("airbench94", src)
    assert spec is not None and spec.loader is not None
    airbench = importlib.util.module_from_spec(spec)
    os.chdir(args.work)  # airbench reads ./cifar10/*.pt
    spec.loader.exec_module(airbench)
    if args.cpu:
        loader_on_cpu(airbench)
    airbench.print_columns(airbench.logging_columns_list, is_head=True)
    accs = torch.tensor([float(airbench.main(run)) for run in range(args.runs)])
    print("airbench94 with test-time augmentation, per run:", [f"{100 * a:.2f}" for a in accs])
    print(f"mean {100 * accs.mean():.2f} %  (published on the original CIFAR-10: 94.01 %)")
    if args.cpu:
        print("run on the CPU in float32 (--cpu)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
