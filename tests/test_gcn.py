"""GCNs as first-class inputs of the converter: real subgraph, synthetic graphs, weights.

Every check runs the whole graph as one batch (dim 0 = nodes). Fast: a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import onespike
from onespike.codes import phase as pc
from onespike.data import DataError, Graph, load_planetoid, normalized_adjacency
from onespike.errors import CalibrationError, UnsupportedModelError
from onespike.experiments.gcn import accuracy, evaluate_graph, main, save_gcn, train_gcn
from onespike.models import GCN, DeepGCN, load_pretrained_gcn, pretrained_info, weights_dir

torch.set_num_threads(1)

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def cora() -> Graph:
    try:
        return load_planetoid("cora").row_normalized()
    except DataError as e:  # pragma: no cover - the data ship with the project's shared folder
        pytest.skip(f"Cora not available: {e}")


def _subgraph(g: Graph, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Induced subgraph on nodes 0..n-1: (features, labels, normalised adjacency)."""
    ei = g.edge_index
    keep = (ei[0] < n) & (ei[1] < n)
    return g.features[:n], g.labels[:n], normalized_adjacency(ei[:, keep], n)


@pytest.fixture(scope="module")
def cora_sub(cora: Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _subgraph(cora, 400)


@pytest.fixture(scope="module")
def shipped_gcn(cora: Graph) -> GCN:
    model, _ = load_pretrained_gcn("gcn", "cora")
    return model


def _with_adj(model: torch.nn.Module, adj: torch.Tensor) -> torch.nn.Module:
    """The same trained weights on another graph (GCN weights do not depend on N)."""
    if isinstance(model, GCN):
        other = GCN(adj, model.fc1.in_features, model.fc2.out_features, model.fc1.out_features)
    else:
        other = DeepGCN(
            adj,
            model.fc[0].in_features,
            model.fc[-1].out_features,
            model.fc[0].out_features,
            layers=len(model.fc),
        )
    other.load_state_dict(model.state_dict())
    return other.eval()


def _check_simulators(snn: onespike.SpikingNetwork, x: torch.Tensor) -> None:
    """Step == event on every neuron of every node (float64), same predictions (float32)."""
    ev = snn.simulate(x, mode="event")
    st = snn.simulate(x, mode="step")
    assert torch.equal(ev.output.argmax(1), st.output.argmax(1))
    torch.testing.assert_close(st.output, ev.output, rtol=1e-4, atol=1e-4)
    ev64 = snn.simulate(x, mode="event", dtype=torch.float64)
    st64 = snn.simulate(x, mode="step", dtype=torch.float64)
    assert ev64.spike_phases.keys() == st64.spike_phases.keys()
    for name, ph in ev64.spike_phases.items():
        assert ph.shape[0] == x.shape[0]
        assert torch.equal(ph, st64.spike_phases[name]), name
    for counts in st.spike_counts.values():
        assert int(counts.max()) <= 1
    if snn.plan.input_coding == "single":  # ("binary" input is multi-spike by design)
        assert int(st.input_spikes.max()) <= 1


# --------------------------------------------------------------------------- real subgraph


@pytest.mark.parametrize("coding", ["analog", "single"])
def test_cora_subgraph_converts_and_simulators_agree(shipped_gcn, cora_sub, coding):
    x, _, adj = cora_sub
    ann = _with_adj(shipped_gcn, adj)
    snn = onespike.convert(ann, x, phases=8, input_coding=coding, progress=False)
    assert snn.plan.latency_steps == 2 * 8
    with torch.no_grad():
        a = ann(x)
    out = snn(x)
    assert out.shape == a.shape == (400, 7)
    agree = float((out.argmax(1) == a.argmax(1)).double().mean())
    assert agree >= 0.95
    _check_simulators(snn, x)
    rep = onespike.cost(ann, snn, x)
    assert rep.totals["spikes_per_neuron_max"] <= 1
    assert 0 < rep.totals["spikes_per_neuron_mean"] <= 1


def test_residual_gcn_on_subgraph(cora_sub):
    x, _, adj = cora_sub
    torch.manual_seed(0)
    ann = DeepGCN(adj, x.shape[1], 7, hidden=16, layers=4).eval()
    snn = onespike.convert(ann, x, phases=6, progress=False)
    assert [lp.fire_window for lp in snn.plan.layers] == [1, 2, 3]
    assert snn.plan.latency_steps == 4 * 6
    _check_simulators(snn, x)


def test_default_keeps_one_scale_per_layer_on_graphs(cora_sub):
    """per_channel="auto" (the default) is per-layer on [nodes, C] activations: the GCN
    figures recorded with per_channel=False stay valid."""
    x, _, adj = cora_sub
    torch.manual_seed(0)
    ann = DeepGCN(adj, x.shape[1], 7, hidden=16, layers=3).eval()
    auto = onespike.convert(ann, x, phases=4, progress=False)
    off = onespike.convert(ann, x, phases=4, per_channel=False, progress=False)
    assert [(lp.scale, lp.base) for lp in auto.plan.layers] == [
        (lp.scale, lp.base) for lp in off.plan.layers
    ]
    assert all(isinstance(lp.scale, float) for lp in auto.plan.layers)


def test_gcn_with_bias_parameters_after_aggregation(cora_sub):
    """The PyG-style layer ``A h W + b`` (bias as a parameter): converted, step == event."""
    x, _, adj = cora_sub

    class BiasGCN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("adj", adj)
            self.fc1 = torch.nn.Linear(x.shape[1], 8, bias=False)
            self.b1 = torch.nn.Parameter(torch.randn(8) * 0.05)
            self.relu1 = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(8, 7, bias=False)
            self.b2 = torch.nn.Parameter(torch.randn(7) * 0.05)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            h = self.relu1(torch.sparse.mm(self.adj, self.fc1(h)) + self.b1)
            return torch.sparse.mm(self.adj, self.fc2(h)) + self.b2

    torch.manual_seed(5)
    ann = BiasGCN().eval()
    snn = onespike.convert(ann, x, phases=8, progress=False)
    with torch.no_grad():
        a = ann(x)
    assert float((snn(x).argmax(1) == a.argmax(1)).double().mean()) >= 0.9
    _check_simulators(snn, x)


def test_aggregation_is_counted_on_existing_edges_only():
    """ANN MACs and SNN ACs of a GCN by hand on a 5-node path graph plus an isolated node."""
    torch.manual_seed(1)
    n, f, h, c = 6, 5, 4, 3
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    adj = normalized_adjacency(ei, n)
    nnz = adj._nnz()  # 8 edges + 6 self loops
    assert nnz == 14
    ann = GCN(adj, f, c, hidden=h).eval()
    x = torch.rand(n, f)
    snn = onespike.convert(ann, x, phases=8, progress=False)
    run = snn.simulate(x)
    rep = onespike.cost(ann, snn, x, run=run)
    assert rep.totals["ann_macs"] * n == pytest.approx(n * f * h + nnz * h + n * h * c + nnz * c)
    # every spike of node j reaches c outputs of node j, then each of j's deg(j)+1 neighbours
    spikes_per_node = run.spike_counts["relu1"].sum(1).double()
    col_nnz = torch.bincount(adj.indices()[1], minlength=n).double()
    assert rep.layers[-1].snn_acs * n == pytest.approx(float((spikes_per_node * col_nnz).sum() * c))


# --------------------------------------------------------------------------- synthetic graphs


def _manual_gcn_snn(snn: onespike.SpikingNetwork, ann: GCN, x: torch.Tensor) -> torch.Tensor:
    """Logits of a node whose propagation row is e_i: quantised hidden layer, then fc2."""
    lp = snn.plan.layers[0]
    pre = x @ ann.fc1.weight.T
    q = pc.quantize(pre, torch.tensor(lp.scale), lp.base, lp.phases)
    return q @ ann.fc2.weight.T


def test_graph_without_edges_is_a_per_node_network():
    torch.manual_seed(2)
    n, f = 30, 8
    adj = normalized_adjacency(torch.empty(2, 0, dtype=torch.int64), n)
    assert torch.equal(adj.to_dense(), torch.eye(n))
    ann = GCN(adj, f, 3, hidden=6).eval()
    x = torch.rand(n, f)
    snn = onespike.convert(ann, x, phases=6, input_coding="single", progress=False)
    _check_simulators(snn, x)
    # no edge: each node's output depends on its own features only
    x2 = x.clone()
    x2[1:] = torch.rand(n - 1, f)
    assert torch.equal(snn(x2)[0], snn(x)[0])
    # analog input: the SNN is the ANN with its hidden layer quantised, node by node
    snn_a = onespike.convert(ann, x, phases=6, progress=False)
    torch.testing.assert_close(snn_a(x), _manual_gcn_snn(snn_a, ann, x), rtol=1e-5, atol=1e-6)


def test_isolated_nodes_are_unaffected_by_the_rest_of_the_graph():
    torch.manual_seed(3)
    n, f = 12, 6
    ei = torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])  # nodes 5..11 isolated
    adj = normalized_adjacency(ei, n)
    ann = GCN(adj, f, 4, hidden=5).eval()
    x = torch.rand(n, f)
    snn = onespike.convert(ann, x, phases=8, progress=False)
    _check_simulators(snn, x)
    iso = torch.arange(5, n)
    out = snn(x)
    torch.testing.assert_close(out[iso], _manual_gcn_snn(snn, ann, x[iso]), rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[:5] = torch.rand(5, f)
    assert torch.equal(snn(x2)[iso], out[iso])


def test_one_node_graph():
    torch.manual_seed(4)
    adj = normalized_adjacency(torch.empty(2, 0, dtype=torch.int64), 1)
    ann = GCN(adj, 5, 3, hidden=4).eval()
    x = torch.rand(1, 5)
    for coding in ("analog", "single", "binary"):
        snn = onespike.convert(ann, x, phases=8, input_coding=coding, progress=False)
        assert snn(x).shape == (1, 3)
        _check_simulators(snn, x)
    snn = onespike.convert(ann, x, phases=8, progress=False)
    torch.testing.assert_close(snn(x), _manual_gcn_snn(snn, ann, x), rtol=1e-5, atol=1e-6)


def test_graph_without_nodes_and_other_mistakes_give_clear_errors():
    adj0 = normalized_adjacency(torch.empty(2, 0, dtype=torch.int64), 0)
    ann0 = GCN(adj0, 5, 3).eval()
    with pytest.raises(CalibrationError, match="empty"):
        onespike.convert(ann0, torch.zeros(0, 5), phases=4, progress=False)
    # a node subset is not a graph: calibration must be the whole feature matrix
    adj = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 10)
    ann = GCN(adj, 5, 3).eval()
    x = torch.rand(10, 5)
    with pytest.raises(CalibrationError, match="do not fit the model"):
        onespike.convert(ann, x, phases=4, max_calibration=4, progress=False)
    with pytest.raises(ValueError, match="square"):
        GCN(torch.zeros(3, 4), 5, 3)
    with pytest.raises(ValueError, match="at least 2 layers"):
        DeepGCN(adj, 5, 3, layers=1)
    snn = onespike.convert(ann, x, phases=4, progress=False)
    with pytest.raises(ValueError, match="empty batch"):
        snn(torch.zeros(0, 5))

    class Wrong(torch.nn.Module):  # the activations on the left: not a fixed operator
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("adj", adj.to_dense())
            self.fc = torch.nn.Linear(5, 3)
            self.relu = torch.nn.ReLU()

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.fc(self.relu(torch.mm(h.T, self.adj).T))

    with pytest.raises(UnsupportedModelError, match="fixed matrix"):
        onespike.convert(Wrong(), x, phases=4, progress=False)


def test_zero_adjacency_gives_zero_output_in_both_networks():
    adj = torch.sparse_coo_tensor(
        torch.empty(2, 0, dtype=torch.int64), torch.empty(0), (4, 4), check_invariants=True
    )
    ann = GCN(adj, 3, 2, hidden=4).eval()
    x = torch.rand(4, 3)
    snn = onespike.convert(ann, x, phases=4, progress=False)
    assert torch.equal(snn(x), torch.zeros(4, 2))
    _check_simulators(snn, x)


# --------------------------------------------------------------------------- weights, training


@pytest.mark.parametrize("model", ["gcn", "gcn_res"])
@pytest.mark.parametrize("dataset", ["cora", "citeseer"])
def test_shipped_weights_give_recorded_accuracy(model, dataset, cora):
    net, g = load_pretrained_gcn(model, dataset)
    info = pretrained_info(f"{model}_{dataset}")
    assert info["model"] == model and info["seed"] == 0
    assert info["command"].startswith(f"python -m onespike.experiments.gcn train --model {model}")
    with torch.no_grad():
        logits = net(g.features)
    assert accuracy(logits, g.labels, g.test_idx) == pytest.approx(info["test_acc"], abs=0.1)
    assert accuracy(logits, g.labels, g.val_idx) == pytest.approx(info["val_acc"], abs=0.1)
    assert (weights_dir() / f"{model}_{dataset}.pt").stat().st_size < 1_200_000


def test_training_is_reproducible_and_round_trips(cora, tmp_path: Path):
    a = train_gcn("gcn", cora, seed=5, epochs=4)
    b = train_gcn("gcn", cora, seed=5, epochs=4)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert "adj" not in a.model.state_dict()  # data, rebuilt on load
    save_gcn(a, tmp_path)
    info = json.loads((tmp_path / "gcn_cora_s5.json").read_text())
    assert info["epochs"] == 4 and info["seed"] == 5 and info["model"] == "gcn"
    net, _ = load_pretrained_gcn("gcn", "cora", seed=5, root=tmp_path)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k


def test_evaluate_graph_and_table_command(cora, tmp_path: Path, capsys):
    model, g = load_pretrained_gcn("gcn", "cora")
    snn = onespike.convert(model, g.features, phases=8, progress=False)
    r = evaluate_graph(model, snn, g)
    assert r["phase_mismatches_f64"] == 0 and r["prediction_mismatches"] == 0
    assert r["max_spikes_per_neuron"] == 1
    assert r["ann_test"] == pytest.approx(pretrained_info("gcn_cora")["test_acc"], abs=0.1)
    # the figures recorded in docs/results/gcn.json (docs/GCN.md) for this network: seed 0,
    # analog input, T = 8, default settings
    (rec,) = [
        run
        for run in json.loads((DOCS / "results" / "gcn.json").read_text())["runs"]
        if (run["dataset"], run["model"], run["seed"], run["coding"], run["phases"])
        == ("cora", "gcn", 0, "analog", 8)
        and run["config"] == "default"
    ]
    assert r["ann_test"] == rec["ann_test"] and r["snn_test"] == rec["snn_test"]
    assert r["loss_test"] == pytest.approx(rec["loss_test"], abs=1e-9)
    assert r["loss_test"] == pytest.approx(r["ann_test"] - r["snn_test"])
    assert r["bases"] == rec["bases"] and r["latency_steps"] == rec["latency_steps"] == 16
    assert r["spikes_per_neuron_mean"] == pytest.approx(rec["spikes_per_neuron_mean"], rel=1e-6)
    out = tmp_path / "t.json"
    argv = ["table", "--json", str(out), "--datasets", "cora", "--models", "gcn"]
    argv += ["--seeds", "0", "--phases", "4", "--codings", "analog", "--epochs", "3"]
    argv += ["--cache", "", "--no-step"]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 1 and res["runs"][0]["phases"] == 4
    assert res["command"].startswith("python -m onespike.experiments.gcn table")
    printed = capsys.readouterr().out
    assert "| cora | gcn | analog |" in printed and "Target" in printed
