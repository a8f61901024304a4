"""The command line: the main job runs; a user's mistake is one line, not a traceback."""

import json

import pytest

from onespike.cli import main


def test_demo_small(capsys, tmp_path):
    out = tmp_path / "demo.json"
    rc = main(
        ["demo", "--test", "300", "--calibration", "300", "--phases", "6", "--json", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for needle in ("ANN accuracy", "SNN accuracy (step path)", "latency", "energy ratio"):
        assert needle in text
    d = json.loads(out.read_text())
    assert d["samples"] == 300 and d["plan"]["phases"] == 6
    assert d["step_event_same_predictions"] == 300
    assert d["cost"]["totals"]["spikes_per_neuron_max"] == 1


def test_convert_user_model(capsys):
    rc = main(
        [
            "convert",
            "--model",
            "tests.cli_models:mnist",
            "--dataset",
            "mnist",
            "--test",
            "200",
            "--calibration",
            "200",
            "--no-step",
        ]
    )
    assert rc == 0
    assert "SNN accuracy (event path)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["convert", "--model", "nosuchmodule:f"], "cannot import module 'nosuchmodule'"),
        (["convert", "--model", "tests.cli_models"], "package.module:function"),
        (["convert", "--model", "tests.cli_models:nothere"], "no callable 'nothere'"),
        (["convert", "--model", "tests.cli_models:not_a_model"], "not a torch.nn.Module"),
        (["convert", "--model", "tests.cli_models:gelu_net"], "non-ReLU activation"),
        (["demo", "--phases", "0"], "phases must be an integer >= 1"),
        (["demo", "--base", "3"], "base must be in (1, 2]"),
        (["demo", "--base", "fast"], "--base must be"),
    ],
)
def test_user_mistakes_are_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err
    assert "Traceback" not in err


def test_missing_data_file_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    monkeypatch.setenv("ONESPIKE_CACHE", str(tmp_path / "cache"))
    rc = main(["convert", "--model", "tests.cli_models:mnist", "--dataset", "cifar10"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cifar10" in err and "ONESPIKE_DATA" in err
    assert len(err.splitlines()) == 1
