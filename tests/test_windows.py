"""Per-layer windows: ``convert(..., windows=[...])`` and ``windows="auto"``."""

import pytest
import torch

import onespike
from onespike import calibrate
from onespike.calibrate import (
    HeldOut,
    _allocate,
    _candidates,
    check_input_window,
    check_windows,
    choose_held_out,
)
from onespike.errors import OptionError
from tests.nets import make


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _agree(snn, x):
    ev = snn.simulate(x, mode="event", dtype=torch.float64)
    st = snn.simulate(x, mode="step", dtype=torch.float64)
    mism = sum(int((st.spike_phases[k] != ev.spike_phases[k]).sum()) for k in ev.spike_phases)
    return ev, st, mism


@pytest.mark.parametrize(
    "coding, merge, maxpool, windows",
    [
        ("analog", "add", True, [3, 2, 5, 1, 4]),
        ("binary", "cat", False, [1, 6, 2, 3, 2]),
        ("single", "add", False, [5, 1, 1, 7, 2]),
    ],
)
def test_explicit_windows_step_equals_event(coding, merge, maxpool, windows):
    model = make(3, merge=merge, maxpool=maxpool)
    x = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    snn = onespike.convert(model, x, phases=3, input_coding=coding, windows=windows, progress=False)
    assert snn.plan.windows == tuple(windows)
    assert [lp.phases for lp in snn.plan.layers] == windows
    ev, st, mism = _agree(snn, x)
    assert mism == 0
    assert torch.allclose(ev.output, st.output, atol=1e-9)
    for name, c in st.spike_counts.items():
        assert int(c.max()) <= 1, name  # one spike at most, counted step by step
        assert int(st.spike_phases[name].max()) < snn.plan.layer(name).phases  # in its window
    if ev.input_spikes is not None:
        assert torch.equal(ev.input_spikes, st.input_spikes)
    # the fast path is the recorded event path
    assert torch.equal(snn(x), snn.simulate(x).output)


def test_latency_is_the_sum_of_windows_along_the_longest_path():
    model = make(1, merge="add")  # relu1 -> relu2, relu3 -> relu4 (+ relu1's shortcut) -> relu5
    x = torch.rand(8, 2, 8, 8)
    snn = onespike.convert(model, x, phases=3, windows=[3, 2, 5, 1, 4], progress=False)
    # input 3; relu1 ends at 6; relu2 at 8, relu3 at 11; relu4 starts at 11 (relu1's and
    # relu2's spikes delayed), ends at 12; relu5 ends at 16
    assert snn.plan.latency_steps == 3 + 3 + 5 + 1 + 4
    # uniform windows: the old count, (windows before the output + 1) * T
    uni = onespike.convert(model, x, phases=5, windows=[5] * 5, progress=False)
    assert uni.plan.latency_steps == (4 + 1) * 5
    assert "window" in snn.plan.table() and "per-layer windows" in snn.plan.table()


def test_uniform_list_equals_default():
    model = make(2)
    x = torch.rand(16, 2, 8, 8)
    a = onespike.convert(model, x, phases=4, progress=False)
    b = onespike.convert(model, x, phases=4, windows=[4] * 5, progress=False)
    assert a.plan.layers == b.plan.layers and a.plan.latency_steps == b.plan.latency_steps
    assert "windows" not in a.plan.search and b.plan.search["windows"] == "list"
    assert torch.equal(a(x), b(x))
    assert a.plan.uniform and a.plan.windows == (4,) * 5


@pytest.mark.parametrize(
    "windows, match",
    [
        ([3, 3], "windows has 2 values but the model has 5 spiking layers"),
        ([3, 3, 0, 3, 3], r"windows\[2\] must be an integer >= 1"),
        ([3, -1, 3, 3, 3], r"windows\[1\] must be an integer >= 1"),
        ([3, 3, 2.5, 3, 3], r"windows\[2\] must be an integer >= 1"),
        ([True, 3, 3, 3, 3], r"windows\[0\] must be an integer >= 1"),
        ("fast", "windows must be None, 'auto' or a list"),
        (4, "windows must be None, 'auto' or a list"),
    ],
)
def test_bad_windows_are_named(windows, match):
    with pytest.raises(OptionError, match=match):
        onespike.convert(make(0), torch.rand(4, 2, 8, 8), phases=3, windows=windows)


def test_check_windows_alone():
    assert check_windows(None) is None and check_windows("auto") == "auto"
    assert check_windows([1, 2]) == (1, 2) and check_windows((3,), 1) == (3,)


def test_cost_counts_each_layer_in_its_window():
    model = make(4, merge="add")
    x = torch.rand(12, 2, 8, 8)
    windows = [2, 6, 1, 3, 5]
    snn = onespike.convert(model, x, phases=3, windows=windows, progress=False)
    rep = onespike.cost(model, snn, x)
    assert rep.latency_steps == snn.plan.latency_steps
    for row, lp in zip(rep.layers, snn.plan.layers):
        assert row.name == lp.name
        assert row.fire_updates <= row.neurons * lp.phases  # at most T_l fire-window steps
        assert row.spikes_per_neuron_max <= 1
    step = onespike.cost(model, snn, x, mode="step")
    assert step.totals == rep.totals


def test_save_load_keeps_windows(tmp_path):
    model = make(5)
    x = torch.rand(12, 2, 8, 8)
    snn = onespike.convert(model, x, phases=3, windows=[4, 1, 2, 6, 3], progress=False)
    path = tmp_path / "net.onespike"
    snn.save(path)
    back = onespike.SpikingNetwork.load(path)
    assert back.plan.windows == (4, 1, 2, 6, 3)
    assert back.plan == snn.plan
    assert torch.equal(back(x), snn(x))
    a, b = snn.simulate(x, mode="step"), back.simulate(x, mode="step")
    assert torch.equal(a.output, b.output)
    assert all(torch.equal(a.spike_phases[k], b.spike_phases[k]) for k in a.spike_phases)


@pytest.mark.parametrize(
    "windows, coding",
    [
        ([2, 4, 1, 3, 5], "analog"),
        # relu4 listens from step 3 + 5 - 5 (relu1's long window) while relu2 and relu3
        # only start at step 8: senders that have not started send nothing
        ([5, 1, 1, 2, 3], "single"),
        ([1, 3, 2, 1, 4], "binary"),
    ],
)
def test_nir_keeps_windows(tmp_path, windows, coding):
    pytest.importorskip("nir")
    from onespike import nir_reference

    model = make(6, merge="add", maxpool=True)
    x = torch.rand(6, 2, 8, 8)
    snn = onespike.convert(model, x, phases=3, windows=windows, input_coding=coding, progress=False)
    path = tmp_path / "net.nir"
    onespike.export_nir(snn, path)
    back = onespike.import_nir(path)
    assert back.plan.windows == tuple(windows)
    assert back.plan.latency_steps == snn.plan.latency_steps
    assert torch.equal(back(x), snn(x))
    ref = nir_reference.simulate(path, x.double())
    st = snn.simulate(x, mode="step", dtype=torch.float64)
    assert ref.steps == snn.plan.latency_steps
    for k in st.spike_phases:
        assert torch.equal(ref.spike_phases[k], st.spike_phases[k]), k
    assert torch.allclose(ref.output, st.output, atol=1e-9)


def test_allocate_moves_steps_to_where_they_help():
    # two layers in a chain (latency = sum of windows): the first gains much from a step
    curves = [{1: 9.0, 2: 4.0, 3: 1.0, 4: 0.5}, {1: 2.0, 2: 1.9, 3: 1.8, 4: 1.7}]
    w = _allocate(curves, [2, 2], lambda ws: sum(ws), 4)
    assert w == [3, 1]
    # no budget to spend, nothing gained: the start stays
    assert _allocate([{2: 1.0, 3: 1.0}], [2], lambda ws: sum(ws), 2) == [2]


def test_cli_convert_with_windows(capsys, tmp_path):
    from onespike.cli import main

    j = tmp_path / "w.json"
    argv = ["convert", "--model", "tests.cli_models:mnist", "--dataset", "mnist"]
    argv += ["--phases", "3", "--windows", "4,2,3", "--test", "100", "--calibration", "100"]
    rc = main([*argv, "--json", str(j)])
    assert rc == 0
    d = __import__("json").loads(j.read_text())
    assert [lp["phases"] for lp in d["plan"]["layers"]] == [4, 2, 3]
    assert d["plan"]["latency_steps"] == 3 + 4 + 2 + 3
    assert d["step_event_same_predictions"] == 100
    assert d["cost"]["totals"]["spikes_per_neuron_max"] == 1
    assert "windows per layer         4,2,3" in capsys.readouterr().out
    assert main([*argv[:-6], "--windows", "0,2,3"]) == 2  # a user's mistake: one line
    assert "every window must be an integer >= 1" in capsys.readouterr().err


def test_auto_windows_on_the_shipped_cnn():
    """windows="auto" on the shipped MNIST CNN: never longer than uniform, each layer
    searched at its own window, and on the calibration data never worse than uniform;
    on 1,000 test images its loss is within 0.3 points of uniform's (measured: the
    full-test-set figures over three draws are in docs/RESULTS.md, 'Per-layer windows')."""
    from onespike.data import calibration_set, load_mnist
    from onespike.models import load_pretrained

    ann = load_pretrained("mnist_cnn")
    xc, _ = calibration_set("mnist", 128, 7)
    x, y = load_mnist("test")
    x, y = x[:1000], y[:1000]
    kw = {"phases": 4, "search_samples": 64, "progress": False}  # scored on 64: seconds
    uni = onespike.convert(ann, xc, **kw)
    auto = onespike.convert(ann, xc, windows="auto", **kw)
    assert auto.plan.latency_steps <= uni.plan.latency_steps
    assert all(w >= 1 for w in auto.plan.windows)
    info = auto.plan.search["auto_windows"]
    assert auto.plan.input_window == 1  # the analog input in one step
    # the plan kept is the candidate the held-out samples (128 - 64 searched) rank first
    assert info["held_out_samples"] == 64 and info["criterion"].startswith("held-out")
    rows = info["candidates"]
    assert rows[0]["windows"] == [4, 4, 4] and len(rows) >= 2
    scores = [HeldOut(r["held_out_agree"], 64, r["held_out_error"]) for r in rows]
    assert list(auto.plan.windows) == rows[choose_held_out(scores)]["windows"]
    assert info["chosen_output_error"] == rows[choose_held_out(scores)]["output_error"]
    assert set(info["sensitivity"]) == {lp.name for lp in auto.plan.layers}
    for name, curve in info["sensitivity"].items():  # T - 2 .. T + 2, the error falls
        ws = [w for w, _ in curve]
        assert ws == [2, 3, 4, 5, 6]
        assert curve[0][1] > curve[-1][1], name
    with torch.no_grad():
        acc_u = (uni(x).argmax(1) == y).float().mean().item() * 100
        acc_a = (auto(x).argmax(1) == y).float().mean().item() * 100
    assert acc_a >= acc_u - 0.3
    _, st, mism = _agree(auto, x[:64])
    assert mism == 0 and max(int(c.max()) for c in st.spike_counts.values()) <= 1


def test_auto_refuses_a_global_base():
    with pytest.raises(OptionError, match="windows='auto' cannot be combined with base='global'"):
        onespike.convert(make(0), torch.rand(8, 2, 8, 8), phases=3, windows="auto", base="global")


# --- the input's window and the held-out choice ------------------------------------------


@pytest.mark.parametrize("windows", [None, [2, 4, 1, 3, 5]])
def test_one_step_analog_input(windows):
    """An analog input integrated in one step (input_window=1): the same plan of the
    layers, step == event in float64, one spike at most, the latency 1 + the windows
    along the longest path, the cost model adding the input current once."""
    model = make(7, merge="add", maxpool=True)
    x = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    kw = {"phases": 3, "windows": windows, "progress": False}
    full = onespike.convert(model, x, **kw)
    one = onespike.convert(model, x, input_window=1, **kw)
    assert full.plan.input_window is None and full.plan.input_steps == 3
    assert one.plan.input_window == 1 and one.plan.input_steps == 1
    assert one.plan.layers == full.plan.layers  # the search does not see the input window
    assert one.plan.latency_steps == full.plan.latency_steps - 2
    ws = windows or [3] * 5  # relu1 -> (relu2 | relu3) -> relu4 (+ relu1) -> relu5
    assert one.plan.latency_steps == 1 + ws[0] + max(ws[1], ws[2]) + ws[3] + ws[4]
    assert "input=analog (window 1)" in one.plan.table()
    ev, st, mism = _agree(one, x)
    assert mism == 0 and torch.allclose(ev.output, st.output, atol=1e-9)
    assert max(int(c.max()) for c in st.spike_counts.values()) <= 1
    st_full = full.simulate(x, mode="step", dtype=torch.float64)
    for k in st.spike_phases:  # the same spikes, only earlier
        assert torch.equal(st.spike_phases[k], st_full.spike_phases[k]), k
    assert torch.equal(one(x), full(x))
    c1, c3 = onespike.cost(model, one, x), onespike.cost(model, full, x)
    assert c1.latency_steps == one.plan.latency_steps
    first = c1.layers[0]
    assert first.input_adds == first.neurons and c3.layers[0].input_adds == 3 * first.neurons
    assert [r.fire_updates for r in c1.layers] == [r.fire_updates for r in c3.layers]


def test_one_step_input_save_load_and_nir(tmp_path):
    model = make(8, merge="add", maxpool=True)
    x = torch.rand(6, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    snn = onespike.convert(
        model, x, phases=3, windows=[2, 4, 1, 3, 5], input_window=1, progress=False
    )
    path = tmp_path / "net.onespike"
    snn.save(path)
    back = onespike.SpikingNetwork.load(path)
    assert back.plan == snn.plan and back.plan.input_window == 1
    a, b = snn.simulate(x, mode="step"), back.simulate(x, mode="step")
    assert torch.equal(a.output, b.output)
    pytest.importorskip("nir")
    from onespike import nir_reference

    npath = tmp_path / "net.nir"
    onespike.export_nir(snn, npath)
    got = onespike.import_nir(npath)
    assert got.plan.input_window == 1 and got.plan.latency_steps == snn.plan.latency_steps
    assert got.plan.windows == snn.plan.windows and torch.equal(got(x), snn(x))
    ref = nir_reference.simulate(npath, x.double())
    st = snn.simulate(x, mode="step", dtype=torch.float64)
    assert ref.steps == snn.plan.latency_steps
    for k in st.spike_phases:
        assert torch.equal(ref.spike_phases[k], st.spike_phases[k]), k
    assert torch.allclose(ref.output, st.output, atol=1e-9)


def test_a_plan_whose_input_window_disagrees_is_refused(tmp_path):
    import dataclasses

    from onespike.serialize import check_plan

    model = make(9)
    x = torch.rand(6, 2, 8, 8)
    snn = onespike.convert(model, x, phases=3, input_window=1, progress=False)
    check_plan(snn)
    snn.plan = dataclasses.replace(snn.plan, input_window=2)  # latency no longer matches
    with pytest.raises(ValueError, match="latency"):
        check_plan(snn)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"input_window": 0}, "input_window must be an integer >= 1"),
        ({"input_window": 1.5}, "input_window must be an integer >= 1"),
        ({"input_window": True}, "input_window must be an integer >= 1"),
        ({"input_window": 1, "input_coding": "binary"}, "input_window=1 needs input_coding"),
        ({"input_window": 2, "input_coding": "single"}, "input_window=2 needs input_coding"),
    ],
)
def test_bad_input_window_is_named(kw, match):
    with pytest.raises(OptionError, match=match):
        onespike.convert(make(0), torch.rand(4, 2, 8, 8), phases=3, progress=False, **kw)


def test_input_window_defaults():
    assert check_input_window(None, "analog", 4, "auto") == 1
    assert check_input_window(None, "analog", 4, None) == 4
    assert check_input_window(None, "analog", 4, (4, 4)) == 4
    assert check_input_window(None, "binary", 4, "auto") == 4
    assert check_input_window(None, "single", 4, "auto") == 4
    assert check_input_window(4, "single", 4) == 4 and check_input_window(2, "analog", 4) == 2


def test_choose_held_out_follows_agreement_not_the_logits_error():
    uniform = HeldOut(agree=950, samples=1000, error=0.020)
    auto = HeldOut(agree=949, samples=1000, error=0.010)  # lower error, one more flip
    assert choose_held_out([uniform, auto]) == 0
    assert choose_held_out([auto, uniform]) == 1
    # equal agreement: the logits error breaks the tie; a full tie keeps the first
    better = HeldOut(agree=950, samples=1000, error=0.015)
    assert choose_held_out([uniform, better]) == 1
    assert choose_held_out([uniform, HeldOut(950, 1000, 0.020)]) == 0
    assert choose_held_out([uniform, auto, HeldOut(951, 1000, 0.5)]) == 2


def test_candidates_stay_within_the_budget():
    curves = [{1: 9.0, 2: 4.0, 3: 1.0, 4: 0.5}, {1: 2.0, 2: 1.9, 3: 1.8, 4: 1.7}]
    got = _candidates(curves, [2, 2], lambda ws: 1 + sum(ws), 6, 3)
    # the greedy allocation first ([2, 2] -> [3, 2] -> [4, 1]), then its neighbours
    # that spend the whole budget ([3, 1] spends less, [4, 2] more)
    assert got == [[4, 1], [3, 2]]
    assert all(1 + sum(w) <= 6 and w != [2, 2] for w in got)
    # nothing to gain: no candidate, the uniform windows are all there is
    assert _candidates([{2: 1.0, 3: 1.0}], [2], lambda ws: sum(ws), 2, 3) == []


def _auto(model, x, **kw):
    return onespike.convert(model, x, phases=3, windows="auto", progress=False, **kw)


def test_auto_keeps_uniform_when_it_agrees_more_on_held_out(monkeypatch):
    """The held-out measurement decides, not the search's logits error: made to find the
    uniform windows one sample better, auto keeps them (with the one-step input)."""
    model = make(10)
    x = torch.rand(48, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    seen: list[tuple] = []
    real = calibrate._Search.held_out

    def rigged(self, chosen, xh, ann_logits):
        got = real(self, chosen, xh, ann_logits)
        ws = tuple(self.code.window(n) for n in self.relus)
        seen.append(ws)
        bonus = 1 if ws == (3,) * len(ws) else 0  # uniform: one more sample agreeing
        return HeldOut(min(got.samples, 40) + bonus, got.samples, 0.0 if bonus else got.error)

    monkeypatch.setattr(calibrate._Search, "held_out", rigged)
    snn = _auto(model, x, search_samples=16)
    info = snn.plan.search["auto_windows"]
    assert len(seen) == len(info["candidates"]) >= 2  # every candidate measured
    assert info["kept"] == "uniform" and snn.plan.windows == (3,) * 5
    assert snn.plan.input_window == 1 and snn.plan.latency_steps == 1 + 4 * 3
    assert info["held_out_samples"] == 32
    # the auto allocation had the lower logits error: the error would have picked it
    errs = [r["output_error"] for r in info["candidates"]]
    assert min(errs[1:]) < errs[0]


def test_auto_without_held_out_samples_falls_back_to_the_logits_error():
    model = make(11)
    x = torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    snn = _auto(model, x, search_samples=None)
    info = snn.plan.search["auto_windows"]
    assert info["held_out_samples"] == 0 and "no held-out" in info["criterion"]
    errs = [r["output_error"] for r in info["candidates"]]
    assert info["chosen_output_error"] == min(errs)
    base = onespike.convert(model, x, phases=3, progress=False)
    assert snn.plan.latency_steps <= base.plan.latency_steps
