"""The command line's outputs: every path checked before any work, every file written
beside and renamed (a full disk keeps the old one), every mistake one ``error:`` line."""

from __future__ import annotations

import errno
import os
import textwrap
import time

import pytest

from onespike import _io
from onespike.cli import main
from onespike.errors import MAX_PHASES


def _one_line(capsys, needle: str) -> str:
    text = capsys.readouterr().err
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], text
    assert "Traceback" not in text, text
    return errors[0]


@pytest.fixture
def no_work(monkeypatch):
    """Any data loading fails the test: the command must stop before its work."""
    import onespike.cli as cli

    def boom(*a, **k):
        raise AssertionError("the command started its work before checking its outputs")

    for name in ("calibration_set", "load_dataset", "load"):
        monkeypatch.setattr(cli, name, boom)


CONVERT = ["convert", "--model", "mnist_cnn", "--calibration", "50", "--test", "20"]


def test_bad_output_paths_are_refused_before_any_work(tmp_path, capsys, no_work):
    (tmp_path / "a_file").write_text("x")
    folder, missing = str(tmp_path), str(tmp_path / "no" / "x.json")
    cases = [
        ([*CONVERT, "--json", folder], "--json", "is a folder"),
        ([*CONVERT, "--json", missing], "--json", "does not exist"),
        ([*CONVERT, "--json", str(tmp_path / "a_file" / "x.json")], "--json", "is not a folder"),
        ([*CONVERT, "--out", folder], "--out", "is a folder"),
        ([*CONVERT, "--nir", missing], "--nir", "does not exist"),
        (["evaluate", "net.st", "--dataset", "mnist", "--json", folder], "--json", "is a folder"),
        (["export", "net.st", "--nir", folder], "--nir", "is a folder"),
        (["sweep", "--model", "mnist_cnn", "--plot", folder], "--plot", "is a folder"),
        (["sweep", "--model", "mnist_cnn", "--plot", str(tmp_path / "p")], "--plot", ".png"),
        (["sweep", "--model", "mnist_cnn", "--json", missing], "--json", "does not exist"),
        (["ablation", "--model", "mnist_cnn", "--json", folder], "--json", "is a folder"),
        # compare's --out is a folder it makes
        (
            [
                "compare",
                "--model",
                "mnist_cnn",
                "--dataset",
                "mnist",
                "--out",
                str(tmp_path / "a_file"),
            ],
            "--out",
            "not a folder",
        ),
        (
            ["compare", "--model", "mnist_cnn", "--dataset", "mnist", "--out", missing],
            "--out",
            "does not exist",
        ),
    ]
    for argv, flag, needle in cases:
        t0 = time.time()
        assert main(argv) == 2, argv
        err = _one_line(capsys, needle)
        assert flag in err, err
        assert time.time() - t0 < 5
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "p").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, capsys, no_work):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main([*CONVERT, "--json", str(ro / "x.json")]) == 2
        _one_line(capsys, "no permission")
    finally:
        ro.chmod(0o700)


def test_a_fifo_as_output_is_refused(tmp_path, capsys, no_work):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs")
    os.mkfifo(tmp_path / "pipe.json")
    assert main([*CONVERT, "--json", str(tmp_path / "pipe.json")]) == 2
    _one_line(capsys, "not a regular file")


def test_absurd_phases_are_one_line_before_any_work(capsys, no_work):
    assert main([*CONVERT, "--phases", str(MAX_PHASES + 1)]) == 2
    _one_line(capsys, f"more than {MAX_PHASES}")
    assert main(["sweep", "--model", "mnist_cnn", "--phases", "4,1000000"]) == 2
    _one_line(capsys, "1000000")


@pytest.fixture(scope="module")
def saved_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "net.safetensors"
    argv = [*CONVERT, "--phases", "4", "--no-step", "--out", str(path)]
    assert main(argv) == 0
    return path


def _full_disk(monkeypatch):
    """Every fsync of a new output fails as on a full disk (after the bytes were given)."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_io.os, "fsync", fsync)


def test_a_full_disk_keeps_the_old_json(saved_net, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval.json"
    out.write_text('{"old": true}\n')
    argv = ["evaluate", str(saved_net), "--dataset", "mnist", "--images", "20", "--no-step"]
    _full_disk(monkeypatch)
    assert main([*argv, "--json", str(out)]) == 2
    _one_line(capsys, "No space left on device")
    assert out.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    monkeypatch.undo()
    assert main([*argv, "--json", str(out)]) == 0  # and with room, it is replaced whole
    assert '"snn_accuracy"' in out.read_text()


def test_a_full_disk_keeps_the_old_nir_and_network(saved_net, tmp_path, capsys, monkeypatch):
    pytest.importorskip("nir")
    import onespike

    g = tmp_path / "net.nir"
    assert main(["export", str(saved_net), "--nir", str(g)]) == 0
    before = g.read_bytes()
    _full_disk(monkeypatch)
    assert main(["export", str(saved_net), "--nir", str(g)]) == 2
    _one_line(capsys, "No space left on device")
    assert g.read_bytes() == before
    net = tmp_path / "copy.safetensors"
    net.write_bytes(saved_net.read_bytes())
    assert main([*CONVERT, "--phases", "3", "--no-step", "--out", str(net)]) == 2
    _one_line(capsys, "No space left on device")
    assert net.read_bytes() == saved_net.read_bytes()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.safetensors", "net.nir"]
    onespike.import_nir(g)  # still whole


def test_a_user_model_that_needs_arguments_or_raises(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_models_25.py").write_text(
        textwrap.dedent(
            """
            def needs(width, depth=2):
                raise AssertionError("never called")

            def fails():
                raise RuntimeError("checkpoint ckpt.pt not found")
            """
        )
    )
    (tmp_path / "broken_models_25.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["convert", "--dataset", "mnist", "--model"]
    assert main([*base, "my_models_25:needs"]) == 2
    _one_line(capsys, "needs(width, depth=2) needs arguments")
    assert main([*base, "my_models_25:fails"]) == 2
    _one_line(capsys, "fails() raised RuntimeError: checkpoint ckpt.pt not found")
    assert main([*base, "broken_models_25:make"]) == 2
    _one_line(capsys, "importing broken_models_25 raised ValueError: bad config")
