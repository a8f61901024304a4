"""The code comparison (``onespike.experiments.compare``): every code on small networks,
its costs against hand counts, cross-checks against onespike's own simulator and cost
model, and the ``onespike compare`` command on a few images."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import onespike
from onespike import simulate_codes as S
from onespike.codes import rate
from onespike.experiments import compare as C
from onespike.experiments import compare_plot
from onespike.trace import trace
from tests.nets import Net1d, TinyMLP, make, randomize_bn

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
    net = S.CodeNet(trace(model))
    with torch.no_grad():
        ref = model(x)
    for spec in C.parse_codes("rate-max,rate-p99.9,multiphase-K8,burst"):
        scales = S.layer_scales(net, x, spec.scale)
        res = S.simulate_clocked(net, C.clocked_neurons(spec, scales), x, [8, 32, 256])
        e8, e32, e256 = (_rel(res[t][0], ref) for t in (8, 32, 256))
        assert e256 < e32 < e8, (spec.name, e8, e32, e256)
        assert e256 < 0.04, (spec.name, e256)
        assert float((res[256][0].argmax(1) == ref.argmax(1)).float().mean()) >= 0.95
        # spikes and operations grow with time
        assert res[256][1].spikes > res[8][1].spikes > 0
        assert res[256][1].acs > res[8][1].acs
    scales = S.layer_scales(net, x, 99.9)
    errs = [
        _rel(S.simulate_windowed(net, S.ttfs_neurons(net, scales, T), x, T)[0], ref)
        for T in (2, 8, 64)
    ]
    assert errs[2] < errs[1] < errs[0] and errs[2] < 0.02, errs


def test_multiphase_k4_plateaus_at_its_saturation():
    """K = 4 caps each period at 15/16 of the scale: longer runs stop helping (a known limit)."""
    model = make(1)
    x = torch.rand(48, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    net = S.CodeNet(trace(model))
    with torch.no_grad():
        ref = model(x)
    scales = S.layer_scales(net, x, 99.9)
    k4 = S.simulate_clocked(net, C.clocked_neurons(C.CODES["multiphase-K4"], scales), x, [256])
    k8 = S.simulate_clocked(net, C.clocked_neurons(C.CODES["multiphase-K8"], scales), x, [256])
    assert _rel(k8[256][0], ref) < _rel(k4[256][0], ref)


def test_clocked_costs_by_hand():
    """ACs = spikes x fan-out; MACs = the analog input layer once; updates = neurons x steps."""
    torch.manual_seed(0)
    model = TinyMLP().eval()
    with torch.no_grad():
        model.fc2.weight[0, 1] = 0.0  # hidden neuron 1 reaches one output only
    x = torch.rand(5, 4)
    net = S.CodeNet(trace(model))
    scales = S.layer_scales(net, x, "max")
    steps = 16
    res = S.simulate_clocked(net, C.clocked_neurons(C.CODES["rate-max"], scales), x, [steps])
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
    net = S.CodeNet(trace(model))
    out, ops = S.simulate_windowed(net, S.onespike_neurons(net, snn), x, 6)
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
    paths = compare_plot.plot(res, tmp_path, "t")
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


def test_cli_compare_resumes_a_stopped_run(tmp_path, capsys):
    """The JSON is written after every code; ``--resume`` takes the codes a stopped run
    finished from it (not run again) and runs the rest; other settings are refused."""
    from onespike.cli import main

    argv = ["compare", "--model", "mnist_cnn", "--dataset", "mnist", "--calibration", "100"]
    argv += ["--test", "20", "--max-steps", "16", "--out", str(tmp_path), "--prefix", "m"]
    argv += ["--no-plots"]
    assert main([*argv, "--codes", "rate-max,ttfs"]) == 0
    full = json.loads((tmp_path / "m.json").read_text())
    assert full["complete"] is True
    stopped = {**full, "complete": False, "codes": {"rate-max": full["codes"]["rate-max"]}}
    stopped["codes"]["rate-max"]["seconds"] = 12345.0  # a mark: kept, not recomputed
    (tmp_path / "m.json").write_text(json.dumps(stopped))
    capsys.readouterr()
    assert main([*argv, "--codes", "rate-max,ttfs", "--resume"]) == 0
    assert "reusing" in capsys.readouterr().out
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["complete"] is True and list(again["codes"]) == ["rate-max", "ttfs"]
    assert again["codes"]["rate-max"]["seconds"] == 12345.0
    assert again["codes"]["ttfs"]["points"] == full["codes"]["ttfs"]["points"]
    assert main([*argv, "--codes", "ttfs", "--test", "10", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "other settings (test)" in err and len(err.strip().splitlines()) == 1


def test_cli_compare_merges_the_codes_of_another_process(tmp_path, capsys):
    """``--merge`` takes the finished codes of a second run with the same settings (a
    second process given other codes and another prefix): the result has every code in
    the order asked, the merged ones not run again; a run of other settings, or a missing
    file, is refused with one line."""
    from onespike.cli import main

    argv = ["compare", "--model", "mnist_cnn", "--dataset", "mnist", "--calibration", "100"]
    argv += ["--test", "20", "--max-steps", "16", "--out", str(tmp_path), "--no-plots"]
    assert main([*argv, "--codes", "ttfs", "--prefix", "b"]) == 0
    part = json.loads((tmp_path / "b.json").read_text())
    part["codes"]["ttfs"]["seconds"] = 12345.0  # a mark: kept, not recomputed
    (tmp_path / "b.json").write_text(json.dumps(part))
    capsys.readouterr()
    both = [*argv, "--codes", "rate-max,ttfs", "--prefix", "a", "--merge", str(tmp_path / "b.json")]
    assert main(both) == 0
    assert "reusing" in capsys.readouterr().out
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["complete"] is True and list(res["codes"]) == ["rate-max", "ttfs"]
    assert res["codes"]["ttfs"]["seconds"] == 12345.0
    assert main([*both[:-1], str(tmp_path / "nowhere.json")]) == 2
    assert "is not a file" in capsys.readouterr().err
    other = [*argv, "--codes", "rate-max", "--prefix", "c", "--test", "10"]
    assert main([*other, "--merge", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "other settings (test)" in err and len(err.strip().splitlines()) == 1


def test_compare_reports_each_finished_code():
    model, xc, x, y = _small_task()
    seen = []
    C.compare(
        model,
        xc,
        x[:8],
        y[:8],
        C.parse_codes("rate-max,ttfs"),
        max_steps=8,
        progress=False,
        on_code=lambda r: seen.append(list(r["codes"])),
    )
    assert seen == [["rate-max"], ["rate-max", "ttfs"]]


# --------------------------------------------------------------------------------------
# the refined single-spike code, and the fast paths against the reference
# --------------------------------------------------------------------------------------
def _small_task():
    model = make(0)  # max-pool (the clocked codes' gate) and an add
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(64, 2, 8, 8, generator=g)
    x = torch.rand(40, 2, 8, 8, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)  # not the ANN's answers: agreement differs
    return model, xc, x, y


def _run_all(model, xc, x, y) -> dict:
    return C.compare(
        model,
        xc,
        x,
        y,
        C.parse_codes("all"),
        max_steps=24,
        batch_size=16,  # three batches, the last one short
        onespike_phases=[2, 4],
        refine_phases=[4],
        progress=False,
    )


@pytest.fixture(scope="module")
def small_all():
    model, xc, x, y = _small_task()
    return model, xc, x, y, _run_all(model, xc, x, y)


def _figures(res: dict) -> dict:
    """A copy of the result without its timings."""
    res = copy.deepcopy(res)
    out = {k: v for k, v in res.items() if k != "codes"}
    out["codes"] = {
        n: {k: v for k, v in c.items() if k != "seconds"} for n, c in res["codes"].items()
    }
    for c in out["codes"].values():  # refinement's own wall time
        for r in c["params"].get("refined", {}).values():
            r.pop("seconds")
    return out


def test_fast_paths_give_the_reference_figures(small_all, monkeypatch):
    """Every figure of every code, bit for bit, from the simulators as they were
    (tests/compare_reference.py): one conversion per window shared by the onespike and
    onespike-refined rows (the reference converts with ``refine=True`` afresh), the ANN
    not rerun by evaluate, the clocked simulator's pool-only ``sent``, burst's scalars."""
    from tests import compare_reference as ref

    model, xc, x, y, fast = small_all
    monkeypatch.setattr(C, "simulate_clocked", ref.simulate_clocked)
    monkeypatch.setattr(C, "run_onespike", ref.run_onespike)
    slow = _run_all(model, xc, x, y)
    assert set(fast["codes"]) == set(C.CODES)
    for name in C.CODES:
        assert fast["codes"][name]["points"], name
        assert fast["codes"][name]["points"] == slow["codes"][name]["points"], name
    fast_figs, slow_figs = _figures(fast), _figures(slow)
    assert slow_figs["codes"]["onespike-refined"]["params"].pop("refined") == {}  # no record
    assert fast_figs["codes"]["onespike-refined"]["params"].pop("refined").keys() == {"4"}
    assert fast_figs == slow_figs


def test_refined_rows_are_measured_on_the_refined_network(small_all, tmp_path):
    model, xc, x, y, res = small_all
    rows = res["codes"]["onespike-refined"]
    assert [p["window"] for p in rows["points"]] == [4] and not rows["errors"]
    assert rows["params"]["refine"]["iterations"] == onespike.RefineConfig().iterations
    info = rows["params"]["refined"]["4"]
    # refinement keeps a step only when it clearly beats the unrefined network on the
    # held-out samples; either way the row is measured on the network it returned
    assert info["kept"] in ("end-to-end", "unrefined")
    if info["kept"] == "end-to-end":
        assert info["held_out_agreement_after"] > info["held_out_agreement_before"]
    p = rows["points"][0]
    plain = next(q for q in res["codes"]["onespike"]["points"] if q["window"] == 4)
    assert p["steps"] == plain["steps"] == 4 * res["latency_windows"]
    # the same network as convert(..., refine=True), costed on its own spikes
    snn = onespike.convert(model, xc, phases=4, refine=True, progress=False)
    report = onespike.cost(model, snn, x)
    assert p["ops"]["acs"] == pytest.approx(report.totals["snn_acs"], rel=1e-6)
    assert p["ops"]["spikes"] == pytest.approx(report.totals["spikes"], rel=1e-6)
    assert p["energy_compute_pj"] == pytest.approx(report.totals["snn_energy_compute_pj"], rel=1e-6)
    if info["kept"] == "end-to-end":  # not the unrefined network's counts
        assert p["ops"]["acs"] != plain["ops"]["acs"]
    else:
        assert p["ops"]["acs"] == plain["ops"]["acs"]
    # one spike per neuron at most, in the step simulator
    st = snn.simulate(x, mode="step")
    assert max(int(c.max()) for c in st.spike_counts.values()) <= 1
    assert 0 < p["spikes_per_neuron"] <= 1
    with torch.no_grad():
        acc = 100.0 * float((snn(x).argmax(1) == y).float().mean())
    assert p["accuracy"] == pytest.approx(acc)
    # tables and plots carry the row
    assert "| onespike-refined |" in C.markdown_table(res)
    assert "onespike-refined" in C.budget_table(res) and "onespike-refined" in C.text_table(res)
    paths = compare_plot.plot(res, tmp_path, "r")
    assert len(paths) == 3 and all(q.stat().st_size > 1000 for q in paths)


def test_refined_grid_and_option():
    import argparse

    p = argparse.ArgumentParser()
    C.add_arguments(p)
    a = p.parse_args(["--model", "m", "--dataset", "mnist", "--refine-phases", "6,8"])
    assert (
        a.refine_phases == "6,8"
        and p.parse_args(["--model", "m", "--dataset", "mnist"]).codes == "all"
    )
    assert C.CODES["onespike-refined"].refine and C.CODES["onespike-refined"].kind == "onespike"
    assert "onespike-refined" in [c.name for c in C.parse_codes("all")]
    assert C.REFINE_PHASES == (4, 6, 8, 12)
    assert C.refine_windows(20, 256) == [4, 6, 8, 12]  # ResNet-20: 20 windows
    assert C.refine_windows(20, 200) == [4, 6, 8]
    assert C.refine_windows(4, 256, [3, 5]) == [3, 5]
    # no default window fits 16 steps of a 5-window network: no rows, said so, no refinement
    model, xc, x, y = _small_task()
    res = C.compare(
        model, xc, x, y, C.parse_codes("onespike-refined"), max_steps=16, progress=False
    )
    c = res["codes"]["onespike-refined"]
    assert c["points"] == [] and c["params"]["refined"] == {}
    assert "fits 16 steps" in c["errors"][0]
