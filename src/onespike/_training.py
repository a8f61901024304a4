"""The trainable copy of a converted network and the training loop that
:func:`onespike.refine` (unlabelled, against the ANN) and :func:`onespike.finetune`
(labelled) share.

- :class:`_LearnedCode`: a spiking layer made trainable: the exact code forward, a
  clipped straight-through gradient backward (see :mod:`onespike.refine`).
- :func:`_trainable` builds the copy, :func:`_fit` is the one training loop (its rank
  split, :class:`_RankSplit`, passed in: one process runs each mini-batch whole, several
  ranks share out its rows), :class:`_Keeper` chooses the step kept on held-out samples
  and :func:`_write_back` builds the result the way :func:`onespike.convert` does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from onespike import distributed
from onespike.codes import phase as pc
from onespike.codes import softmax as smx
from onespike.errors import OptionError
from onespike.network import SpikeLayer, SpikingNetwork, channel_shape
from onespike.trace import spiking_caps

#: The settings object the functions below read: :class:`onespike.refine.RefineConfig` (or
#: finetune's config built on it). Typed loosely here so this module, which refine imports,
#: does not import refine back.
RefineConfig = Any

Tensor = torch.Tensor


class _LearnedCode(nn.Module):
    """A spiking layer made trainable: the exact code forward, straight-through backward.

    Its kind is the layer's: phase neurons (the gradient of the clipped identity), signed
    neurons (that of the identity clipped to ``[-scale, scale]``: the code of ``|x|`` with
    the sign of ``x``) or exponential neurons (that of the softmax; the scale stays 1 and
    the base is not learned)."""

    def __init__(
        self,
        layer: SpikeLayer,
        learn_scale: bool,
        drop: float,
        gen: torch.Generator,
        cap: float | None = None,
        learn_base: bool = False,
    ):
        super().__init__()
        self.kind = layer.kind
        self.cap = cap  # the ANN's activation there: ReLU, or a ReLU clipped at cap
        self.base, self.phases, self.threshold_shift = (
            layer.base,
            layer.phases,
            layer.threshold_shift,
        )
        log_s = layer.scale.detach().clone().log()
        learn_scale = learn_scale and self.kind != "softmax"  # exponential neurons: 1
        self.log_scale = nn.Parameter(log_s, requires_grad=learn_scale)
        # the spiking layer's own cached thresholds and levels (codes/phase.py, float64)
        self.register_buffer("th", layer.th_ascending.clone())
        self.register_buffer("table", layer.table.clone())
        # a learned base: B = 1 + sigmoid(u), u in float64 (the plan's base is a float)
        self.base_logit: nn.Parameter | None = None
        if learn_base and self.kind != "softmax":
            b1 = min(max(float(layer.base) - 1.0, 1e-6), 1.0 - 1e-6)
            u = torch.tensor(math.log(b1 / (1.0 - b1)), dtype=torch.float64)
            self.base_logit = nn.Parameter(u.to(layer.scale.device))
        self.drop = drop
        self.gen = gen
        self.tap: list[Tensor] | None = None
        self.stop = False
        # under several ranks: rows [lo, hi) of a global batch of n (the masks are drawn
        # for the whole batch, as one process draws them, and this rank's rows kept)
        self.rows: tuple[int, int, int] | None = None

    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def base_value(self) -> Tensor | None:
        """The learned base (float64 scalar tensor), or None when the base is fixed."""
        return None if self.base_logit is None else 1.0 + torch.sigmoid(self.base_logit)

    def forward(self, pre: Tensor) -> Tensor:
        if self.kind == "softmax":
            soft = torch.softmax(pre, dim=-1)
            spikes = smx.spike_softmax(pre.detach(), self.base, self.phases,
                                       threshold_shift=self.threshold_shift)  # fmt: skip
            return self._finish(pre, soft + (spikes - soft).detach(), soft)
        s = channel_shape(self.scale().to(pre.dtype), pre.dim())
        z = pre / s
        sign = None
        if self.kind == "signed":  # the code of |z| with the sign of z
            sign, z = torch.sign(z).detach(), z * torch.sign(z).detach()
        zc = z.clamp(0.0, 1.0)
        b = self.base_value()
        if b is None:
            q = pc.quantize_normalised(z.detach(), self.th, self.table)  # in z's dtype
            out = s * (zc + (q - zc).detach())
        else:  # the exact code of the current base; the levels carry the base's gradient
            th = pc.ascending_thresholds(
                float(b.detach()), self.phases, threshold_shift=self.threshold_shift, dtype=b.dtype
            )
            table = pc.value_table_of(b, self.phases).to(pre.dtype)
            q = table.index_select(0, pc.reached(z.detach(), th).reshape(-1)).view_as(z)
            out = s * (zc - zc.detach() + q)
        if sign is not None:
            out = out * sign
        return self._finish(pre, out, pre if sign is not None else pre.clamp(0.0, self.cap))

    def _finish(self, pre: Tensor, out: Tensor, ann: Tensor) -> Tensor:
        """Drop (the ANN's activation ``ann`` in place of the code at random), the tap and
        the stop of a reconstruction."""
        if self.training and self.drop > 0:
            if self.rows is None:
                keep = torch.rand(pre.shape, generator=self.gen, device=pre.device) < self.drop
            else:
                lo, hi, n = self.rows
                draw = torch.rand((n, *pre.shape[1:]), generator=self.gen, device=pre.device)
                keep = draw[lo:hi] < self.drop
            out = torch.where(keep, ann, out)
        if self.tap is not None:
            self.tap.append(out)
        if self.stop:
            raise _Stop(out)
        return out


class _Stop(Exception):
    """Ends a forward pass at the spiking layer being reconstructed, carrying its output."""

    def __init__(self, out: Tensor):
        super().__init__()
        self.out = out


def _run_to(model: nn.Module, x: Tensor) -> Tensor:
    """The output of the layer whose ``stop`` is set, when ``model`` runs on ``x``."""
    try:
        model(x)
    except _Stop as s:
        return s.out
    raise RuntimeError("the reconstructed layer was not reached")  # a bug, not user input


class _Tap(nn.Module):
    """The ANN's activation (a ReLU, clipped at ``cap`` if given) in place of a spiking
    layer, recording its output."""

    def __init__(self, cap: float | None = None, kind: str = "relu") -> None:
        super().__init__()
        self.cap = cap
        self.kind = kind  # signed: the identity; softmax: the softmax
        self.tap: list[Tensor] | None = None
        self.stop = False

    def forward(self, pre: Tensor) -> Tensor:
        if self.kind == "signed":
            out = pre
        elif self.kind == "softmax":
            out = torch.softmax(pre, dim=-1)
        else:
            out = pre.clamp(0.0, self.cap)
        if self.tap is not None:
            self.tap.append(out)
        if self.stop:
            raise _Stop(out)
        return out


def _chunks(n: int, mixes_samples: bool, size: int = 256) -> list[slice]:
    return [slice(None)] if mixes_samples else [slice(i, i + size) for i in range(0, n, size)]


# --- the rank split: one process runs each mini-batch whole, several share out its rows ----
@dataclass(frozen=True)
class _RankSplit:
    """How every step's mini-batch is run: whole on this process (``ranks == 1``), or its
    rows shared out among the ``ranks`` ranks of the process group, each rank running its
    contiguous share and the gradients summed over the ranks before the step."""

    ranks: int = 1

    @property
    def shared(self) -> bool:
        return self.ranks > 1

    def check(self, batch: int, what: str = "refine") -> None:
        """A mini-batch of ``batch`` rows gives every rank at least one."""
        if self.shared and batch < self.ranks:
            raise OptionError(
                f"{what}: a mini-batch of {batch} sample(s) cannot be shared among "
                f"{self.ranks} ranks (each needs at least one); use batch_size >= {self.ranks} "
                "with at least as many calibration samples to fit, or fewer ranks"
            )

    def rows(self, codes: list[_LearnedCode], n: int) -> _Rows:
        return _Rows(codes, n, self.shared)

    def backward(self, loss: Tensor, params: list[Tensor], what: str) -> float:
        """Backpropagate a step's loss and return the whole mini-batch's loss; under several
        ranks every gradient is replaced by its sum over the ranks first. A loss that is not
        finite raises ``RuntimeError("<what> (loss ...)")`` (on every rank alike)."""
        if not self.shared:
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise RuntimeError(f"{what} (loss {lv})")
            loss.backward()
            return lv
        loss.backward()
        lv = _reduce_step(params, loss)
        if not math.isfinite(lv):
            raise RuntimeError(f"{what} (loss {lv})")
        return lv


def _rank_split(mixes_samples: bool) -> _RankSplit:
    """Several ranks share out the rows of every mini-batch, but for graph models (whose
    samples interact), which every rank runs whole."""
    world = distributed.world_size()
    return _RankSplit(world if world > 1 and not mixes_samples else 1)


class _Rows:
    """Rows ``[lo, hi)`` of a global batch of ``n``: this rank's share (all of them on one
    process). Shared, the spiking layers draw their drop masks for all ``n`` rows (as one
    process does) and keep these."""

    def __init__(self, codes: list[_LearnedCode], n: int, shared: bool = True):
        self.codes = codes if shared else []
        self.n = n
        self.lo, self.hi = (0, n)
        if shared:
            self.lo, self.hi = distributed.shard_range(
                n, distributed.rank(), distributed.world_size()
            )

    def __enter__(self) -> _Rows:
        for c in self.codes:
            c.rows = (self.lo, self.hi, self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.codes:
            c.rows = None


def _reduce_step(params: list[Tensor], loss: Tensor) -> float:
    """Replace every parameter's gradient by its sum over the ranks and return the summed
    loss (one all-reduce): each rank's loss is its rows' share of the global batch's, so
    the sums are the whole batch's mean loss and its gradient, the same on every rank."""
    have = [p for p in params if p.grad is not None]
    sums = distributed.sum_tensors([*(p.grad for p in have), loss.detach().reshape(1)])
    for p, g in zip(have, sums):
        p.grad.copy_(g)
    return float(sums[-1])


def _late(start: float, budget: float | None) -> bool:
    """The time budget is spent; under several ranks, on any of them (one all-reduce), so
    that every rank stops after the same step."""
    if budget is None:
        return False
    late = time.perf_counter() - start > budget
    if distributed.world_size() > 1:
        late = distributed.all_reduce([float(late)], "max")[0] > 0
    return late


def _slowest(seconds: float) -> float:
    """The longest of the ranks' wall times (the same figure on every rank)."""
    return distributed.all_reduce([seconds], "max")[0] if distributed.world_size() > 1 else seconds


# --- the trainable copy, the calibration data, the write-back ----------------------------
@dataclass
class _Trainable:
    """The SNN's graph with each spiking layer made differentiable (``gm``, its codes and
    its weighted layers' parameters) and, for the feature term and the reconstruction,
    the folded ANN tapped at the same places (``ref``: the SNN's graph with ReLUs for
    codes and no input coding)."""

    gm: fx.GraphModule
    codes: list[_LearnedCode]
    weights: list[nn.Parameter]
    ref: fx.GraphModule | None = None
    ref_taps: list[_Tap] = dataclasses.field(default_factory=list)
    feats: tuple[list[Tensor], list[Tensor]] | None = None  # taps for the feature term

    def snapshot(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.gm.state_dict().items()}

    def taps(self, on: bool) -> None:
        """Record (``on``, with the feature term) every code's output and the ANN's there."""
        f = self.feats if on else None
        for c in self.codes:
            c.tap = None if f is None else f[0]
        for t in self.ref_taps:
            t.tap = None if f is None else f[1]
        if f is not None:
            f[0].clear()
            f[1].clear()

    def learn(self, cfg: RefineConfig) -> None:
        """Let what ``cfg`` learns take gradients (again)."""
        for p in self.weights:
            p.requires_grad_(cfg.weights)
        for c in self.codes:
            c.log_scale.requires_grad_(cfg.scales and c.kind != "softmax")
            if c.base_logit is not None:
                c.base_logit.requires_grad_(True)

    def optimizer(self, cfg: RefineConfig) -> tuple[torch.optim.Optimizer, list[float]]:
        """Adam over what ``cfg`` learns, and each group's initial learning rate."""
        groups = []
        if cfg.weights and self.weights:
            groups.append({"params": self.weights, "lr": cfg.lr})
        if cfg.scales:
            scales = [c.log_scale for c in self.codes if c.kind != "softmax"]  # 1: fixed
            groups.append({"params": scales, "lr": cfg.scale_lr})
        if cfg.bases:
            bases = [c.base_logit for c in self.codes if c.base_logit is not None]  # no softmax
            groups.append({"params": bases, "lr": cfg.base_lr})
        opt = torch.optim.Adam(groups)
        return opt, [g["lr"] for g in groups]


def _trainable(snn: SpikingNetwork, cfg: RefineConfig, gen: torch.Generator) -> _Trainable:
    """A trainable copy of ``snn`` (``snn`` itself is not touched); ``gen`` draws the
    drop masks."""
    gm = copy.deepcopy(snn.graph_module)
    caps = spiking_caps(snn.ann_graph)
    codes: list[_LearnedCode] = []
    for key, layer in snn.spikes.items():
        code = _LearnedCode(layer, cfg.scales, cfg.drop, gen, caps[len(codes)], cfg.bases)
        setattr(gm, f"spikes_{key}", code)
        codes.append(code)
    gm.train(False)  # the new codes too: drop masks only inside the training steps
    weights = [p for n, p in gm.named_parameters() if not n.endswith(("log_scale", "base_logit"))]
    tr = _Trainable(gm, codes, weights)
    tr.learn(cfg)
    if cfg.features > 0 or cfg.reconstruct:
        ref = copy.deepcopy(snn.graph_module)
        for key, layer in snn.spikes.items():
            t = _Tap(caps[len(tr.ref_taps)], layer.kind)
            setattr(ref, f"spikes_{key}", t)
            tr.ref_taps.append(t)
        if hasattr(ref, "input_encoder"):
            ref.input_encoder = nn.Identity()
        ref.train(False)
        for p in ref.parameters():
            p.requires_grad_(False)
        tr.ref = ref
        if cfg.features > 0:
            tr.feats = ([], [])
    return tr


@dataclass
class _Calibration:
    """The training inputs on the network's device, the ANN's logits on them
    (``targets``), the classes a candidate must get right (``labels``: the ANN's top-1
    for refine, the labels for finetune) and the split into the samples fitted and
    those held out. ``mixes_samples``: a graph model, whose samples interact: every pass runs
    all of them."""

    ann: nn.Module
    x: Tensor
    targets: Tensor
    labels: Tensor
    mixes_samples: bool
    fit_idx: Tensor
    hold_idx: Tensor

    def outputs(self, gm: nn.Module, idx: Tensor) -> Tensor:
        if self.mixes_samples:  # run them all, score the chosen rows
            return gm(self.x)[idx.to(self.x.device)]
        return gm(self.x[idx.to(self.x.device)])


def _write_back(
    snn: SpikingNetwork, tr: _Trainable, info: dict, key: str, unchanged: bool = False
) -> SpikingNetwork:
    """A new network built as :func:`onespike.convert` builds one: the trained weights in
    a copy of the folded ANN graph, the scales (and bases) in the plan, ``info`` in its
    ``search[key]``. ``unchanged``: the input network was kept; its plan's scales are
    kept exactly (not their round trip through the log)."""
    traced = copy.deepcopy(snn.ann_graph)
    trained = dict(tr.gm.named_parameters())
    with torch.no_grad():
        for name, p in traced.named_parameters():
            p.copy_(trained[name].detach())
    layers = tuple(
        dataclasses.replace(
            lp,
            scale=_scale_value(code.log_scale),
            base=lp.base if code.base_logit is None else float(code.base_value().detach()),
        )
        for lp, code in zip(snn.plan.layers, tr.codes)
    )
    if unchanged:
        layers = snn.plan.layers
    search = {**snn.plan.search, key: info}
    plan = dataclasses.replace(snn.plan, layers=layers, search=search)
    return SpikingNetwork(traced, plan, snn.input_shape, ann_graph=snn.ann_graph)


def _held_out(
    tr: _Trainable,
    data: _Calibration,
    idx: Tensor,
    dist: Callable[[Tensor, Tensor], Tensor],
    split: _RankSplit,
    base: Tensor | None = None,
) -> tuple[_Score, Tensor]:
    """The network's score on the samples ``idx`` with the exact code (no gradient): the
    loss ``dist(outputs, rows)`` and how many samples' top-1 class is ``data.labels``'
    (against ``base``, another network's per-sample hits on ``idx``: how many it gains
    and loses), and its own hits (on this rank's chunks). Several ranks share out the
    chunks and sum their figures in chunk order: the figures one process computes on the
    same weights, bit for bit, on every rank."""
    if len(idx) == 0:
        return _Score(float("nan"), 0, 0), torch.zeros(0, dtype=torch.bool)
    dev = data.x.device
    with torch.no_grad():
        parts = _chunks(len(idx), data.mixes_samples)
        lo, hi = (0, len(parts))
        if split.shared:
            lo, hi = distributed.shard_range(len(parts), distributed.rank(), split.ranks)
        vals = [0.0] * len(parts)
        hits = torch.zeros(len(idx), dtype=torch.bool)
        counts = [0, 0, 0]  # hits, gained, lost
        for j in range(lo, hi):
            i = idx[parts[j]].to(dev)
            out = data.outputs(tr.gm, i)
            vals[j] = float(dist(out, i))
            h = (out.argmax(-1) == data.labels[i]).cpu()
            hits[parts[j]] = h
            counts[0] += int(h.sum())
            if base is not None:
                counts[1] += int((h & ~base[parts[j]]).sum())
                counts[2] += int((~h & base[parts[j]]).sum())
        if split.shared:  # each chunk's value from its rank (+ 0.0 from the others: exact)
            vals = distributed.all_reduce(vals)
            counts = distributed.all_reduce(counts, integer=True)
        tot = 0.0
        for c, v in zip(parts, vals):
            tot += v * len(idx[c])
    loss = vals[0] if data.mixes_samples else tot / len(idx)
    return _Score(loss, counts[0], len(idx), counts[1], counts[2]), hits


# --- choosing the step kept -----------------------------------------------------------------
@dataclass(frozen=True)
class _Score:
    """A candidate network on the held-out samples: its loss; ``hits``, the samples whose
    top-1 class it gets right (the ANN's for refine, the label for finetune), out of
    ``n``; against the unmodified network, the samples it ``gained`` (right where that
    one is wrong) and ``lost``."""

    loss: float
    hits: int
    n: int
    gained: int = 0
    lost: int = 0

    @property
    def agreement(self) -> float:
        return self.hits / self.n if self.n else float("nan")


def corrected_margin(margin: float, candidates: int) -> float:
    """``margin`` standard deviations of a one-sided test, corrected for ``candidates``
    tests (Bonferroni): the z whose tail is the tail of ``margin`` over ``candidates``."""
    if margin <= 0 or candidates <= 1:
        return margin
    tail = 0.5 * math.erfc(margin / math.sqrt(2.0))
    return statistics.NormalDist().inv_cdf(1.0 - tail / candidates)


class _Keeper:
    """The candidates of a run, the unmodified network first (step 0), each scored on the
    held-out samples (``measure(base)``: :func:`_held_out`), and the one kept.

    A candidate is kept over the unmodified network only if it gets clearly more held-out
    samples right: a net gain ``gained - lost > 0`` of at least ``z * sqrt(gained + lost)``
    samples (a paired sign test). ``z`` is ``margin`` standard deviations corrected for
    the ``candidates`` a run offers (Bonferroni: the one-sided tail of ``margin`` divided
    by their number), since the best of many noisy checks clears an uncorrected bar by
    chance. A lower loss alone never replaces the unmodified network: on the shipped
    MNIST CNN at T = 3 (calibration draw 7) a step with the same held-out samples right
    and a lower KL lost 13 test images of 10,000. ``margin=0`` takes any net gain, and on
    equal samples right the lower loss. Among those that pass, the most hits win, the
    lower loss breaking ties. ``held``: there are held-out samples (otherwise nothing is
    chosen and the last step stands)."""

    def __init__(
        self,
        tr: _Trainable,
        measure: Callable[[Tensor | None], tuple[_Score, Tensor]],
        held: bool,
        margin: float,
        what: str = "unrefined",
        metric: str = "agreement",
        candidates: int = 1,
    ):
        self.tr, self.measure, self.held, self.margin, self.what = tr, measure, held, margin, what
        self.z = corrected_margin(margin, candidates)
        self.metric = metric  # what a hit is: agreement with the ANN, or accuracy
        self.first, self.base = measure(None)
        self.best, self.step, self.kind = self.first, 0, what
        self.state = tr.snapshot() if held else None
        self.history: list[list] = [[0, what, self.first.hits, self.first.loss]]
        self.closest: tuple[int, _Score] | None = None  # the best candidate that did not pass

    def clears(self, s: _Score) -> bool:
        """``s`` beats the unmodified network (see the class)."""
        net = s.gained - s.lost
        if self.margin == 0:
            return net > 0 or (net == 0 and s.loss < self.first.loss)
        return net > 0 and net >= self.z * math.sqrt(s.gained + s.lost)

    def offer(self, step: int, kind: str) -> _Score:
        """Score the network as it is now; keep it if it beats the best so far."""
        s, _ = self.measure(self.base)
        self.history.append([step, kind, s.hits, s.loss])
        if not self.held:
            return s
        if not self.clears(s):
            if self.closest is None or (s.hits, -s.loss) > (
                self.closest[1].hits,
                -self.closest[1].loss,
            ):
                self.closest = (step, s)
        elif self.kind == self.what or (s.hits, -s.loss) > (self.best.hits, -self.best.loss):
            self.best, self.step, self.kind, self.state = s, step, kind, self.tr.snapshot()
        return s

    def restore(self) -> None:
        if self.held:
            assert self.state is not None
            self.tr.gm.load_state_dict(self.state)

    def reason(self, steps: int) -> str:
        """Why the kept candidate was kept, in one sentence."""
        f, b = self.first, self.best
        if not self.held:
            return f"no held-out samples: the last step ({steps}) is kept"
        if self.kind != self.what:
            how = (
                f"{b.gained} sample(s) gained, {b.lost} lost"
                if b.gained + b.lost
                else f"the same samples right, loss {b.loss:.4g} < {f.loss:.4g}"
            )
            return (
                f"step {self.step} ({self.kind}): held-out {self.metric} {b.agreement:.2%} "
                f"against {f.agreement:.2%} {self.what} ({how})"
            )
        if self.closest is None:
            return f"{self.what}: no other candidate was measured"
        step, c = self.closest
        if c.gained + c.lost == 0:
            how = "the same samples right (a lower loss alone is not kept)"
        else:
            need = max(self.z * math.sqrt(c.gained + c.lost), 1)
            how = f"{c.gained} sample(s) gained and {c.lost} lost, a net gain of {need:.2g} needed"
        return (
            f"{self.what}: no step beat its held-out {self.metric} {f.agreement:.2%} "
            f"(closest: step {step}, {c.agreement:.2%}, {how})"
        )


def _fit(
    opt: torch.optim.Optimizer,
    step_loss: Callable[[Tensor], Tensor],
    batches: Iterator[Tensor],
    split: _RankSplit,
    after_step: Callable[[int], None],
    *,
    iterations: int,
    first: int = 0,
    start: float,
    budget: float | None,
    what: str,
    progress: bool,
) -> int:
    """The training loop: steps ``first`` to ``iterations`` (or until the time budget since
    ``start`` is spent), each on the next mini-batch of ``batches`` with the learning
    rates of ``opt`` (their initial values, as built) decaying to 0 on a cosine over
    ``iterations``. ``step_loss(idx)`` is a batch's loss (this rank's share under
    several ranks; ``split`` sums the gradients); ``after_step(steps)`` runs after each.
    Returns the number of steps taken in all (``first`` included)."""
    lrs = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
    for g, lr in zip(opt.param_groups, lrs):
        g["initial_lr"] = lr
    learned = [p for g in opt.param_groups for p in g["params"]]
    bar = tqdm(range(first, iterations), desc=what, disable=not progress, leave=False)
    steps, running = first, None
    for it in bar:
        if _late(start, budget):
            break
        for g, lr in zip(opt.param_groups, lrs):  # cosine decay to 0
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / iterations))
        loss = step_loss(next(batches))
        opt.zero_grad(set_to_none=True)
        lv = split.backward(loss, learned, f"{what} diverged at step {it}")
        opt.step()
        steps += 1
        running = lv if running is None else 0.95 * running + 0.05 * lv
        if it % 10 == 0:
            bar.set_postfix(loss=f"{running:.4g}")
        after_step(steps)
    bar.close()
    return steps


def _check_network(snn: object, ann: object, what: str = "refine") -> None:
    if not isinstance(snn, SpikingNetwork):
        raise OptionError(
            f"{what} needs a network made by onespike.convert, got {type(snn).__name__}; "
            "convert the ANN first: snn = onespike.convert(ann, calibration, phases=...)"
        )
    if not isinstance(ann, nn.Module):
        raise OptionError(
            f"{what} needs the ANN (an nn.Module) as its target, got {type(ann).__name__}"
        )


def _scale_value(log_scale: Tensor) -> float | tuple[float, ...]:
    s = log_scale.detach().exp().cpu()
    if s.dim() == 0:
        return float(s)
    return tuple(float(v) for v in s)


def _device_of(snn: SpikingNetwork) -> torch.device:
    params = list(snn.graph_module.parameters()) + list(snn.graph_module.buffers())
    return params[0].device if params else torch.device("cpu")
