"""Files that cannot lie: a saved network's checksum covers its whole header, the plan is
checked against itself and the graph, and every refusal is one of onespike's errors."""

from __future__ import annotations

import errno
import json
import os
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import onespike
from onespike import serialize
from onespike.errors import MAX_PHASES, OptionError
from onespike.serialize import (
    CorruptFileError,
    NotANetworkFileError,
    SerializationError,
    UnsupportedFormatVersionError,
)
from tests.nets import make


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small converted network (max-pool, residual add), saved; and its test input."""
    torch.manual_seed(0)
    x = torch.rand(24, 2, 8, 8)
    snn = onespike.convert(make(0), x, phases=4, progress=False)
    path = tmp_path_factory.mktemp("integrity") / "net.safetensors"
    onespike.save(snn, path)
    return snn, path, x[:6]


def _meta(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _rewrite(src, dst, edit, *, resign: bool) -> None:
    """Copy ``src`` to ``dst`` with its metadata changed by ``edit(meta)``; with ``resign``
    the checksum is recomputed (an edit made on purpose, by someone who read the code)."""
    tensors = load_file(str(src))
    meta = _meta(src)
    edit(meta)
    if resign:
        meta["sha256"] = serialize.file_digest(meta, tensors)
    save_file(tensors, str(dst), metadata=meta)


def _edit_plan(fn):
    def edit(meta):
        plan = json.loads(meta["plan"])
        fn(plan)
        meta["plan"] = json.dumps(plan, separators=(",", ":"))

    return edit


def _set_layer(i, key, value):
    def fn(plan):
        plan["layers"][i][key] = value

    return _edit_plan(fn)


PLAN_EDITS = {
    "base 1.7 -> 1.2": _set_layer(0, "base", 1.2),
    "phases of a layer": _set_layer(1, "phases", 3),
    "fire window": _set_layer(2, "fire_window", 5),
    "neurons": _set_layer(0, "neurons", 7),
    "plan phases": _edit_plan(lambda p: p.__setitem__("phases", 3)),
    "latency": _edit_plan(lambda p: p.__setitem__("latency_steps", 99)),
}


@pytest.mark.parametrize("name", list(PLAN_EDITS))
def test_an_edited_plan_fails_the_checksum(saved, tmp_path, name):
    _, path, _ = saved
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, PLAN_EDITS[name], resign=False)
    with pytest.raises(CorruptFileError, match="checksum"):
        onespike.load(bad)


def _edit_graph_padding(meta):
    graph = json.loads(meta["graph"])
    conv = graph["modules"]["conv1"]["args"]
    conv["padding"] = {"$tuple": [0, 0]}
    meta["graph"] = json.dumps(graph, separators=(",", ":"))


def _swap_biases(meta):
    """Point conv3's bias at conv1's (the same shape): the tensors map lies."""
    tmap = json.loads(meta["tensors"])
    tmap["ann"]["conv3.bias"] = dict(tmap["ann"]["conv1.bias"])
    tmap["snn"]["conv3.bias"] = dict(tmap["ann"]["conv1.bias"])
    meta["tensors"] = json.dumps(tmap, separators=(",", ":"))


def _edit_version_string(meta):
    meta["torch_version"] = "0.0.1"


@pytest.mark.parametrize(
    "edit", [_edit_graph_padding, _swap_biases, _edit_version_string], ids=lambda f: f.__name__
)
def test_edited_graph_tensor_map_and_versions_fail_the_checksum(saved, tmp_path, edit):
    _, path, _ = saved
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, edit, resign=False)
    with pytest.raises(CorruptFileError, match="checksum"):
        onespike.load(bad)


RESIGNED = {
    "base 1.0": (_set_layer(0, "base", 1.0), "base"),
    "base -1": (_set_layer(0, "base", -1.0), "base"),
    "base 3": (_set_layer(1, "base", 3.0), "base"),
    "phases 0": (_set_layer(1, "phases", 0), "window"),
    "phases huge": (_edit_plan(lambda p: p.__setitem__("phases", 10**6)), "window"),
    "phases a string": (_edit_plan(lambda p: p.__setitem__("phases", "4")), "window"),
    "fire window": (_set_layer(2, "fire_window", 5), "fire window"),
    "latency": (_edit_plan(lambda p: p.__setitem__("latency_steps", 99)), "latency"),
    "neurons": (_set_layer(0, "neurons", 7), "neurons"),
    "scale negative": (_set_layer(3, "scale", -1.0), "scale"),
    "scale nan": (_set_layer(3, "scale", {"$float": "nan"}), "scale"),
    "per-channel scale short": (_set_layer(0, "scale", {"$tuple": [1.0]}), "scale"),
    "shift not a bool": (_set_layer(0, "threshold_shift", 3), "threshold_shift"),
    "input coding": (_edit_plan(lambda p: p.__setitem__("input_coding", "morse")), "coding"),
    "a layer missing": (_edit_plan(lambda p: p["layers"].pop()), "layers|ReLU"),
    "padding": (_edit_graph_padding, "plan does not fit|shape"),
}


@pytest.mark.parametrize("name", list(RESIGNED))
def test_a_resigned_edit_is_still_refused_by_the_plan_check(saved, tmp_path, name):
    """Even with a recomputed checksum, a plan that does not agree with itself or the graph
    is refused with a sentence naming the field, never loaded, never a raw error."""
    _, path, _ = saved
    edit, needle = RESIGNED[name]
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, edit, resign=True)
    with pytest.raises(SerializationError, match=needle):
        onespike.load(bad)


def test_a_resigned_edit_that_is_consistent_loads_as_written(saved, tmp_path):
    """What a recomputed checksum can still do: a consistent change (here a base within
    the range) loads, and both simulators run the plan as written, in agreement."""
    _, path, x = saved
    out = tmp_path / "other_base.safetensors"
    _rewrite(path, out, _set_layer(0, "base", 1.5), resign=True)
    net = onespike.load(out)
    assert net.plan.layers[0].base == 1.5 and net.spikes["relu1"].base == 1.5
    ev, st = net.simulate(x.double(), dtype=torch.float64), None
    st = net.simulate(x.double(), mode="step", dtype=torch.float64)
    for k in ev.spike_phases:
        assert torch.equal(ev.spike_phases[k], st.spike_phases[k]), k


def _header_span(data: bytes) -> tuple[int, int]:
    n = int.from_bytes(data[:8], "little")
    return 8, 8 + n


def _same_or_refused(path, snn, x) -> str:
    """'refused' or 'same' (loads bit-identical); fails on anything else."""
    try:
        net = onespike.load(path)
    except SerializationError:
        return "refused"
    assert net.plan == snn.plan and _bits(net(x)) == _bits(snn(x))
    return "same"


def test_header_bytes_flipped_are_refused(saved, tmp_path):
    """One bit of each byte of the first layers' plan (base, phases, scales, windows) and
    of 400 random other bytes of the safetensors header (the graph, the tensors map, the
    versions, the checksum, the length) flipped in turn: never a load."""
    snn, path, x = saved
    data = path.read_bytes()
    _, hi = _header_span(data)
    plan = data.index(b'"plan"')
    where = set(range(plan, plan + 700)) | set(random.Random(0).sample(range(0, hi), 400))
    bad = tmp_path / "flip.safetensors"
    outcomes = {"refused": 0, "same": 0}
    for i in sorted(where):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        bad.write_bytes(bytes(flipped))
        outcomes[_same_or_refused(bad, snn, x)] += 1
    assert outcomes["refused"] == len(where)  # the checksum covers every header byte


def test_random_flips_anywhere_are_refused_or_harmless(saved, tmp_path):
    """The seeded fuzz test: random single-bit and multi-bit flips anywhere in the file
    (length, header, tensor data) are each refused or load bit-identical."""
    snn, path, x = saved
    data = path.read_bytes()
    rng = random.Random(25)
    bad = tmp_path / "fuzz.safetensors"
    for _ in range(300):
        flipped = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 5))):
            j = rng.randrange(len(data))
            flipped[j] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        _same_or_refused(bad, snn, x)


def test_format_version_1_is_refused_with_what_to_do(saved, tmp_path):
    _, path, _ = saved
    old = tmp_path / "v1.safetensors"

    def v1(meta):
        meta["format_version"] = "1"
        meta["sha256"] = serialize._digest(load_file(str(path)))  # the old, tensors-only sum

    _rewrite(path, old, v1, resign=False)
    with pytest.raises(UnsupportedFormatVersionError, match=r"version 1 .*re-save"):
        onespike.load(old)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(NotANetworkFileError, match="not a regular file"):
        onespike.load(fifo)


@pytest.mark.parametrize("device", ["gpu7", "cuda:99", "meta", 3.5])
def test_load_on_a_device_that_cannot_be_used(saved, device):
    _, path, _ = saved
    if device == "cuda:99" or torch.cuda.device_count() == 0:
        with pytest.raises(OptionError, match="device"):
            onespike.load(path, device=device)


def test_load_on_cuda_without_cuda(saved, monkeypatch):
    _, path, _ = saved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="CUDA is not available"):
        onespike.load(path, device="cuda")


def test_save_on_a_full_disk_keeps_the_old_file(saved, tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC) leaves the old file as it was, no temporary
    file behind, and one SerializationError saying so."""
    snn, _, x = saved
    target = tmp_path / "net.safetensors"
    onespike.save(snn, target)
    before = target.read_bytes()
    import safetensors.torch as st

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(st, "save_file", full_disk)
    with pytest.raises(SerializationError, match=r"No space left on device.*unchanged"):
        onespike.save(snn, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors"]
    assert _bits(onespike.load(target)(x)) == _bits(snn(x))


def test_save_checks_its_path_first_and_gives_the_umask_mode(saved, tmp_path):
    snn, _, _ = saved
    with pytest.raises(SerializationError, match="is a folder"):
        onespike.save(snn, tmp_path)
    with pytest.raises(SerializationError, match="does not exist"):
        onespike.save(snn, tmp_path / "no" / "net.safetensors")
    old = os.umask(0o022)
    try:
        onespike.save(snn, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_max_phases_is_a_bound_of_the_file_too(saved, tmp_path):
    _, path, _ = saved
    bad = tmp_path / "big.safetensors"

    def big(plan):
        plan["phases"] = MAX_PHASES + 1
        for lp in plan["layers"]:
            lp["phases"] = MAX_PHASES + 1

    _rewrite(path, bad, _edit_plan(big), resign=True)
    with pytest.raises(CorruptFileError, match=str(MAX_PHASES)):
        onespike.load(bad)
