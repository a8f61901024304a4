"""Convert a model from a checkpoint of ``onespike.experiments.train`` (e.g. one still training).

    python scripts/convert_checkpoint.py checkpoints/resnet20_e24.ckpt --phases 8 \
        --test 1000 --step-images 200 [--json out.json]

Loads the checkpoint's model (architecture from its config), converts it with
1,000 calibration images from the training set, and prints the same table as
``onespike convert``: ANN and SNN accuracy (event path on ``--test`` images,
step simulator on the first ``--step-images``), spikes, latency, energy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import onespike
from onespike.cli import summary
from onespike.data import calibration_set, load_dataset
from onespike.evaluate import evaluate
from onespike.models import get_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--phases", type=int, default=8)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--step-images", type=int, default=200)
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    t0 = time.time()
    ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    kw = {"width": cfg["width"]} if cfg["model"] == "vgg11_bn" else {}
    ann = get_model(cfg["model"], **kw)
    ann.load_state_dict(ckpt["model"])
    ann.eval()
    xc, where = calibration_set(cfg["dataset"], a.calibration)
    print(f"{cfg['model']} after epoch {ckpt['epoch']} of {cfg['epochs']}; calibration {where}")
    snn = onespike.convert(ann, xc, phases=a.phases)
    x, y = load_dataset(cfg["dataset"], "test")
    g = torch.Generator().manual_seed(0)  # the test set is sorted by class: take a random subset
    idx = torch.randperm(x.shape[0], generator=g)[: a.test]
    x, y = x[idx], y[idx]
    res = evaluate(ann, snn, x, y, step=False)
    name = f"{cfg['model']} (epoch {ckpt['epoch']}/{cfg['epochs']}, random {a.test} test images)"
    print(summary(name, snn, res, time.time() - t0))
    st = evaluate(ann, snn, x[: a.step_images], y[: a.step_images], step=True, costs=False)
    print(
        f"step simulator on {a.step_images} images: {st.step_accuracy:.2f} % "
        f"(event {st.snn_accuracy:.2f} %), identical predictions "
        f"{st.step_event_same_predictions}/{a.step_images}, phase agreement "
        f"{100 * st.phase_agreement:.4f} %, max spikes per neuron {st.max_spikes_per_neuron}"
    )
    if a.json:
        out = {"checkpoint_epoch": ckpt["epoch"], "plan": snn.plan.to_dict(), **res.to_dict()}
        out["step_check"] = st.to_dict()
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
