"""Every code block of docs/DEPLOYING.md runs as shown (in a scratch folder, in order)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "DEPLOYING.md"


def _blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|sh)\n(.*?)```", PAGE.read_text(), flags=re.S)


def _command(line: str) -> list[str]:
    """A shell line of the page as an argv: ``onespike`` is ``python -m onespike``."""
    argv = shlex.split(line)
    if argv[0] == "onespike":
        return [sys.executable, "-m", "onespike", *argv[1:]]
    assert argv[0] == "python", line
    return [sys.executable, str(ROOT / argv[1]), *argv[2:]]


def test_the_page_has_python_and_shell_blocks():
    kinds = [k for k, _ in _blocks()]
    assert kinds.count("python") >= 5 and kinds.count("sh") >= 2


def test_every_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("nir")
    pytest.importorskip("safetensors")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    for i, (kind, code) in enumerate(_blocks()):
        if kind == "python":
            exec(compile(code, f"{PAGE.name} block {i}", "exec"), {"__name__": f"block{i}"})
            continue
        for line in code.strip().splitlines():
            r = subprocess.run(_command(line), capture_output=True, text=True, env=env)
            assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert (tmp_path / "mnist_snn.nir").is_file() and (tmp_path / "mnist_eval.json").is_file()


def test_the_page_states_what_the_code_checks():
    """The numbers and names the page promises are the code's."""
    from onespike import serialize
    from onespike.errors import MAX_PHASES

    text = PAGE.read_text()
    assert f"`format_version` (now `{serialize.FORMAT_VERSION}`)" in text
    assert f"reads format version {serialize.FORMAT_VERSION}." in text
    assert f"at most {MAX_PHASES}" in text and f"`[1, {MAX_PHASES}]`" in text
    for test_file in re.findall(r"`(tests/test_\w+\.py)`", text):
        assert (ROOT / test_file).is_file(), test_file
    assert "| family | case | outcome |" in text  # the table of cases tried
