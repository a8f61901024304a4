"""The airbench-style fast VGG (onespike.models.fastvgg) and its training recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onespike
from onespike.experiments.airbench import AIRBENCH, airbench_lr_factor
from onespike.experiments.augment import alternating_flip, translate_flip
from onespike.experiments.train import (
    TrainConfig,
    _make_optimizer,
    evaluate,
    time_batches,
    train,
)
from onespike.models import FastVGG, fast_vgg, get_spec, init_whitening, load_pretrained
from onespike.models.fastvgg import image_patches, patch_statistics
from onespike.trace import trace

SMALL = (8, 16, 16)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (neighbouring pixels and channels correlated, as in
    real images, so whitening has something to undo)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 36, 36, generator=g)
    x = F.avg_pool2d(x, 5, stride=1)  # [n, 3, 32, 32]
    x = 0.6 * x + 0.4 * x.mean(1, keepdim=True)
    return (x - x.min()) / (x.max() - x.min())


def test_architecture_shapes_and_frozen_parameters() -> None:
    m = fast_vgg()
    assert isinstance(m, FastVGG) and m.widths == (64, 256, 256)
    assert get_spec("fast_vgg").builder is fast_vgg
    assert "--recipe airbench" in get_spec("fast_vgg").train_command
    names = [n for n, _ in m.features.named_children()]
    assert names[:2] == ["whiten", "relu0"] and names[-1] == "pool4"
    assert names[2:9] == ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2"]
    assert m.whiten.weight.shape == (24, 3, 2, 2) and not m.whiten.weight.requires_grad
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert len(bns) == 6 and all(not b.weight.requires_grad and b.eps == 1e-12 for b in bns)
    assert m.fc.bias is None and m.logit_scale == pytest.approx(1 / 9)
    # conv2 (64 -> 64) starts as the identity (airbench's dirac init)
    assert torch.equal(m.features.conv2.weight[:, :, 1, 1], torch.eye(64))
    assert sum(p.numel() for p in m.parameters()) == 1_972_792
    out = fast_vgg(widths=SMALL).eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="three positive"):
        fast_vgg(widths=(8, 16))


def test_whitening_layer_whitens_its_patches() -> None:
    x = _images(64)
    conv = fast_vgg(widths=SMALL).whiten
    lam = init_whitening(conv, x, eps=0.0)
    assert torch.all(lam[:-1] >= lam[1:]) and lam[0] > 20 * lam[-1]  # correlated input
    with torch.no_grad():
        out = F.conv2d(x, conv.weight, conv.bias)  # [N, 24, 31, 31]
    assert torch.allclose(out[:, 12:], -out[:, :12])  # each direction and its negative
    z = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert z.mean(0).abs().max() < 1e-4
    cov = torch.cov(z.T, correction=0)
    assert (cov - torch.eye(12, dtype=torch.float64)).abs().max() < 1e-3
    # the input patches themselves are far from white
    _, cov_in = patch_statistics(x, 2)
    assert (cov_in / cov_in.diagonal().mean() - torch.eye(12)).abs().max() > 0.5
    # with airbench's eps the covariance is diag(lam / (lam + eps')), eps' relative
    eps = AIRBENCH["whiten_eps"]
    lam = init_whitening(conv, x, eps=eps).double()
    with torch.no_grad():
        z = F.conv2d(x, conv.weight[:12], conv.bias[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(z.double().T, correction=0)
    eps_rel = eps * float(cov_in.diagonal().mean())
    assert torch.allclose(cov, torch.diag(lam / (lam + eps_rel)), atol=1e-3)
    assert image_patches(x[:2], 2).shape == (2 * 31 * 31, 12)


def test_converts_with_phases_8_and_both_simulators_agree() -> None:
    torch.manual_seed(0)
    x = _images(96, seed=1)
    m = fast_vgg(widths=SMALL)
    init_whitening(m.whiten, x[:64])
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    m.train()
    for _ in range(3):  # a few steps, so BatchNorm statistics and weights are not the init
        loss = F.cross_entropy(m(x[:64]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    traced = trace(m)
    kinds = {type(mod) for mod in traced.module.modules()}
    assert nn.BatchNorm2d not in kinds  # all six folded into the convolution before them
    assert len(traced.relus) == 7
    snn = onespike.convert(m, x[:64], phases=8)
    assert len(snn.plan.layers) == 7
    xt = x[64:]
    step = snn.simulate(xt, mode="step")
    event = snn.simulate(xt, mode="event")
    assert torch.allclose(step.output, event.output, atol=1e-5)
    with torch.no_grad():
        fast, ann = snn(xt), m(xt)
    assert torch.allclose(fast, step.output, atol=1e-5)
    assert all(int(c.max()) <= 1 for c in step.spike_counts.values())  # one spike at most
    rel = (fast - ann).norm() / ann.norm()
    assert rel < 0.5, rel


def test_airbench_schedule_flip_and_translate() -> None:
    total = 100
    assert airbench_lr_factor(0, total) == pytest.approx(0.2)
    assert airbench_lr_factor(23, total) == pytest.approx(1.0)
    assert airbench_lr_factor(total, total) == pytest.approx(0.07)
    assert airbench_lr_factor(12, total) < airbench_lr_factor(13, total)
    assert airbench_lr_factor(60, total) > airbench_lr_factor(61, total)
    f0, f1, f2 = (alternating_flip(1000, e, seed=3) for e in range(3))
    assert torch.equal(f0, ~f1) and torch.equal(f0, f2) and 400 < int(f0.sum()) < 600
    x = torch.rand(32, 3, 8, 8)
    none = torch.zeros(32, dtype=torch.bool)
    assert torch.equal(translate_flip(x, none, torch.Generator(), translate=0), x)
    assert torch.equal(translate_flip(x, ~none, torch.Generator(), translate=0), x.flip(-1))
    out = translate_flip(x, none, torch.Generator().manual_seed(0), translate=2)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    shifted = 0
    for i in range(len(x)):
        crops = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        hit = [k for k, cr in enumerate(crops) if torch.equal(out[i], cr)]
        assert hit, i
        shifted += hit[0] != 12
    assert shifted > 16


def test_airbench_optimizer_groups() -> None:
    cfg = TrainConfig(model="fast_vgg", widths="8,16,16", recipe="airbench").resolved()
    assert (cfg.batch_size, cfg.momentum, cfg.label_smoothing, cfg.lr) == (1024, 0.85, 0.2, 11.5)
    assert cfg.name == "fast_vgg_w8-16-16" and cfg.model_kwargs() == {"widths": [8, 16, 16]}
    m = fast_vgg(widths=SMALL)
    opt = _make_optimizer(m, cfg)
    biases, others = opt.param_groups
    bn_biases = {id(b.bias) for b in m.modules() if isinstance(b, nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == bn_biases
    assert biases["lr"] == pytest.approx(64 * others["lr"])
    assert others["lr"] == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)))
    # the same absolute weight decay per step for both groups
    assert biases["lr"] * biases["weight_decay"] == pytest.approx(
        others["lr"] * others["weight_decay"]
    )
    frozen = {id(m.whiten.weight)} | {
        id(b.weight) for b in m.modules() if isinstance(b, nn.BatchNorm2d)
    }
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not frozen & grouped and id(m.whiten.bias) in grouped


def _tiny(tmp_path: Path, tag: str, **kw) -> TrainConfig:
    return TrainConfig(
        model="fast_vgg",
        recipe="airbench",
        widths="8,16,16",
        epochs=4,
        seed=5,
        batch_size=64,
        out=str(tmp_path / tag),
        checkpoint=str(tmp_path / f"{tag}.ckpt"),
        progress=False,
        **kw,
    )


def test_tiny_airbench_run_and_resume(tmp_path: Path) -> None:
    x = _images(320, seed=2)
    y = torch.randint(0, 10, (320,), generator=torch.Generator().manual_seed(2))
    data = (x[:256], y[:256], x[256:], y[256:])
    full = train(_tiny(tmp_path, "full"), data=data)
    part = train(_tiny(tmp_path, "part", stop_after=3), data=data)
    assert part.test_acc is None and part.epochs_done == 3
    ckpt = torch.load(tmp_path / "part.ckpt", weights_only=True)
    assert ckpt["epoch"] == 3 and "lookahead" in ckpt
    resumed = train(_tiny(tmp_path, "part", resume=True), data=data)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fa = torch.load(tmp_path / "full" / "fast_vgg_w8-16-16.pt", weights_only=True)
    fb = torch.load(tmp_path / "part" / "fast_vgg_w8-16-16.pt", weights_only=True)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.test_acc == full.test_acc
    # the whitening filters never train; their bias trains for 3 epochs, then is frozen
    # (after that it moves only through the lookahead average, as in airbench)
    fresh = fast_vgg(widths=SMALL)
    g = torch.Generator().manual_seed(5)
    init_whitening(fresh.whiten, x[:256][torch.randperm(256, generator=g).sort().values])
    w = full.model.whiten
    assert torch.allclose(w.weight, fresh.whiten.weight)
    assert not torch.equal(ckpt["model"]["features.whiten.bias"], fresh.whiten.bias)
    assert not w.bias.requires_grad and w.bias.grad is None
    bns = [m for m in full.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in bns)
    assert any(bn.bias.abs().max() > 0 for bn in bns)
    # the run ends on the lookahead (EMA) weights, as airbench does
    assert torch.equal(
        torch.load(tmp_path / "full.ckpt", weights_only=True)["lookahead"]["fc.weight"],
        a["fc.weight"],
    )
    info = json.loads((tmp_path / "full" / "fast_vgg_w8-16-16.json").read_text())
    assert info["recipe"] == "airbench" and info["model_kwargs"] == {"widths": [8, 16, 16]}
    assert info["label_smoothing"] == 0.2 and info["momentum"] == 0.85
    assert "--recipe airbench" in info["command"]
    m = load_pretrained("fast_vgg_w8-16-16", root=tmp_path / "full")
    assert isinstance(m, FastVGG) and m.widths == SMALL
    assert evaluate(m, x[256:], y[256:]) == pytest.approx(info["test_acc"])
    # a checkpoint of one recipe does not resume a run of the other
    other = _tiny(tmp_path, "part", resume=True)
    other.recipe = "standard"
    with pytest.raises(ValueError, match="recipe"):
        train(other, data=data)


def test_time_batches_with_the_airbench_step() -> None:
    r = time_batches("fast_vgg", 5, 16, recipe="airbench", widths="8,16,16")
    assert r["batch_size"] == 16 and r["cpu_seconds_per_batch"] > 0
    assert r["seconds_per_epoch"] == pytest.approx(r["seconds_per_batch"] * (50000 // 16))
