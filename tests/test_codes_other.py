"""The other spike codes of the comparison: their neurons, their networks, their costs.

Neuron properties (rate, burst, multi-phase, TTFS), then small networks where
every code approaches the ANN as its length grows, a cross-check of the
windowed simulator and of the cost mapping against onespike's own simulator
and cost model, and the ``onespike compare`` command on a few images.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import onespike
from onespike.codes import binary, burst, rate, ttfs
from onespike.experiments import compare as C
from onespike.trace import trace
from tests.nets import Net1d, make, randomize_bn

torch.set_num_threads(1)

F64 = torch.float64


def _z(n: int = 2000, lo: float = -0.5, hi: float = 1.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=F64) * (hi - lo) + lo


# --------------------------------------------------------------------------------------
# rate: IF with reset by subtraction
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 7, 16, 100, 256])
def test_rate_if_converges_to_clipped_value_within_1_over_T(steps):
    z = _z()
    count = rate.run_constant(z, steps)
    assert torch.equal(count, rate.expected_count(z, steps))
    err = z.clamp(0, 1) - rate.decode(count, steps)
    assert float(err.min()) >= -1e-9
    assert float(err.max()) < 1.0 / steps + 1e-9
    assert float(count.max()) <= steps  # at most one spike per step


def test_rate_if_step_subtracts_the_threshold():
    u, s = rate.if_step(torch.tensor([0.2, 0.9, 2.5]), torch.tensor([0.5, 0.5, 0.0]), 1.0)
    assert torch.equal(s, torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(u, torch.tensor([0.7, 0.4, 1.5]))


def test_activation_scale_max_and_percentile():
    v = torch.cat([torch.zeros(1000), torch.arange(1, 1001, dtype=torch.float32)])
    assert rate.activation_scale(v, "max") == 1000.0
    assert rate.activation_scale(v, 50.0) == pytest.approx(500.5)
    assert rate.activation_scale(torch.zeros(10), "max") == 1.0
    with pytest.raises(ValueError, match="percentile"):
        rate.activation_scale(v, 120.0)


# --------------------------------------------------------------------------------------
# burst
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("theta", [1.0, 1.0 / 16])
@pytest.mark.parametrize("steps", [8, 32, 128])
def test_burst_decodes_within_its_bound(steps, theta):
    """For 0 <= z <= g_max * theta: 0 <= z - value < max_burst * g_max * theta / T."""
    p = burst.BurstParams(2.0, 5)
    z = _z(lo=0.0, hi=p.g_max * theta)
    total, count = burst.run_constant(z, steps, theta, p)
    err = z - burst.decode(total, steps, theta)
    assert float(err.min()) >= -1e-9
    assert float(err.max()) < p.max_burst * p.g_max * theta / steps + 1e-9
    assert float(count.max()) <= steps  # one spike per step at most


def test_burst_does_not_clip_where_rate_does():
    z = torch.tensor([3.0], dtype=F64)  # three thresholds per step
    total, _ = burst.run_constant(z, 256, 1.0)
    assert float(burst.decode(total, 256, 1.0)) == pytest.approx(3.0, abs=80 / 256)
    assert float(rate.decode(rate.run_constant(z, 256), 256)) == 1.0


def test_burst_weights_grow_by_beta_then_reset():
    p = burst.BurstParams(2.0, 3)
    u, g = torch.tensor([20.0]), torch.tensor([1.0])
    ws = []
    for _ in range(8):
        u, g, w = burst.burst_step(u, g, torch.tensor([0.0]), 1.0, p)
        ws.append(float(w))
    # 20 = 1 + 2 + 4 + 4 + 4 + 4 (capped at g_max = 4) + 1: a silent step resets g to 1
    assert ws == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 0.0, 1.0]


def test_burst_params_are_checked():
    with pytest.raises(ValueError):
        burst.BurstParams(1.0, 5)
    with pytest.raises(ValueError):
        burst.BurstParams(2.0, 0)


# --------------------------------------------------------------------------------------
# multi-spike base-2 code (binary phase coding, weighted spikes)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("period", [1, 3, 4, 8])
def test_binary_neuron_reproduces_the_binary_expansion(period):
    z = _z(lo=0.0, hi=1.0)
    _, _, bits = binary.run_constant(z, 1, period)
    code = binary.encode(z, period)
    for k in range(period):
        assert torch.equal(bits[k].to(torch.int64), binary.spikes_at(code, k, period))


@pytest.mark.parametrize("period,periods", [(4, 1), (4, 10), (8, 5)])
def test_binary_neuron_average_error_below_2_pow_minus_K_over_P(period, periods):
    z = _z(lo=0.0, hi=1.0 - 2.0**-period)
    total, count, _ = binary.run_constant(z, periods, period)
    err = z - binary.decode_weight_sum(total, periods)
    assert float(err.min()) >= -1e-9
    assert float(err.max()) < 2.0**-period / periods + 1e-9
    assert float(count.max()) <= periods * period


def test_binary_neuron_saturates_at_all_bits():
    total, count, _ = binary.run_constant(torch.tensor([5.0], dtype=F64), 3, 4)
    assert float(count) == 12  # every phase of every period
    assert float(binary.decode_weight_sum(total, 3)) == pytest.approx(1 - 2.0**-4)


# --------------------------------------------------------------------------------------
# TTFS (linear latency code)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("phases", [1, 2, 5, 16, 64])
def test_ttfs_step_dynamics_equal_the_closed_form(phases, shift):
    z = _z(n=5000)
    ph, upd = ttfs.fire(z, phases, shift=shift)
    assert torch.equal(ph, ttfs.encode(z, phases, shift=shift))
    assert torch.equal(upd, torch.where(ph >= 0, ph + 1, torch.full_like(ph, phases)))


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(-1.0, 2.0, allow_nan=False),
    b=st.floats(-1.0, 2.0, allow_nan=False),
    phases=st.integers(1, 64),
)
def test_ttfs_is_monotonic(a, b, phases):
    lo, hi = sorted((a, b))
    z = torch.tensor([lo, hi], dtype=F64)
    ph = ttfs.encode(z, phases)
    val = ttfs.decode(ph, phases, 1.0)
    assert float(val[0]) <= float(val[1])  # a larger input never decodes smaller
    if ph[0] >= 0:
        assert 0 <= int(ph[1]) <= int(ph[0])  # ... and spikes no later


@pytest.mark.parametrize("phases", [1, 4, 10, 32])
def test_ttfs_with_shift_rounds_to_the_nearest_level(phases):
    z = _z(lo=0.0, hi=1.0)
    val = ttfs.quantize(z, 1.0, phases)
    assert float((val - z).abs().max()) <= 0.5 / phases + 1e-9
    floor = ttfs.quantize(z, 1.0, phases, shift=False)
    assert float((z - floor).min()) >= -1e-9  # without the shift: never above the input
    assert float((z - floor).max()) < 1.0 / phases + 1e-9
    levels = ttfs.decode(torch.arange(phases), phases, 1.0)
    assert torch.allclose(ttfs.levels(phases), levels)


def test_ttfs_rejects_bad_phases():
    with pytest.raises(ValueError):
        ttfs.levels(0)


# --------------------------------------------------------------------------------------
# networks: every code approaches the ANN as it gets longer
# --------------------------------------------------------------------------------------
NETS = [
    pytest.param(lambda: make(1), (2, 8, 8), id="randnet-maxpool-add"),
    pytest.param(lambda: make(2, merge="cat", maxpool=False), (2, 8, 8), id="randnet-cat"),
    pytest.param(lambda: randomize_bn(Net1d(), 3), (3, 16), id="net1d"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("builder,shape", NETS)
def test_every_code_approaches_the_ann_as_it_gets_longer(builder, shape):
    model = builder()
    x = torch.rand(48, *shape, generator=torch.Generator().manual_seed(0))
    net = C.Net(trace(model))
    with torch.no_grad():
        ref = model(x)
    for spec in C.parse_codes("rate-max,rate-p99.9,multiphase-K8,burst"):
        scales = C.layer_scales(net, x, spec.scale)
        res = C.simulate_clocked(net, spec, scales, x, [8, 32, 256])
        e8, e32, e256 = (_rel(res[t][0], ref) for t in (8, 32, 256))
        assert e256 < e32 < e8, (spec.name, e8, e32, e256)
        assert e256 < 0.04, (spec.name, e256)
        assert float((res[256][0].argmax(1) == ref.argmax(1)).float().mean()) >= 0.95
        # spikes and operations grow with time
        assert res[256][1].spikes > res[8][1].spikes > 0
        assert res[256][1].acs > res[8][1].acs
    scales = C.layer_scales(net, x, 99.9)
    errs = [
        _rel(C.simulate_windowed(net, C.ttfs_neurons(net, scales, T), x, T)[0], ref)
        for T in (2, 8, 64)
    ]
    assert errs[2] < errs[1] < errs[0] and errs[2] < 0.02, errs


def test_multiphase_k4_plateaus_at_its_saturation():
    """K = 4 caps each period at 15/16 of the scale: longer runs stop helping (a known limit)."""
    model = make(1)
    x = torch.rand(48, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    net = C.Net(trace(model))
    with torch.no_grad():
        ref = model(x)
    k4 = C.simulate_clocked(net, C.CODES["multiphase-K4"], C.layer_scales(net, x, 99.9), x, [256])
    k8 = C.simulate_clocked(net, C.CODES["multiphase-K8"], C.layer_scales(net, x, 99.9), x, [256])
    assert _rel(k8[256][0], ref) < _rel(k4[256][0], ref)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def test_clocked_costs_by_hand():
    """ACs = spikes x fan-out; MACs = the analog input layer once; updates = neurons x steps."""
    torch.manual_seed(0)
    model = _MLP().eval()
    with torch.no_grad():
        model.fc2.weight[0, 1] = 0.0  # hidden neuron 1 reaches one output only
    x = torch.rand(5, 4)
    net = C.Net(trace(model))
    scales = C.layer_scales(net, x, "max")
    steps = 16
    res = C.simulate_clocked(net, C.CODES["rate-max"], scales, x, [steps])
    ops = res[steps][1]
    # the spikes of each hidden neuron, from the rate neuron itself
    with torch.no_grad():
        pre = model.fc1(x)
    lam = scales[net.relus[0]]
    counts = rate.run_constant(pre / lam, steps)
    fanout = torch.tensor([2.0, 1.0, 2.0])
    assert ops.spikes == pytest.approx(float(counts.sum()))
    assert ops.acs == pytest.approx(float((counts * fanout).sum()))
    assert ops.macs == pytest.approx(5 * 4 * 3)
    assert ops.updates == pytest.approx(5 * steps * (3 + 2))
    assert ops.adds == pytest.approx(5 * steps * (2 * 3 + 2) + ops.spikes)


# --------------------------------------------------------------------------------------
# cross-checks against onespike's own simulator and cost model
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_windowed_simulator_reproduces_onespike(seed):
    model = make(seed)
    x = torch.rand(64, 2, 8, 8, generator=torch.Generator().manual_seed(seed))
    snn = onespike.convert(model, x, phases=6, progress=False)
    net = C.Net(trace(model))
    out, ops = C.simulate_windowed(net, C.onespike_neurons(net, snn), x, 6)
    assert torch.allclose(out, snn(x), atol=1e-5)
    report = onespike.cost(model, snn, x)
    assert ops.acs / 64 == pytest.approx(report.totals["snn_acs"], rel=1e-6)
    assert ops.macs / 64 == pytest.approx(report.totals["snn_macs"], rel=1e-6)
    assert ops.spikes / 64 == pytest.approx(report.totals["spikes"], rel=1e-6)
    # the same energy formula gives onespike's own figures
    mine = C.onespike_ops(report)
    assert mine.energy_compute() == pytest.approx(report.totals["snn_energy_compute_pj"], rel=1e-9)
    assert mine.energy_total() == pytest.approx(report.totals["snn_energy_total_pj"], rel=1e-9)


def test_compare_end_to_end_and_summary(tmp_path):
    model = make(0)
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(64, 2, 8, 8, generator=g)
    x = torch.rand(40, 2, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels = the ANN's own answers: ANN accuracy 100 %
    res = C.compare(
        model,
        xc,
        x,
        y,
        C.parse_codes("onespike,rate-max,multiphase-K4,ttfs"),
        max_steps=64,
        onespike_phases=[4, 8],
        progress=False,
    )
    assert res["ann_accuracy"] == 100.0
    assert res["latency_windows"] == 5  # four spiking layers in a chain, plus the output
    for name, c in res["codes"].items():
        steps = [p["steps"] for p in c["points"]]
        assert steps == sorted(steps) and steps[-1] <= 64, name
        for p in c["points"]:
            assert p["agreement"] == pytest.approx(p["accuracy"])  # labels are the ANN's
            assert p["energy_ratio_compute"] > 0
    assert res["codes"]["multiphase-K4"]["points"][0]["steps"] == 4
    assert [p["window"] for p in res["codes"]["onespike"]["points"]] == [4, 8]
    rows = {r["code"]: r for r in res["summary"]}
    for name, row in rows.items():
        pts = res["codes"][name]["points"]
        first, settled = row["first_within_0.5"], row["within_0.5"]
        if first is None:
            assert settled is None and all(q["accuracy"] < 99.5 for q in pts)
        else:
            assert first["accuracy"] >= 99.5
            assert all(q["accuracy"] < 99.5 for q in pts if q["steps"] < first["steps"])
        if settled is not None:
            assert settled["steps"] >= first["steps"]
            assert all(q["accuracy"] >= 99.5 for q in pts if q["steps"] >= settled["steps"])
            before = [q for q in pts if q["steps"] < settled["steps"]]
            assert not before or before[-1]["accuracy"] < 99.5
    json.dumps(res)  # serialisable
    paths = C.plot(res, tmp_path, "t")
    assert len(paths) == 3 and all(p.stat().st_size > 1000 for p in paths)
    assert "| onespike |" in C.markdown_table(res)


def test_settled_and_first_within():
    def pt(steps: int, acc: float) -> C.Point:
        return C.Point(steps, None, acc, acc, 1.0, {}, 1.0, 1.0, 1.0, 1.0)

    pts = [pt(1, 50.0), pt(2, 99.0), pt(4, 97.0), pt(8, 98.9), pt(16, 99.2)]
    assert C.first_within(pts, 98.5).steps == 2
    assert C.settled_within(pts, 98.5).steps == 8
    assert C.settled_within(pts, 99.5) is None
    assert C.settled_within([*pts, pt(32, 90.0)], 98.5) is None


def test_parse_codes():
    assert [c.name for c in C.parse_codes("all")] == list(C.CODES)
    assert [c.kind for c in C.parse_codes("rate-max, ttfs")] == ["rate", "ttfs"]
    with pytest.raises(ValueError, match="unknown code"):
        C.parse_codes("morse")


def test_cli_compare_on_a_few_mnist_images(tmp_path, capsys):
    from onespike.cli import main

    rc = main(
        [
            "compare",
            "--model",
            "mnist_cnn",
            "--dataset",
            "mnist",
            "--codes",
            "rate-p99.9,ttfs",
            "--calibration",
            "100",
            "--test",
            "20",
            "--max-steps",
            "16",
            "--out",
            str(tmp_path),
            "--prefix",
            "m",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["samples"] == 20 and set(res["codes"]) == {"rate-p99.9", "ttfs"}
    assert sorted(p.name for p in tmp_path.glob("m_*.png")) == [
        "m_accuracy_vs_spikes.png",
        "m_accuracy_vs_steps.png",
        "m_energy.png",
    ]
    assert "rate-p99.9" in capsys.readouterr().out
