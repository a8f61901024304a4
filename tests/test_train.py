"""onespike.experiments.train: reproducible, resumable training of the shipped ANNs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onespike.experiments.augment import random_crop_flip
from onespike.experiments.train import (
    TrainConfig,
    evaluate,
    main,
    spiking_activations,
    time_batches,
    train,
)
from onespike.models import MNISTCNN, load_pretrained, pretrained_info, vit_tiny


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    from onespike.data import load_mnist

    return load_mnist("test")


@pytest.fixture(scope="module")
def mnist_train_256() -> tuple[torch.Tensor, torch.Tensor]:
    from onespike.data import load_mnist

    x, y = load_mnist("train")
    return x[:256].clone(), y[:256].clone()


def _tiny_cfg(tmp_path: Path, tag: str, **kw) -> TrainConfig:
    return TrainConfig(
        model="mnist_cnn",
        epochs=2,
        seed=3,
        batch_size=64,
        train_limit=256,
        test_limit=200,
        out=str(tmp_path / tag),
        checkpoint=str(tmp_path / f"{tag}.ckpt"),
        progress=False,
        **kw,
    )


def test_resume_reproduces_uninterrupted_run(tmp_path: Path, mnist_train_256, mnist_test) -> None:
    data = (*mnist_train_256, *mnist_test)
    full = train(_tiny_cfg(tmp_path, "full"), data=data)
    part = train(_tiny_cfg(tmp_path, "part", stop_after=1), data=data)
    assert part.epochs_done == 1 and part.test_acc is None
    assert not (tmp_path / "part" / "mnist_cnn.pt").exists()
    ckpt = torch.load(tmp_path / "part.ckpt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "generator", "torch_rng"} <= set(ckpt)
    assert ckpt["epoch"] == 1
    resumed = train(_tiny_cfg(tmp_path, "part", resume=True), data=data)
    a = torch.load(tmp_path / "full" / "mnist_cnn.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "mnist_cnn.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.test_acc == full.test_acc
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    info = json.loads((tmp_path / "part" / "mnist_cnn.json").read_text())
    assert info["resumed"] is True and info["epochs"] == 2 and info["seed"] == 3
    # the run's own weights load through the registry, from the JSON sidecar
    m = load_pretrained("mnist_cnn", root=tmp_path / "full")
    assert isinstance(m, MNISTCNN) and not m.training


def test_measure_rewrites_the_sidecar_figures(tmp_path: Path, mnist_train_256, mnist_test) -> None:
    from onespike.experiments.train import measure_weights

    data = (*mnist_train_256, *mnist_test)
    cfg = _tiny_cfg(tmp_path, "m")
    res = train(cfg, data=data)
    js = tmp_path / "m" / "mnist_cnn.json"
    info = json.loads(js.read_text())
    assert info["acc_subset1000"] == res.test_acc  # 200 test images: the subset is all of them
    info["test_acc"] = info["acc_subset1000"] = -1.0
    js.write_text(json.dumps(info))
    again = measure_weights(cfg)
    assert again["test_acc"] == res.test_acc == again["acc_subset1000"]
    assert json.loads(js.read_text())["test_acc"] == res.test_acc
    assert again["history"] == info["history"] and "measured" in again
    with pytest.raises(FileNotFoundError, match="train the model first"):
        measure_weights(_tiny_cfg(tmp_path, "nothing-here"))


def test_resume_rejects_other_settings(tmp_path: Path, mnist_train_256, mnist_test) -> None:
    data = (*mnist_train_256, *mnist_test)
    train(_tiny_cfg(tmp_path, "x", stop_after=1), data=data)
    cfg = _tiny_cfg(tmp_path, "x", resume=True)
    cfg.seed = 4
    with pytest.raises(ValueError, match="seed"):
        train(cfg, data=data)


def _mean_abs_activations(model, x: torch.Tensor) -> float:
    """The mean over :func:`spiking_activations` of each output's mean absolute value."""
    seen: list[float] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(float(out.abs().mean())))
        for m in spiking_activations(model)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return sum(seen) / len(seen)


def test_activation_l1_makes_the_spiking_activations_sparser(
    tmp_path: Path, mnist_train_256, mnist_test
) -> None:
    """--activation-l1 penalises what a conversion carries as spikes: every ReLU module and
    a ViT attention's qkv output; the penalised run ends with smaller activations, the
    sidecar records the weight, and a checkpoint refuses to resume with another."""
    assert len(spiking_activations(MNISTCNN())) == 3
    vit = vit_tiny()
    sites = spiking_activations(vit)
    assert len(sites) == 8 and sum(m is b.attn.qkv for b in vit.blocks for m in sites) == 4
    data = (*mnist_train_256, *mnist_test)
    plain = train(_tiny_cfg(tmp_path, "plain"), data=data)
    sparse = train(_tiny_cfg(tmp_path, "l1", activation_l1=0.5), data=data)
    x = mnist_test[0][:200]
    assert _mean_abs_activations(sparse.model, x) < 0.8 * _mean_abs_activations(plain.model, x)
    info = json.loads((tmp_path / "l1" / "mnist_cnn.json").read_text())
    assert info["activation_l1"] == 0.5 and "--activation-l1" in " ".join(sparse.config.to_argv())
    with pytest.raises(ValueError, match="activation_l1"):
        train(_tiny_cfg(tmp_path, "l1", resume=True, activation_l1=0.1), data=data)
    with pytest.raises(ValueError, match="activation_l1 must be a number >= 0"):
        TrainConfig(activation_l1=-0.1).resolved()


def test_standard_recipe_defaults_and_old_checkpoints(
    tmp_path: Path, mnist_train_256, mnist_test
) -> None:
    # the standard recipe (every shipped model's) keeps its defaults ...
    for model, lr, wd in (("mnist_cnn", 0.05, 1e-4), ("vgg11_bn", 0.1, 5e-4)):
        cfg = TrainConfig(model=model).resolved()
        assert cfg.recipe == "standard"
        assert (cfg.batch_size, cfg.momentum, cfg.label_smoothing) == (128, 0.9, 0.0)
        assert (cfg.lr, cfg.weight_decay) == (lr, wd)
    # ... and a checkpoint written before --recipe/--widths existed still resumes
    data = (*mnist_train_256, *mnist_test)
    full = train(_tiny_cfg(tmp_path, "full"), data=data)
    train(_tiny_cfg(tmp_path, "old", stop_after=1), data=data)
    ckpt = torch.load(tmp_path / "old.ckpt", weights_only=True)
    for key in ("recipe", "widths", "activation_l1"):
        del ckpt["config"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    resumed = train(_tiny_cfg(tmp_path, "old", resume=True), data=data)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _random_cifar(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random CIFAR-shaped images and labels (seed 0)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_cifar_model_saves_fp16_and_loads_fp32(tmp_path: Path) -> None:
    x, y = _random_cifar(16)
    cfg = TrainConfig(
        model="vgg11_bn",
        width=0.125,
        epochs=1,
        batch_size=8,
        out=str(tmp_path),
        progress=False,
        channels_last=True,
    )
    res = train(cfg, data=(x, y, x, y))
    assert res.config.name == "vgg11_bn_w0.125" and res.config.augment is True
    sd = torch.load(tmp_path / "vgg11_bn_w0.125.pt", weights_only=True)
    assert sd["features.conv1.weight"].dtype == torch.float16
    assert sd["features.conv1.weight"].is_contiguous()
    assert sd["features.bn1.num_batches_tracked"].dtype == torch.int64
    info = pretrained_info("vgg11_bn_w0.125", root=tmp_path)
    assert info["weights_dtype"] == "float16" and info["model_kwargs"] == {"width": 0.125}
    m = load_pretrained("vgg11_bn_w0.125", root=tmp_path)
    assert m.features.conv1.weight.dtype == torch.float32
    assert m.features.conv1.out_channels == 8
    assert evaluate(m, x, y) == pytest.approx(info["test_acc"])


def test_random_crop_flip() -> None:
    x = torch.rand(64, 3, 8, 8) + 1.0  # strictly positive, so padding shows up as zeros
    out1 = random_crop_flip(x, torch.Generator().manual_seed(5), padding=2)
    out2 = random_crop_flip(x, torch.Generator().manual_seed(5), padding=2)
    assert out1.shape == x.shape
    assert torch.equal(out1, out2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    n_flipped = 0
    for i in range(len(x)):
        crops = [
            padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)
        ]  # all 25 offsets
        if any(torch.equal(out1[i], cr) for cr in crops):
            continue
        assert any(torch.equal(out1[i], cr.flip(-1)) for cr in crops)
        n_flipped += 1
    assert 10 < n_flipped < 54


def test_time_batches_gives_seconds_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    r = time_batches("mnist_cnn", 1, 8)
    assert r["seconds_per_batch"] > 0 and r["cpu_seconds_per_batch"] > 0
    assert r["seconds_per_epoch"] == pytest.approx(r["seconds_per_batch"] * (60000 // 8))
    assert main(["--model", "mnist_cnn", "--time-batches", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist_cnn width=1 batch=8 threads=") and " s/batch, ~" in out


def test_device_option_is_checked_before_any_work(tmp_path: Path, monkeypatch) -> None:
    from onespike.errors import OptionError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="CUDA is not available"):
        train(_tiny_cfg(tmp_path, "gpu", device="cuda", data_root=str(tmp_path / "no-data")))
    with pytest.raises(OptionError, match="not a device name"):
        train(_tiny_cfg(tmp_path, "bad", device="gpu0", data_root=str(tmp_path / "no-data")))


def _tiny_cifar_runs(tmp_path: Path, device: str, amp: bool) -> dict[str, dict]:
    """A tiny standard run (ResNet-20) and a tiny airbench run (fast_vgg) on ``device``;
    return their sidecars."""
    x, y = _random_cifar(64)
    infos = {}
    for model, kw in (("resnet20", {}), ("fast_vgg", {"recipe": "airbench", "widths": "8,16,16"})):
        cfg = TrainConfig(
            model=model,
            epochs=2,
            batch_size=32,
            out=str(tmp_path / device),
            checkpoint=str(tmp_path / f"{device}_{model}.ckpt"),
            progress=False,
            channels_last=True,
            device=device,
            amp=amp,
            **kw,
        )
        res = train(cfg, data=(x, y, x, y))
        assert next(res.model.parameters()).device.type == torch.device(device).type
        info = pretrained_info(res.config.name, root=tmp_path / device)
        sd = torch.load(tmp_path / device / f"{res.config.name}.pt", weights_only=True)
        assert all(v.device.type == "cpu" for v in sd.values())  # saved for any machine
        assert all(h["train_loss"] == h["train_loss"] for h in info["history"])  # not NaN
        assert info["amp"] == ("bfloat16 autocast" if amp else None)
        assert info["device"].startswith(torch.device(device).type)
        if device != "cpu":  # the default is left out of the command line
            assert f"--device {device}" in " ".join(cfg.to_argv())
        infos[model] = info
    return infos


def test_bfloat16_autocast_run_on_cpu(tmp_path: Path) -> None:
    infos = _tiny_cifar_runs(tmp_path, "cpu", amp=True)
    assert infos["resnet20"]["history"][-1]["epoch"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_training_on_cuda(tmp_path: Path) -> None:
    infos = _tiny_cifar_runs(tmp_path, "cuda", amp=True)
    assert infos["fast_vgg"]["device"].startswith("cuda (")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    x, y = _random_cifar(64)
    kw = dict(
        model="fast_vgg",
        recipe="airbench",
        widths="8,16,16",
        epochs=3,
        batch_size=32,
        checkpoint=str(tmp_path / "run.ckpt"),
        progress=False,
        device="cuda",
    )
    part = train(TrainConfig(**kw, stop_after=1), data=(x, y, x, y))
    assert part.epochs_done == 1
    done = train(TrainConfig(**kw, resume=True, out=str(tmp_path)), data=(x, y, x, y))
    assert done.epochs_done == 3 and len(done.history) == 3 and done.test_acc is not None


def test_sidecar_says_which_epochs_ran_on_which_device() -> None:
    from onespike.experiments.train import _devices_used

    gpu, cpu = "cuda (NVIDIA H200)", "cpu"
    hist = [{"epoch": e, "device": gpu} for e in (1, 2, 3)] + [{"epoch": 4, "device": cpu}]
    assert _devices_used(hist, "cpu") == f"{gpu} (epochs 1-3), cpu (epoch 4)"
    assert _devices_used(hist[:3], "cpu") == gpu
    assert _devices_used([{"epoch": 1}, {"epoch": 2, "device": cpu}], "cpu") == (
        "unknown (epoch 1), cpu (epoch 2)"
    )
    assert _devices_used([], "cpu") == "cpu"


def test_tta_logits_average_six_views_as_airbench():
    """Level 2 is airbench94's six views: half the mirror pair, a quarter each mirror pair
    of the image moved one pixel up-left and down-right (reflect padding); checked on a
    linear model, whose TTA equals the model applied to the weighted mean of the views."""
    from onespike.experiments.augment import tta_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 6, 4))
    x = torch.randn(7, 3, 5, 6)
    p = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up, down = p[..., 0:5, 0:6], p[..., 2:7, 2:8]
    assert torch.equal(up[..., 1:, 1:], x[..., :-1, :-1])  # moved by one pixel
    views = [x, x.flip(-1), up, up.flip(-1), down, down.flip(-1)]
    weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    mean = sum(wt * v for wt, v in zip(weights, views, strict=True))
    torch.testing.assert_close(tta_logits(model, x, 2), model(mean))
    torch.testing.assert_close(tta_logits(model, x, 1), model(0.5 * x + 0.5 * x.flip(-1)))
    assert torch.equal(tta_logits(model, x, 0), model(x))
    with pytest.raises(ValueError, match="level"):
        tta_logits(model, x, 3)
