"""save/load: one safe file; the loaded network is bit-identical to the saved one."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import onespike
from onespike import SpikingNetwork, serialize, trace
from onespike.data import load_mnist
from onespike.models import GCN, load_pretrained
from onespike.models.resnet import CIFARResNet
from onespike.serialize import (
    CorruptFileError,
    NetworkFileNotFoundError,
    NotANetworkFileError,
    NotSerializableError,
    SerializationError,
    UnsupportedFormatVersionError,
)
from tests.nets import make, randomize_bn


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(a: SpikingNetwork, b: SpikingNetwork, x: torch.Tensor) -> None:
    """Outputs, phases and counts equal bit for bit (event and step), plan and costs equal."""
    assert b.plan == a.plan and b.input_shape == a.input_shape
    assert _bits(a(x)) == _bits(b(x))
    for mode in ("event", "step"):
        ra, rb = a.simulate(x, mode=mode), b.simulate(x, mode=mode)
        assert _bits(ra.output) == _bits(rb.output), mode
        assert ra.spike_phases.keys() == rb.spike_phases.keys()
        for k in ra.spike_phases:
            assert torch.equal(ra.spike_phases[k], rb.spike_phases[k]), (mode, k)
            assert torch.equal(ra.spike_counts[k], rb.spike_counts[k]), (mode, k)
        if ra.input_spikes is None:
            assert rb.input_spikes is None
        else:
            assert torch.equal(ra.input_spikes, rb.input_spikes)
    assert onespike.cost(None, a, x).to_dict() == onespike.cost(None, b, x).to_dict()
    for ga, gb in ((a.ann_graph, b.ann_graph), (a.graph_module, b.graph_module)):
        sa, sb = ga.state_dict(), gb.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            if sa[k].is_sparse:
                assert torch.equal(sa[k].to_dense(), sb[k].to_dense()), k
            else:
                assert sa[k].dtype == sb[k].dtype and _bits(sa[k]) == _bits(sb[k]), k


def _round_trip(snn: SpikingNetwork, tmp_path) -> SpikingNetwork:
    path = tmp_path / "net.safetensors"
    onespike.save(snn, path)
    return onespike.load(path)


@pytest.fixture(scope="module")
def mnist():
    ann = load_pretrained("mnist_cnn")
    x, _ = load_mnist("test")
    return ann, x[:48], x[1000:1300]


def test_shipped_mnist_cnn_round_trip(mnist, tmp_path):
    ann, x_cal, x_test = mnist
    snn = onespike.convert(ann, x_cal, phases=6, progress=False)
    loaded = _round_trip(snn, tmp_path)
    assert_identical(snn, loaded, x_test)
    # per-channel scales of the convolutions survive as they are
    conv = loaded.plan.layers[0]
    assert isinstance(conv.scale, tuple) and len(conv.scale) == 16
    assert conv.scale == snn.plan.layers[0].scale
    assert _bits(loaded.spikes["relu1"].scale) == _bits(snn.spikes["relu1"].scale)


def test_residual_net_round_trip(tmp_path):
    """A small ResNet: identity and projection shortcuts, delays, adaptive pooling."""
    torch.manual_seed(0)
    ann = randomize_bn(CIFARResNet((1, 1, 1), num_classes=10), 0)
    x = torch.rand(20, 3, 32, 32)
    snn = onespike.convert(ann, x, phases=5, progress=False)
    assert_identical(snn, _round_trip(snn, tmp_path), x)


@pytest.mark.parametrize("coding", ["analog", "binary", "single"])
def test_max_pool_concat_net_and_input_codings(coding, tmp_path):
    model = make(3, relu_kind="method", maxpool=True, merge="cat", flatten="view")
    x = torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    snn = onespike.convert(model, x, phases=4, input_coding=coding, progress=False)
    loaded = _round_trip(snn, tmp_path)
    assert loaded.plan.input_coding == coding
    assert_identical(snn, loaded, x)


def test_residual_add_with_functional_relu_and_reshape(tmp_path):
    model = make(5, relu_kind="F", merge="add", pool="adaptive", flatten="reshape")
    x = torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    snn = onespike.convert(model, x, phases=5, base="global", per_channel=True, progress=False)
    assert_identical(snn, _round_trip(snn, tmp_path), x)


def test_gcn_with_sparse_adjacency(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 14
    a = (torch.rand(n, n, generator=g) < 0.25).float()
    a = ((a + a.T + torch.eye(n)) > 0).float()
    adj = (a / a.sum(1, keepdim=True)).to_sparse()
    torch.manual_seed(0)
    ann = GCN(adj, 6, 3, hidden=8).eval()
    x = torch.rand(n, 6, generator=g)
    snn = onespike.convert(ann, x, phases=6, progress=False)
    loaded = _round_trip(snn, tmp_path)
    assert loaded.ann_graph.adj.is_sparse
    assert_identical(snn, loaded, x)


def test_refined_network_keeps_its_weights_and_its_ann(tmp_path):
    """After refinement the spiking weights differ from the ANN's: both are stored."""
    model = make(2)
    x = torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    snn = onespike.convert(model, x, phases=3, progress=False)
    r = onespike.refine(snn, model, x, iterations=4, lr=1e-2, holdout=0, progress=False)
    w_snn, w_ann = r.graph_module.conv1.weight, r.ann_graph.conv1.weight
    assert not torch.equal(w_snn, w_ann)
    loaded = _round_trip(r, tmp_path)
    assert_identical(r, loaded, x)
    assert loaded.plan.search["refine"] == r.plan.search["refine"]


def test_float64_network_keeps_its_precision(tmp_path):
    x = torch.rand(16, 2, 8, 8, dtype=torch.float64)
    snn = onespike.convert(make(6), x.float(), phases=4, progress=False).double()
    loaded = _round_trip(snn, tmp_path)
    assert loaded.spikes["relu1"].scale.dtype == torch.float64
    assert loaded.graph_module.conv1.weight.dtype == torch.float64
    assert_identical(snn, loaded, x)


def test_methods_and_file_layout(tmp_path):
    model = make(4)
    x = torch.rand(16, 2, 8, 8)
    snn = onespike.convert(model, x, phases=4, progress=False)
    path = tmp_path / "net.safetensors"
    snn.save(path)
    loaded = SpikingNetwork.load(path)
    assert isinstance(loaded, SpikingNetwork)
    assert torch.equal(loaded(x), snn(x))
    # a plain safetensors file: tensors and JSON text, readable without onespike
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["format"] == "onespike.SpikingNetwork"
    assert meta["format_version"] == str(serialize.FORMAT_VERSION)
    assert meta["onespike_version"] == onespike.__version__
    assert json.loads(meta["input_shape"]) == [2, 8, 8]
    plan = json.loads(meta["plan"])
    assert plan["phases"] == 4 and len(plan["layers"]) == len(snn.plan.layers)
    assert {"name", "scale", "base", "threshold_shift", "fire_window"} <= set(plan["layers"][0])
    graph = json.loads(meta["graph"])
    assert graph["modules"]["conv1"]["type"] == "Conv2d"
    assert "ann/conv1.weight" in names
    # unrefined: the spiking graph shares the ANN's tensors; only the scales are its own
    assert all(n.startswith("ann/") or ".scale" in n or "spikes_" in n for n in names)


def test_truncated_and_damaged_files(tmp_path):
    snn = onespike.convert(make(0), torch.rand(8, 2, 8, 8), phases=3, progress=False)
    good = tmp_path / "good.safetensors"
    snn.save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in (200, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match="damaged or truncated"):
            onespike.load(bad)
    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # a weight's byte: the checksum catches it
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match="checksum"):
        onespike.load(bad)


def test_future_format_version_is_refused(tmp_path):
    snn = onespike.convert(make(0), torch.rand(8, 2, 8, 8), phases=3, progress=False)
    path = tmp_path / "net.safetensors"
    snn.save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["format_version"] = str(serialize.FORMAT_VERSION + 1)
    future = tmp_path / "future.safetensors"
    save_file(load_file(path), future, metadata=meta)
    with pytest.raises(UnsupportedFormatVersionError) as e:
        onespike.load(future)
    msg = str(e.value)
    assert f"format version {serialize.FORMAT_VERSION + 1}" in msg
    assert f"reads versions up to {serialize.FORMAT_VERSION}" in msg


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="no such file") as e:
        onespike.load(tmp_path / "nothing.safetensors")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    text = tmp_path / "notes.txt"
    text.write_text("not a network")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(3)}, other)
    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, pickle)
    for p in (text, other, pickle, tmp_path):
        with pytest.raises(NotANetworkFileError, match=r"not a network saved by|directory"):
            onespike.load(p)
    assert issubclass(NotANetworkFileError, SerializationError)
    assert issubclass(SerializationError, ValueError)


def test_operator_outside_the_allow_list_is_named_at_save(tmp_path):
    """convert() never makes such a network; one edited by hand is refused with the place."""

    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    snn = onespike.convert(model, torch.rand(8, 4), phases=3, progress=False)
    ann = snn.ann_graph
    mine = MyLinear(6, 2)
    mine.load_state_dict(getattr(ann, "2").state_dict())
    ann.add_module("2", mine)
    with pytest.raises(NotSerializableError, match=r"module '2' \(.*MyLinear\)"):
        snn.save(tmp_path / "x.safetensors")
    # a function outside the allow-list, named with its node
    snn = onespike.convert(model, torch.rand(8, 4), phases=3, progress=False)
    graph = snn.ann_graph.graph
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == "2")
    with graph.inserting_after(node):
        odd = graph.call_function(torch.sigmoid, (node,))
    node.replace_all_uses_with(odd, delete_user_cb=lambda u: u is not odd)
    with pytest.raises(NotSerializableError, match=f"node '{odd.name}' calls function sigmoid"):
        snn.save(tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists()


def test_allow_list_covers_every_supported_operator():
    """Whatever the converter keeps after tracing, the file format can describe: its
    allow-lists are the named entries of trace.OPS."""
    for op in trace.OPS:
        if op.name is None:  # removed, rewritten or refused by trace()
            assert op.role in ("drop", "refused") or op.clip, op
            continue
        if op.kind == "function":
            assert serialize._function_name(op.target) == op.name, op
        elif op.kind == "method":
            assert op.name in serialize._METHODS, op
        else:
            assert serialize._MODULES[op.name][0] is op.target, op
    n_named = sum(op.name is not None for op in trace.OPS)
    assert len(serialize._FUNCTIONS) + len(serialize._METHODS) + len(serialize._MODULES) == n_named
    assert serialize._function_name(F.relu) == "torch.nn.functional.relu"
