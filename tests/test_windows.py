"""Per-layer windows: ``convert(..., windows=[...])`` and ``windows="auto"``."""

import pytest
import torch

import onespike
from onespike.calibrate import _allocate, check_windows
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
    assert info["chosen_output_error"] <= info["uniform_output_error"]
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
