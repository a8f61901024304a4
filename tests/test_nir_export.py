"""NIR export: the file round-trips, and a simulator reading only the file reproduces onespike."""

import sys

import numpy as np
import pytest
import torch

import onespike
from onespike.data import load_mnist
from onespike.models import GCN, load_pretrained
from onespike.models.resnet import CIFARResNet
from tests.nets import make, randomize_bn

nir = pytest.importorskip("nir")

from onespike import nir_reference  # noqa: E402
from onespike.nir_export import NIRExportError  # noqa: E402


def _same_run(ref, run, *, outputs: bool = True) -> None:
    assert ref.spike_phases.keys() == run.spike_phases.keys()
    for k in run.spike_phases:
        assert torch.equal(ref.spike_phases[k], run.spike_phases[k]), k
        assert torch.equal(ref.spike_counts[k], run.spike_counts[k]), k
    if outputs:
        assert torch.equal(ref.output, run.output)
    if run.input_spikes is None:
        assert ref.input_spikes is None
    else:
        assert torch.equal(ref.input_spikes, run.input_spikes)


def check_nir(snn, x, path, *, float64: torch.Tensor | None = None):
    """Round trip and reference simulator against both of onespike's paths."""
    graph = onespike.export_nir(snn, path)
    assert isinstance(graph, nir.NIRGraph)
    back = onespike.import_nir(path)
    assert back.plan == snn.plan and back.input_shape == snn.input_shape
    assert torch.equal(back(x), snn(x))
    ev_b, ev = back.simulate(x, mode="event"), snn.simulate(x, mode="event")
    _same_run(ev_b, ev)
    # the reference simulator reads the file only: the step simulator's bits exactly,
    # the event path's predictions
    ref = nir_reference.simulate(path, x)
    _same_run(ref, snn.simulate(x, mode="step"))
    assert torch.equal(ref.output.argmax(1), ev.output.argmax(1))
    assert ref.steps == snn.plan.latency_steps
    if float64 is not None:  # no ties at a threshold: the event path's phases exactly
        ref64 = nir_reference.simulate(path, float64, dtype=torch.float64)
        ev64 = snn.simulate(float64, mode="event", dtype=torch.float64)
        _same_run(ref64, ev64, outputs=False)
        torch.testing.assert_close(ref64.output, ev64.output, rtol=1e-9, atol=1e-9)
    return graph


def test_shipped_mnist_cnn(tmp_path):
    ann = load_pretrained("mnist_cnn")
    x, _ = load_mnist("test")
    snn = onespike.convert(ann, x[:48], phases=6, progress=False)
    path = tmp_path / "mnist.nir"
    graph = check_nir(snn, x[1000:1300], path, float64=x[2000:2060])
    # a plain NIR file: any reader gets standard nodes with the weights and the code
    g = nir.read(str(path))
    kinds = [type(n).__name__ for n in g.nodes.values()]
    assert kinds.count("IF") == 3 and kinds.count("Conv2d") == 2 and kinds.count("Affine") == 2
    assert np.array_equal(g.nodes["conv1"].weight, snn.graph_module.conv1.weight.detach().numpy())
    pool = g.nodes["pool1"]
    assert isinstance(pool, nir.SumPool2d) and pool.metadata["onespike_op"] == "max_pool_spikes"
    relu1 = g.nodes["relu1"]
    lp = snn.plan.layers[0]
    assert tuple(relu1.metadata["scale"]) == lp.scale  # one scale per channel
    assert float(relu1.metadata["base"]) == lp.base and int(relu1.metadata["fire_window"]) == 1
    assert relu1.r.shape == (16, 28, 28) and len(relu1.metadata["fire_thresholds"]) == 6
    assert int(g.metadata["phases"]) == 6 and g.metadata["input_coding"] == "analog"
    assert set(graph.nodes) == set(g.nodes)


def test_residual_net_with_delays(tmp_path):
    torch.manual_seed(0)
    ann = randomize_bn(CIFARResNet((1, 1, 1), num_classes=10), 0)
    x = torch.rand(24, 3, 32, 32)
    snn = onespike.convert(ann, x[:16], phases=5, progress=False)
    graph = check_nir(snn, x, tmp_path / "resnet.nir", float64=x[:8])
    delays = [n for n in graph.nodes.values() if isinstance(n, nir.Delay)]
    assert len(delays) == 3 and all(float(d.delay.flat[0]) == 5.0 for d in delays)
    # the residual add: two edges into one neuron, summed in a recorded order
    into = [b for a, b in graph.edges if b == "layer1_0_relu2"]
    assert len(into) == 2 and "inputs" in graph.nodes["layer1_0_relu2"].metadata


@pytest.mark.parametrize("coding", ["binary", "single"])
def test_spike_input_codings_and_nested_adds(coding, tmp_path):
    model = make(7, merge="add", maxpool=True, relu_kind="F", flatten="view")
    x = torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    snn = onespike.convert(model, x, phases=5, input_coding=coding, progress=False)
    graph = check_nir(snn, x, tmp_path / "net.nir", float64=x[:8].double())
    assert graph.metadata["input_coding"] == coding
    encoders = [
        n for n in graph.nodes.values() if n.metadata.get("onespike_role") == "input_encoder"
    ]
    assert len(encoders) == (1 if coding == "single" else 0)


def test_refined_network_exports_its_refined_weights(tmp_path):
    model = make(2, merge="add", pool="adaptive")
    x = torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    snn = onespike.convert(model, x, phases=3, progress=False)
    r = onespike.refine(snn, model, x, iterations=4, lr=1e-2, progress=False)
    graph = check_nir(r, x, tmp_path / "refined.nir")
    assert np.array_equal(graph.nodes["conv1"].weight, r.graph_module.conv1.weight.detach().numpy())


@pytest.mark.parametrize("coding", ["analog", "single"])
def test_concatenation_exports_as_a_sum_of_zero_padded_maps(coding, tmp_path):
    """torch.cat along the channels: one identity 1x1 convolution per input into its
    slot, summed; read back by import_nir (as the cat) and by the reference simulator,
    bit for bit."""
    model = make(0, merge="cat", maxpool=True)
    x = torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    snn = onespike.convert(model, x, phases=4, input_coding=coding, progress=False)
    graph = check_nir(snn, x, tmp_path / "cat.nir", float64=x[:8].double())
    parts = {k: n for k, n in graph.nodes.items() if n.metadata.get("onespike_op") == "concat"}
    assert sorted(parts) == ["cat_part0", "cat_part1"]
    w0, w1 = parts["cat_part0"].weight, parts["cat_part1"].weight
    c = w0.shape[1]
    assert w0.shape == w1.shape == (2 * c, c, 1, 1)
    eye = np.eye(c, dtype=np.float32)[:, :, None, None]
    assert np.array_equal(w0[:c], eye) and not w0[c:].any()
    assert np.array_equal(w1[c:], eye) and not w1[:c].any()
    assert not parts["cat_part0"].bias.any() and not parts["cat_part1"].bias.any()
    back = onespike.import_nir(tmp_path / "cat.nir")
    assert [n.target for n in back.graph_module.graph.nodes if n.op == "call_function"].count(
        torch.cat
    ) == 1  # the cat itself, not two convolutions
    assert onespike.cost(model, back, x).totals == onespike.cost(model, snn, x).totals


class CatFlat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, 5), torch.nn.Linear(6, 3)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], -1))


def test_concatenation_of_feature_vectors(tmp_path):
    torch.manual_seed(1)
    model = CatFlat().eval()
    x = torch.rand(40, 6)
    snn = onespike.convert(model, x, phases=5, progress=False)
    graph = check_nir(snn, x, tmp_path / "flat.nir", float64=x[:8].double())
    assert isinstance(graph.nodes["cat_part1"], nir.Affine)
    assert graph.nodes["cat_part1"].weight.shape == (8, 3)


def test_what_nir_cannot_express_is_named(tmp_path):
    class CatSpace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
            self.fc = torch.nn.Linear(3 * 16 * 8, 4)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(torch.cat([h, h], 2).flatten(1))

    x = torch.rand(12, 2, 8, 8)
    snn = onespike.convert(CatSpace().eval(), x, phases=3, progress=False)
    with pytest.raises(NIRExportError, match="node 'cat': concatenation along dim 2; only the"):
        onespike.export_nir(snn, tmp_path / "cat.nir")
    pool = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Flatten(), torch.nn.Linear(27, 4),
    ).eval()  # fmt: skip
    snn = onespike.convert(pool, x, phases=3, progress=False)
    with pytest.raises(NIRExportError, match="NIR has no max-pool node"):
        onespike.export_nir(snn, tmp_path / "pool.nir")
    adj = (torch.eye(6) + torch.rand(6, 6).round()).to_sparse()
    gcn = onespike.convert(GCN(adj, 4, 3, hidden=5).eval(), torch.rand(6, 4), phases=3,
                           progress=False)  # fmt: skip
    with pytest.raises(NIRExportError, match="fixed matrix"):
        onespike.export_nir(gcn, tmp_path / "gcn.nir")


def test_foreign_nir_files_and_missing_package(tmp_path, monkeypatch):
    w = np.ones((2, 3), dtype=np.float32)
    other = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.zeros(2, np.float32)))
    nir.write(str(tmp_path / "other.nir"), other)
    with pytest.raises(NIRExportError, match="not exported by onespike"):
        onespike.import_nir(tmp_path / "other.nir")
    with pytest.raises(ValueError, match="not exported by onespike"):
        nir_reference.simulate(tmp_path / "other.nir", torch.rand(1, 3))
    (tmp_path / "junk.nir").write_text("not hdf5")
    with pytest.raises(NIRExportError, match="not a readable NIR file"):
        onespike.import_nir(tmp_path / "junk.nir")
    snn = onespike.convert(make(0), torch.rand(8, 2, 8, 8), phases=3, progress=False)
    monkeypatch.setitem(sys.modules, "nir", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install onespike\[nir\]"):
        onespike.export_nir(snn, tmp_path / "x.nir")
