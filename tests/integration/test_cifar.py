"""The shipped CIFAR-10 models (issue 3): recorded accuracy, and a conversion on real data.

Full-test-set figures come from ``scripts/cifar_results.sh`` (docs/RESULTS.md); here the
weights are checked on the fixed random 1,000 test images their sidecar records, and each
model is converted on a small calibration set and checked on a few hundred test images.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import onespike
from onespike.data import calibration_set, fixed_subset, load_cifar10
from onespike.evaluate import evaluate as evaluate_snn
from onespike.experiments.train import evaluate
from onespike.models import load_pretrained, pretrained_info, weights_dir

CIFAR_MODELS = {"resnet20": 19, "fast_vgg": 7, "fast_vgg_e24": 7}  # layers
CONVERTED = ("resnet20", "fast_vgg")


@pytest.fixture(scope="module")
def cifar_test() -> tuple[torch.Tensor, torch.Tensor]:
    return load_cifar10("test")


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_shipped_cifar_weights_reach_recorded_accuracy(name: str, cifar_test) -> None:
    info = pretrained_info(name)
    assert info["dataset"] == "cifar10" and info["weights_dtype"] == "float16"
    assert info["command"].startswith(
        f"python -m onespike.experiments.train --model {info['model']}"
    )
    pt = weights_dir() / f"{name}.pt"
    assert hashlib.sha256(pt.read_bytes()).hexdigest() == info["weights_sha256"]
    assert pt.stat().st_size < 5 * 2**20
    model = load_pretrained(name)
    x, y = cifar_test
    assert x.shape == (10_000, 3, 32, 32)
    idx = fixed_subset(x.shape[0], 1000)
    acc = evaluate(model, x[idx], y[idx])
    assert abs(acc - info["acc_subset1000"]) <= 0.1 + 1e-9
    assert acc > 80.0  # a trained model, not a checkpoint from early training


@pytest.mark.parametrize("name", CONVERTED)
def test_shipped_cifar_model_converts(name: str, cifar_test) -> None:
    ann = load_pretrained(name)
    xc, _ = calibration_set("cifar10", 1000)  # as the sweep; with 256 the loss broke the bound
    snn = onespike.convert(ann, xc, phases=16, progress=False)
    assert len(snn.plan.layers) == CIFAR_MODELS[name]
    x, y = cifar_test
    idx = fixed_subset(x.shape[0], 300)
    res = evaluate_snn(ann, snn, x[idx], y[idx], step=False, costs=False, progress=False)
    # 300 images: one image is 0.33 points. The search is sensitive to float rounding
    # (the plan of deep layers differs between CPUs whose convolution kernels round
    # differently): ResNet-20 met the former bound of 1.5 on the machine this test was
    # written on and gave 2.0 on another (+0.36 and +0.40 on all 10,000 images); the
    # bound leaves room for that spread.
    assert res.loss <= 2.5, res
    st = evaluate_snn(ann, snn, x[idx[:6]], y[idx[:6]], progress=False, costs=False)
    assert st.step_event_same_predictions == 6
    assert st.max_spikes_per_neuron == 1
    # one window per layer on the longest path, plus the output's: ResNet-20's shortcuts
    # are delayed by whole windows, so they do not lengthen it
    assert snn.plan.latency_steps == (CIFAR_MODELS[name] + 1) * 16
