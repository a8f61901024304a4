"""The MNIST CNN and ResNet-20 conversions on each device: accuracy and event-path speed.

    python benchmarks/device_check.py [--images 1000] [--calibration 500] [--phases 8]
                                      [--batch-size 250] [--models mnist_cnn,resnet20]
                                      [--json FILE]

For every model and every device present (the CPU, and CUDA when
``torch.cuda.is_available()``; without it the script says so and runs the CPU
only) the ANN is moved to the device, converted there (calibration data streamed
from the CPU by a ``DataLoader``), and evaluated on the same test images: ANN and
SNN accuracy, and the event path's time per image. With CUDA it prints the
CPU/CUDA time ratio, measured in the same run. The CUDA figures should agree with
the CPU's up to float rounding (a phase can differ where a membrane sits at a
threshold). ResNet-20 needs CIFAR-10 (``ONESPIKE_DATA``); without it that model is
skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import onespike
from onespike.data import DataError, calibration_set, fixed_subset, load_dataset
from onespike.evaluate import evaluate
from onespike.models import load_pretrained, resolve_model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _event_seconds(snn, x: torch.Tensor, batch: int, device: str) -> float:
    """Seconds of the event path over ``x`` (already on ``device``), after a warm-up."""
    snn(x[:batch])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        snn(x[i : i + batch])
    _sync(device)
    return time.perf_counter() - t0


def run_model(name: str, devices: list[str], a: argparse.Namespace) -> list[dict]:
    _, dataset = resolve_model(name, None)
    xc, _ = calibration_set(dataset, a.calibration, 0)
    x, y = load_dataset(dataset, "test")
    idx = fixed_subset(x.shape[0], a.images)
    x, y = x[idx], y[idx]
    rows = []
    for device in devices:
        ann = load_pretrained(name).to(device)
        loader = DataLoader(TensorDataset(xc), batch_size=100)
        t0 = time.perf_counter()
        snn = onespike.convert(ann, loader, phases=a.phases, progress=False)
        convert_s = time.perf_counter() - t0
        res = evaluate(ann, snn, x, y, batch_size=a.batch_size, step=False, costs=False,
                       progress=False)  # fmt: skip
        xd = x.to(device)
        sec = _event_seconds(snn, xd, a.batch_size, device)
        rows.append(
            {
                "model": name,
                "device": device,
                "images": int(x.shape[0]),
                "phases": a.phases,
                "ann_accuracy": res.ann_accuracy,
                "snn_accuracy": res.snn_accuracy,
                "event_ms_per_image": 1000 * sec / x.shape[0],
                "convert_s": convert_s,
            }
        )
        r = rows[-1]
        print(
            f"{name:10s} {device:5s}  ANN {r['ann_accuracy']:6.2f} %  "
            f"SNN {r['snn_accuracy']:6.2f} %  "
            f"event path {r['event_ms_per_image']:8.4f} ms/image  (convert {convert_s:5.1f} s)",
            flush=True,
        )
    if len(rows) == 2:
        ratio = rows[0]["event_ms_per_image"] / rows[1]["event_ms_per_image"]
        rows[1]["speedup_vs_cpu"] = ratio
        print(f"{name:10s} event path CPU/CUDA time ratio {ratio:.1f}x", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--calibration", type=int, default=500)
    p.add_argument("--phases", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--models", default="mnist_cnn,resnet20")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        print(f"CUDA: {torch.cuda.get_device_name(0)}; CPU threads: {torch.get_num_threads()}")
    else:
        print("CUDA is not available here: running on the CPU only (no ratio to print)")
    rows = []
    for name in a.models.split(","):
        try:
            rows += run_model(name.strip(), devices, a)
        except DataError as e:
            print(f"{name}: skipped ({e})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
