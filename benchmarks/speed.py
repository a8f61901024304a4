"""Speed of the ANN, the SNN fast (event) path and the SNN step simulator, in one run.

    python benchmarks/speed.py [--phases 8] [--images 10000] [--batch-size 1000] [--threads N]
                               [--repeat 3]

Converts the shipped MNIST CNN, then times each path over the same test
images (after one warm-up batch) and prints images per second and the ratios
event/ANN and step/ANN. Ratios are what to compare; absolute speeds depend on
the machine. The timing is repeated ``--repeat`` times; the median ratio is
reported with the spread, since single passes on a shared machine vary by
about +-10 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import onespike
from onespike.data import calibration_set, load_mnist
from onespike.models import load_pretrained


def _time_interleaved(fns: list, x: torch.Tensor, batch: int) -> list[float]:
    """Seconds each function spends on all of ``x``, batch by batch, taking turns.

    Taking turns on every batch exposes all paths to the same load on a busy
    machine, so the ratios stay meaningful where absolute times do not.
    """
    for fn in fns:
        fn(x[:batch])  # warm-up
    total = [0.0] * len(fns)
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(xb)
            total[j] += time.perf_counter() - t0
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phases", type=int, default=8)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3, help="timed passes (median reported)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ann = load_pretrained("mnist_cnn")
    xc, _ = calibration_set("mnist", 1000)
    snn = onespike.convert(ann, xc, phases=a.phases, progress=False)
    x, _ = load_mnist("test")
    x = x[: a.images]
    fns = [ann, snn, lambda b: snn.simulate(b, mode="step")]
    with torch.no_grad():
        passes = [_time_interleaved(fns, x, a.batch_size) for _ in range(max(a.repeat, 1))]
    ev_ratios = sorted(p[1] / p[0] for p in passes)
    st_ratios = sorted(p[2] / p[0] for p in passes)
    # speeds: the median ANN time times the median ratios (ratios are what to compare)
    t_ann = statistics.median(p[0] for p in passes)
    t_event = t_ann * statistics.median(ev_ratios)
    t_step = t_ann * statistics.median(st_ratios)
    n = x.shape[0]
    res = {
        "repeat": len(passes),
        "event_over_ann_time_all": ev_ratios,
        "step_over_ann_time_all": st_ratios,
        "images": n,
        "phases": a.phases,
        "threads": torch.get_num_threads(),
        "ann_images_per_s": n / t_ann,
        "event_images_per_s": n / t_event,
        "step_images_per_s": n / t_step,
        "event_over_ann_time": t_event / t_ann,
        "step_over_ann_time": t_step / t_ann,
        "step_over_ann_time_per_phase": t_step / t_ann / a.phases,
    }
    print(
        f"MNIST CNN, {n} test images, phases={a.phases}, {res['threads']} thread(s), "
        f"median of {len(passes)} passes"
    )
    print(f"  ANN          {res['ann_images_per_s']:10.0f} images/s")
    print(f"  SNN event    {res['event_images_per_s']:10.0f} images/s")
    print(f"  SNN step     {res['step_images_per_s']:10.0f} images/s")
    print(
        f"  event / ANN time  {res['event_over_ann_time']:6.2f}  (target <= 1.5; passes "
        f"{ev_ratios[0]:.2f}-{ev_ratios[-1]:.2f})"
    )
    print(
        f"  step / ANN time   {res['step_over_ann_time']:6.2f}  "
        f"= {res['step_over_ann_time_per_phase']:.2f} x phases (target <= 1.5 x phases; "
        f"passes {st_ratios[0] / a.phases:.2f}-{st_ratios[-1] / a.phases:.2f} x phases)"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
