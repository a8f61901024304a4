"""Supervised fine-tuning with labels: :func:`finetune`.

:func:`onespike.refine` fits a converted network to the ANN on unlabelled calibration
data. With labelled training data the SNN can be trained further, as quantisation-aware
training does for quantised networks: the loss is the cross-entropy on the labels plus
the distillation from the ANN (the KL divergence of the SNN's softmax from the ANN's at a
temperature, scaled by its square), through the same exact code forward and clipped
straight-through gradient that refine uses (:mod:`onespike._training`). Weights, biases
and every spiking layer's scale are learned; bases, phases, thresholds and the
structure do not change, and the result is built as :func:`onespike.convert` builds a
network, so every invariant holds (one spike per neuron at most, step == event).

A held-out part of the labelled data chooses the step kept, the input network included,
by accuracy on the labels (the loss breaking ties; a step must beat the input by a
paired sign test, as in refine): fine-tuning never returns a network that is worse than
its input on the held-out split. Long runs can be stopped (``time_budget``) and resumed
from a checkpoint (``checkpoint=``, ``resume=True``): the resumed run ends with the
network an uninterrupted run gives, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from onespike import distributed
from onespike._training import (
    _Calibration,
    _check_network,
    _chunks,
    _device_of,
    _fit,
    _held_out,
    _Keeper,
    _RankSplit,
    _Score,
    _trainable,
    _write_back,
)
from onespike.calibrate import batch_independent
from onespike.errors import InputError, OptionError, check_batch
from onespike.graph import Runner
from onespike.network import SpikingNetwork
from onespike.refine import RefineConfig, _distance, _shift_flip

Tensor = torch.Tensor

#: The checkpoint's format tag (a file of another format is refused).
CHECKPOINT_FORMAT = "onespike-finetune/1"

#: The values of :attr:`FinetuneConfig.augment`.
FINETUNE_AUGMENTS = ("none", "shift-flip")


@dataclass(frozen=True)
class FinetuneConfig:
    """How :func:`finetune` trains.

    Attributes:
        epochs: passes over the fitted part of the data.
        batch_size: samples per step.
        lr: Adam learning rate of the weights and biases (cosine decay to 0).
        scale_lr: Adam learning rate of the log of every scale.
        distill: weight of the distillation term; the cross-entropy on the labels
            gets ``1 - distill`` (0: labels only, 1: the ANN only).
        temperature: softmax temperature of the distillation (scaled by its square).
        holdout: fraction of the samples kept out of the fit; they choose the step kept.
        checks: how many times the held-out samples are measured during the run
            (a checkpoint is written at each).
        margin: how clearly a step must beat the input network on held-out accuracy
            (as :attr:`onespike.RefineConfig.margin`).
        time_budget: stop after this many seconds (None: run every epoch).
        seed: drives the split, the mini-batch order and the augmentation.
        augment: ``"none"``; ``"shift-flip"``: for image batches ``[N, C, H, W]``, each
            step fits randomly shifted (up to 1/8 of the side, zero fill) and
            horizontally flipped copies (as :attr:`onespike.RefineConfig.augment`), with
            the labels as they are and the ANN's logits of each copy as the distillation
            target. Only for data whose labels a mirror image keeps (natural images such
            as CIFAR-10; not digits). The held-out samples are measured as they are.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4
    scale_lr: float = 1e-3
    distill: float = 0.5
    temperature: float = 4.0
    holdout: float = 0.1
    checks: int = 10
    margin: float = 2.0
    time_budget: float | None = None
    seed: int = 0
    augment: str = "none"

    def __post_init__(self) -> None:
        if self.augment not in FINETUNE_AUGMENTS:
            raise OptionError(
                f"finetune: augment must be one of {FINETUNE_AUGMENTS}, got {self.augment!r}"
            )
        for name in ("epochs", "batch_size", "checks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionError(f"finetune: {name} must be an integer >= 1, got {v!r}")
        for name in ("lr", "scale_lr", "margin", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise OptionError(f"finetune: {name} must be a number >= 0, got {v!r}")
        if not self.temperature > 0:
            raise OptionError(f"finetune: temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.distill, (int, float)) and 0 <= self.distill <= 1):
            raise OptionError(f"finetune: distill must be in [0, 1], got {self.distill!r}")
        if not (isinstance(self.holdout, (int, float)) and 0 < self.holdout < 1):
            raise OptionError(f"finetune: holdout must be in (0, 1), got {self.holdout!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise OptionError(
                f"finetune: time_budget must be > 0 seconds, got {self.time_budget!r}"
            )


def _labelled(data: object, what: str = "finetune: data") -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a pair of tensors, a Dataset of ``(x, y)`` samples or a DataLoader
    of ``(x, y)`` batches."""
    from torch.utils.data import DataLoader, Dataset

    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
    elif isinstance(data, (Dataset, DataLoader)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)
        xs, ys = [], []
        for i, batch in enumerate(loader):
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise InputError(
                    f"{what}: batch {i} is a {type(batch).__name__}, not an (x, y) pair; "
                    "finetune needs labels"
                )
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise InputError(f"{what} is empty: pass labelled samples")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise InputError(
            f"{what} must be an (x, y) pair of tensors, a Dataset of (x, y) samples or a "
            f"DataLoader of (x, y) batches, got {type(data).__name__}"
        )
    if isinstance(x, Tensor) and isinstance(y, Tensor) and len(x) != len(y):
        raise InputError(f"{what}: {len(x)} inputs but {len(y)} labels; they must pair up")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(
            f"{what}: the labels must be a 1-D integer tensor of class indices, got "
            f"shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    return x, y.long()


def _batches(fit_idx: Tensor, batch_size: int, seed: int, first: int) -> Iterator[Tensor]:
    """The mini-batches of step ``first`` on: epoch ``e``'s order is drawn from
    ``(seed, e)`` alone, so a resumed run draws what the uninterrupted run draws."""
    n = len(fit_idx)
    per = math.ceil(n / batch_size)
    step = first
    while True:
        e, j = divmod(step, per)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        yield fit_idx[perm[j * batch_size : (j + 1) * batch_size]]
        step += 1


def _loss(out: Tensor, y: Tensor, t: Tensor, cfg: FinetuneConfig) -> Tensor:
    ce = F.cross_entropy(out, y)
    if cfg.distill == 0:
        return ce
    return (1 - cfg.distill) * ce + cfg.distill * _distance(out, t, "kl", cfg.temperature)


def _save(path: Path, state: dict) -> None:
    """Write a checkpoint atomically (a torch file of tensors and plain values only, so
    that ``torch.load(weights_only=True)`` reads it)."""
    if not distributed.is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path, fingerprint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise OptionError(f"finetune: cannot read the checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise OptionError(f"finetune: {path} is not a finetune checkpoint")
    if state.get("fingerprint") != fingerprint:
        raise OptionError(
            f"finetune: the checkpoint {path} belongs to another run (other networks, data "
            "or options); delete it or pass another checkpoint path"
        )
    return state


def finetune(
    snn: SpikingNetwork,
    ann: nn.Module,
    data: object,
    epochs: int | None = None,
    config: FinetuneConfig | None = None,
    *,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    held_out: object = None,
    **overrides: object,
) -> SpikingNetwork:
    """Fine-tune a converted network with labels: cross-entropy plus distillation.

    Args:
        snn: a network made by :func:`onespike.convert` (left untouched).
        ann: the ANN it was converted from (only run: the distillation's teacher).
        data: labelled training data: an ``(x, y)`` pair of tensors, a Dataset of
            ``(x, y)`` samples or a DataLoader of ``(x, y)`` batches (held in memory).
        epochs: passes over the data (overrides ``config.epochs``).
        config: a :class:`FinetuneConfig`; keyword ``overrides`` replace its fields.
        progress: show a progress bar with the running loss.
        checkpoint: a file to write the run's state to at every held-out check and
            when the time budget stops it.
        resume: continue from ``checkpoint`` when it exists (it must come from the
            same networks, data and options; the time budget may differ).
        held_out: labelled samples that choose the step kept, in any form ``data``
            takes (a validation split). Then every sample of ``data`` is fitted and
            ``config.holdout`` is not used. Give samples the ANN was not trained on:
            held-out training images are ones the ANN already answers almost perfectly,
            so gains on them need not carry over to new images (docs/FINETUNE.md).

    Returns:
        A new :class:`SpikingNetwork`, never worse than ``snn`` on the held-out split
        (``snn``'s weights and plan come back when no step beats it); its plan's
        ``search["finetune"]`` records the options, the steps run, the step kept and
        why, the held-out accuracy before and after, and the wall time.

    Under a process group of several ranks every rank runs the whole fine-tuning
    (no data-parallel split) and rank 0 writes the checkpoint.
    """
    _check_network(snn, ann, "finetune")
    cfg = _config(config, epochs, overrides)
    if not batch_independent(Runner(snn.ann_graph)):
        raise OptionError("finetune: graph models (whose samples interact) are not supported")
    x, y, targets, n_given = _labelled_with_targets(snn, ann, data, held_out)
    gen = torch.Generator().manual_seed(cfg.seed)
    data_ = _split(ann, x, y, targets, cfg, gen, n_given)
    rc = RefineConfig(
        iterations=1, batch_size=cfg.batch_size, lr=cfg.lr, scale_lr=cfg.scale_lr, drop=0.0
    )
    tr = _trainable(snn, rc, gen)
    split = _RankSplit(1)

    def measure(idx: Tensor, base: Tensor | None = None) -> tuple[_Score, Tensor]:
        def dist(out: Tensor, rows: Tensor) -> Tensor:
            return _loss(out, y[rows], targets[rows], cfg)

        return _held_out(tr, data_, idx, dist, split, base)

    keeper = _Keeper(
        tr,
        lambda base: measure(data_.hold_idx, base),
        True,
        cfg.margin,
        "input",
        "accuracy",
        candidates=cfg.checks + 1,  # the checks and a run stopped between them
    )
    opt, _ = tr.optimizer(rc)
    total = cfg.epochs * math.ceil(len(data_.fit_idx) / cfg.batch_size)
    every = max(total // cfg.checks, 1)
    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = distributed.digest(
        {"snn": snn.state_dict(), "ann": ann.state_dict(), "x": x, "y": y, "given": n_given}
    ) + distributed.digest(repr(dataclasses.replace(cfg, time_budget=None)))
    first = 0
    if resume and path is not None and path.exists():
        first = _restore(_load(path, fingerprint), tr, opt, keeper)

    def save(steps: int) -> None:
        if path is not None:
            _save(path, _state(fingerprint, steps, tr, opt, keeper))

    def after_step(steps: int) -> None:
        if steps % every == 0 or steps == total:
            keeper.offer(steps, "fine-tuned")
            save(steps)

    start = time.perf_counter()
    step_loss = _step_loss(tr, ann, (x, y, targets), cfg, first)
    steps = _fit(
        opt,
        step_loss,
        _batches(data_.fit_idx, cfg.batch_size, cfg.seed, first),
        split,
        after_step,
        iterations=total,
        first=first,
        start=start,
        budget=cfg.time_budget,
        what="finetune",
        progress=progress and distributed.is_main(),
    )
    if steps % every != 0 and steps != total:  # the budget stopped it
        save(steps)  # before this run's own last check: a resumed run goes on as if uncut
        keeper.offer(steps, "fine-tuned")
    keeper.restore()
    info = {
        **dataclasses.asdict(cfg),
        "steps": steps,
        "total_steps": total,
        "resumed_from": first,
        "seconds": round(time.perf_counter() - start, 2),
        **_kept_record(keeper, steps, measure(data_.hold_idx)[0]),
        "samples": len(x),
        "fit_samples": len(data_.fit_idx),
        "held_out_samples": len(data_.hold_idx),
        "held_out_given": n_given is not None,
    }
    return _write_back(snn, tr, info, "finetune", keeper.kind == keeper.what)


def _config(
    config: FinetuneConfig | None, epochs: int | None, overrides: dict[str, object]
) -> FinetuneConfig:
    """``config`` (or the defaults) with ``epochs`` and the keyword overrides applied."""
    cfg = config if config is not None else FinetuneConfig()
    if epochs is not None:
        overrides = {**overrides, "epochs": epochs}
    try:
        return dataclasses.replace(cfg, **overrides)
    except TypeError as e:
        raise OptionError(f"finetune: {e}") from None


def _labelled_with_targets(
    snn: SpikingNetwork, ann: nn.Module, data: object, held_out: object
) -> tuple[Tensor, Tensor, Tensor, int | None]:
    """The samples and labels of ``data`` followed by those of ``held_out`` (if given), on
    the network's device, the ANN's logits of each, and how many were held out (``None``
    when ``held_out`` was not given); every part checked against the network first, and
    the ANN put in eval mode."""
    x, y = _labelled(data)
    check_batch(x, snn.input_shape, what="finetune: data")
    n_given = None
    if held_out is not None:
        xh, yh = _labelled(held_out, "finetune: held_out")
        check_batch(xh, snn.input_shape, what="finetune: held_out")
        n_given = len(xh)
        x, y = torch.cat([x, xh.to(x.device, x.dtype)]), torch.cat([y, yh.to(y.device)])
    device = _device_of(snn)
    x, y = x.to(device), y.to(device)
    ann.eval()  # only once the data are known good: a user mistake changes nothing
    with torch.no_grad():
        targets = torch.cat([ann(x[c]) for c in _chunks(len(x), False)])
    if int(y.min()) < 0 or int(y.max()) >= targets.shape[-1]:
        raise InputError(
            f"finetune: labels must lie in 0..{targets.shape[-1] - 1} (the ANN's classes), "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return x, y, targets, n_given


def _step_loss(
    tr, ann: nn.Module, data: tuple[Tensor, Tensor, Tensor], cfg: FinetuneConfig, first: int
) -> Callable[[Tensor], Tensor]:
    """The loss of one training step on the samples ``idx`` of ``data`` (inputs, labels,
    the ANN's logits), through the network being trained; with ``cfg.augment``, on
    shifted and mirrored copies drawn from ``(cfg.seed, step)``, so a run resumed at step
    ``first`` draws what the uninterrupted run draws."""
    x, y, targets = data
    augment = cfg.augment != "none" and x.dim() == 4
    counter = [first]

    def step_loss(idx: Tensor) -> Tensor:
        i = idx.to(x.device)
        xb, tb = x[i], targets[i]
        if augment:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + counter[0])
            xb = _shift_flip(xb, g)
            with torch.no_grad():
                tb = ann(xb)
        counter[0] += 1
        tr.gm.train(True)
        try:
            return _loss(tr.gm(xb), y[i], tb, cfg)
        finally:
            tr.gm.train(False)

    return step_loss


def _kept_record(keeper: _Keeper, steps: int, after: _Score) -> dict:
    """What the plan records of the step kept and the held-out checks."""
    return {
        "kept_step": keeper.step,
        "kept": keeper.kind,
        "kept_because": keeper.reason(steps),
        "held_out_accuracy_before": keeper.first.agreement,
        "held_out_accuracy_after": after.agreement,
        "held_out_loss_before": keeper.first.loss,
        "held_out_loss_after": after.loss,
        "held_out_checks": keeper.history,
    }


def _split(
    ann: nn.Module,
    x: Tensor,
    y: Tensor,
    targets: Tensor,
    cfg: FinetuneConfig,
    gen: torch.Generator,
    given: int | None = None,
) -> _Calibration:
    """The data with its split into a fitted and a held-out part: the last ``given``
    samples when the caller gave them, else drawn with ``gen``."""
    if given is not None:
        n = len(x) - given
        return _Calibration(ann, x, targets, y, False, torch.arange(n), torch.arange(n, len(x)))
    perm = torch.randperm(len(x), generator=gen)
    n_hold = round(cfg.holdout * len(x))
    if n_hold < 1 or n_hold >= len(x):
        raise InputError(
            f"finetune: {len(x)} sample(s) cannot be split into a fitted and a held-out part "
            f"({cfg.holdout:.0%} held out); pass more samples"
        )
    fit, hold = perm[n_hold:].sort().values, perm[:n_hold].sort().values
    return _Calibration(ann, x, targets, y, False, fit, hold)


def _score_dict(s: _Score) -> dict:
    return dataclasses.asdict(s)


def _state(fingerprint: str, steps: int, tr, opt: torch.optim.Optimizer, keeper: _Keeper) -> dict:
    """What a resumed run needs, as tensors and plain values."""
    closest = None
    if keeper.closest is not None:
        closest = [keeper.closest[0], _score_dict(keeper.closest[1])]
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "step": steps,
        "model": tr.snapshot(),
        "optimizer": opt.state_dict(),
        "keeper": {
            "first": _score_dict(keeper.first),
            "base": keeper.base,
            "best": _score_dict(keeper.best),
            "step": keeper.step,
            "kind": keeper.kind,
            "state": keeper.state,
            "history": keeper.history,
            "closest": closest,
        },
    }


def _restore(state: dict, tr, opt: torch.optim.Optimizer, keeper: _Keeper) -> int:
    """Load a checkpoint's state into the run; the step to go on from."""
    tr.gm.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    k = state["keeper"]
    keeper.first, keeper.base = _Score(**k["first"]), k["base"]
    keeper.best, keeper.step, keeper.kind = _Score(**k["best"]), k["step"], k["kind"]
    keeper.state, keeper.history = k["state"], [list(h) for h in k["history"]]
    c = k["closest"]
    keeper.closest = None if c is None else (c[0], _Score(**c[1]))
    return int(state["step"])


__all__ = ["FinetuneConfig", "finetune"]
