"""Choose the conversion search's settings on held-out training images, report on the test set.

    python scripts/search_variants.py --model resnet20 --phases 16 \
        --json docs/results/variants_resnet20_T16.json

Converts the model once per variant of ``onespike.convert``'s options (``VARIANTS``) and
measures each SNN on two disjoint sets:

- **held-out**: ``--heldout`` training images never used for calibration (the last ones
  of the same seeded permutation that ``calibration_set`` takes its first ones from).
  The variant is chosen here, by the number of images whose prediction differs from the
  ANN's (no labels needed); the accuracy loss there is printed too.
- **test**: every test image; the loss in points (ANN - SNN) is what is reported.

Nothing is chosen on the test set. The JSON is rewritten after each variant; reprint it
as a Markdown table with ``python scripts/search_variants.py FILE.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import onespike
from onespike.data import load_dataset
from onespike.models import resolve_model

#: keyword arguments of onespike.convert; "calibration" is the number of calibration images.
VARIANTS: dict[str, dict] = {
    "default": {},
    "output objective": {"objective": "output"},
    "2000 calibration images": {"calibration": 2000},
    "score on all calibration images": {"search_samples": None},
    "bias correction": {"bias_correction": True},
    "activation objective": {"objective": "activation"},
    "global base": {"base": "global"},
}


@torch.no_grad()
def predictions(model: torch.nn.Module, x: torch.Tensor, desc: str, bs: int = 500) -> torch.Tensor:
    out = [
        model(x[i : i + bs]).argmax(1)
        for i in tqdm(range(0, x.shape[0], bs), desc=desc, unit="batch", leave=False)
    ]
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="shipped model name or package.module:function")
    p.add_argument("--dataset", default=None)
    p.add_argument("--phases", type=int, required=True)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of VARIANTS keys")
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument("--heldout", type=int, default=5000, help="held-out training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    names = [v.strip() for v in a.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if a.threads:
        torch.set_num_threads(a.threads)

    ann, dataset = resolve_model(a.model, a.dataset)
    xtr, ytr = load_dataset(dataset, "train")
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(a.seed))
    xv, yv = xtr[perm[-a.heldout :]], ytr[perm[-a.heldout :]]
    xt, yt = load_dataset(dataset, "test")
    ann_v, ann_t = predictions(ann, xv, "ANN held-out"), predictions(ann, xt, "ANN test")
    acc = lambda pred, y: 100.0 * float((pred == y).double().mean())  # noqa: E731
    out = {
        "model": a.model,
        "phases": a.phases,
        "heldout_images": a.heldout,
        "test_images": int(xt.shape[0]),
        "ann_heldout_accuracy": acc(ann_v, yv),
        "ann_test_accuracy": acc(ann_t, yt),
        "rows": [],
    }
    print(
        f"{a.model} T={a.phases}: ANN {out['ann_test_accuracy']:.2f} % on {xt.shape[0]} test "
        f"images, {out['ann_heldout_accuracy']:.2f} % on {a.heldout} held-out training images"
    )
    for name in names:
        kw = dict(VARIANTS[name])
        n_cal = kw.pop("calibration", a.calibration)
        if n_cal + a.heldout > xtr.shape[0]:
            p.error(f"{n_cal} calibration + {a.heldout} held-out > {xtr.shape[0]} images")
        t0 = time.time()
        snn = onespike.convert(ann, xtr[perm[:n_cal]], phases=a.phases, **kw)
        t_conv = time.time() - t0
        sv, st = predictions(snn, xv, f"{name}: held-out"), predictions(snn, xt, f"{name}: test")
        row = {
            "variant": name,
            "convert_kwargs": kw,
            "calibration_images": n_cal,
            "heldout_disagreements": int((sv != ann_v).sum()),
            "heldout_loss_points": out["ann_heldout_accuracy"] - acc(sv, yv),
            "test_accuracy": acc(st, yt),
            "test_loss_points": out["ann_test_accuracy"] - acc(st, yt),
            "convert_seconds": round(t_conv, 1),
        }
        out["rows"].append(row)
        print(
            f"{name:34s} held-out: {row['heldout_disagreements']:4d} disagreements, "
            f"loss {row['heldout_loss_points']:+.2f} | test loss {row['test_loss_points']:+.2f} "
            f"| convert {t_conv:.0f} s",
            flush=True,
        )
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2))
    print(markdown(out))


def markdown(out: dict) -> str:
    """The results as a Markdown table, and the variant the held-out images choose."""
    lines = [
        f"{out['model']}, T = {out['phases']}: ANN {out['ann_test_accuracy']:.2f} % on "
        f"{out['test_images']} test images, {out['ann_heldout_accuracy']:.2f} % on "
        f"{out['heldout_images']} held-out training images.",
        "",
        "| variant | calibration images | held-out: disagreements with the ANN | held-out: "
        "loss (points) | test: SNN % | test: loss (points) | convert (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['variant']} | {r['calibration_images']} | {r['heldout_disagreements']} | "
            f"{r['heldout_loss_points']:+.2f} | {r['test_accuracy']:.2f} | "
            f"{r['test_loss_points']:+.2f} | {r['convert_seconds']:.0f} |"
        )
    best = min(out["rows"], key=lambda r: r["heldout_disagreements"])
    lines += [
        "",
        f"Chosen on the held-out images (fewest disagreements): {best['variant']} "
        f"(test loss {best['test_loss_points']:+.2f} points).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from onespike.errors import OnespikeError

    try:
        if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # reprint a saved run
            print(markdown(json.loads(Path(sys.argv[1]).read_text())))
        else:
            main()
    except (OSError, OnespikeError) as e:
        sys.exit(f"error: {e}")
