"""finetune(): improves a converted network with labels, keeps every invariant, never
returns a worse network on its held-out split, refuses bad data, resumes exactly."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import onespike
from onespike import FinetuneConfig, SpikingNetwork
from onespike.data import load_mnist
from tests.nets import MnistRes, train_briefly


@pytest.fixture(scope="module")
def weak():
    """A small residual MNIST network trained for one epoch on 2,000 images, converted at
    T = 3 (it loses about two points there); 3,000 other labelled images to fine-tune on
    and 5,000 more to test on."""
    x, y = load_mnist("test")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ann = train_briefly(MnistRes(), x[perm[:2000]], y[perm[:2000]], epochs=1)
    ft, te = perm[2000:5000], perm[5000:]
    snn = onespike.convert(ann, x[ft[:300]], phases=3, progress=False)
    return ann, snn, (x[ft], y[ft]), (x[te], y[te])


def _accuracy(net, xy):
    x, y = xy
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean()) * 100


def test_finetune_improves_a_network_and_keeps_every_invariant(weak, tmp_path):
    ann, snn, train, test = weak
    snn_state = {k: v.clone() for k, v in snn.state_dict().items()}
    gap = _accuracy(ann, test) - _accuracy(snn, test)
    assert gap > 1.0  # the conversion at T = 3 loses accuracy
    r = onespike.finetune(snn, ann, train, epochs=1, progress=False)
    info = r.plan.search["finetune"]
    # it strictly improves the held-out accuracy, and comes within 0.1 point of the ANN
    assert info["held_out_accuracy_after"] > info["held_out_accuracy_before"]
    assert info["kept"] == "fine-tuned" and info["kept_step"] > 0
    assert info["kept_because"].startswith(f"step {info['kept_step']} (fine-tuned)")
    assert _accuracy(ann, test) - _accuracy(r, test) <= 0.1
    # an ordinary converted network: same plan type, bases, phases; one spike at most;
    # the step simulator equals the event path; it saves and loads
    assert isinstance(r, SpikingNetwork) and r.phases == 3
    assert [lp.base for lp in r.plan.layers] == [lp.base for lp in snn.plan.layers]
    assert r.plan.latency_steps == snn.plan.latency_steps
    xb = test[0][:200]
    ev, st = r.simulate(xb, mode="event"), r.simulate(xb, mode="step")
    assert torch.equal(ev.output.argmax(1), st.output.argmax(1))
    assert all(int(c.max()) <= 1 for c in st.spike_counts.values())
    for name, ph in st.spike_phases.items():
        assert (ph != ev.spike_phases[name]).float().mean() < 1e-4
    r.save(tmp_path / "f.safetensors")
    assert torch.equal(onespike.load(tmp_path / "f.safetensors")(xb), r(xb))
    # the input network is not touched
    assert all(torch.equal(v, snn_state[k]) for k, v in snn.state_dict().items())


def test_finetune_returns_its_input_when_no_step_beats_it(weak):
    """A learning rate far too large: every step is worse on the held-out split, and the
    input network comes back exactly."""
    ann, snn, (x, y), test = weak
    r = onespike.finetune(
        snn, ann, (x[:600], y[:600]), epochs=1, lr=0.5, scale_lr=0.5, checks=3, progress=False
    )
    info = r.plan.search["finetune"]
    assert info["kept"] == "input" and info["kept_step"] == 0
    assert info["kept_because"].startswith("input: no step beat its held-out accuracy")
    assert r.plan.layers == snn.plan.layers
    assert torch.equal(r(test[0][:300]), snn(test[0][:300]))


def test_a_dataset_or_a_loader_gives_what_the_tensors_give(weak):
    ann, snn, (x, y), _ = weak
    x, y = x[:400], y[:400]
    kw = {"epochs": 1, "batch_size": 50, "progress": False}
    a = onespike.finetune(snn, ann, (x, y), **kw)
    b = onespike.finetune(snn, ann, TensorDataset(x, y), **kw)
    c = onespike.finetune(snn, ann, DataLoader(TensorDataset(x, y), batch_size=64), **kw)
    for other in (b, c):
        sa, so = a.state_dict(), other.state_dict()
        assert all(torch.equal(sa[k], so[k]) for k in sa)
        assert a.plan.layers == other.plan.layers


def test_a_given_held_out_set_chooses_the_step(weak):
    """``held_out=``: a validation split of the caller's; all of ``data`` is fitted, the
    given samples are the ones measured, and the result is never worse on them."""
    ann, snn, (x, y), (xt, yt) = weak
    held = (xt[:500], yt[:500])
    r = onespike.finetune(
        snn, ann, (x[:1000], y[:1000]), epochs=1, checks=3, held_out=held, progress=False
    )
    info = r.plan.search["finetune"]
    assert info["held_out_given"] is True
    assert (info["fit_samples"], info["held_out_samples"]) == (1000, 500)
    before = _accuracy(snn, held) / 100
    assert info["held_out_accuracy_before"] == pytest.approx(before, abs=2 / 500)
    assert _accuracy(r, held) >= _accuracy(snn, held) - 0.2  # one image of float rounding
    with pytest.raises(ValueError, match="finetune: held_out has shape") as e:
        onespike.finetune(snn, ann, (x[:40], y[:40]), held_out=(xt[:8, :, :10], yt[:8]))
    assert isinstance(e.value, onespike.errors.OnespikeError)
    with pytest.raises(ValueError, match="finetune: held_out is empty"):
        onespike.finetune(snn, ann, (x[:40], y[:40]), held_out=TensorDataset(xt[:0], yt[:0]))


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("x", r"an \(x, y\) pair of tensors"),
        ({"x": 1}, r"an \(x, y\) pair of tensors"),
        (lambda x, y: x, r"an \(x, y\) pair of tensors"),  # inputs without labels
        (lambda x, y: (x, y[:-1]), "inputs but"),
        (lambda x, y: (x, y.float()), "1-D integer tensor"),
        (lambda x, y: (x, y + 10), r"labels must lie in 0\.\.9"),
        (lambda x, y: (x[:, :, :10], y), "shape"),
        (lambda x, y: DataLoader(x, batch_size=8), r"not an \(x, y\) pair"),
        (lambda x, y: (x[:1], y[:1]), "cannot be split"),
    ],
)
def test_bad_data_is_refused(weak, bad, needle):
    ann, snn, (x, y), _ = weak
    data = bad(x[:40], y[:40]) if callable(bad) else bad
    with pytest.raises(ValueError, match=needle) as e:
        onespike.finetune(snn, ann, data, epochs=1, progress=False)
    assert isinstance(e.value, onespike.errors.OnespikeError)


def test_bad_options_are_refused(weak):
    ann, snn, train, _ = weak
    with pytest.raises(ValueError, match="epochs"):
        onespike.finetune(snn, ann, train, epochs=0, progress=False)
    with pytest.raises(ValueError, match="distill"):
        FinetuneConfig(distill=1.5)
    with pytest.raises(ValueError, match="augment must be one of"):
        onespike.finetune(snn, ann, train, augment="rotate", progress=False)
    with pytest.raises(ValueError, match="unexpected keyword"):
        onespike.finetune(snn, ann, train, iters=3, progress=False)
    with pytest.raises(ValueError, match=r"made by onespike\.convert"):
        onespike.finetune(ann, ann, train, progress=False)


@pytest.mark.parametrize("augment", ["none", "shift-flip"])
def test_checkpoint_and_resume_give_the_uninterrupted_result(weak, tmp_path, augment):
    ann, snn, (x, y), _ = weak
    data = (x[:1500], y[:1500])
    kw = {"epochs": 2, "batch_size": 32, "checks": 5, "progress": False, "augment": augment}
    whole = onespike.finetune(snn, ann, data, **kw)
    ck = tmp_path / "ft.pt"
    cut = onespike.finetune(snn, ann, data, checkpoint=ck, time_budget=0.5, **kw)
    total = whole.plan.search["finetune"]["total_steps"]
    stopped = cut.plan.search["finetune"]["steps"]
    assert 0 < stopped < total and ck.exists()
    back = onespike.finetune(snn, ann, data, checkpoint=ck, resume=True, **kw)
    info = back.plan.search["finetune"]
    assert info["resumed_from"] == stopped and info["steps"] == total
    sw, sb = whole.state_dict(), back.state_dict()
    assert all(torch.equal(sw[k], sb[k]) for k in sw)
    assert whole.plan.layers == back.plan.layers
    w = whole.plan.search["finetune"]
    assert (info["kept_step"], info["held_out_checks"]) == (w["kept_step"], w["held_out_checks"])
    # the checkpoint loads with weights_only=True; another run's checkpoint is refused
    assert torch.load(ck, weights_only=True)["step"] == total
    with pytest.raises(ValueError, match="belongs to another run"):
        onespike.finetune(snn, ann, data, checkpoint=ck, resume=True, **{**kw, "seed": 1})


def test_cli_finetune_flag_uses_the_training_split(tmp_path, monkeypatch, capsys):
    """``convert --finetune-epochs N`` fine-tunes on the data set's training split: with
    no training set in the data folder it stops with one error line naming it."""
    from onespike.cli import build_parser, main

    args = build_parser().parse_args(["convert", "--model", "m", "--finetune-epochs", "2"])
    assert args.finetune_epochs == 2
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    argv = ["convert", "--model", "tests.cli_models:mnist", "--dataset", "mnist", "--test", "50"]
    argv += ["--calibration", "50", "--no-step", "--phases", "4", "--finetune-epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "train" in err.split("error: ")[-1]


def test_augmentation_fits_moved_copies_and_measures_the_held_out_as_they_are(weak):
    """``augment="shift-flip"`` trains on shifted and mirrored copies (another network
    than without it) while the held-out split is measured on the images themselves: the
    first check, before any step, scores the input network identically either way."""
    ann, snn, (x, y), _ = weak
    kw = {"epochs": 1, "batch_size": 50, "checks": 2, "margin": 0, "progress": False}
    a = onespike.finetune(snn, ann, (x[:600], y[:600]), **kw)
    b = onespike.finetune(snn, ann, (x[:600], y[:600]), augment="shift-flip", **kw)
    ia, ib = a.plan.search["finetune"], b.plan.search["finetune"]
    assert ia["held_out_checks"][0] == ib["held_out_checks"][0]
    assert ia["held_out_checks"][1:] != ib["held_out_checks"][1:]
    assert ib["augment"] == "shift-flip"
