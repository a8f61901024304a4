"""Two ranks on loopback (gloo) give what one process gives: the plan bit for bit, the
evaluation's counts and cost report, the refined network (bit-equal between the ranks,
equal to one process's within the rounding of the gradients' sums); ranks given
different models fail on every rank with one error naming the model; a dead rank makes
the other fail instead of hanging."""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from onespike import RefineConfig, convert, distributed, refine
from onespike.cli import main
from onespike.data import calibration_set, load_dataset, normalized_adjacency
from onespike.errors import OptionError
from onespike.evaluate import evaluate
from onespike.models import GCN, load_pretrained
from onespike.stream import as_batches

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

CALIB = 600  # > search_samples (256) and > STATS_CHUNK (512): rank 0 gets 512, rank 1 88
TEST = 300
BATCH = 128  # 3 chunks: rank 0 takes 1, rank 1 takes 2
#: another search: each layer's own error, per-layer scales, bias correction, T = 6
PAPER = {"phases": 6, "search": "paper", "bias_correction": True, "progress": False}
#: refinement on the first 128 calibration images of the T = 4 network: short runs
REFINE_CAL = 128
REFINE = {
    "shift-flip, held out": RefineConfig(
        iterations=20, batch_size=16, holdout=0.25, checks=4, augment="shift-flip", margin=0
    ),  # margin 0: the steps are compared (32 held-out images cannot show a clear gain)
    # 15 = 7 + 8 rows: a global batch that does not divide by the 2 ranks
    "odd batch, mix, drop": RefineConfig(
        iterations=20, batch_size=15, holdout=0.0, augment="mix", drop=0.3
    ),
    "reconstruct, features, mse": RefineConfig(
        iterations=10, batch_size=15, holdout=0.25, checks=4, reconstruct=5, features=0.5,
        loss="mse", lr=1e-3, margin=0,
    ),
}  # fmt: skip
#: 1 vs 2 ranks: the sums of the gradients are rounded in another order, and each rank
#: runs 7 or 8 rows where one process runs 15 (other kernel blockings): measured at most
#: 1e-6 on any weight, bias or log-scale over these runs (and over 100 steps); refinement
#: moves them by about 1e-3. The ranks among themselves are bit-equal.
REFINE_ATOL = 5e-6


def _refined(snn, x) -> dict:
    """What a refined network is compared by: weights, scales, the refine record, and
    its predictions on ``x``."""
    info = dict(snn.plan.search["refine"])
    info.pop("seconds")
    if info["reconstruction"]:
        info["reconstruction"] = {**info["reconstruction"], "seconds": None}
    with torch.no_grad():
        pred = snn(x).argmax(1)
    state = {k: v.clone() for k, v in snn.state_dict().items() if v.layout == torch.strided}
    return {"state": state, "scales": [lp.scale for lp in snn.plan.layers], "info": info,
            "pred": pred, "digest": distributed.digest(snn.state_dict())}  # fmt: skip


def _tiny_gcn():
    """A 24-node path graph: a graph model (its samples interact), refined whole."""
    torch.manual_seed(1)
    n = 24
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    ann = GCN(normalized_adjacency(torch.cat([ei, ei.flip(0)], 1), n), 5, 3, hidden=8).eval()
    return ann, torch.rand(n, 5, generator=torch.Generator().manual_seed(2))


def _refine_all(model, base, xr, x) -> dict:
    """Every refinement the tests compare, run alike on 1 process and on each rank."""
    out = {k: _refined(refine(base, model, xr, c, progress=False), x) for k, c in REFINE.items()}
    out["unrefined"] = {k: v.clone() for k, v in base.state_dict().items()}
    gcn, xg = _tiny_gcn()
    sg = convert(gcn, xg, phases=4, progress=False)
    cfg = RefineConfig(iterations=10, holdout=0.25, checks=2, lr=1e-2)
    out["gcn"] = _refined(refine(sg, gcn, xg, cfg, progress=False), xg)
    return out


def _data():
    xc, _ = calibration_set("mnist", CALIB, 0)
    x, y = load_dataset("mnist", "test")
    return xc, x[:TEST], y[:TEST]


def _plan_of(snn) -> list[tuple]:
    return [(lp.name, lp.base, lp.scale, lp.act_error, lp.out_error) for lp in snn.plan.layers]


def _windows_of(model, xc) -> tuple:
    """Per-layer windows chosen by windows="auto" (scored on 64 samples, the statistics
    over the whole set: sharded under a group), with the plan and the measured curves."""
    snn = convert(model, xc, phases=3, windows="auto", search_samples=64, progress=False)
    curves = snn.plan.search["auto_windows"]["sensitivity"]
    return snn.plan.windows, snn.plan.latency_steps, _plan_of(snn), curves


def _eval_of(res) -> dict:
    return {
        "samples": res.samples,
        "ann": res.ann_accuracy,
        "snn": res.snn_accuracy,
        "step": res.step_accuracy,
        "same": res.step_event_same_predictions,
        "mism": res.phase_mismatches,
        "max_spk": res.max_spikes_per_neuron,
        "cost": res.cost.to_dict(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, job: str) -> None:
    torch.set_num_threads(1)
    result: dict = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=20),
        )
        if job == "dead":
            if rank == 1:
                os._exit(0)  # dies without a word
            try:
                distributed.all_reduce([1.0])
                result["error"] = None
            except Exception as e:
                result["error"] = type(e).__name__
            torch.save(result, Path(out) / f"rank{rank}.pt")
            os._exit(0)  # the group cannot be torn down cleanly without the peer
        model = load_pretrained("mnist_cnn")
        xc, x, y = _data()
        snn = convert(model, xc, phases=8, progress=False)
        result["plan"] = _plan_of(snn)
        # a Dataset source streams: each rank reads only its shard (a Subset)
        snn_ds = convert(model, TensorDataset(xc), phases=8, progress=False)
        result["plan_dataset"] = _plan_of(snn_ds)
        result["plan_paper"] = _plan_of(convert(model, xc, **PAPER))
        result["plan_windows"] = _windows_of(model, xc)
        result["eval"] = _eval_of(evaluate(model, snn, x, y, batch_size=BATCH, progress=False))
        xr = xc[:REFINE_CAL]
        base = convert(model, xr, phases=4, progress=False)
        result["refine"] = _refine_all(model, base, xr, x)
        try:  # 2 ranks cannot share a mini-batch of 1
            refine(base, model, xr, iterations=2, batch_size=1, progress=False)
            result["small_batch"] = None
        except OptionError as e:
            result["small_batch"] = str(e)
        # a time budget stops every rank after the same step; rank 0 alone shows the bar
        bar = io.StringIO()
        with contextlib.redirect_stderr(bar):
            r = refine(base, model, xr, iterations=100_000, time_budget=0.5, progress=True)
        result["budget"] = (r.plan.search["refine"]["steps"], distributed.digest(r.state_dict()))
        result["bar"] = bar.getvalue()
        try:  # the final check of refine: ranks holding different values fail together
            distributed.check_identical("the test's tensor", {"w": torch.tensor([0.5, rank])})
            result["diverged"] = None
        except distributed.RankDivergenceError as e:
            result["diverged"] = str(e)
        if rank == 1:  # a different model on rank 1
            with torch.no_grad():
                next(model.parameters())[0].add_(1.0)
        try:
            convert(model, xc, phases=8, progress=False)
            result["mismatch"] = None
        except distributed.RankMismatchError as e:
            result["mismatch"] = str(e)
        distributed.close(synchronize=True)  # the ranks meet at a barrier, then tear down
        result["closed"] = not distributed.active()
    except Exception:
        result["crash"] = traceback.format_exc()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def _spawn(tmp_path: Path, job: str, world: int = 2) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), job), nprocs=world, join=True)
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(out):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(tmp_path_factory.mktemp("dist"), "main")


@pytest.fixture(scope="module")
def one_process() -> dict:
    model = load_pretrained("mnist_cnn")
    xc, x, y = _data()
    snn = convert(model, xc, phases=8, progress=False)
    return {
        "plan": _plan_of(snn),
        "plan_paper": _plan_of(convert(model, xc, **PAPER)),
        "plan_windows": _windows_of(model, xc),
        "eval": _eval_of(evaluate(model, snn, x, y, batch_size=BATCH, progress=False)),
        "refine": _refine_all(
            model, convert(model, xc[:REFINE_CAL], phases=4, progress=False), xc[:REFINE_CAL], x
        ),
    }


def test_two_ranks_make_the_single_process_plan_bit_for_bit(two_ranks, one_process):
    plan = one_process["plan"]
    assert any(isinstance(p[2], tuple) for p in plan)  # per-channel scales are compared too
    for res in two_ranks:
        assert res["plan"] == plan
        assert res["plan_dataset"] == plan
        assert res["plan_paper"] == one_process["plan_paper"]
        assert res["plan_windows"] == one_process["plan_windows"]  # windows="auto" too


def test_two_ranks_evaluate_like_one_process(two_ranks, one_process):
    ref = one_process["eval"]
    assert ref["samples"] == TEST
    for res in two_ranks:
        assert res["eval"] == ref  # counts, accuracies and the cost report, exactly
        assert res["eval"]["cost"]["totals"]["spikes"] == ref["cost"]["totals"]["spikes"]


def test_two_ranks_refine_like_one_process(two_ranks, one_process):
    ref = one_process["refine"]
    r0, r1 = (res["refine"] for res in two_ranks)
    for case in [*REFINE, "gcn"]:
        one, a, b = ref[case], r0[case], r1[case]
        # the ranks end with the same network, bit for bit (refine checks it too)
        assert a["digest"] == b["digest"], case
        assert a["scales"] == b["scales"] and a["info"] == b["info"], case
        # and with one process's, within the rounding of the gradients' sums
        assert a["state"].keys() == one["state"].keys()
        for k, v in one["state"].items():
            torch.testing.assert_close(a["state"][k], v, rtol=0, atol=REFINE_ATOL, msg=case + k)
        for s1, s2 in zip(one["scales"], a["scales"]):
            torch.testing.assert_close(torch.tensor(s2), torch.tensor(s1), rtol=1e-5, atol=0)
        assert torch.equal(a["pred"], one["pred"]), case
        # the same steps run and kept; the same losses but for their last bits
        for k in ("steps", "kept_step", "kept", "samples", "fit_samples", "held_out_samples"):
            assert a["info"][k] == one["info"][k], (case, k)
        assert a["info"]["ranks"] == 2 and "ranks" not in one["info"]
        # the losses of the unrefined network: one process's figures, bit for bit (the
        # chunks' losses are summed in its order); after refinement, but for the last bits
        for k in ("loss_before", "held_out_loss_before"):
            assert a["info"][k] == one["info"][k], (case, k)
        for k in ("loss_after", "held_out_loss_after"):
            if one["info"][k] is not None:
                assert a["info"][k] == pytest.approx(one["info"][k], rel=1e-5), (case, k)
    # the gcn runs whole on every rank: one process's network exactly
    assert r0["gcn"]["digest"] == ref["gcn"]["digest"]
    # each run moved the weights far beyond the tolerance (the comparison means something)
    for case in REFINE:
        moved = max(
            float((one_w - ref["unrefined"][k]).abs().max())
            for k, one_w in ref[case]["state"].items()
            if k in ref["unrefined"] and k.endswith("weight")
        )
        assert moved > 50 * REFINE_ATOL, (case, moved)
        assert ref[case]["info"]["kept_step"] > 0 or ref[case]["info"]["kept"] == "reconstructed"


def test_refine_on_two_ranks_refuses_a_batch_it_cannot_share_and_stops_together(two_ranks):
    msgs = [res["small_batch"] for res in two_ranks]
    assert msgs[0] is not None and msgs[0] == msgs[1]
    assert "a mini-batch of 1 sample(s) cannot be shared among 2 ranks" in msgs[0]
    (steps0, d0), (steps1, d1) = (res["budget"] for res in two_ranks)
    assert 0 < steps0 < 100_000 and steps0 == steps1 and d0 == d1
    assert "refine" in two_ranks[0]["bar"] and two_ranks[1]["bar"] == ""


def test_ranks_that_diverge_fail_together_naming_the_difference(two_ranks):
    msgs = [res["diverged"] for res in two_ranks]
    assert msgs[0] is not None and msgs[0] == msgs[1]
    assert "the test's tensor of rank(s) 1 differ(s) from rank 0's" in msgs[0]
    assert "largest difference 1 in w" in msgs[0]


def test_a_rank_with_another_model_fails_on_every_rank_naming_the_model(two_ranks):
    msgs = [res["mismatch"] for res in two_ranks]
    assert msgs[0] is not None and msgs[0] == msgs[1]
    assert "the model of rank(s) 1 differ(s) from rank 0's" in msgs[0]
    assert "options" not in msgs[0].split("(give")[0]


def test_close_meets_at_a_barrier_then_leaves_no_group(two_ranks):
    assert [res["closed"] for res in two_ranks] == [True, True]


def test_a_dead_rank_makes_the_other_fail_instead_of_hanging(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "dead"), nprocs=2, join=True)
    res = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert "crash" not in res, res.get("crash")
    assert res["error"] is not None


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m onespike ARGS`` in ``tmp_path``."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("no torchrun beside this Python")
    src = str(Path(distributed.__file__).resolve().parents[1])
    # the same data as this process: the CLI runs in tmp_path, where the relative
    # default folders (./data, ../shared/data) do not exist
    from onespike.data import data_root

    env = {
        **os.environ,
        "PYTHONPATH": src,
        "OMP_NUM_THREADS": "1",
        "ONESPIKE_DATA": str(data_root()),
    }
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += ["-m", "onespike", *args]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_torchrun_cli_converts_on_two_ranks_and_only_rank_0_speaks(tmp_path, one_process):
    run = _torchrun(
        tmp_path, "convert", "--model", "mnist_cnn", "--calibration", str(CALIB),
        "--test", str(TEST), "--no-step", "--out", "net.onespike", "--json", "figures.json",
    )  # fmt: skip
    assert run.stdout.count("== onespike: mnist_cnn") == 1  # rank 1 is quiet
    assert run.stdout.count("calibration:") == 1
    assert (tmp_path / "net.onespike").is_file()
    figures = json.loads((tmp_path / "figures.json").read_text())
    plan = [(lp["name"], lp["base"], lp["scale"]) for lp in figures["plan"]["layers"]]
    scale = [(n, b, list(s) if isinstance(s, tuple) else s) for n, b, s, *_ in one_process["plan"]]
    assert plan == scale
    assert figures["snn_accuracy"] == one_process["eval"]["snn"]


def test_torchrun_cli_refines_on_two_ranks_like_one_process(tmp_path):
    run = _torchrun(
        tmp_path, "convert", "--model", "mnist_cnn", "--calibration", str(REFINE_CAL),
        "--test", "100", "--phases", "2", "--no-step", "--refine", "--refine-iterations", "5",
        "--json", "figures.json",
    )  # fmt: skip
    assert run.stdout.count("== onespike: mnist_cnn") == 1
    figures = json.loads((tmp_path / "figures.json").read_text())
    info = figures["plan"]["search"]["refine"]
    assert info["steps"] == 5 and info["ranks"] == 2
    model = load_pretrained("mnist_cnn")
    xc, _ = calibration_set("mnist", REFINE_CAL, 0)
    one = convert(model, xc, phases=2, refine={"iterations": 5}, progress=False)
    one_info = one.plan.search["refine"]
    assert info["kept_step"] == one_info["kept_step"]
    # every held-out check (step, kind, samples agreeing) is the same on 2 ranks as in one
    # process, the unrefined network's and the refined steps'
    assert len(one_info["held_out_checks"]) > 1
    assert [c[:3] for c in info["held_out_checks"]] == [c[:3] for c in one_info["held_out_checks"]]
    assert info["loss_before"] == one_info["loss_before"]
    for lp, mine in zip(one.plan.layers, figures["plan"]["layers"]):
        torch.testing.assert_close(
            torch.tensor(mine["scale"]), torch.tensor(lp.scale), rtol=1e-5, atol=0
        )
    x, y = load_dataset("mnist", "test")
    res = evaluate(model, one, x[:100], y[:100], progress=False)
    assert figures["snn_accuracy"] == res.snn_accuracy


# --- no process group: helpers are no-ops; shards --------------------------------------
def test_without_a_group_everything_is_one_rank():
    assert not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    data = as_batches(torch.rand(10, 3))
    assert distributed.shard(data, 4) is data
    assert distributed.all_reduce([1, 2], integer=True) == [1, 2]
    distributed.check_same({"model": torch.ones(2)})  # nothing to compare with


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"ONESPIKE_DIST_BACKEND": "mpi"}, "ONESPIKE_DIST_BACKEND must be gloo or nccl"),
        ({"ONESPIKE_DIST_TIMEOUT": "soon"}, "ONESPIKE_DIST_TIMEOUT must be seconds"),
        ({"ONESPIKE_DIST_TIMEOUT": "0"}, "timeout must be > 0 seconds"),
    ],
)
def test_bad_group_settings_are_one_clear_error(monkeypatch, env, needle):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(OptionError, match=needle):
        distributed.init_from_env()
    assert not distributed.active()


def test_commands_without_shards_refuse_torchrun(monkeypatch, capsys):
    """Every rank finds a wrong option alike: rank 0 says it, once; the others exit with the
    same status, quietly."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["ablation", "--model", "mnist_cnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: onespike ablation runs in one process: launch it without torchrun "
        "(convert, evaluate and demo run on several)"
    ]
    monkeypatch.setenv("RANK", "1")
    assert main(["ablation", "--model", "mnist_cnn"]) == 2
    assert capsys.readouterr().err == ""


def test_a_mistake_of_one_rank_is_reported_with_its_rank(monkeypatch, capsys):
    from onespike.cli import _report_on_ranks
    from onespike.errors import InputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _report_on_ranks(InputError("its shard holds a NaN")) == 2
    assert capsys.readouterr().err == "error (rank 1): its shard holds a NaN\n"


@pytest.mark.parametrize("n,align,world", [(600, 512, 2), (10, 3, 3), (5, 4, 3), (1000, 1, 7)])
def test_shards_are_contiguous_aligned_and_cover_the_data(n, align, world):
    ranges = [distributed.shard_range(n, r, world, align) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert hi == lo
    assert all(lo % align == 0 for lo, hi in ranges if lo < hi)


@pytest.mark.parametrize("kind", ["tensor", "dataset", "list"])
def test_a_window_holds_exactly_its_samples(kind):
    x, y = torch.rand(23, 2), torch.arange(23)
    src = {
        "tensor": (x, y),
        "dataset": (TensorDataset(x, y), None),
        "list": ([(x[i : i + 5], y[i : i + 5]) for i in range(0, 23, 5)], None),
    }[kind]
    data = as_batches(*src, what="test data", chunk=4)
    win = data.window(7, 19)
    xs, ys = zip(*win)
    assert win.count == 12 and torch.equal(torch.cat(xs), x[7:19])
    assert torch.equal(torch.cat(ys), y[7:19])


def test_digests_read_sparse_tensors():
    i = torch.tensor([[0, 1], [1, 0]])
    a = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0]), (2, 2), check_invariants=True)
    b = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.5]), (2, 2), check_invariants=True)
    assert distributed.digest(a) == distributed.digest(a.clone())
    assert distributed.digest(a) != distributed.digest(b)
    assert distributed.digest(a) != distributed.digest(a.to_dense())


def test_digests_tell_models_apart():
    a = load_pretrained("mnist_cnn")
    b = load_pretrained("mnist_cnn")
    assert distributed.digest(a.state_dict()) == distributed.digest(b.state_dict())
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert distributed.digest(a.state_dict()) != distributed.digest(b.state_dict())


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
