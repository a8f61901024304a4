"""Names renamed in this release still work, with a DeprecationWarning, and mean the same.

``input_coding="phase"`` -> ``"binary"``; ``onespike.codes.multiphase`` and
``onespike.codes.weighted`` -> ``onespike.codes.binary``; the comparison's code kind
``"weighted"`` -> ``"binary"``; ``--input-coding phase`` -> ``--input-coding binary``;
the experiments' old module paths ``onespike.train|sweep|compare|gcn`` ->
``onespike.experiments.*``.
"""

import importlib
import json
import subprocess
import sys

import pytest
import torch

import onespike
from onespike.cli import main
from onespike.codes import binary
from tests.nets import make


@pytest.fixture(scope="module")
def x():
    return torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(3))


def test_input_coding_phase_is_binary(x):
    model = make(2)
    new = onespike.convert(model, x, phases=5, input_coding="binary", progress=False)
    with pytest.warns(DeprecationWarning, match="'phase' is now 'binary'"):
        old = onespike.convert(model, x, phases=5, input_coding="phase", progress=False)
    assert old.plan == new.plan and old.plan.input_coding == "binary"
    assert torch.equal(old(x), new(x))
    run = old.simulate(x, mode="step")
    assert torch.equal(run.input_spikes, new.simulate(x, mode="step").input_spikes)


def test_a_plan_recorded_with_the_old_name_reads_as_binary(x):
    from onespike.serialize import _plan_dict, _plan_from

    snn = onespike.convert(make(2), x, phases=4, input_coding="binary", progress=False)
    d = _plan_dict(snn.plan)
    d["input_coding"] = "phase"  # as files of earlier versions record it
    plan = _plan_from(d)
    assert plan.input_coding == "binary" and plan == snn.plan


def _fresh_import(name: str):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_old_code_modules_forward_to_binary():
    with pytest.warns(DeprecationWarning, match="codes.binary"):
        multiphase = _fresh_import("onespike.codes.multiphase")
    with pytest.warns(DeprecationWarning, match="codes.binary"):
        weighted = _fresh_import("onespike.codes.weighted")
    z = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(multiphase.encode(z, 6), binary.encode(z, 6))
    assert multiphase.unit_weight(6) == binary.unit_weight(6) == 2.0**-6
    total, count, bits = weighted.run_constant(z, 3, 4)
    total2, count2, bits2 = binary.run_constant(z, 3, 4)
    assert torch.equal(total, total2) and torch.equal(bits, bits2)
    assert torch.equal(count, count2)
    assert torch.equal(weighted.decode(total, 3), binary.decode_weight_sum(total, 3))
    assert weighted.weighted_step is binary.neuron_step


def test_compare_code_kind_weighted_is_binary():
    from onespike.experiments.compare import CODES, CodeSpec

    with pytest.warns(DeprecationWarning, match="'weighted' is now 'binary'"):
        old = CodeSpec("multiphase-K4", "weighted", period=4)
    assert old == CODES["multiphase-K4"] and old.kind == "binary" and old.clocked


def _cli_convert(coding: str, out) -> list[str]:
    return [
        "convert",
        "--model",
        "tests.cli_models:mnist",
        "--dataset",
        "mnist",
        "--test",
        "40",
        "--calibration",
        "40",
        "--phases",
        "4",
        "--no-step",
        "--input-coding",
        coding,
        "--json",
        str(out),
    ]


def test_cli_input_coding_binary_and_its_old_name(tmp_path, capsys):
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    assert main(_cli_convert("binary", new)) == 0
    assert "warning" not in capsys.readouterr().err
    with pytest.warns(DeprecationWarning):
        assert main(_cli_convert("phase", old)) == 0
    assert "is now 'binary'" in capsys.readouterr().err
    a, b = json.loads(new.read_text()), json.loads(old.read_text())
    assert a["plan"] == b["plan"] and a["plan"]["input_coding"] == "binary"
    assert a["snn_accuracy"] == b["snn_accuracy"]


def test_cli_rejects_an_unknown_input_coding(capsys):
    assert main(_cli_convert("rate", "unused.json")) == 2
    assert "input-coding" in capsys.readouterr().err


def test_old_experiment_paths_forward_with_a_warning(tmp_path):
    """``import onespike.X`` gives ``onespike.experiments.X`` itself and ``python -m
    onespike.X`` runs its command; both warn that the path moved."""
    code = (
        "import warnings, importlib\n"
        "for m in ('train', 'sweep', 'compare', 'gcn'):\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        old = importlib.import_module('onespike.' + m)\n"
        "    assert old is importlib.import_module('onespike.experiments.' + m), m\n"
        "    assert any(issubclass(x.category, DeprecationWarning) and 'moved to' in\n"
        "               str(x.message) for x in w), (m, [str(x.message) for x in w])\n"
        "print('forwarded')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert run.returncode == 0 and "forwarded" in run.stdout, run.stderr
    run = subprocess.run(
        [sys.executable, "-W", "always", "-m", "onespike.sweep", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "usage: python -m onespike.experiments.sweep" in run.stdout
    assert "onespike.sweep moved to onespike.experiments.sweep" in run.stderr
