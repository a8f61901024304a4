"""The shipped CIFAR-10 models' checks, shared by the test files that run them.

Each conversion lives in its own test file so that pytest-xdist (``--dist loadfile``)
runs the two minutes-long conversions on different workers.
"""

from __future__ import annotations

import onespike
from onespike.data import calibration_set, fixed_subset, load_cifar10
from onespike.evaluate import evaluate as evaluate_snn
from onespike.models import load_pretrained

#: Every shipped CIFAR-10 model and its number of spiking layers.
CIFAR_MODELS = {"resnet20": 19, "fast_vgg_e24": 7}


def check_conversion(name: str) -> None:
    """Convert shipped model ``name`` at T = 16 on real data and check the result."""
    ann = load_pretrained(name)
    xc, _ = calibration_set("cifar10", 1000)  # as the sweep; with 256 the loss broke the bound
    snn = onespike.convert(ann, xc, phases=16, progress=False)
    assert len(snn.plan.layers) == CIFAR_MODELS[name]
    x, y = load_cifar10("test")
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
