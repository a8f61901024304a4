"""Calibration and evaluation of ResNet-20 (CIFAR-10) on 1 and on N processes: the ratio.

    python benchmarks/distributed.py [--procs 2] [--test 10000] [--calibration 2048]
                                     [--phases 8] [--batch-size 250] [--threads 1]
                                     [--step] [--sizing] [--json FILE]

Each run spawns its processes with ``torch.multiprocessing`` (gloo on loopback; the
1-process run makes no group), each with ``--threads`` intra-op threads, and times,
between barriers, ``onespike.convert`` on the calibration images and
``onespike.evaluate`` (event path and cost report; ``--step``: the step simulator
too) on the first ``--test`` test images. It prints both times for each process
count, the ratios 1-process / N-process, and checks that the N-process plan and
figures equal the 1-process ones.

What to expect: the search itself (the first ``search_samples`` = 256 calibration
images) runs on every rank (it is not shared out), so calibration gains only on the
statistics over the rest of the set; evaluation is shared out entirely. On a machine
with C free cores, N processes of 1 thread gain at most min(N, C); a busy machine
gains less. Needs CIFAR-10 (``ONESPIKE_DATA``).

``--sizing`` adds a 1-process run on the first 256 calibration images (the search
alone: the whole set is the search's) and prints the per-image costs that
docs/SCALE.md scales to ImageNet: the search's fixed cost, the statistics' cost per
further calibration image, evaluation per test image, and each run's peak memory
(resident set, the largest over the ranks).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onespike import convert, distributed
from onespike.data import calibration_set, load_dataset
from onespike.evaluate import evaluate
from onespike.models import load_pretrained

MODEL = "resnet20"


def _worker(rank: int, world: int, port: int, a: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(a.threads)
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    model = load_pretrained(MODEL)
    xc, _ = calibration_set("cifar10", a.calibration, 0)
    x, y = load_dataset("cifar10", "test")
    x, y = x[: a.test], y[: a.test]
    barrier()
    t0 = time.perf_counter()
    snn = convert(model, xc, phases=a.phases, progress=False)
    barrier()
    t1 = time.perf_counter()
    res = evaluate(model, snn, x, y, batch_size=a.batch_size, step=a.step, progress=False)
    barrier()
    t2 = time.perf_counter()
    (rss,) = distributed.all_reduce(
        [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], "max", integer=True
    )
    if rank == 0:
        row = {
            "calibration": a.calibration,
            "max_rss_mb": rss / 1024,
            "procs": world,
            "calibrate_s": t1 - t0,
            "evaluate_s": t2 - t1,
            "plan": [(lp.name, lp.base, lp.scale) for lp in snn.plan.layers],
            "snn_accuracy": res.snn_accuracy,
            "spikes": res.cost.totals["spikes"] if res.cost else None,
        }
        torch.save(row, Path(out) / f"p{world}.pt")
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(procs, _free_port(), a, out), nprocs=procs, join=True)
        return torch.load(Path(out) / f"p{procs}.pt", weights_only=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=2, help="processes of the parallel run")
    p.add_argument("--test", type=int, default=10000, help="test images (10,000: all)")
    p.add_argument("--calibration", type=int, default=2048, help="calibration images")
    p.add_argument("--phases", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--step", action="store_true", help="run the step simulator too")
    p.add_argument("--sizing", action="store_true", help="also the per-image costs (see above)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    cores = os.cpu_count()
    print(
        f"{MODEL}: {a.calibration} calibration, {a.test} test images, T={a.phases}; "
        f"{a.threads} thread(s) per process, {cores} core(s) on this machine"
    )
    one, many = run(1, a), run(a.procs, a)
    for r in (one, many):
        print(
            f"{r['procs']} process(es): calibration {r['calibrate_s']:7.1f} s, "
            f"evaluation {r['evaluate_s']:7.1f} s, peak memory {r['max_rss_mb']:.0f} MB per rank"
        )
    same = one["plan"] == many["plan"]
    figures = (one["snn_accuracy"], one["spikes"]) == (many["snn_accuracy"], many["spikes"])
    cal, ev = (one[k] / many[k] for k in ("calibrate_s", "evaluate_s"))
    print(
        f"ratio 1/{a.procs} processes: calibration {cal:.2f}x, evaluation {ev:.2f}x; "
        f"same plan: {same}; same accuracy and spikes: {figures}"
    )
    print(
        f"per image, 1 process: calibration {one['calibrate_s'] / a.calibration * 1e3:.1f} ms, "
        f"evaluation {one['evaluate_s'] / a.test * 1e3:.1f} ms"
    )
    runs = [one, many]
    if a.sizing and a.calibration > 256:
        small = run(1, argparse.Namespace(**{**vars(a), "calibration": 256}))
        per = (one["calibrate_s"] - small["calibrate_s"]) / (a.calibration - 256)
        print(
            f"sizing, 1 process: the search on 256 images {small['calibrate_s']:.1f} s "
            f"(fixed), statistics {per * 1e3:.1f} ms per further calibration image, "
            f"evaluation {one['evaluate_s'] / a.test * 1e3:.1f} ms per test image "
            f"({'with' if a.step else 'without'} the step simulator); peak memory "
            f"{small['max_rss_mb']:.0f} MB (256) / {one['max_rss_mb']:.0f} MB ({a.calibration})"
        )
        runs.append(small)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
