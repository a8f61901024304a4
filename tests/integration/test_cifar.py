"""The shipped CIFAR-10 models (issue 3): recorded accuracy on real data.

Full-test-set figures come from ``scripts/cifar_results.sh`` (docs/RESULTS.md); here the
weights are checked on the fixed random 1,000 test images their sidecar records. Each
model's conversion on real data is checked in its own file
(``test_cifar_convert_*.py``), so the two run on different pytest-xdist workers.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from onespike.data import fixed_subset, load_cifar10
from onespike.experiments.train import evaluate
from onespike.models import available_pretrained, load_pretrained, pretrained_info, weights_dir
from tests.integration.cifar import CIFAR_MODELS


@pytest.fixture(scope="module")
def cifar_test() -> tuple[torch.Tensor, torch.Tensor]:
    return load_cifar10("test")


def test_every_shipped_cifar_model_is_checked() -> None:
    # the vision transformers (vit_cifar) are checked with the other vit_ files in test_vit.py
    shipped = {
        n
        for n in available_pretrained()
        if pretrained_info(n)["dataset"] == "cifar10" and not n.startswith("vit_")
    }
    assert shipped == set(CIFAR_MODELS)


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
