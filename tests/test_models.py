"""onespike.models: architectures, the registry, shipped weights and their sidecars."""

from __future__ import annotations

import hashlib
import operator
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from torch import nn

from onespike.experiments.train import evaluate
from onespike.models import (
    MNISTCNN,
    MODELS,
    PretrainedWeightsNotFoundError,
    available_pretrained,
    get_model,
    load_pretrained,
    pretrained_info,
    resnet20,
    vgg11_bn,
    weights_dir,
)

CASES = [
    ("mnist_cnn", {}),
    ("resnet20", {}),
    ("vgg11_bn", {}),
    ("vgg11_bn", {"width": 0.5}),
]


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    from onespike.data import load_mnist

    return load_mnist("test")


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_output_shape(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    model = get_model(name, **kw).eval()
    x = torch.rand(3, *MODELS[name].input_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_fx_trace_matches_and_relus_are_distinct(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    model = get_model(name, **kw).eval()
    gm = fx.symbolic_trace(model)
    x = torch.rand(2, *MODELS[name].input_shape)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
    modules = dict(model.named_modules())
    relu_calls = [
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], nn.ReLU)
    ]
    n_relu = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert len(relu_calls) == n_relu == len(set(relu_calls))  # each ReLU used exactly once
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    # no functional activations hidden in forward: every non-I/O node is a module call
    # except the residual additions
    others = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "call_module")]
    assert all(n.target in (torch.add, operator.add) for n in others)


def test_mnist_cnn_layout() -> None:
    m = MNISTCNN()
    kinds = [(name, type(mod).__name__) for name, mod in m.named_children()]
    assert kinds == [
        ("conv1", "Conv2d"),
        ("bn1", "BatchNorm2d"),
        ("relu1", "ReLU"),
        ("pool1", "MaxPool2d"),
        ("conv2", "Conv2d"),
        ("bn2", "BatchNorm2d"),
        ("relu2", "ReLU"),
        ("pool2", "AvgPool2d"),
        ("flatten", "Flatten"),
        ("fc1", "Linear"),
        ("relu3", "ReLU"),
        ("dropout", "Dropout"),
        ("fc2", "Linear"),
    ]
    assert (m.conv1.in_channels, m.conv1.out_channels, m.conv1.kernel_size) == (1, 16, (5, 5))
    assert m.conv1.padding == (2, 2) and m.conv2.padding == (2, 2)
    assert (m.conv2.in_channels, m.conv2.out_channels) == (16, 32)
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (1568, 128, 10)
    assert m.dropout.p == pytest.approx(0.2)


def test_resnet20_layout() -> None:
    m = resnet20()
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    main_convs = [n for n in convs if "shortcut" not in n]
    assert len(main_convs) == 19  # + fc = 20 weighted layers
    assert [n for n in convs if "shortcut" in n] == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())
    assert isinstance(m.pool, nn.AdaptiveAvgPool2d)
    assert (m.fc.in_features, m.fc.out_features) == (64, 10)
    for stage, ch, stride in ((m.layer1, 16, 1), (m.layer2, 32, 2), (m.layer3, 64, 2)):
        assert len(stage) == 3
        assert stage[0].conv1.out_channels == ch and stage[0].conv1.stride == (stride, stride)
        assert stage[0].relu1 is not stage[0].relu2
    assert isinstance(m.layer1[0].shortcut, nn.Identity)
    assert 0.26e6 < sum(p.numel() for p in m.parameters()) < 0.28e6


@pytest.mark.parametrize("width", [1.0, 0.5, 0.25])
def test_vgg11_layout(width: float) -> None:
    m = vgg11_bn(width=width)
    chans = [mod.out_channels for mod in m.features if isinstance(mod, nn.Conv2d)]
    expected = [round(c * width) for c in (64, 128, 256, 256, 512, 512, 512, 512)]
    assert chans == expected
    assert sum(isinstance(mod, nn.MaxPool2d) for mod in m.features) == 5
    assert "conv1" in dict(m.features.named_children())
    assert m.fc.in_features == expected[-1] and m.fc.out_features == 10


def test_get_model_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown model"):
        get_model("resnet1000")


# --------------------------------------------------------------------------- shipped weights


def test_shipped_mnist_weights_reach_recorded_accuracy(mnist_test) -> None:
    info = pretrained_info("mnist_cnn")
    for key in ("command", "seed", "epochs", "test_acc", "acc_first1000", "weights_dtype"):
        assert key in info
    assert info["command"].startswith("python -m onespike.experiments.train --model mnist_cnn")
    assert info["test_acc"] >= 99.0
    pt = weights_dir() / "mnist_cnn.pt"
    assert hashlib.sha256(pt.read_bytes()).hexdigest() == info["weights_sha256"]
    model = load_pretrained("mnist_cnn")
    assert not model.training
    assert all(
        p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point()
    )
    x, y = mnist_test
    acc = evaluate(model, x[:1000], y[:1000])
    assert abs(acc - info["acc_first1000"]) <= 0.1 + 1e-9


def test_every_shipped_file_has_a_sidecar() -> None:
    for name in available_pretrained():
        info = pretrained_info(name)
        assert info["name"] == name
        assert info["model"] in MODELS


def test_missing_weights_file_error_names_training_command(tmp_path: Path) -> None:
    cmd = r"python -m onespike\.experiments\.train"
    with pytest.raises(PretrainedWeightsNotFoundError, match=cmd):
        load_pretrained("resnet20", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="--model resnet20"):
        load_pretrained("resnet20", root=tmp_path)
    with pytest.raises(PretrainedWeightsNotFoundError, match="vgg11_bn"):
        pretrained_info("vgg11_bn", root=tmp_path)
