"""The command line: the main job runs; a user's mistake is one line, not a traceback."""

import json

import pytest
import torch

from onespike.cli import main
from onespike.data import load_dataset


def test_demo_small(capsys, tmp_path):
    out = tmp_path / "demo.json"
    rc = main(
        ["demo", "--test", "300", "--calibration", "300", "--phases", "6", "--json", str(out)]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["samples"] == 300 and d["plan"]["phases"] == 6
    assert d["step_event_same_predictions"] == 300
    assert d["step_accuracy"] == d["snn_accuracy"]
    assert d["loss_points"] == pytest.approx(d["ann_accuracy"] - d["snn_accuracy"])
    assert d["ann_accuracy"] >= 98.0 and d["loss_points"] <= 1.0  # the shipped CNN converts well
    assert d["cost"]["totals"]["spikes_per_neuron_max"] == 1
    assert d["cost"]["latency_steps"] == d["plan"]["latency_steps"] == 4 * 6
    # what is printed is what is recorded
    text = capsys.readouterr().out
    assert f"SNN accuracy (step path)  {d['step_accuracy']:8.2f} %" in text
    assert f"loss                      {d['loss_points']:+8.2f} points" in text
    ratio = d["cost"]["totals"]["energy_ratio_compute"]
    assert f"energy ratio ANN/SNN      {ratio:8.2f}x compute only" in text


def test_convert_user_model(capsys, tmp_path):
    j = tmp_path / "u.json"
    argv = ["convert", "--model", "tests.cli_models:mnist", "--dataset", "mnist"]
    rc = main([*argv, "--test", "200", "--calibration", "200", "--no-step", "--json", str(j)])
    assert rc == 0
    d = json.loads(j.read_text())
    assert d["model"] == "tests.cli_models:mnist" and d["samples"] == 200
    assert d["step_accuracy"] is None  # --no-step
    assert d["loss_points"] == pytest.approx(d["ann_accuracy"] - d["snn_accuracy"])
    assert len(d["plan"]["layers"]) == 3  # conv, conv, fc: three spiking layers
    out = capsys.readouterr().out
    assert f"SNN accuracy (event path) {d['snn_accuracy']:8.2f} %" in out


def test_convert_search_flags_reach_the_plan(tmp_path):
    j = tmp_path / "c.json"
    argv = ["convert", "--model", "tests.cli_models:mnist", "--dataset", "mnist", "--test", "50"]
    argv += ["--subset", "random", "--calibration", "50", "--no-step", "--per-channel"]
    assert main([*argv, "--bias-correction", "--json", str(j)]) == 0
    d = json.loads(j.read_text())
    assert d["plan"]["search"]["per_channel"] is True
    assert d["plan"]["search"]["bias_correction"] is True
    assert all(isinstance(lp["scale"], list) for lp in d["plan"]["layers"])
    argv[-1] = "--per-layer"
    assert main([*argv, "--json", str(j)]) == 0
    d = json.loads(j.read_text())
    assert d["plan"]["search"]["per_channel"] is False
    assert not any(isinstance(lp["scale"], list) for lp in d["plan"]["layers"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["convert", "--model", "nosuchmodule:f"], "cannot import module 'nosuchmodule'"),
        (["convert", "--model", "tests.cli_models"], "package.module:function"),
        (["convert", "--model", "tests.cli_models:nothere"], "no callable 'nothere'"),
        (["convert", "--model", "tests.cli_models:not_a_model"], "not a torch.nn.Module"),
        (["convert", "--model", "tests.cli_models:gelu_net"], "(GELU): not convertible; use ReLU"),
        (["demo", "--phases", "0"], "argument --phases: expected an integer >= 1, got 0"),
        (["demo", "--phases", "-3"], "expected an integer >= 1, got -3"),
        (["sweep", "--model", "mnist_cnn", "--cost-images", "0"], "--cost-images: expected"),
        (["sweep", "--model", "mnist_cnn", "--phases", "4,x"], "--phases: expected"),
        (["ablation", "--model", "mnist_cnn", "--test", "0"], "--test: expected"),
        (["convert", "--model", "nosuch_model"], "'nosuch_model' is not a shipped model"),
        (["convert", "--model", "mnist_cnn", "--dataset", "imagenet"], "invalid choice"),
        (["convert"], "required: --model"),
        (["demo", "--base", "3"], "base must be in (1, 2]"),
        (["demo", "--base", "fast"], "--base must be"),
        (["demo", "--search-samples", "-3"], "search_samples must be an integer >= 1"),
        (["demo", "--spike-tolerance", "-1"], "spike_tolerance must be a number >= 0"),
        (["demo", "--input-coding", "rate"], "--input-coding: invalid choice: 'rate'"),
        (["demo", "--input-coding", "phase"], "--input-coding: invalid choice: 'phase'"),
    ],
)
def test_user_mistakes_are_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err
    assert "Traceback" not in err


def test_a_bug_is_not_reported_as_a_mistake(monkeypatch, capsys):
    """Only onespike's own error types become one line; a bug keeps its traceback."""

    def broken(*args, **kwargs):
        raise ValueError("an invariant broke inside the library")

    monkeypatch.setattr("onespike.cli.convert", broken)
    with pytest.raises(ValueError, match="an invariant broke"):
        main(["demo", "--test", "10", "--calibration", "10"])
    assert "error:" not in capsys.readouterr().err


def test_convert_takes_a_shipped_name(tmp_path):
    j = tmp_path / "c.json"
    argv = ["convert", "--model", "mnist_cnn", "--test", "50", "--calibration", "50"]
    assert main([*argv, "--no-step", "--phases", "4", "--json", str(j)]) == 0
    d = json.loads(j.read_text())
    assert d["model"] == "mnist_cnn" and d["dataset"] == "mnist" and d["samples"] == 50


def test_missing_data_file_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    monkeypatch.setenv("ONESPIKE_CACHE", str(tmp_path / "cache"))
    rc = main(["convert", "--model", "tests.cli_models:mnist", "--dataset", "cifar10"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cifar10" in err and "ONESPIKE_DATA" in err
    assert len(err.splitlines()) == 1


def test_sweep_writes_json_and_plot(capsys, tmp_path):
    j, png = tmp_path / "s.json", tmp_path / "s.png"
    argv = ["sweep", "--model", "mnist_cnn", "--phases", "3,6", "--test", "100"]
    argv += ["--calibration", "100", "--step-phases", "6", "--step-images", "50"]
    assert main([*argv, "--json", str(j), "--plot", str(png)]) == 0
    (r,) = json.loads(j.read_text())
    assert [row["phases"] for row in r["rows"]] == [3, 6]
    assert r["step_check"]["same_predictions"] == 50
    assert r["rows"][0]["latency_steps"] == 4 * 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "smallest T with loss <= 0.5" in capsys.readouterr().out


def test_sweep_random_subset_and_reprint(capsys, tmp_path):
    from onespike.data import fixed_subset, load_mnist
    from onespike.experiments.sweep import main as sweep_main

    j = tmp_path / "s.json"
    argv = ["sweep", "--model", "mnist_cnn", "--phases", "4", "--test", "60", "--subset"]
    argv += ["random", "--calibration", "60", "--step-phases", "4", "--step-images", "20"]
    argv += ["--objective", "output", "--per-layer"]
    assert main([*argv, "--cost-images", "30", "--json", str(j)]) == 0
    (r,) = json.loads(j.read_text())
    search = r["rows"][0]["search"]  # what the search was asked for is recorded
    assert search["objective"] == "output" and search["per_channel"] is False
    assert r["samples"] == 60 and r["step_check"]["images"] == 20
    assert r["rows"][0]["cost_images"] == 30 and r["rows"][0]["spikes_per_neuron_max"] == 1
    # the ANN accuracy is the one on the fixed random 60, not on the first 60
    from onespike.experiments.train import evaluate
    from onespike.models import load_pretrained

    x, y = load_mnist("test")
    idx = fixed_subset(x.shape[0], 60)
    assert r["ann_accuracy"] == evaluate(load_pretrained("mnist_cnn"), x[idx], y[idx])
    capsys.readouterr()
    assert sweep_main([str(j), "--layers", "4"]) == 0
    out = capsys.readouterr().out
    assert "| mnist_cnn | 4 |" in out and "| relu3 |" in out
    assert "counted on 30 of those images" in out
    merged, png = tmp_path / "m.json", tmp_path / "m.png"
    assert sweep_main([str(j), str(j), "--json", str(merged), "--plot", str(png)]) == 0
    assert json.loads(merged.read_text()) == [r, r]
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no row with phases=5"):
        sweep_main([str(j), "--layers", "5"])


def test_ablation_variants_run():
    import torch

    from onespike.data import calibration_set, load_mnist
    from onespike.experiments.sweep import ABLATIONS, ablate, ablation_table
    from onespike.models import load_pretrained

    ann = load_pretrained("mnist_cnn")
    xc, _ = calibration_set("mnist", 100)
    x, y = load_mnist("test")
    some = {k: v for k, v in ABLATIONS.items() if k.startswith(("2 ", "6 "))}
    seen = []
    res = ablate(
        "mnist_cnn",
        ann,
        xc,
        x[:300],
        y[:300],
        [3],
        variants=some,
        progress=False,
        on_row=lambda r: seen.append(len(r["rows"])),
    )
    assert [r["variant"][:2] for r in res["rows"]] == ["2 ", "6 "]
    assert seen == [1, 2]
    assert len(res["rows"]) == len(some)
    floor = next(r for r in res["rows"] if "floor" in r["variant"])
    threshold_shift = next(r for r in res["rows"] if r["variant"].startswith("2 "))
    assert floor["loss"][3] > threshold_shift["loss"][3]  # rounding beats floor at T=3

    # resuming: the variants a saved run finished come from its JSON, the rest are run
    saved = json.loads(json.dumps({**res, "rows": res["rows"][:1]}))  # as the CLI saves it
    saved["rows"][0]["loss"]["3"] = 123.0  # a marker: this row must not be run again
    again = ablate(
        "mnist_cnn", ann, xc, x[:300], y[:300], [3], variants=some, done=saved, progress=False
    )
    assert [r["loss"][3] for r in again["rows"]] == [123.0, floor["loss"][3]]
    other = ablate(
        "mnist_cnn", ann, xc, x[:200], y[:200], [3], variants=some, done=saved, progress=False
    )  # another test subset: nothing is taken from it
    assert other["rows"][0]["loss"][3] != 123.0
    assert "T=3" in ablation_table([res])
    reloaded = json.loads(json.dumps([res]))  # JSON turns the T keys into strings
    assert ablation_table(reloaded) == ablation_table([res])
    with torch.no_grad():
        ann_acc = 100.0 * float((ann(x[:300]).argmax(1) == y[:300]).float().mean())
    assert res["ann_accuracy"] == pytest.approx(ann_acc)
    for row in res["rows"]:
        assert row["loss"][3] == pytest.approx(res["ann_accuracy"] - row["snn_accuracy"][3])


def test_python_m_onespike_runs_the_cli():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "onespike", "demo", "--phases", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: argument --phases")
    assert len(r.stderr.strip().splitlines()) == 1


def test_convert_out_then_evaluate_the_file(tmp_path, capsys):
    """``convert --out`` saves the network; ``evaluate FILE`` needs no ANN and reports the
    same figures under the same JSON keys (the ANN's left as None)."""
    net, jc, je = tmp_path / "net.safetensors", tmp_path / "c.json", tmp_path / "e.json"
    argv = ["convert", "--model", "mnist_cnn", "--test", "200", "--calibration", "200"]
    assert main([*argv, "--phases", "5", "--out", str(net), "--json", str(jc)]) == 0
    assert net.is_file()
    capsys.readouterr()
    argv = ["evaluate", str(net), "--dataset", "mnist", "--images", "200", "--json", str(je)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "SNN accuracy (step path)" in text and "ANN accuracy" not in text
    c, e = json.loads(jc.read_text()), json.loads(je.read_text())
    assert set(c) == set(e)
    assert e["ann_accuracy"] is None and e["loss_points"] is None
    assert e["model"] == str(net) and e["dataset"] == "mnist"
    for k in ("samples", "snn_accuracy", "step_accuracy", "phase_mismatches", "plan", "cost"):
        assert e[k] == c[k], k


def test_convert_nir_and_export_write_the_same_graph(tmp_path, capsys):
    """``convert --nir`` and ``export FILE --nir`` (from the saved network, no ANN) write
    NIR graphs that simulate like the network itself; mistakes are one line, before work."""
    pytest.importorskip("nir")  # installed by .ci/run (the dev extra)
    import onespike
    from onespike import nir_reference

    net, a, b = tmp_path / "net.onespike", tmp_path / "a.nir", tmp_path / "b.nir"
    argv = ["convert", "--model", "mnist_cnn", "--test", "50", "--calibration", "200"]
    assert main([*argv, "--phases", "4", "--no-step", "--out", str(net), "--nir", str(a)]) == 0
    assert main(["export", str(net), "--nir", str(b)]) == 0
    assert "wrote the NIR graph" in capsys.readouterr().out
    snn = onespike.load(net)
    x, _ = load_dataset("mnist", "test")
    x = x[:20]
    want = snn.simulate(x, mode="step").output
    for f in (a, b):
        assert torch.equal(nir_reference.simulate(f, x).output, want), f
    cases = [
        (["export", str(net), "--nir", str(tmp_path / "no" / "x.nir")], "does not exist"),
        (["export", str(tmp_path / "none.onespike"), "--nir", str(b)], "no such file"),
        (["export", str(net)], "required: --nir"),
        ([*argv, "--nir", str(tmp_path)], "is a folder"),
    ]
    for bad, needle in cases:
        assert main(bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err, (bad, err)
        assert len(err.splitlines()) == 1


def test_evaluate_file_mistakes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    cases = [
        (["evaluate", str(tmp_path / "none.safetensors"), "--dataset", "mnist"], "no such file"),
        (["evaluate", str(bad), "--dataset", "mnist"], "damaged or truncated"),
        (["evaluate", str(other), "--dataset", "mnist"], "not a network saved by onespike"),
        (["evaluate", str(bad)], "required: --dataset"),
        (
            ["convert", "--model", "mnist_cnn", "--out", str(tmp_path / "no" / "net.st")],
            "does not exist",
        ),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err, (argv, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_ablation_resume_refuses_a_file_it_cannot_use(tmp_path):
    from onespike.errors import OptionError
    from onespike.experiments.sweep import saved_ablation

    assert saved_ablation(tmp_path / "none.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(OptionError, match="cannot read"):
        saved_ablation(bad)
    bad.write_text('{"rows": []}')
    with pytest.raises(OptionError, match="not an ablation's JSON"):
        saved_ablation(bad)
