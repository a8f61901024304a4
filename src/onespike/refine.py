"""Learned refinement: after the search, fit the SNN's weights and scales to the ANN.

The base/scale search (:mod:`onespike.calibrate`) picks every layer's code from a
grid, layer by layer. What it cannot do is let the weights of a layer compensate
for the rounding of the codes before it. :func:`refine` does that, as SNN
Calibration (Li et al. 2021) and BRECQ/QDrop do for rate codes and quantised
networks: on unlabelled calibration inputs it minimises the distance between the
SNN's logits and the ANN's by gradient descent through the spiking layers.

- The code of a spiking layer is a quantiser: ``q = s * Q(pre / s)`` with ``Q``
  the phase rule of :mod:`onespike.codes.phase` (levels ``B^-k``, shifted
  thresholds). Gradients pass it with a clipped straight-through estimator:
  ``dq/dpre = 1`` inside the code's range ``(0, s)``, 0 outside (the spike
  saturates at phase 0 above ``s``; an unclipped identity diverges on deep
  networks). The scale gets the LSQ gradient ``dq/ds = Q(z) - z`` inside the
  range, 1 above it, 0 below.
- What is learned: the weights and biases of every weighted layer (convolutions,
  Linear; BN is already folded into them) and every spiking layer's scale (one
  per layer or per channel, as the search chose). Bases, phases, the threshold
  rule and the network's structure do not change.
- The result is built the way :func:`onespike.convert` builds a network: a new
  traced graph with the refined weights and a new :class:`~onespike.plan.Plan`
  with the refined scales go through :class:`~onespike.network.SpikingNetwork`,
  so the event path, the step simulator, the cost model and every invariant
  (one spike per neuron at most, step == event) hold exactly as before.

The ANN, the input network and the calibration data are only read.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from onespike import distributed
from onespike._training import (
    _Calibration,
    _check_network,
    _chunks,
    _device_of,
    _fit,
    _held_out,
    _Keeper,
    _late,
    _rank_split,
    _RankSplit,
    _run_to,
    _Score,
    _slowest,
    _Trainable,
    _trainable,
    _write_back,
)
from onespike.calibrate import batch_independent
from onespike.errors import CalibrationError, OptionError, check_batch, collect_calibration
from onespike.graph import Runner
from onespike.network import SpikingNetwork

Tensor = torch.Tensor

LOSSES = ("kl", "mse")
AUGMENTS = ("none", "shift-flip", "mix")


@dataclass(frozen=True)
class RefineConfig:
    """How :func:`refine` trains. The defaults are the measured choice (docs/RESULTS.md).

    Attributes:
        iterations: optimiser steps (mini-batches).
        batch_size: calibration samples per step (graph models use all of them); under
            several ranks the global batch, its rows shared out among them.
        lr: Adam learning rate of the weights and biases.
        scale_lr: Adam learning rate of the log of every scale.
        loss: ``"kl"`` (KL divergence of the SNN's softmax from the ANN's) or
            ``"mse"`` (mean squared error of the logits).
        weights: learn the weights and biases of the weighted layers.
        scales: learn the spiking layers' scales.
        drop: probability of leaving an activation uncoded (the ANN's ReLU) in a
            training step, per element (QDrop); 0 turns it off.
        max_samples: use at most this many calibration samples.
        augment: ``"none"``; ``"shift-flip"``: for image batches ``[N, C, H, W]``,
            fit on randomly shifted (up to 1/8 of the side, zero fill) and horizontally
            flipped copies, with the ANN's logits of each copy as the target;
            ``"mix"``: the same, then each image blended with another of the batch
            (weight drawn uniformly), so the ANN's targets are less certain than on
            the training images it has learnt. Other inputs are used as they are.
        temperature: softmax temperature of the ``"kl"`` loss (scaled by its square).
        holdout: fraction of the calibration samples (nodes, for graph models) kept
            out of the fit. Measured with the exact code ``checks`` times during the
            run, they choose the step whose weights are returned, the unrefined network
            (step 0) included, by a criterion that follows accuracy: top-1 agreement
            with the ANN, the loss breaking ties among steps that beat the unrefined
            network (see ``margin``), so refinement cannot make the network worse
            unnoticed. 0 fits on everything and keeps the last step. Not used when
            :func:`refine` is given ``held_out=`` samples (those choose the step).
        checks: how many times the held-out samples are measured.
        margin: how clearly a refined step must beat the unrefined network to be kept:
            of the held-out samples on which exactly one of the two agrees with the ANN
            (``d`` of them), it must win at least ``z * sqrt(d)`` more than it loses
            (a paired sign test), where ``z`` is ``margin`` standard deviations
            corrected for the ``checks`` made (Bonferroni; 2 and 10 checks: z = 2.87).
            A lower loss on the same samples is not enough. 0: any gain in agreement,
            or on equal agreement a lower loss.
        time_budget: stop after this many seconds (None: run every iteration).
        seed: drives the mini-batch order and the drop masks.
        features: weight of a feature-matching term added to the loss: the mean over
            spiking layers of the squared error between the layer's coded output and
            the folded ANN's ReLU output there, relative to the ANN's mean square;
            0 turns it off.
        reconstruct: optimiser steps per spiking layer of a layer-by-layer
            reconstruction run before the end-to-end fit (0: none). Layer by layer in
            order, the weighted layers that feed a spiking layer (and its scale) are
            fitted so that its coded output matches the folded ANN's ReLU output there
            (squared error relative to the ANN's mean square), on the inputs the
            already-reconstructed SNN gives it (as SNN Calibration and BRECQ do).
        reconstruct_lr: Adam learning rate of the weights in the reconstruction.
        bases: also learn every spiking layer's base (one per layer, kept in (1, 2)
            as ``1 + sigmoid(u)``) in the end-to-end fit: the levels ``B^-k`` take its
            gradient, the thresholds follow it at every step; the plan records the
            learned base.
        base_lr: Adam learning rate of ``u``.
    """

    iterations: int = 600
    batch_size: int = 32
    lr: float = 1e-4
    scale_lr: float = 1e-3
    loss: str = "kl"
    weights: bool = True
    scales: bool = True
    drop: float = 0.0
    max_samples: int | None = 1024
    augment: str = "shift-flip"
    temperature: float = 4.0
    holdout: float = 0.2
    checks: int = 10
    margin: float = 2.0
    time_budget: float | None = None
    seed: int = 0
    features: float = 0.0
    reconstruct: int = 0
    reconstruct_lr: float = 5e-4
    bases: bool = False
    base_lr: float = 1e-3

    def __post_init__(self) -> None:
        def positive_int(name: str, v: object, allow_none: bool = False) -> None:
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionError(f"refine: {name} must be an integer >= 1, got {v!r}")

        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise OptionError(
                f"refine: iterations must be an integer >= 0, got {self.iterations!r}"
            )
        if self.iterations < 0 or (self.iterations == 0 and not self.reconstruct):
            raise OptionError(
                f"refine: iterations must be >= 1 (or 0 with reconstruct), got {self.iterations!r}"
            )
        if isinstance(self.reconstruct, bool) or not isinstance(self.reconstruct, int):
            raise OptionError(
                f"refine: reconstruct must be an integer >= 0, got {self.reconstruct!r}"
            )
        if self.reconstruct < 0:
            raise OptionError(f"refine: reconstruct must be >= 0, got {self.reconstruct!r}")
        positive_int("batch_size", self.batch_size)
        positive_int("max_samples", self.max_samples, allow_none=True)
        positive_int("checks", self.checks)
        if not (isinstance(self.holdout, (int, float)) and 0 <= self.holdout < 1):
            raise OptionError(f"refine: holdout must be in [0, 1), got {self.holdout!r}")
        for name in ("lr", "scale_lr", "reconstruct_lr", "base_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise OptionError(f"refine: {name} must be a number >= 0, got {v!r}")
        if self.augment not in AUGMENTS:
            raise OptionError(f"refine: augment must be one of {AUGMENTS}, got {self.augment!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)):
            raise OptionError(f"refine: margin must be a number >= 0, got {self.margin!r}")
        if not self.margin >= 0:
            raise OptionError(f"refine: margin must be a number >= 0, got {self.margin!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise OptionError(f"refine: temperature must be > 0, got {self.temperature!r}")
        if self.loss not in LOSSES:
            raise OptionError(f"refine: loss must be one of {LOSSES}, got {self.loss!r}")
        if not (isinstance(self.drop, (int, float)) and 0 <= self.drop < 1):
            raise OptionError(f"refine: drop must be in [0, 1), got {self.drop!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise OptionError(f"refine: time_budget must be > 0 seconds, got {self.time_budget!r}")
        if not (isinstance(self.features, (int, float)) and self.features >= 0):
            raise OptionError(f"refine: features must be a number >= 0, got {self.features!r}")
        if not (self.weights or self.scales or self.bases):
            raise OptionError(
                "refine: nothing to learn (weights=False, scales=False and bases=False)"
            )

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def as_config(refine: object) -> RefineConfig | None:
    """``convert(refine=...)``: False/None (off), True (defaults), a config or a dict."""
    if refine is None or refine is False:
        return None
    if refine is True:
        return RefineConfig()
    if isinstance(refine, RefineConfig):
        return refine
    if isinstance(refine, dict):
        try:
            return RefineConfig(**refine)
        except TypeError as e:
            raise OptionError(f"refine: {e}") from None
    raise OptionError(
        f"refine must be True, False, a RefineConfig or a dict of its fields, "
        f"got {type(refine).__name__}"
    )


def _producers(gm: fx.GraphModule, target: str) -> list[str]:
    """Modules with parameters between module ``target``'s input and the spiking layers
    (or the network input) before it: what computes that layer's input current."""
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == target)
    seen: set[fx.Node] = set()
    found: list[str] = []
    stack = list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n in seen or n.op == "placeholder":
            continue
        seen.add(n)
        if n.op == "call_module":
            t = str(n.target)
            if t.startswith("spikes_") or t == "input_encoder":
                continue
            if next(gm.get_submodule(t).parameters(), None) is not None and t not in found:
                found.append(t)
        stack.extend(n.all_input_nodes)
    return found


def _feature_distance(snn_feats: list[Tensor], ann_feats: list[Tensor]) -> Tensor:
    """Mean over layers of the squared error relative to the ANN's mean square."""
    terms = [
        (q - a).pow(2).mean() / a.pow(2).mean().clamp_min(1e-12)
        for q, a in zip(snn_feats, ann_feats)
    ]
    return torch.stack(terms).mean()


def _batches(
    idx: Tensor, cfg: RefineConfig, gen: torch.Generator, mixes_samples: bool
) -> Iterator[Tensor]:
    """Every step's mini-batch of ``idx``: reshuffled epochs (all of them for graph models)."""
    if mixes_samples:
        while True:
            yield idx
    bs = min(cfg.batch_size, len(idx))
    while True:
        perm = idx[torch.randperm(len(idx), generator=gen)]
        for i in range(0, len(idx) - bs + 1, bs):
            yield perm[i : i + bs]


def _shift_flip(x: Tensor, gen: torch.Generator, mix: bool = False) -> Tensor:
    """Each image shifted by up to 1/8 of its side (zero fill) and flipped with p = 1/2;
    with ``mix``, then blended with the next image of the batch (weight uniform in [0, 1])."""
    n, _, h, w = x.shape
    ph, pw = max(h // 8, 1), max(w // 8, 1)
    padded = F.pad(x, (pw, pw, ph, ph))
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=gen).tolist()
    flip = (torch.rand(n, generator=gen) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flipped = torch.tensor(flip, device=x.device)
    out = torch.where(flipped.view(n, 1, 1, 1), out.flip(-1), out)
    if mix and n > 1:
        lam = torch.rand(n, 1, 1, 1, generator=gen).to(x.device, x.dtype)
        out = lam * out + (1 - lam) * out.roll(1, dims=0)
    return out


def _distance(out: Tensor, target: Tensor, loss: str, temperature: float = 1.0) -> Tensor:
    if loss == "kl":
        t = temperature
        return (
            t
            * t
            * F.kl_div(
                F.log_softmax(out / t, dim=-1),
                F.log_softmax(target / t, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
        )
    return F.mse_loss(out, target)


# --- several ranks (onespike.distributed): each takes its rows of every mini-batch --------
def _distance_sum(out: Tensor, target: Tensor, loss: str, temperature: float = 1.0) -> Tensor:
    """:func:`_distance` times the number of samples (the sum of the per-sample losses):
    divided by the global batch's size, the ranks' terms add up to the batch's loss."""
    if loss == "kl":
        t = temperature
        lp, lq = F.log_softmax(out / t, dim=-1), F.log_softmax(target / t, dim=-1)
        return t * t * F.kl_div(lp, lq, log_target=True, reduction="sum")
    return F.mse_loss(out, target, reduction="sum") / math.prod(out.shape[1:])


def _feature_distance_rows(fs: list[Tensor], fa: list[Tensor], n: int) -> Tensor:
    """This rank's part of :func:`_feature_distance` on a global batch of ``n``: each
    layer's squared error over the ANN's square summed over all ranks (one all-reduce),
    so that the ranks' parts add up to the whole batch's term."""
    dens = distributed.all_reduce([float(a.detach().pow(2).sum()) for a in fa])
    terms = [
        (q - a).pow(2).sum() / max(d, 1e-12 * n * a[0].numel()) for q, a, d in zip(fs, fa, dens)
    ]
    return torch.stack(terms).mean()


def _calibration(
    snn: SpikingNetwork,
    ann: nn.Module,
    x: Tensor,
    holdout: float,
    gen: torch.Generator,
    mixes_samples: bool,
    n_given: int | None = None,
) -> _Calibration:
    """The ANN's targets on ``x`` and its split: the last ``n_given`` samples held out
    (given by the caller), or a random ``holdout`` share of them."""
    with torch.no_grad():
        targets = torch.cat([ann(x[c]) for c in _chunks(len(x), mixes_samples)])
        probe = x if mixes_samples else x[:2]
        if targets.shape[1:] != snn(probe).shape[1:]:
            raise OptionError(
                f"the ANN's outputs {tuple(targets.shape[1:])} and the SNN's "
                f"{tuple(snn(probe).shape[1:])} differ: pass the ANN the SNN was converted from"
            )
    if n_given is not None:
        fit_idx, hold_idx = torch.arange(len(x) - n_given), torch.arange(len(x) - n_given, len(x))
    else:
        perm = torch.randperm(len(x), generator=gen)
        n_hold = round(holdout * len(x))
        fit_idx, hold_idx = perm[n_hold:].sort().values, perm[:n_hold].sort().values
    if len(fit_idx) == 0:
        raise CalibrationError(
            f"refine: {len(x)} calibration sample(s) leave none to fit after holding out "
            f"{holdout:.0%}; pass more samples"
        )
    return _Calibration(ann, x, targets, targets.argmax(-1), mixes_samples, fit_idx, hold_idx)


# --- the losses: a mini-batch's, a layer's, the held-out samples' --------------------------
def _step_loss(
    tr: _Trainable,
    data: _Calibration,
    cfg: RefineConfig,
    idx: Tensor,
    gen: torch.Generator,
    augment: bool,
    split: _RankSplit,
) -> Tensor:
    """The loss of the mini-batch ``idx`` (in training mode: drop masks); under several
    ranks this rank's share of it (its rows' sum over the batch's size), the shares adding
    up to the batch's loss."""
    x, dev, n = data.x, data.x.device, len(idx)
    tr.gm.train(True)
    tr.taps(True)
    try:
        with split.rows(tr.codes, n) as r:
            if augment:  # the whole batch's draw, as one process makes it; this rank's rows
                xb = _shift_flip(x[idx.to(dev)], gen, mix=cfg.augment == "mix")
                xb = xb[r.lo : r.hi] if split.shared else xb
                with torch.no_grad():
                    tb = data.ann(xb)
            elif data.mixes_samples:
                xb, tb = x, data.targets[idx.to(dev)]
            else:
                rows = idx[r.lo : r.hi].to(dev)
                xb, tb = x[rows], data.targets[rows]
            if tr.feats is not None:
                with torch.no_grad():
                    tr.ref(xb)
            out = tr.gm(xb)
            if data.mixes_samples:
                out = out[idx.to(dev)]
            if split.shared:
                loss = _distance_sum(out, tb, cfg.loss, cfg.temperature) / n
            else:
                loss = _distance(out, tb, cfg.loss, cfg.temperature)
        if tr.feats is not None:
            fs, fa = tr.feats
            if split.shared:
                return loss + cfg.features * _feature_distance_rows(fs, fa, n)
            if data.mixes_samples:
                rows = idx.to(dev)
                fs, fa = [f[rows] for f in fs], [f[rows] for f in fa]
            loss = loss + cfg.features * _feature_distance(fs, fa)
        return loss
    finally:
        tr.taps(False)
        tr.gm.train(False)


def _layer_loss(
    tr: _Trainable,
    data: _Calibration,
    cfg: RefineConfig,
    idx: Tensor,
    gen: torch.Generator,
    augment: bool,
    split: _RankSplit,
) -> Tensor:
    """The reconstruction loss of the layer whose ``stop`` is set, on the mini-batch
    ``idx``: its coded output's squared error against the ANN's there, relative to the
    ANN's mean square (under several ranks, this rank's share of it)."""
    x, dev, n = data.x, data.x.device, len(idx)
    assert tr.ref is not None
    with split.rows(tr.codes, n) as r:
        if data.mixes_samples:
            xb = x
        elif augment:  # the whole batch's draw, as one process makes it; this rank's rows
            xb = _shift_flip(x[idx.to(dev)], gen, mix=cfg.augment == "mix")
            xb = xb[r.lo : r.hi] if split.shared else xb
        else:
            xb = x[idx[r.lo : r.hi].to(dev)]
        with torch.no_grad():
            a = _run_to(tr.ref, xb)
        tr.gm.train(True)
        try:
            q = _run_to(tr.gm, xb)
        finally:
            tr.gm.train(False)
    if data.mixes_samples:
        rows = idx.to(dev)
        q, a = q[rows], a[rows]
    if not split.shared:
        return (q - a).pow(2).mean() / a.pow(2).mean().clamp_min(1e-12)
    den = distributed.all_reduce([float(a.pow(2).sum())])[0]
    return (q - a).pow(2).sum() / max(den, 1e-12 * n * a[0].numel())


# --- training: the reconstruction, the fit loop ---------------------------------------------
def _reconstruct(
    tr: _Trainable,
    data: _Calibration,
    batches: Iterator[Tensor],
    cfg: RefineConfig,
    gen: torch.Generator,
    augment: bool,
    split: _RankSplit,
) -> dict:
    """Layer-by-layer reconstruction (see :class:`RefineConfig`), in place on ``tr.gm``;
    ``split``: how the ranks share out the rows of every mini-batch."""
    start = time.perf_counter()
    gm = tr.gm
    params = dict(gm.named_parameters())
    losses = []
    n = cfg.reconstruct
    for i, (code, tap) in enumerate(zip(tr.codes, tr.ref_taps)):
        mods = _producers(gm, next(k for k, m in gm.named_children() if m is code))
        learn = [p for m in mods for p in gm.get_submodule(m).parameters()] if cfg.weights else []
        for p in params.values():
            p.requires_grad_(False)
        groups = []
        if learn:
            for p in learn:
                p.requires_grad_(True)
            groups.append({"params": learn, "lr": cfg.reconstruct_lr})
        if cfg.scales and code.kind != "softmax":  # a softmax's scale is 1
            code.log_scale.requires_grad_(True)
            groups.append({"params": [code.log_scale], "lr": cfg.scale_lr})
        if not groups:
            continue
        opt = torch.optim.Adam(groups)
        lrs = [g["lr"] for g in groups]
        learned = [p for g in groups for p in g["params"]]
        code.stop = tap.stop = True
        first = last = None
        try:
            for it in range(n):
                if _late(start, cfg.time_budget):
                    break
                for g, lr in zip(opt.param_groups, lrs):
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / n))
                loss = _layer_loss(tr, data, cfg, next(batches), gen, augment, split)
                opt.zero_grad(set_to_none=True)
                lv = split.backward(loss, learned, f"reconstruction of layer {i} diverged")
                opt.step()
                first = lv if first is None else first
                last = lv if last is None else 0.9 * last + 0.1 * lv
        finally:
            code.stop = tap.stop = False
        losses.append((first, last))
    tr.learn(cfg)
    return {
        "iterations_per_layer": n,
        "seconds": round(_slowest(time.perf_counter() - start), 2),
        "layer_losses": losses,
    }


def _configured(config: RefineConfig | None, overrides: dict) -> RefineConfig:
    cfg = config if config is not None else RefineConfig()
    if overrides:
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except TypeError as e:
            raise OptionError(f"refine: {e}") from None
    return cfg


def _refine_inputs(
    snn: SpikingNetwork,
    calibration: object,
    held_out: object,
    cfg: RefineConfig,
    mixes_samples: bool,
) -> tuple[Tensor, int | None]:
    """The samples refinement runs on, checked: the calibration set (at most
    ``max_samples``; all of a graph model's), then the ``held_out`` samples if given, and
    how many of those there are."""
    # graph models: the calibration set is one graph, every node of it is needed
    x = collect_calibration(calibration, None if mixes_samples else cfg.max_samples)
    try:
        check_batch(x, snn.input_shape, what="calibration data")
    except ValueError as e:
        raise CalibrationError(str(e)) from None
    if held_out is None:
        return x, None
    if mixes_samples:
        raise OptionError(
            "refine: held_out is not supported for graph models (their samples interact: "
            "hold nodes out with RefineConfig(holdout=...) instead)"
        )
    xh = collect_calibration(held_out)
    try:
        check_batch(xh, snn.input_shape, what="refine: held_out")
    except ValueError as e:
        raise CalibrationError(str(e)) from None
    return torch.cat([x, xh.to(x.device, x.dtype)]), len(xh)


def refine(
    snn: SpikingNetwork,
    ann: nn.Module,
    calibration: object,
    config: RefineConfig | None = None,
    *,
    held_out: object = None,
    progress: bool = True,
    **overrides: object,
) -> SpikingNetwork:
    """Fit a converted network's weights and scales so its logits match the ANN's.

    Args:
        snn: a network made by :func:`onespike.convert` (left untouched).
        ann: the ANN it was converted from (left untouched; only run).
        calibration: unlabelled inputs, as for ``convert`` (a tensor ``[N, ...]``,
            a list of tensors or of ``(x, y)`` batches, or a DataLoader);
            about 1,000 images.
        config: a :class:`RefineConfig`; keyword ``overrides`` replace its fields
            (``refine(snn, ann, x, iterations=200)``).
        held_out: unlabelled samples, in any form ``calibration`` takes, that choose
            the step kept instead of a held-out share of the calibration set (then all
            of it is fitted and ``holdout`` is not used). Pass images the ANN was not
            trained on (a validation split): on its training images a converted network
            often agrees with the ANN everywhere, so no step can show a gain there.
        progress: show a progress bar with the running loss (on rank 0 only under a
            process group).

    Under a ``torch.distributed`` process group of several ranks (``torchrun``), give
    every rank the same networks, configuration and whole calibration set (checked:
    :func:`onespike.distributed.check_same`). Every rank draws the same mini-batches,
    augmentations and drop masks (for the whole batch, as one process draws them),
    runs its contiguous share of each mini-batch's rows, and the gradients (scaled so
    that they add up to the whole batch's mean) are summed over the ranks before every
    rank takes the same Adam step; the held-out checks are shared out by chunk. Every
    rank ends with the same network (checked bit for bit:
    :class:`~onespike.distributed.RankDivergenceError` otherwise), equal to one
    process's up to the rounding of the gradients' sums (docs/SCALE.md). Graph models,
    whose samples interact, run whole on every rank.

    Never worse: the step kept, the unrefined network included, is chosen on the
    held-out calibration samples by top-1 agreement with the ANN (see
    ``RefineConfig.margin``), not by the loss it fits (a lower KL can come with fewer
    samples agreeing); when no step beats it, the input network comes back unchanged.

    Returns:
        A new :class:`SpikingNetwork` with the same plan type, bases, phases and
        structure; its plan's ``search["refine"]`` records the configuration, the
        steps run, the step kept and why (``kept_because``), every held-out check
        (``held_out_checks``: step, kind, samples agreeing, loss), the wall time, and
        the loss and agreement before and after on the fitted and held-out samples.
    """
    _check_network(snn, ann)
    cfg = _configured(config, overrides)
    mixes_samples = not batch_independent(Runner(snn.ann_graph))
    x, n_given = _refine_inputs(snn, calibration, held_out, cfg, mixes_samples)
    split = _rank_split(mixes_samples)
    progress = progress and distributed.is_main()
    same = {"model": ann.state_dict(), "network": (snn.state_dict(), snn.plan)}
    distributed.check_same({**same, "options": cfg, "calibration data": x})
    device = _device_of(snn)
    x = x.to(device)
    ann = ann.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    gen_dev = gen if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
    tr = _trainable(snn, cfg, gen_dev)
    # a held-out part of the calibration set chooses the step to keep (step 0: unrefined)
    data = _calibration(snn, ann, x, cfg.holdout, gen, mixes_samples, n_given)
    split.check(min(cfg.batch_size, len(data.fit_idx)))
    n_hold = len(data.hold_idx)

    def measure(idx: Tensor, base: Tensor | None = None):
        def dist(out: Tensor, rows: Tensor) -> Tensor:
            return _distance(out, data.targets[rows], cfg.loss, cfg.temperature)

        return _held_out(tr, data, idx, dist, split, base)

    fit_before = measure(data.fit_idx)[0]
    offers = cfg.checks + 1 + (1 if cfg.reconstruct else 0)  # checks, a stopped run, recon
    keeper = _Keeper(
        tr, lambda base: measure(data.hold_idx, base), n_hold > 0, cfg.margin, candidates=offers
    )
    start = time.perf_counter()
    batches = _batches(data.fit_idx, cfg, gen, mixes_samples)
    augment = cfg.augment != "none" and x.dim() == 4 and not mixes_samples
    recon: dict | None = None
    if cfg.reconstruct:
        recon = _reconstruct(tr, data, batches, cfg, gen, augment, split)
        recon["held_out_loss"] = keeper.offer(0, "reconstructed").loss
    every = max(cfg.iterations // cfg.checks, 1)

    def after_step(steps: int) -> None:
        if keeper.held and (steps % every == 0 or steps == cfg.iterations):
            keeper.offer(steps, "end-to-end")

    opt, _ = tr.optimizer(cfg)
    steps = _fit(
        opt,
        lambda idx: _step_loss(tr, data, cfg, idx, gen, augment, split),
        batches,
        split,
        after_step,
        iterations=cfg.iterations,
        start=start,
        budget=cfg.time_budget,
        what="refine",
        progress=progress,
    )
    if keeper.held and steps % every != 0 and steps != cfg.iterations:  # the budget stopped it
        keeper.offer(steps, "end-to-end")
    keeper.restore()
    seconds = _slowest(time.perf_counter() - start)
    fit_after, hold_after = measure(data.fit_idx)[0], measure(data.hold_idx)[0]
    distributed.check_identical("the refined network", tr.gm.state_dict())
    info = _record(
        cfg, keeper, data, steps, seconds, recon, n_given, fit_before, fit_after, hold_after
    )
    unchanged = n_hold > 0 and keeper.kind == keeper.what
    return _write_back(snn, tr, info, "refine", unchanged)


def _record(
    cfg: RefineConfig,
    keeper: _Keeper,
    data: _Calibration,
    steps: int,
    seconds: float,
    recon: dict | None,
    n_given: int | None,
    fit_before: _Score,
    fit_after: _Score,
    hold_after: _Score,
) -> dict:
    """What the plan's ``search["refine"]`` records of a run (see :func:`refine`)."""
    n_hold = len(data.hold_idx)
    return {
        **cfg.describe(),
        "steps": steps,
        "seconds": round(seconds, 2),
        "kept_step": keeper.step if n_hold else steps,
        "kept": keeper.kind if n_hold else ("end-to-end" if steps else "reconstructed"),
        "kept_because": keeper.reason(steps),
        "reconstruction": recon,
        "samples": len(data.x),
        "fit_samples": len(data.fit_idx),
        "held_out_samples": n_hold,
        "held_out_given": n_given is not None,
        "loss_before": fit_before.loss,
        "loss_after": fit_after.loss,
        "held_out_loss_before": keeper.first.loss if n_hold else None,
        "held_out_loss_after": hold_after.loss if n_hold else None,
        "held_out_agreement_before": keeper.first.agreement if n_hold else None,
        "held_out_agreement_after": hold_after.agreement if n_hold else None,
        # every candidate measured: [step, kind, held-out samples agreeing, held-out loss]
        "held_out_checks": keeper.history if n_hold else [],
        **({"ranks": distributed.world_size()} if distributed.world_size() > 1 else {}),
    }


__all__ = ["LOSSES", "RefineConfig", "as_config", "refine"]
