"""Streaming data: a DataLoader, a Dataset, a list of batches or a generator give the same
plan and the same figures as one tensor of the same samples; bad batches fail before any
work."""

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import onespike
import onespike.observe as observe_mod
from onespike import CalibrationError
from onespike.calibrate import SCALE_PERCENTILES
from onespike.errors import InputError
from onespike.evaluate import evaluate
from onespike.observe import percentiles
from onespike.stream import as_batches
from tests.nets import make

G = torch.Generator().manual_seed(0)
X = torch.rand(300, 2, 8, 8, generator=G)
Y = torch.randint(0, 5, (300,), generator=G)


@pytest.fixture(scope="module")
def model():
    return make(7)


def _plan(model, data, **kw):
    kw = {"phases": 4, "search_samples": 64, "progress": False, **kw}
    return onespike.convert(model, data, **kw)


class Samples(Dataset):
    """A map-style Dataset of (x, y) samples that counts its reads."""

    def __init__(self):
        self.reads = 0

    def __len__(self):
        return X.shape[0]

    def __getitem__(self, i):
        self.reads += 1
        return X[i], Y[i]


@pytest.mark.parametrize("per_channel", ["auto", False])
def test_streamed_calibration_gives_the_tensor_plan(model, monkeypatch, per_channel):
    """Statistics over the whole set come chunk by chunk (chunks of 50 here, so a loader of
    37-sample batches is re-cut): the plan and the outputs equal the tensor path's."""
    monkeypatch.setattr(observe_mod, "STATS_CHUNK", 50)
    ref = _plan(model, X, per_channel=per_channel)
    loader = DataLoader(TensorDataset(X, Y), batch_size=37)
    sources = {
        "loader": loader,
        "dataset": Samples(),
        "list": [X[i : i + 61] for i in range(0, 300, 61)],
        "generator": (X[i : i + 100] for i in range(0, 300, 100)),
    }
    for name, data in sources.items():
        snn = _plan(model, data, per_channel=per_channel)
        assert snn.plan.to_dict() == ref.plan.to_dict(), name
        assert torch.equal(snn(X[:20]), ref(X[:20])), name


def test_streamed_options_give_the_tensor_plan(model, monkeypatch):
    """A tensor keeps each chunk's frontier (the network runs once), a loader runs the
    network again for every layer: the same operations, the same plan."""
    monkeypatch.setattr(observe_mod, "STATS_CHUNK", 64)
    loader = DataLoader(TensorDataset(X), batch_size=50)
    for kw in (
        {"objective": "activation"},
        {"input_coding": "single"},
        {"bias_correction": True},
        {"max_calibration": 200},
        {"objective": "activation", "bias_correction": True},
        {"base": "global", "per_channel": False},
    ):
        ref, got = _plan(model, X, **kw), _plan(model, loader, **kw)
        assert got.plan.to_dict() == ref.plan.to_dict(), kw


def test_a_dataset_is_read_in_order_not_all_at_once(model, monkeypatch):
    """Reads: one checking pass, one per spiking layer (the statistics), one for the plan's
    figures; the search holds only its first ``search_samples`` inputs."""
    monkeypatch.setattr(observe_mod, "STATS_CHUNK", 100)
    ds = Samples()
    seen = []
    real = observe_mod.StreamStats.positives

    def spy(self, node, chosen, per_channel):
        seen.append(max(x.shape[0] for x, _ in self.data.chunks(observe_mod.STATS_CHUNK)))
        return real(self, node, chosen, per_channel)

    monkeypatch.setattr(observe_mod.StreamStats, "positives", spy)
    snn = _plan(model, ds)
    assert seen and max(seen) == 100  # the statistics never saw more than one chunk at once
    assert ds.reads >= 300 * (len(snn.plan.layers) + 2)


def test_streamed_evaluation_gives_the_tensor_figures(model, monkeypatch):
    snn = _plan(model, X)
    ref = evaluate(model, snn, X, Y, batch_size=64, progress=False)
    sizes = []
    real = type(snn).simulate

    def spy(self, x, *a, **k):
        sizes.append(x.shape[0])
        return real(self, x, *a, **k)

    monkeypatch.setattr(type(snn), "simulate", spy)
    for data in (DataLoader(TensorDataset(X, Y), batch_size=23), Samples()):
        got = evaluate(model, snn, data, batch_size=64, progress=False)
        assert got.to_dict() == ref.to_dict()
    assert max(sizes) == 64


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (DataLoader(TensorDataset(torch.empty(0, 2, 8, 8)), batch_size=4), "set is empty"),
        ([X[:4], torch.full((4, 2, 8, 8), float("nan"))], r"batch 1 contains .* NaN"),
        ([X[:4], X[:4, :, :4]], r"batch 1 has sample shape \(2, 4, 8\)"),
        ([X[:4], "x.png"], "batch 1 is a str"),
        ([X[:4].long()], "dtype"),
        ([torch.rand(4, 3, 8, 8)], "do not fit the model"),
    ],
)
def test_bad_batches_fail_before_any_work(model, monkeypatch, data, match):
    def no_work(*a, **k):
        raise AssertionError("calibration started on bad data")

    monkeypatch.setattr(sys.modules["onespike.convert"], "calibrate", no_work)
    with pytest.raises(CalibrationError, match=match):
        _plan(model, data)


def test_evaluation_stream_mistakes(model):
    snn = _plan(model, X[:64])
    with pytest.raises(InputError, match="needs labels"):
        evaluate(model, snn, DataLoader(TensorDataset(X), batch_size=8), progress=False)
    with pytest.raises(InputError, match="batch 1 contains"):
        bad = [(X[:4], Y[:4]), (torch.full((4, 2, 8, 8), float("inf")), Y[:4])]
        evaluate(model, snn, bad, progress=False)
    with pytest.raises(InputError, match="labels"):
        evaluate(model, snn, [(X[:4], Y[:3])], progress=False)


def test_chunks_recut_without_arithmetic():
    data = as_batches([X[:7], X[7:20], X[20:21], X[21:50]])
    got = list(data.chunks(16))
    assert [c.shape[0] for c, _ in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([c for c, _ in got]), X[:50])
    assert data.count == 50 and data.sample_shape == (2, 8, 8)
    assert torch.equal(as_batches(X, limit=30).head(None), X[:30])


def test_percentiles_equal_numpy_to_the_bit():
    torch.manual_seed(0)
    qs = (*SCALE_PERCENTILES, 50.0, 3.3)
    for shape in [(50, 4, 5, 5), (30, 7), (10, 3, 2, 2)]:
        v = torch.randn(shape)
        v[:, 0] = -1.0  # a dead channel gets scale 1
        chans = v.transpose(0, 1).reshape(v.shape[1], -1).double().numpy()
        for q, got in zip(qs, percentiles(v, qs, True)):
            row = [np.percentile(c[c > 0], q) if (c > 0).any() else 1.0 for c in chans]
            assert torch.equal(got, torch.tensor(row, dtype=torch.float32))
        flat = v.reshape(-1).double().numpy()
        for q, got in zip(qs, percentiles(v, qs, False)):
            assert torch.equal(got, torch.tensor(float(np.percentile(flat[flat > 0], q))))
