"""Clipped ReLUs (ReLU6, Hardtanh(0, c), relu6, clamp(0, c)) convert, their cap bounding the
scale; BatchNorm after a ReLU folds into the next layer where exact; the rest is refused
before any calibration data is read."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onespike
from onespike import UnsupportedModelError
from onespike.data import load_dataset
from onespike.models import load_pretrained
from onespike.trace import trace
from tests.nets import randomize_bn


def _clip(kind: str, c: float, x: torch.Tensor) -> torch.Tensor:
    if kind == "F.relu6":
        return F.relu6(x) * (c / 6)  # relu6 of a scaled input would change the ANN: scale after
    if kind == "torch.clamp":
        return torch.clamp(x, 0, c)
    if kind == "method":
        return x.clamp(min=0, max=c)
    if kind == "torch.clip":
        return torch.clip(x, min=0.0, max=c)
    return F.hardtanh(x, 0.0, c)


class ClippedMNIST(nn.Module):
    """The shipped MNIST CNN with its three ReLUs clipped: ReLU6, Hardtanh(0, c) and a
    function or method (``kind``) that clamps at ``c``."""

    def __init__(self, kind: str, c: float = 4.0):
        super().__init__()
        base = load_pretrained("mnist_cnn")
        self.kind, self.c = kind, c
        self.conv1, self.bn1, self.pool1 = base.conv1, base.bn1, base.pool1
        self.conv2, self.bn2, self.pool2 = base.conv2, base.bn2, base.pool2
        self.fc1, self.fc2 = base.fc1, base.fc2
        self.act1 = nn.ReLU6()
        self.act2 = nn.Hardtanh(0.0, c)

    def forward(self, x):
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.fc2(_clip(self.kind, self.c, self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def mnist():
    x, y = load_dataset("mnist", "test")
    return x[:300], x[300:1300], y[300:1300]


def _correct(model, x, y):
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum())


@pytest.mark.parametrize("kind", ["torch.clamp", "method", "F.hardtanh", "F.relu6", "torch.clip"])
def test_clipped_relus_convert_with_their_cap(mnist, kind):
    xc, x, y = mnist
    ann = ClippedMNIST(kind).eval()
    traced = trace(ann)
    last = 6.0 if kind == "F.relu6" else 4.0
    assert [traced.caps[n] for n in traced.relus] == [6.0, 4.0, last]
    snn = onespike.convert(ann, xc, phases=8, progress=False)
    for lp, node in zip(snn.plan.layers, traced.relus):
        cap = traced.caps[node]
        scales = lp.scale if isinstance(lp.scale, tuple) else (lp.scale,)
        assert max(scales) <= cap
    assert [lp.name for lp in snn.plan.layers][:2] == ["act1", "act2"]
    # <= 0.1 point loss: at most one image of 1000
    assert _correct(snn, x, y) >= _correct(ann, x, y) - 1
    # the step simulator agrees and the file round trip keeps the network
    ev, st = snn.simulate(x[:50]), snn.simulate(x[:50], mode="step")
    assert torch.equal(ev.output.argmax(1), st.output.argmax(1))


def test_a_low_cap_caps_the_scale_and_saturates_like_the_ann(tmp_path):
    """With c below the activations' range the scale is c itself: the spiking layer
    saturates exactly where the ANN clips."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Hardtanh(0.0, 0.25), nn.Linear(8, 3)).eval()
    x = torch.randn(200, 6)
    snn = onespike.convert(net, x, phases=6, scale="max", progress=False)
    assert snn.plan.layers[0].scale == pytest.approx(0.25)
    big = torch.full((1, 6), 0.0)
    big[0, 0] = 100.0  # pre-activations far above the cap
    h = net[0](big)
    assert torch.allclose(snn.graph_module(big), net[2](h.clamp(0, 0.25)), atol=1e-6)
    path = tmp_path / "clip.safetensors"
    onespike.save(snn, path)
    assert torch.equal(onespike.load(path)(x), snn(x))


@pytest.mark.parametrize(
    ("act", "match"),
    [
        (
            nn.Hardtanh(-1.0, 1.0),
            r"'act' \(Hardtanh\): a clipped activation converts only .* "
            r"lower bound 0 \(here -1.0",
        ),
        (nn.Hardtanh(0.5, 2.0), r"'act' \(Hardtanh\).*here 0.5"),
        (lambda x: torch.clamp(x, -2, 2), r"function clamp.*lower bound 0"),
        (lambda x: x.clamp(max=3), r"method .clamp\(\).*lower bound 0 \(here None"),
        (lambda x: x.clamp(0, x.mean()), "must be numbers"),
        (lambda x: torch.clamp(x, 0, -1.0), "upper bound c > 0"),
    ],
)
def test_unsupported_clips_fail_before_calibration(act, match):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)
            self.act = act if isinstance(act, nn.Module) else None

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(self.act(h) if self.act is not None else act(h))

    def data():
        raise AssertionError("calibration data touched before the model was checked")
        yield

    with pytest.raises(UnsupportedModelError, match=match):
        onespike.convert(Net(), data(), phases=4, progress=False)


def test_clamp_min_only_is_a_relu():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(self.fc1(x).clamp(min=0))

    traced = trace(Net())
    assert len(traced.relus) == 1 and traced.caps == {}


class BNAfterReLU(nn.Module):
    """Conv-ReLU-BN-Conv(no padding)-ReLU-BN1d... : BN after a ReLU, twice."""

    def __init__(self, pad2: int = 0, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=pad2, groups=groups)
        self.relu2 = nn.ReLU6()
        self.fc1 = nn.Linear(6 * (6 + 2 * pad2) ** 2, 10)
        self.relu3 = nn.ReLU()
        self.bn3 = nn.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        h = self.relu2(self.conv2(self.bn1(self.relu1(self.conv1(x)))))
        return self.fc2(self.bn3(self.relu3(self.fc1(h.flatten(1)))))


@pytest.mark.parametrize("groups", [1, 2])
def test_bn_after_relu_folds_into_the_next_layer(groups):
    torch.manual_seed(0)
    ann = randomize_bn(BNAfterReLU(groups=groups), 3)
    x = torch.rand(64, 2, 8, 8)
    traced = trace(ann)
    kinds = {type(m).__name__ for m in traced.module.modules()}
    assert "BatchNorm2d" not in kinds and "BatchNorm1d" not in kinds
    with torch.no_grad():
        assert torch.allclose(traced.module(x), ann(x), atol=1e-5)
    snn = onespike.convert(ann, x, phases=10, progress=False)
    with torch.no_grad():
        ref = ann(x)
        err = float(((snn(x) - ref) ** 2).sum() / (ref**2).sum())
    assert err < 0.05


def test_bn_after_relu_before_a_padded_conv_is_refused():
    ann = randomize_bn(BNAfterReLU(pad2=1), 3)
    with pytest.raises(UnsupportedModelError, match=r"'bn1' \(BatchNorm2d\).*pads its input"):
        trace(ann)


def test_bn_after_relu_before_a_pool_is_refused():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.BatchNorm2d(2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 2),
    )
    with pytest.raises(UnsupportedModelError, match=r"'2' \(BatchNorm2d\).*MaxPool2d"):
        trace(net)


def test_clipped_network_exports_to_nir_and_back(tmp_path):
    pytest.importorskip("nir")
    from onespike import nir_reference

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
        nn.Hardtanh(0.0, 0.5), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    x = torch.rand(100, 1, 8, 8)
    snn = onespike.convert(net, x, phases=6, progress=False)
    path = tmp_path / "clip.nir"
    onespike.export_nir(snn, path)
    assert torch.equal(onespike.import_nir(path)(x), snn(x))
    assert torch.equal(nir_reference.simulate(path, x).output, snn.simulate(x, mode="step").output)
