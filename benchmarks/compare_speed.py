"""``onespike compare`` against its reference path, in one run: time, ratio, same figures.

    python benchmarks/compare_speed.py [--model mnist_cnn] [--dataset mnist] [--test 50]
        [--codes all] [--max-steps 64] [--onespike-phases 4,8] [--refine-phases 4,8]
        [--calibration 1000] [--subset first] [--threads 1] [--json FILE]

Runs :func:`onespike.experiments.compare.compare` twice on the same images: as it is,
and with the simulators it had before (``tests/compare_reference.py``: every
``onespike-refined`` row converts afresh with ``convert(..., refine=True)``, evaluate
reruns the ANN, the clocked simulator keeps what every neuron sent and burst fills
tensors of zeros and ones). It prints each code's seconds in both runs, the process
CPU time of each run and their ratio, and checks that every figure of the two results
is the same (it exits 1 if not). CPU time is the measure to compare on a shared
machine; wall time is printed too. Run from the repository root (it imports the
reference from ``tests/``); needs the dataset of ``--dataset`` (``ONESPIKE_DATA``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/compare_reference.py

from onespike.data import SUBSETS, calibration_set, load_dataset, subset_indices
from onespike.experiments import compare as C
from onespike.models import resolve_model


def _ints(s: str | None) -> list[int] | None:
    return [int(t) for t in s.split(",")] if s else None


def _figures(res: dict) -> dict:
    """A result without its timings (and without the refinement record only the fast
    path keeps)."""
    out = {k: v for k, v in res.items() if k != "codes"}
    out["codes"] = {}
    for name, c in res["codes"].items():
        params = {k: v for k, v in c["params"].items() if k != "refined"}
        out["codes"][name] = {"params": params, "points": c["points"], "errors": c["errors"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--test", type=int, default=50)
    p.add_argument("--subset", choices=SUBSETS, default="first")
    p.add_argument("--codes", default="all")
    p.add_argument("--max-steps", type=int, default=64)
    p.add_argument("--onespike-phases", default="4,8")
    p.add_argument("--refine-phases", default="4,8")
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the timings here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from tests import compare_reference as ref

    ann, _ = resolve_model(a.model, a.dataset)
    xc, _ = calibration_set(a.dataset, a.calibration, 0)
    x, y = load_dataset(a.dataset, "test")
    idx = subset_indices(x.shape[0], a.test, a.subset)
    x, y = x[idx], y[idx]
    codes = C.parse_codes(a.codes)

    def run() -> tuple[dict, float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        res = C.compare(
            ann,
            xc,
            x,
            y,
            codes,
            max_steps=a.max_steps,
            batch_size=a.batch_size,
            onespike_phases=_ints(a.onespike_phases),
            refine_phases=_ints(a.refine_phases),
            progress=False,
        )
        return res, time.process_time() - c0, time.perf_counter() - w0

    fast, fast_cpu, fast_wall = run()
    saved = C.simulate_clocked, C.run_onespike
    C.simulate_clocked, C.run_onespike = ref.simulate_clocked, ref.run_onespike
    try:
        slow, slow_cpu, slow_wall = run()
    finally:
        C.simulate_clocked, C.run_onespike = saved

    same = _figures(fast) == _figures(slow)
    print(
        f"{a.model} on {a.dataset}: {x.shape[0]} test images, codes {a.codes}, threads {a.threads}"
    )
    print(f"{'code':18s} {'reference s':>12s} {'now s':>8s}")
    for name in fast["codes"]:
        print(
            f"{name:18s} {slow['codes'][name]['seconds']:12.1f} "
            f"{fast['codes'][name]['seconds']:8.1f}"
        )
    ratio = slow_cpu / fast_cpu
    print(
        f"CPU time: reference {slow_cpu:.1f} s, now {fast_cpu:.1f} s, ratio {ratio:.2f}x "
        f"(wall {slow_wall:.1f} s / {fast_wall:.1f} s)"
    )
    print("same figures:", same)
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "args": vars(a),
                    "cpu_seconds": {"reference": slow_cpu, "now": fast_cpu},
                    "wall_seconds": {"reference": slow_wall, "now": fast_wall},
                    "ratio_cpu": ratio,
                    "code_seconds": {
                        n: {"reference": slow["codes"][n]["seconds"], "now": c["seconds"]}
                        for n, c in fast["codes"].items()
                    },
                    "same_figures": same,
                },
                indent=1,
            )
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
