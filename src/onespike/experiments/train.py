"""Train the ANNs that onespike converts (MNIST CNN, ResNet-20, VGG-11-BN, fast VGG) on CPU.

Usage (from the repository root)::

    python -m onespike.experiments.train --model mnist_cnn --epochs 6 --seed 0 --threads 1 \\
        --out src/onespike/assets/weights
    python -m onespike.experiments.train --model resnet20 --epochs 200 --seed 0 \\
        --checkpoint runs/resnet20.ckpt --resume --out src/onespike/assets/weights

Recipe ``--recipe standard`` (the default): SGD (momentum 0.9, Nesterov), batch 128,
cosine learning-rate decay stepped per batch, weight decay 1e-4 (MNIST) / 5e-4
(CIFAR-10), optional label smoothing.  CIFAR-10 batches are augmented on tensors (random
32x32 crop from a 4-pixel zero-padded image, random horizontal flip).

Recipe ``--recipe airbench`` (for ``fast_vgg``): the training of Keller Jordan's
airbench94 (https://github.com/KellerJordan/cifar10-airbench, ``legacy/airbench94.py``);
see :data:`AIRBENCH` and docs/MODELS.md.  The whitening layer is initialised from the
training set, batches of 1024 with a summed label-smoothed (0.2) loss, SGD Nesterov
with momentum 0.85 and airbench's decoupled learning rate and weight decay, BatchNorm
shifts at 64x the learning rate, a linear warm-up (23 % of the steps) then a linear decay,
lookahead towards an exponential moving average of the weights every 5 steps, and
"alternating flip" plus 2-pixel reflect-padded translation as augmentation.

Every random choice (initialisation, data order, augmentation, dropout) is driven by
``--seed``; with ``--checkpoint`` the full state (model, optimiser, scheduler, epoch,
RNG states, the lookahead weights) is written after every epoch so ``--resume``
continues an interrupted run and ends with the same weights as an uninterrupted one.

With ``--out DIR`` the final weights go to ``DIR/{name}.pt`` (a ``state_dict``; fp32 for
MNIST, fp16 for CIFAR-10 models) and a JSON sidecar ``DIR/{name}.json`` records the
command, configuration and test accuracy measured on the saved (round-tripped) weights,
read back by :func:`onespike.models.pretrained_info`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from onespike._io import atomic_write, write_json
from onespike.data import fixed_subset, load_dataset
from onespike.errors import OptionError, run_command
from onespike.experiments.airbench import (
    AIRBENCH,
    Lookahead,
    airbench_lr_factor,
    airbench_optimizer,
    whiten_init,
)
from onespike.experiments.augment import alternating_flip, random_crop_flip, translate_flip
from onespike.models import (
    PretrainedWeightsNotFoundError,
    get_model,
    get_spec,
    load_state_dict_file,
)
from onespike.models.fastvgg import FAST_VGG_WIDTHS
from onespike.models.vit import Attention

__all__ = [
    "RECIPES",
    "TrainConfig",
    "TrainResult",
    "build_parser",
    "config_from_args",
    "evaluate",
    "main",
    "measure_weights",
    "save_weights",
    "time_batches",
    "train",
]

#: Hyper-parameter defaults per dataset family (used when a field is left as ``None``).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"lr": 0.05, "weight_decay": 1e-4, "augment": False, "save_dtype": "float32"},
    "fashion-mnist": {"lr": 0.05, "weight_decay": 1e-4, "augment": False, "save_dtype": "float32"},
    "cifar10": {"lr": 0.1, "weight_decay": 5e-4, "augment": True, "save_dtype": "float16"},
}

#: The training recipes (``--recipe``) and the defaults each gives to ``None`` fields.
RECIPES: dict[str, dict[str, Any]] = {
    "standard": {"batch_size": 128, "momentum": 0.9, "label_smoothing": 0.0},
    "airbench": {
        "batch_size": 1024,
        "lr": 11.5,
        "momentum": 0.85,
        "weight_decay": 0.0153,
        "label_smoothing": 0.2,
        "augment": True,
    },
}

#: Config fields that must match between a checkpoint and the run resuming it.
_RESUME_KEYS = (
    "recipe",
    "widths",
    "model",
    "dataset",
    "epochs",
    "seed",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "width",
    "augment",
    "train_limit",
    "activation_l1",
)
#: What a checkpoint written before a field existed implies for it.
_RESUME_MISSING: dict[str, Any] = {"recipe": "standard", "widths": None, "activation_l1": 0.0}


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``None`` fields take the defaults of the
    recipe (:data:`RECIPES`), then of the dataset (:data:`DATASET_DEFAULTS`).

    ``widths`` (``fast_vgg`` only) is a comma-separated string of the three block widths,
    e.g. ``"64,256,256"``; ``width`` is the channel multiplier of ``vgg11_bn``.
    ``activation_l1`` adds that weight times the mean absolute value of every activation a
    converted network carries as spikes (:func:`spiking_activations`) to the loss: sparser
    activations, fewer spikes per neuron.
    """

    model: str = "mnist_cnn"
    dataset: str | None = None
    epochs: int = 6
    seed: int = 0
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    width: float = 1.0
    widths: str | None = None
    recipe: str = "standard"
    augment: bool | None = None
    activation_l1: float = 0.0
    name: str | None = None
    out: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    threads: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    data_root: str | None = None
    save_dtype: str | None = None
    channels_last: bool = False
    device: str = "cpu"
    amp: bool = False
    stop_after: int | None = None
    progress: bool = True
    eval_batch_size: int = 1000

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in from the model and dataset."""
        cfg = TrainConfig(**asdict(self))
        if cfg.recipe not in RECIPES:
            raise OptionError(f"unknown recipe {cfg.recipe!r}; known: {sorted(RECIPES)}")
        if cfg.dataset is None:
            cfg.dataset = get_spec(cfg.model).dataset
        if cfg.dataset not in DATASET_DEFAULTS:
            raise OptionError(f"unknown dataset {cfg.dataset!r}; known: {sorted(DATASET_DEFAULTS)}")
        for defaults in (RECIPES[cfg.recipe], DATASET_DEFAULTS[cfg.dataset]):
            for key, value in defaults.items():
                if getattr(cfg, key) is None:
                    setattr(cfg, key, value)
        if cfg.widths is not None:
            cfg.widths = ",".join(str(w) for w in _parse_widths(cfg.widths))
        if cfg.name is None:
            cfg.name = cfg.model
            if cfg.width != 1.0:
                cfg.name += f"_w{cfg.width:g}"
            if cfg.widths is not None and _parse_widths(cfg.widths) != FAST_VGG_WIDTHS:
                cfg.name += "_w" + cfg.widths.replace(",", "-")
            if cfg.dataset != get_spec(cfg.model).dataset:
                cfg.name += f"_{cfg.dataset.replace('-', '_')}"
        if not 0 <= cfg.activation_l1 < float("inf"):
            raise OptionError(f"activation_l1 must be a number >= 0, got {cfg.activation_l1!r}")
        if cfg.save_dtype not in ("float32", "float16"):
            raise OptionError(f"save_dtype must be float32 or float16, got {cfg.save_dtype!r}")
        return cfg

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for :func:`onespike.models.get_model`."""
        if self.model.startswith("vgg"):
            return {"width": self.width}
        if self.widths is not None or self.model == "fast_vgg":
            widths = FAST_VGG_WIDTHS if self.widths is None else _parse_widths(self.widths)
            return {"widths": list(widths)}
        return {}

    def to_argv(self) -> list[str]:
        """Command-line arguments that reproduce this configuration."""
        argv: list[str] = []
        defaults = TrainConfig()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "epochs", "seed") or value != getattr(defaults, f.name):
                flag = "--" + f.name.replace("_", "-")
                if isinstance(value, bool):
                    if f.name == "progress":
                        argv += [] if value else ["--no-progress"]
                    elif f.name == "augment":
                        argv += ["--augment" if value else "--no-augment"]
                    elif value:
                        argv.append(flag)
                elif value is not None:
                    argv += [flag, str(value)]
        return argv


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise OptionError(f"widths must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise OptionError(f"widths must be positive, got {text!r}")
    return widths


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module
    config: TrainConfig
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    test_acc: float | None = None
    info: dict[str, Any] | None = None


# --------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    dev = next(iter(model.parameters())).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        correct += int((model(xb).argmax(1) == yb).sum())
    return 100.0 * correct / max(1, len(x))


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    assert cfg.lr is not None and cfg.weight_decay is not None and cfg.momentum is not None
    if cfg.recipe == "airbench":
        assert cfg.batch_size is not None
        return airbench_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size)
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
    )


def _device(name: str) -> torch.device:
    """The training device named by ``--device``, with a clear error when it is absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name!r} is not a device name; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(
            f"--device {name}: CUDA is not available on this machine; train with --device cpu"
        )
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _devices_used(history: list[dict[str, Any]], current: str) -> str:
    """The sidecar's ``device``: the one device of the run, or which epochs ran where when a
    run was resumed on another device (epochs recorded without a device count as unknown)."""
    spans: list[list[Any]] = []  # [device, first epoch, last epoch]
    for h in history:
        dev = h.get("device", "unknown")
        if spans and spans[-1][0] == dev:
            spans[-1][2] = h["epoch"]
        else:
            spans.append([dev, h["epoch"], h["epoch"]])
    if not spans:
        return _device_name(current)
    if len(spans) == 1:
        return str(spans[0][0])
    return ", ".join(f"{d} (epochs {a}-{b})" if a != b else f"{d} (epoch {a})" for d, a, b in spans)


def _device_name(name: str) -> str:
    """What the sidecar records as the training device: the GPU's name for CUDA."""
    device = torch.device(name)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` beside ``path``, then renamed (:func:`onespike._io.atomic_write`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        tqdm.write(msg, file=sys.stderr)


def _load_data(
    cfg: TrainConfig, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: ``data`` cut to the limits, or read from disk."""
    assert cfg.dataset is not None
    if data is None:
        x_tr, y_tr = load_dataset(cfg.dataset, "train", cfg.data_root, cfg.train_limit)
        x_te, y_te = load_dataset(cfg.dataset, "test", cfg.data_root, cfg.test_limit)
        return x_tr, y_tr, x_te, y_te
    x_tr, y_tr, x_te, y_te = data
    if cfg.train_limit is not None:
        idx = fixed_subset(len(x_tr), cfg.train_limit)
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if cfg.test_limit is not None:
        idx = fixed_subset(len(x_te), cfg.test_limit)
        x_te, y_te = x_te[idx], y_te[idx]
    return x_tr, y_tr, x_te, y_te


def spiking_activations(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs a converted ``model`` carries as spikes, as far as the
    training penalty sees them: every ``nn.ReLU`` module (functional ReLUs are not seen)
    and the ``qkv`` Linear of each :class:`onespike.models.vit.Attention` (its q, k and v
    become signed neurons)."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    return relus + [m.qkv for m in model.modules() if isinstance(m, Attention)]


class ActivationL1:
    """Forward hooks that collect, in training mode, the mean absolute value of each output
    of :func:`spiking_activations`; :meth:`pop` returns their sum and starts again."""

    def __init__(self, model: nn.Module) -> None:
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in spiking_activations(model)]
        if not self.handles:
            raise OptionError(
                "--activation-l1: the model has no ReLU module or attention qkv to penalise"
            )

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.terms.append(output.float().abs().mean())

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total


@dataclass
class _Run:
    """The state of a training run: what a checkpoint saves, and what the steps use."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lookahead: Lookahead | None
    whiten_bias: torch.Tensor | None
    gen: torch.Generator
    criterion: nn.Module
    device: torch.device
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    airbench: bool
    activation_l1: ActivationL1 | None = None


def _start_run(cfg: TrainConfig, x_tr: torch.Tensor, device: torch.device) -> _Run:
    """The model (seeded, whitened, on ``device``), its optimizer, schedule and sampler."""
    assert cfg.batch_size is not None
    airbench = cfg.recipe == "airbench"
    n_train = len(x_tr)
    batch_size = min(cfg.batch_size, n_train)
    steps_per_epoch = n_train // batch_size  # the last partial batch is dropped
    total_steps = cfg.epochs * steps_per_epoch
    torch.manual_seed(cfg.seed)
    model = get_model(cfg.model, **cfg.model_kwargs())
    whiten_init(model, x_tr, cfg.seed)  # fast_vgg's patch whitening (any recipe)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model, cfg)
    if airbench:
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: airbench_lr_factor(step, total_steps)
        )
        lookahead: Lookahead | None = Lookahead(model)
        whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        lookahead, whiten_bias = None, None
    gen = torch.Generator().manual_seed(cfg.seed)
    criterion = nn.CrossEntropyLoss(
        label_smoothing=cfg.label_smoothing, reduction="sum" if airbench else "mean"
    )
    l1 = ActivationL1(model) if cfg.activation_l1 else None
    return _Run(
        model, optimizer, scheduler, lookahead, whiten_bias, gen, criterion, device,
        batch_size, steps_per_epoch, total_steps, airbench, l1,
    )  # fmt: skip


def _resume(cfg: TrainConfig, ckpt_path: Path | None, run: _Run) -> tuple[int, list, bool]:
    """Load ``run``'s state from its checkpoint when ``cfg.resume`` asks for it:
    ``(epochs done, history, resumed)``. Other settings than the checkpoint's are refused."""
    if not cfg.resume:
        return 0, [], False
    if ckpt_path is None:
        raise OptionError("--resume needs --checkpoint PATH")
    if not ckpt_path.is_file():
        _log(cfg, f"no checkpoint at {ckpt_path}; starting from scratch")
        return 0, [], False
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    saved = ckpt["config"]
    diff = {k: (saved.get(k, _RESUME_MISSING.get(k)), getattr(cfg, k)) for k in _RESUME_KEYS}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        raise OptionError(f"checkpoint {ckpt_path} was written with other settings: {diff}")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.gen.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    if run.lookahead is not None:
        run.lookahead.ema = {k: v.to(run.device) for k, v in ckpt["lookahead"].items()}
    start_epoch = ckpt["epoch"]
    _log(cfg, f"resumed from {ckpt_path} after epoch {start_epoch}/{cfg.epochs}")
    return start_epoch, list(ckpt["history"]), True


def _save_checkpoint(
    cfg: TrainConfig, run: _Run, epochs_done: int, history: list, path: Path
) -> None:
    """Everything a resumed run needs to continue as if never interrupted."""
    _atomic_save(
        {
            "epoch": epochs_done,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "generator": run.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "config": asdict(cfg),
            **({"lookahead": run.lookahead.ema} if run.lookahead is not None else {}),
        },
        path,
    )


def _train_step(
    cfg: TrainConfig, run: _Run, xb: torch.Tensor, yb: torch.Tensor, done: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch (``done``: steps of the run after this one):
    ``(loss, logits)``."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        logits = run.model(xb)
        loss = run.criterion(logits.float(), yb)
        if run.activation_l1 is not None:
            loss = loss + cfg.activation_l1 * run.activation_l1.pop()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    if run.lookahead is not None:
        if done % AIRBENCH["lookahead_every"] == 0:
            run.lookahead.update(run.model, Lookahead.decay(done, run.total_steps))
        if done == run.total_steps:
            run.lookahead.update(run.model, 1.0)  # end on the averaged weights
    return loss, logits


def _train_epoch(
    cfg: TrainConfig, run: _Run, x_tr: torch.Tensor, y_tr: torch.Tensor, epoch: int
) -> dict[str, Any]:
    """One epoch over the training set (augmented as the recipe says): its record
    (without the device)."""
    model, gen, batch_size = run.model, run.gen, run.batch_size
    n_train = len(x_tr)
    model.train()
    t0 = time.perf_counter()
    if run.whiten_bias is not None:
        run.whiten_bias.requires_grad_(epoch < AIRBENCH["whiten_bias_epochs"])
    flip = alternating_flip(n_train, epoch, cfg.seed) if run.airbench and cfg.augment else None
    perm = torch.randperm(n_train, generator=gen)
    # running sums stay on the device: no synchronisation per step on a GPU
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    seen = 0
    bar = tqdm(
        range(run.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not cfg.progress,
        leave=False,
        dynamic_ncols=True,
    )
    for step in bar:
        idx = perm[step * batch_size : (step + 1) * batch_size]
        on_device = idx.to(run.device)
        xb, yb = x_tr[on_device], y_tr[on_device]
        if flip is not None:
            xb = translate_flip(xb, flip[idx], gen, AIRBENCH["translate"])
        elif cfg.augment:
            xb = random_crop_flip(xb, gen)
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        done = epoch * run.steps_per_epoch + step + 1
        loss, logits = _train_step(cfg, run, xb, yb, done)
        loss_sum += loss.detach() * (1 if run.airbench else len(yb))
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        if cfg.progress and (step % 20 == 0 or step == run.steps_per_epoch - 1):
            bar.set_postfix(
                loss=f"{float(loss_sum) / seen:.4f}", acc=f"{100 * int(correct) / seen:.2f}"
            )
    bar.close()
    return {
        "epoch": epoch + 1,
        "train_loss": float(loss_sum) / max(1, seen),
        "train_acc": 100.0 * int(correct) / max(1, seen),
        "lr_end": run.optimizer.param_groups[-1]["lr"],
        "seconds": time.perf_counter() - t0,
    }


def train(
    config: TrainConfig,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    command: str | None = None,
) -> TrainResult:
    """Run (or resume) a training run described by ``config``.

    ``data`` optionally supplies ``(x_train, y_train, x_test, y_test)`` already loaded
    (``train_limit`` / ``test_limit`` still apply, via :func:`fixed_subset`); otherwise
    it is read with :mod:`onespike.data`.  ``command`` is recorded in the JSON sidecar
    (default: a command line rebuilt from ``config``).  If ``config.stop_after`` is set,
    the run stops after that many epochs in total (simulating an interruption; nothing
    is written to ``out``).  ``config.threads`` sets ``torch.set_num_threads`` for the
    rest of the process.
    """
    cfg = config.resolved()
    assert cfg.lr is not None and cfg.dataset is not None and cfg.name is not None
    assert cfg.batch_size is not None
    device = _device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    x_tr, y_tr, x_te, y_te = _load_data(cfg, data)
    n_train = len(x_tr)
    run = _start_run(cfg, x_tr, device)
    x_tr, y_tr = x_tr.to(device), y_tr.to(device)  # the test set stays where it is
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else None
    start_epoch, history, resumed = _resume(cfg, ckpt_path, run)

    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    device_name = _device_name(cfg.device)  # recorded with every epoch
    for epoch in range(start_epoch, last_epoch):
        rec = {**_train_epoch(cfg, run, x_tr, y_tr, epoch), "device": device_name}
        history.append(rec)
        _log(
            cfg,
            f"epoch {epoch + 1}/{cfg.epochs}: loss {rec['train_loss']:.4f} "
            f"train acc {rec['train_acc']:.2f}% ({rec['seconds']:.0f} s)",
        )
        if ckpt_path is not None:
            _save_checkpoint(cfg, run, epoch + 1, history, ckpt_path)

    model = run.model
    model.eval()
    result = TrainResult(model=model, config=cfg, epochs_done=last_epoch, history=history)
    if last_epoch < cfg.epochs:
        return result
    result.test_acc = evaluate(model, x_te, y_te, cfg.eval_batch_size)
    _log(cfg, f"test accuracy ({len(x_te)} images): {result.test_acc:.2f}%")
    if cfg.out is not None:
        cmd = command or "python -m onespike.experiments.train " + shlex.join(cfg.to_argv())
        result.info = save_weights(model, cfg, x_te, y_te, cmd, history, n_train, resumed)
        _log(cfg, f"wrote {Path(cfg.out) / cfg.name}.pt / .json")
    return result


def save_weights(
    model: nn.Module,
    cfg: TrainConfig,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    command: str,
    history: list[dict[str, float]],
    train_size: int,
    resumed: bool = False,
) -> dict[str, Any]:
    """Write ``{out}/{name}.pt`` and its JSON sidecar; return the sidecar's content.

    Accuracies in the sidecar are measured on the weights *as saved* (after the fp16
    round trip for CIFAR models), in percent: ``test_acc`` on the whole evaluated test
    set, ``acc_first1000`` on its first 1,000 images (a reproducibility check that tests
    re-measure; for CIFAR-10 read from the JPEG zip these are all airplanes, so it is not
    an accuracy estimate there), ``acc_subset1000`` on the fixed random 1,000 of
    :func:`fixed_subset` (an estimate on every data set), ``test_acc_before_cast`` before
    the dtype round trip.
    """
    assert cfg.out is not None and cfg.name is not None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if cfg.save_dtype == "float16" else torch.float32
    sd = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
        .clone()
        .contiguous()
        for k, v in model.state_dict().items()
    }
    pt = out / f"{cfg.name}.pt"
    _atomic_save(sd, pt)

    acc_fp32 = evaluate(model, x_test, y_test, cfg.eval_batch_size)
    reloaded = get_model(cfg.model, **cfg.model_kwargs())
    reloaded.load_state_dict(load_state_dict_file(pt))
    test_acc = evaluate(reloaded, x_test, y_test, cfg.eval_batch_size)
    acc_1000 = evaluate(reloaded, x_test[:1000], y_test[:1000], cfg.eval_batch_size)
    sub = fixed_subset(len(x_test), 1000)
    acc_sub = evaluate(reloaded, x_test[sub], y_test[sub], cfg.eval_batch_size)
    extra: dict[str, Any] = {}
    if cfg.recipe == "airbench":
        extra = {
            "recipe": "airbench",
            "airbench": dict(AIRBENCH),
            "loss_reduction": "sum",
            "augmentation": (
                f"alternating flip, translate {AIRBENCH['translate']} px (reflect padding)"
                if cfg.augment
                else "none"
            ),
            "schedule": (
                f"linear warm-up {AIRBENCH['lr_start']}->1 over {AIRBENCH['warmup']:.0%} of "
                f"the steps, then linear to {AIRBENCH['lr_end']} (per batch); lookahead EMA"
            ),
        }
    info: dict[str, Any] = {
        "name": cfg.name,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs(),
        "dataset": cfg.dataset,
        "command": command,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "nesterov": True,
        "weight_decay": cfg.weight_decay,
        "label_smoothing": cfg.label_smoothing,
        "augment": cfg.augment,
        "activation_l1": cfg.activation_l1,
        "schedule": "cosine (per batch), no warm-up",
        "train_size": train_size,
        "test_size": len(x_test),
        "acc_units": "percent",
        "test_acc": test_acc,
        "acc_first1000": acc_1000,
        "acc_subset1000": acc_sub,
        "test_acc_before_cast": acc_fp32,
        "weights_dtype": cfg.save_dtype,
        "weights_sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
        "num_params": sum(p.numel() for p in model.parameters()),
        "history": history,
        "train_seconds": sum(h["seconds"] for h in history),
        "resumed": resumed,
        "threads": torch.get_num_threads(),
        "device": _devices_used(history, cfg.device),
        "amp": "bfloat16 autocast" if cfg.amp else None,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    info.update(extra)
    write_json(out / f"{cfg.name}.json", info)
    return info


def measure_weights(cfg: TrainConfig) -> dict[str, Any]:
    """Re-measure the accuracies of the saved ``{out}/{name}.pt``; update and return its sidecar.

    For weight files written before a field existed (``acc_subset1000``): the sidecar keeps
    its training record and gets ``measured`` (when and with which torch).
    """
    cfg = cfg.resolved()
    if cfg.out is None:
        raise OptionError("--measure needs --out (the folder holding {name}.pt and .json)")
    out = Path(cfg.out)
    pt, js = out / f"{cfg.name}.pt", out / f"{cfg.name}.json"
    if not pt.exists() or not js.exists():
        raise PretrainedWeightsNotFoundError(
            f"--measure: {pt} or {js} not found; train the model first"
        )
    info = json.loads(js.read_text())
    x_test, y_test = load_dataset(cfg.dataset, "test", cfg.data_root, cfg.test_limit)
    model = get_model(info["model"], **info.get("model_kwargs", {}))
    model.load_state_dict(load_state_dict_file(pt))
    sub = fixed_subset(len(x_test), 1000)
    info["test_acc"] = evaluate(model, x_test, y_test, cfg.eval_batch_size)
    info["acc_first1000"] = evaluate(model, x_test[:1000], y_test[:1000], cfg.eval_batch_size)
    info["acc_subset1000"] = evaluate(model, x_test[sub], y_test[sub], cfg.eval_batch_size)
    info["measured"] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
    }
    write_json(js, info)
    return info


def time_batches(
    model_name: str,
    n_batches: int = 5,
    batch_size: int | None = None,
    width: float = 1.0,
    threads: int | None = None,
    n_train: int | None = None,
    channels_last: bool = False,
    recipe: str = "standard",
    widths: str | None = None,
    device: str = "cpu",
    amp: bool = False,
) -> dict[str, float]:
    """Time ``n_batches`` training steps on random data (after one warm-up step).

    ``batch_size`` defaults to the recipe's (128 standard, 1024 airbench); the airbench
    step includes its augmentation, summed loss, parameter groups and (every 5th step)
    the lookahead update.  Returns seconds per batch and the implied seconds per epoch
    over ``n_train`` images (default: 60,000 for MNIST models, 50,000 for CIFAR-10 models),
    and the CPU seconds per batch the process used (all threads together; below the
    wall-clock time when other processes share the cores: with one thread, roughly what a
    quiet core would take).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    spec = get_spec(model_name)
    cfg = TrainConfig(
        model=model_name, width=width, widths=widths, batch_size=batch_size, recipe=recipe
    ).resolved()
    assert cfg.batch_size is not None
    batch_size = cfg.batch_size
    airbench = cfg.recipe == "airbench"
    torch.manual_seed(0)
    model = get_model(model_name, **cfg.model_kwargs()).train()
    x = torch.rand(batch_size, *spec.input_shape)
    y = torch.randint(0, 10, (batch_size,))
    whiten_init(model, x, 0)
    dev = _device(device)
    model, x, y = model.to(dev), x.to(dev), y.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _make_optimizer(model, cfg)
    lookahead = Lookahead(model) if airbench else None
    gen = torch.Generator().manual_seed(0)
    flip = alternating_flip(batch_size, 0, 0)
    reduction = "sum" if airbench else "mean"
    steps = 0

    def step() -> None:
        nonlocal steps
        if airbench and cfg.augment:
            xb = translate_flip(x, flip, gen, AIRBENCH["translate"])
        else:
            xb = random_crop_flip(x, gen) if cfg.augment else x
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        loss = F.cross_entropy(
            logits.float(), y, label_smoothing=cfg.label_smoothing or 0.0, reduction=reduction
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if lookahead is not None and steps % AIRBENCH["lookahead_every"] == 0:
            lookahead.update(model, 0.5)

    step()
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        step()
    _sync(dev)
    per_batch = (time.perf_counter() - t0) / n_batches
    cpu_per_batch = (time.process_time() - c0) / n_batches
    n = n_train or (60000 if spec.dataset == "mnist" else 50000)
    return {
        "seconds_per_batch": per_batch,
        "seconds_per_epoch": per_batch * (n // batch_size),
        "cpu_seconds_per_batch": cpu_per_batch,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
    }


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m onespike.experiments.train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m onespike.experiments.train",
        description=(
            "Train an onespike ANN (mnist_cnn on MNIST, resnet20 / vgg11_bn / fast_vgg on "
            "CIFAR-10)."
        ),
    )
    p.add_argument("--model", required=True, help="mnist_cnn | resnet20 | vgg11_bn | fast_vgg")
    p.add_argument("--dataset", default=None, help="mnist | fashion-mnist | cifar10")
    p.add_argument(
        "--recipe",
        default="standard",
        choices=sorted(RECIPES),
        help="standard (SGD, cosine; the default) or airbench (fast_vgg's: see docs/MODELS.md)",
    )
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="128 (standard), 1024 (airbench)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak LR (0.05 MNIST, 0.1 CIFAR; airbench: 11.5 per 1024 examples, decoupled)",
    )
    p.add_argument("--momentum", type=float, default=None, help="0.9 (standard), 0.85 (airbench)")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="1e-4 MNIST, 5e-4 CIFAR (airbench: 0.0153 per 1024 examples, decoupled)",
    )
    p.add_argument(
        "--label-smoothing", type=float, default=None, help="0 (standard), 0.2 (airbench)"
    )
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (vgg11_bn)")
    p.add_argument(
        "--widths", default=None, help="block widths of fast_vgg, e.g. 64,256,256 (the default)"
    )
    p.add_argument(
        "--activation-l1",
        type=float,
        default=0.0,
        help="weight of the L1 penalty on the activations carried as spikes (ReLU outputs, "
        "attention q/k/v): fewer spikes per neuron (default 0: none)",
    )
    p.add_argument("--augment", dest="augment", action="store_true", default=None)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--name", default=None, help="output file stem (default: derived from model)")
    p.add_argument("--out", default=None, help="directory for {name}.pt and {name}.json")
    p.add_argument("--checkpoint", default=None, help="checkpoint path, rewritten every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if present")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--train-limit", type=int, default=None, help="use a fixed subset of N train images"
    )
    p.add_argument(
        "--test-limit", type=int, default=None, help="use a fixed subset of N test images"
    )
    p.add_argument("--data-root", default=None, help="data folder (default: onespike.data)")
    p.add_argument("--save-dtype", default=None, choices=["float32", "float16"])
    p.add_argument(
        "--stop-after", type=int, default=None, help="stop after this many epochs (resume later)"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="train in channels-last memory format (faster CPU convolutions)",
    )
    p.add_argument(
        "--device", default="cpu", help="cpu (the default) or cuda; the data moves there too"
    )
    p.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast in the training steps (GPU runs)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument(
        "--measure",
        action="store_true",
        help="only re-measure the saved {out}/{name}.pt and update its JSON sidecar",
    )
    p.add_argument(
        "--time-batches",
        type=int,
        default=None,
        metavar="N",
        help="only time N training steps on random data and print seconds per epoch",
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed arguments into a :class:`TrainConfig`."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m onespike.experiments.train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.time_batches is not None:
        r = time_batches(
            args.model,
            args.time_batches,
            args.batch_size,
            args.width,
            args.threads,
            channels_last=args.channels_last,
            recipe=args.recipe,
            widths=args.widths,
            device=args.device,
            amp=args.amp,
        )
        fmt = " channels_last" if args.channels_last else ""
        fmt += f" recipe={args.recipe}" if args.recipe != "standard" else ""
        print(
            f"{args.model} width={args.width:g} batch={r['batch_size']}{fmt} "
            f"threads={r['threads']}: "
            f"{r['seconds_per_batch']:.3f} s/batch, ~{r['seconds_per_epoch']:.0f} s/epoch "
            f"(CPU time {r['cpu_seconds_per_batch']:.3f} s/batch)"
        )
        return 0
    cfg = config_from_args(args)
    if args.measure:
        info = measure_weights(cfg)
        print(
            f"{info['name']}: test accuracy {info['test_acc']:.2f}%, "
            f"fixed random 1,000 {info['acc_subset1000']:.2f}%"
        )
        return 0
    result = train(cfg, command="python -m onespike.experiments.train " + shlex.join(argv))
    if result.test_acc is not None:
        print(f"{result.config.name}: test accuracy {result.test_acc:.2f}%")
    else:
        print(f"{result.config.name}: stopped after epoch {result.epochs_done}/{cfg.epochs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
