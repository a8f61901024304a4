"""convert(): options, the plan, and a clear error for each user mistake (model untouched)."""

import pytest
import torch
from torch import nn

import onespike
from onespike import CalibrationError, UnsupportedModelError
from tests.nets import make


@pytest.fixture
def model():
    return make(7)


@pytest.fixture
def x():
    return torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(0))


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(m, snap):
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


def test_plan_contents(model, x):
    snn = onespike.convert(model, x, phases=6, progress=False)
    plan = snn.plan
    assert plan.phases == 6 and plan.input_coding == "analog" and plan.input is None
    assert [lp.name for lp in plan.layers] == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert [lp.neurons for lp in plan.layers] == [4 * 8 * 8, 4 * 4 * 4, 64, 64, 12]
    # relu1 -> relu2, relu3 -> relu4 -> relu5: the fire windows and the latency
    assert [lp.fire_window for lp in plan.layers] == [1, 2, 2, 3, 4]
    assert plan.latency_steps == (4 + 1) * 6
    assert {(lp.phases, lp.threshold_shift) for lp in plan.layers} == {(6, True)}
    # per-channel scales on the 4-channel convolutions, one scale on the linear layer
    assert [len(lp.scale) if isinstance(lp.scale, tuple) else 1 for lp in plan.layers] == [
        4, 4, 4, 4, 1
    ]  # fmt: skip
    assert [lp.base for lp in plan.layers] == [1.2, 1.3, 1.2, 1.2, 1.6]
    assert plan.search == {
        "base": "auto",
        "scale": "auto",
        "objective": "next",
        "per_channel": "auto",
        "bias_correction": False,
        "threshold_shift": True,
        "search_samples": 256,
    }
    # relu1's recorded error is its code's on the calibration data (its input is exact)
    from onespike.graph import Runner

    with torch.no_grad():
        env = Runner(snn.ann_graph).forward_all(x)
    relu1 = next(n for n in snn.ann_graph.graph.nodes if n.name == "relu1")
    a = env[relu1].double()
    with torch.no_grad():
        q = snn.spikes["relu1"](env[relu1.args[0]]).double()
    assert plan.layers[0].act_error == pytest.approx(
        float(((q - a) ** 2).sum() / (a**2).sum()), rel=1e-12
    )
    lines = str(plan).splitlines()
    assert lines[0] == f"Plan: phases=6, input=analog, latency=30 steps, search={plan.search}"
    assert [line.split()[:2] for line in lines[3:]] == [
        [lp.name, str(lp.neurons)] for lp in plan.layers
    ]
    assert plan.to_dict()["layers"][4]["fire_window"] == 4
    assert isinstance(snn, nn.Module)


def test_fixed_global_and_per_layer_bases(model, x):
    snn = onespike.convert(model, x, phases=6, base=1.5, progress=False)
    assert {lp.base for lp in snn.plan.layers} == {1.5}
    snn = onespike.convert(model, x, phases=6, base="global", progress=False)
    assert len({lp.base for lp in snn.plan.layers}) == 1
    bases = [1.2, 1.4, 1.6, 1.8, 2.0]
    snn = onespike.convert(model, x, phases=6, base=bases, progress=False)
    assert [lp.base for lp in snn.plan.layers] == bases


def test_scale_options(model, x):
    snn_max = onespike.convert(model, x, phases=6, scale="max", base=1.5, progress=False)
    snn_p = onespike.convert(model, x, phases=6, scale=90.0, base=1.5, progress=False)
    for a, b in zip(snn_max.plan.layers, snn_p.plan.layers):
        assert b.scale <= a.scale


def test_per_channel_and_bias_correction(model, x):
    snn = onespike.convert(model, x, phases=6, per_channel=True, progress=False)
    assert isinstance(snn.plan.layers[0].scale, tuple) and len(snn.plan.layers[0].scale) == 4
    assert isinstance(snn.plan.layers[4].scale, tuple) and len(snn.plan.layers[4].scale) == 12
    snn(x)
    before = _snapshot(model)
    snn_bc = onespike.convert(model, x, phases=6, bias_correction=True, progress=False)
    assert _same(model, before)  # the correction changes the SNN's copy only
    assert not torch.equal(snn_bc.graph_module.conv4.bias, model.conv4.bias)


def _node_value(gm, x, name):
    """The value of the node ``name`` of the GraphModule ``gm`` on input ``x``."""
    seen = {}

    class Grab(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name == name:
                seen["v"] = out
            return out

    with torch.no_grad():
        Grab(gm).run(x)
    return seen["v"]


def test_bias_correction_reaches_the_sum_of_a_residual_block():
    """A residual sum's error (the block's Conv and the shortcut's code) is corrected on the
    block's Conv: its per-channel mean error at the sum shrinks."""
    from tests.nets import MnistRes, randomize_bn

    torch.manual_seed(3)
    model = randomize_bn(MnistRes(), 3)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    plain = onespike.convert(model, x, phases=3, progress=False)
    bc = onespike.convert(model, x, phases=3, bias_correction=True, progress=False)
    assert not torch.equal(bc.graph_module.conv3.bias, plain.graph_module.conv3.bias)
    ann = _node_value(plain.ann_graph, x, "add")

    def mean_err(snn):
        return (_node_value(snn.graph_module, x, "add") - ann).mean(dim=(0, 2, 3)).abs().sum()

    assert mean_err(bc) < 0.5 * mean_err(plain)


def test_default_scales_per_channel_for_convolutions_only(model, x):
    """The default ("auto"): conv feature maps per channel, the Linear layer per layer."""
    auto = onespike.convert(model, x, phases=6, progress=False)
    assert auto.plan.search["per_channel"] == "auto"
    kinds = [isinstance(lp.scale, tuple) for lp in auto.plan.layers]
    assert kinds == [True, True, True, True, False]  # relu1-4 follow convs, relu5 a Linear
    assert len(auto.plan.layers[1].scale) == 4
    per_layer = onespike.convert(model, x, phases=6, per_channel=False, progress=False)
    assert not any(isinstance(lp.scale, tuple) for lp in per_layer.plan.layers)
    with pytest.raises(ValueError, match="per_channel must be"):
        onespike.convert(model, x, phases=6, per_channel="conv", progress=False)
    with pytest.raises(ValueError, match="search_samples must be"):
        onespike.convert(model, x, phases=6, search_samples=-3, progress=False)


def test_objectives_differ_and_report_their_error(model, x):
    nxt = onespike.convert(model, x, phases=5, objective="next", progress=False)
    act = onespike.convert(model, x, phases=5, objective="activation", progress=False)
    assert nxt.plan.search["objective"] == "next" and act.plan.search["objective"] == "activation"
    # the activation objective scores each layer on the ANN's own activation
    first = act.plan.layers[0]
    assert first.out_error == pytest.approx(first.act_error, rel=1e-6)


def test_output_objective_scores_the_logits(model, x):
    """With every layer chosen, the last layer's score is the converted network's logits
    error against the ANN's: the search ran the rest of the network for it."""
    snn = onespike.convert(model, x, phases=5, objective="output", progress=False)
    assert snn.plan.search["objective"] == "output"
    with torch.no_grad():
        ref, out = model(x).double(), snn(x).double()
    logits_error = float(((out - ref) ** 2).sum() / (ref**2).sum())
    assert snn.plan.layers[-1].out_error == pytest.approx(logits_error, rel=1e-4)
    nxt = onespike.convert(model, x, phases=5, progress=False)
    assert [lp.out_error for lp in nxt.plan.layers] != [lp.out_error for lp in snn.plan.layers]


def test_accepts_dataloader_and_tuples(model, x):
    y = torch.zeros(32, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    snn = onespike.convert(model, loader, phases=4, progress=False)
    assert snn(x).shape == (32, 5)
    snn2 = onespike.convert(model, [x[:16], x[16:]], phases=4, progress=False, max_calibration=20)
    assert snn2(x).shape == (32, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"phases": 0}, ValueError, "phases must be an integer >= 1"),
        ({"phases": 2.5}, ValueError, "phases must be an integer"),
        ({"phases": 4, "base": 2.5}, ValueError, r"base must be in \(1, 2\]"),
        ({"phases": 4, "base": 1.0}, ValueError, r"base must be in \(1, 2\]"),
        ({"phases": 4, "base": "best"}, ValueError, "base must be 'auto'"),
        ({"phases": 4, "base": [1.5, 1.5]}, ValueError, "5 spiking layers"),
        ({"phases": 4, "scale": 0}, ValueError, "scale must be"),
        ({"phases": 4, "input_coding": "rate"}, ValueError, "input_coding"),
        ({"phases": 4, "objective": "logits"}, ValueError, "objective"),
    ],
)
def test_bad_options(model, x, kwargs, error, match):
    snap = _snapshot(model)
    with pytest.raises(error, match=match):
        onespike.convert(model, x, progress=False, **kwargs)
    assert _same(model, snap)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "calibration set is empty"),
        (torch.empty(0, 2, 8, 8), "calibration set is empty"),
        (torch.full((4, 2, 8, 8), float("nan")), "NaN or Inf"),
        (torch.tensor([[[[float("inf")]]]]).expand(4, 2, 8, 8).clone(), "NaN or Inf"),
        (torch.rand(4, 3, 8, 8), r"do not fit the model"),
        (torch.rand(4, 2, 8), r"do not fit the model"),
        ([torch.rand(4, 2, 8, 8), torch.rand(4, 2, 4, 4)], "sample shape"),
        (torch.randint(0, 5, (4, 2, 8, 8)), "dtype"),
        ("images.npy", "iterable of tensors"),
        (42, "calibration must be a tensor"),
    ],
)
def test_bad_calibration(model, data, match):
    snap = _snapshot(model)
    with pytest.raises(CalibrationError, match=match):
        onespike.convert(model, data, phases=4, progress=False)
    assert _same(model, snap)


def test_unsupported_layer_fails_before_calibration(x):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.act = nn.GELU()
            self.fc = nn.Linear(3 * 6 * 6, 2)

        def forward(self, h):
            return self.fc(self.act(self.conv(h)).flatten(1))

    def data():
        raise AssertionError("calibration data touched before the model was checked")
        yield

    with pytest.raises(UnsupportedModelError, match=r"'act' \(GELU\): not convertible; use ReLU"):
        onespike.convert(Bad(), data(), phases=4, progress=False)


def test_spike_input_codings_need_unit_range(model):
    with pytest.raises(CalibrationError, match=r"needs inputs in \[0, 1\]"):
        onespike.convert(model, torch.randn(8, 2, 8, 8), phases=4, input_coding="binary")


def test_search_cache_matches_fresh_evaluation(model, x):
    """The layer-by-layer search caches node values; after any sequence of choices (and a
    bias change) they equal a from-scratch evaluation."""
    from onespike.calibrate import SearchConfig, _Search
    from onespike.trace import trace

    traced = trace(model)
    cfg = SearchConfig()
    cached = _Search(traced, x, cfg, progress=False, phases=4)
    relus = cached.relus
    picks = [(relus[0], 1.5), (relus[2], 1.3), (relus[1], 1.7), (relus[0], 1.2)]
    chosen: dict = {}
    for node, b in picks:
        chosen = {**chosen, node: (torch.tensor(2.0), b)}
        env = cached.env_with(chosen, relus[-1])
        fresh = _Search(traced, x, cfg, progress=False, phases=4).env_with(chosen)
        for n in cached.runner.nodes[: cached.runner.order[relus[-1]] + 1]:
            assert _same_value(env[n], fresh[n]), n.name
    # a module changed after a node: invalidate_after makes the cache see it
    before = env[relus[3]]
    conv4 = traced.module.get_submodule("conv4")
    conv4.bias.data += 0.5
    cached.invalidate_after(relus[2])
    env = cached.env_with(chosen)
    fresh = _Search(traced, x, cfg, progress=False, phases=4).env_with(chosen)
    assert not _same_value(env[relus[3]], before)  # relu4 follows conv4: it changed
    for n in cached.runner.nodes:
        assert _same_value(env[n], fresh[n]), n.name


def _same_value(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
