"""NIR files that cannot lie: onespike's NIR files carry a checksum of every node, field,
metadata entry and edge; an edited or damaged file is refused by import_nir and by the
reference simulator, and every mistake is one of onespike's errors."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import onespike
from onespike.errors import OptionError
from onespike.serialize import NetworkFileNotFoundError
from tests.nets import make

nir = pytest.importorskip("nir")

from onespike import nir_reference  # noqa: E402
from onespike.nir_export import NIR_FORMAT_VERSION, NIRExportError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(1)
    x = torch.rand(16, 2, 8, 8)
    snn = onespike.convert(make(0), x, phases=4, progress=False)
    path = tmp_path_factory.mktemp("nir") / "net.nir"
    onespike.export_nir(snn, path)
    return snn, path, x[:5]


def _edited(src: Path, dst: Path, edit, *, resign: bool) -> Path:
    """``src`` read with nir, changed by ``edit(graph)``, written to ``dst``; with
    ``resign`` the checksum is recomputed (an edit made on purpose)."""
    g = nir.read(str(src))
    edit(g)
    if resign:
        g.metadata[nir_reference.DIGEST_KEY] = nir_reference.graph_digest(g)
    nir.write(str(dst), g)
    return dst


def _first_if(g) -> str:
    return next(n for n, node in g.nodes.items() if isinstance(node, nir.IF))


def _set_meta(key, value, node=None):
    def edit(g):
        name = node or _first_if(g)
        g.nodes[name].metadata[key] = value

    return edit


def _scale_weight(g):
    g.nodes["conv1"].weight = np.asarray(g.nodes["conv1"].weight) * np.float32(1.01)


def _drop_edge(g):
    g.edges = g.edges[:-1]


EDITS = {
    "base": _set_meta("base", 1.2),
    "base negative": _set_meta("base", -1.0),
    "scale": _set_meta("scale", 0.5),
    "fire thresholds": _set_meta("fire_thresholds", np.zeros(4)),
    "a weight": _scale_weight,
    "an edge": _drop_edge,
    "graph phases": lambda g: g.metadata.__setitem__("phases", 5),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_an_edited_nir_file_is_refused(exported, tmp_path, name):
    _, path, x = exported
    bad = _edited(path, tmp_path / "bad.nir", EDITS[name], resign=False)
    with pytest.raises(NIRExportError, match="checksum"):
        onespike.import_nir(bad)
    with pytest.raises(ValueError, match="checksum"):
        nir_reference.simulate(bad, x)


RESIGNED = {
    "base negative": (_set_meta("base", -1.0), "base"),
    "base 1": (_set_meta("base", 1.0), "base"),
    "phases 0": (_set_meta("phases", 0), "window|phases"),
    "fire thresholds": (_set_meta("fire_thresholds", np.zeros(4)), "fire_thresholds"),
    "latency": (lambda g: g.metadata.__setitem__("latency_steps", 77), "latency"),
    "no node order": (lambda g: g.metadata.pop("node_order"), "metadata entry 'node_order'"),
    "no base": (lambda g: g.nodes[_first_if(g)].metadata.pop("base"), "metadata entry 'base'"),
}


@pytest.mark.parametrize("name", list(RESIGNED))
def test_a_resigned_nir_edit_is_refused_by_the_plan_check(exported, tmp_path, name):
    _, path, _ = exported
    edit, needle = RESIGNED[name]
    bad = _edited(path, tmp_path / "bad.nir", edit, resign=True)
    with pytest.raises(NIRExportError, match=needle):
        onespike.import_nir(bad)


def test_the_digest_survives_write_and_read(exported):
    snn, path, x = exported
    g = nir.read(str(path))
    assert g.metadata[nir_reference.DIGEST_KEY] == nir_reference.graph_digest(g)
    assert int(g.metadata["format_version"]) == NIR_FORMAT_VERSION
    back = onespike.import_nir(path)
    assert torch.equal(back(x), snn(x))


def test_a_file_without_checksum_or_of_version_1_is_refused(exported, tmp_path):
    _, path, x = exported
    old = _edited(
        path,
        tmp_path / "v1.nir",
        lambda g: (g.metadata.pop(nir_reference.DIGEST_KEY), g.metadata.update(format_version=1)),
        resign=False,
    )
    with pytest.raises(NIRExportError, match=r"version 1.*export the network again"):
        onespike.import_nir(old)
    with pytest.raises(ValueError, match="no onespike checksum"):
        nir_reference.simulate(old, x)


def test_missing_file_folder_and_fifo(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="no such file"):
        onespike.import_nir(tmp_path / "nothing.nir")
    with pytest.raises(NIRExportError, match="not a regular file"):
        onespike.import_nir(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.nir")
        with pytest.raises(NIRExportError, match="not a regular file"):
            onespike.import_nir(tmp_path / "pipe.nir")


def test_import_on_an_unusable_device(exported):
    _, path, _ = exported
    with pytest.raises(OptionError, match="device"):
        onespike.import_nir(path, device="gpu7")


def test_export_to_a_folder_or_a_missing_folder_is_refused_before_any_work(
    exported, tmp_path, monkeypatch
):
    snn, _, _ = exported
    from onespike import nir_export

    def boom(*a, **k):  # the export's work must not start
        raise AssertionError("the export ran before the path was checked")

    monkeypatch.setattr(nir_export, "_Exporter", boom)
    with pytest.raises(NIRExportError, match="is a folder"):
        onespike.export_nir(snn, tmp_path)
    with pytest.raises(NIRExportError, match="does not exist"):
        onespike.export_nir(snn, tmp_path / "no" / "net.nir")


def test_export_on_a_full_disk_keeps_the_old_file(exported, tmp_path, monkeypatch):
    snn, path, x = exported
    target = tmp_path / "net.nir"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()

    def full_disk(filename, graph):
        Path(filename).write_bytes(b"\x89HDF\r\n" + b"\0" * 4000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nir, "write", full_disk)
    with pytest.raises(NIRExportError, match=r"No space left on device.*unchanged"):
        onespike.export_nir(snn, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.nir"]
    monkeypatch.undo()
    assert torch.equal(onespike.import_nir(target)(x), snn(x))


FUZZ = textwrap.dedent(
    """
    import random, sys, torch, onespike
    from onespike import nir_reference
    from onespike.errors import OnespikeError
    src, bad, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = open(src, "rb").read()
    good = onespike.import_nir(src)
    x = torch.rand(4, *good.input_shape, generator=torch.Generator().manual_seed(0))
    want = good(x)
    rng = random.Random(seed)
    refused = same = 0
    for _ in range(n):
        b = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            j = rng.randrange(len(b))
            b[j] ^= 1 << rng.randrange(8)
        open(bad, "wb").write(bytes(b))
        try:
            net = onespike.import_nir(bad)
        except OnespikeError:
            refused += 1
            continue
        assert torch.equal(net(x), want), "a flipped file loaded with different outputs"
        same += 1
    print(refused, same)
    """
)


def test_random_flips_in_a_nir_file_are_refused_or_harmless(exported, tmp_path):
    """The seeded fuzz test over the HDF5 bytes (in a child process, so that a crash of
    the HDF5 library fails the test instead of the test run)."""
    _, path, _ = exported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    seed = random.Random(25).randrange(1 << 30)
    r = subprocess.run(
        [sys.executable, "-c", FUZZ, str(path), str(tmp_path / "bad.nir"), str(seed), "40"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    refused, same = map(int, r.stdout.split())
    assert refused + same == 40
