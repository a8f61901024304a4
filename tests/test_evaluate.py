"""evaluate.py: accuracies, step-versus-event agreement and costs on a labelled set."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import onespike
from onespike.errors import InputError, OptionError
from onespike.evaluate import evaluate, merge_reports
from tests.nets import make

X = torch.rand(60, 2, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def nets():
    model = make(4)
    snn = onespike.convert(model, X, phases=5, progress=False)
    with torch.no_grad():
        y = model(X).argmax(1)
    y[::4] = (y[::4] + 1) % 5  # a quarter of the labels wrong for the ANN
    return model, snn, y


def _acc(logits, y):
    return 100.0 * int((logits.argmax(1) == y).sum()) / len(y)


def test_accuracies_are_those_of_the_networks(nets):
    model, snn, y = nets
    res = evaluate(model, snn, X, y, batch_size=25, progress=False)
    with torch.no_grad():
        assert res.ann_accuracy == _acc(model(X), y) == 75.0
        assert res.snn_accuracy == _acc(snn(X), y)
        step = snn.simulate(X, mode="step")
    assert res.samples == 60
    assert res.step_accuracy == _acc(step.output, y)
    assert res.step_event_same_predictions == int((step.output.argmax(1) == snn(X).argmax(1)).sum())
    assert res.loss == res.ann_accuracy - res.snn_accuracy
    assert res.max_spikes_per_neuron == 1
    assert res.cost is not None and res.cost.samples == 60
    d = res.to_dict()
    assert d["loss_points"] == res.loss and d["cost"]["samples"] == 60


def test_a_stream_gives_the_figures_of_the_tensors(nets):
    model, snn, y = nets
    a = evaluate(model, snn, X, y, batch_size=25, progress=False)
    b = evaluate(model, snn, DataLoader(TensorDataset(X, y), batch_size=7), batch_size=25,
                 progress=False)  # fmt: skip
    assert a.to_dict() == b.to_dict()


def test_without_the_ann_or_the_step_simulator(nets):
    _, snn, y = nets
    res = evaluate(None, snn, X, y, step=False, costs=False, progress=False)
    assert res.ann_accuracy is None and res.loss is None
    assert res.step_accuracy is None and res.cost is None
    assert res.snn_accuracy == _acc(snn(X), y)


def test_mistakes_are_named(nets):
    model, snn, y = nets
    with pytest.raises(OptionError, match="batch_size must be an integer >= 1, got 0"):
        evaluate(model, snn, X, y, batch_size=0)
    with pytest.raises(OptionError, match="takes a SpikingNetwork, got RandNet"):
        evaluate(model, model, X, y)
    with pytest.raises(InputError, match="evaluate needs labels"):
        evaluate(model, snn, X, progress=False)


def test_merge_reports_weighs_by_batch_size(nets):
    model, snn, _ = nets
    a, b = onespike.cost(model, snn, X[:40]), onespike.cost(model, snn, X[40:])
    whole = onespike.cost(model, snn, X)
    merged = merge_reports([a, b])
    assert merged.samples == 60
    for key in ("snn_acs", "spikes", "ann_macs"):
        assert merged.totals[key] == pytest.approx(whole.totals[key], rel=1e-9), key
    assert merged.layers[0].spikes_per_neuron_max == max(
        a.layers[0].spikes_per_neuron_max, b.layers[0].spikes_per_neuron_max
    )
