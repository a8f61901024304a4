"""Calibration: observe the ANN, then search each layer's code (scale and base).

The search runs layer by layer in topological order. For layer ``l`` the
layers before it are already converted, so the pre-activation it sees carries
their error. Every candidate ``(scale, base)`` is scored by the objective:

- ``"next"`` (default): the relative squared error that reaches the places the
  layer's spikes arrive: the pre-activations of the next spiking layers (or
  the logits), against the ANN's, with the rest of the network as converted so
  far. This measures the error that matters and lets a layer compensate for
  the error upstream.
- ``"activation"`` (the paper's search): the relative squared error between
  the layer's ANN activation and its code.
- ``"output"``: the relative squared error of the logits, the layers before
  converted and the layers after still ReLU (the rest of the network runs for
  every candidate).

Candidates: bases on a grid ``1.05 .. 2.00`` (or fixed), scales at high
percentiles of the layer's positive activations (or fixed to the max or to a
given percentile), per layer or per channel. Optional: bias correction of the
next layer for the mean error of the code. ``base="global"`` searches one
base shared by every layer, scored by the error of the logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx
from tqdm.auto import tqdm

from onespike.codes import binary
from onespike.codes import phase as pc
from onespike.errors import OptionError
from onespike.graph import Region, Runner
from onespike.plan import LayerPlan, Plan
from onespike.trace import TracedModel

Node = fx.Node
Tensor = torch.Tensor

BASE_GRID: tuple[float, ...] = tuple(round(1.05 + 0.05 * i, 2) for i in range(20))
SCALE_PERCENTILES: tuple[float, ...] = (100.0, 99.99, 99.9, 99.7, 99.5, 99.0, 98.0)
OBJECTIVES = ("next", "activation", "output")


@dataclass(frozen=True)
class SearchConfig:
    """What the search may choose for each spiking layer, and how it scores a choice.

    A frozen value: name a preset (:meth:`preset`, :data:`SEARCH_PRESETS`), change
    fields with :meth:`replace`, and pass it to :func:`onespike.convert` as
    ``search=``. Every field is checked when the object is made.

    Attributes:
        base: ``"auto"`` (searched per layer), ``"global"`` (one searched base for all
            layers), a number in (1, 2] for every layer, or one per layer (a tuple).
        scale: ``"auto"`` (searched among high percentiles), ``"max"``, or a percentile
            in (0, 100] of each layer's positive activations.
        threshold_shift: round to the nearest level (True) or floor (False).
        objective: ``"next"`` (the error at the next layers' pre-activations),
            ``"activation"`` (the error of the layer's own activation, the paper's) or
            ``"output"`` (the error of the logits, later layers not yet converted).
        per_channel: ``"auto"`` (one scale per channel for convolution outputs, one per
            layer for Linear and graph layers), ``True`` or ``False``.
        bias_correction: correct the next layer's bias for the code's mean error.
        search_samples: score candidates on the first this many calibration samples
            (None: all of them); scales come from all of them. Ignored for models whose
            samples interact (graph models).
    """

    base: str | float | tuple[float, ...] = "auto"
    scale: str | float = "auto"
    threshold_shift: bool = True
    objective: str = "next"
    per_channel: bool | str = "auto"
    bias_correction: bool = False
    search_samples: int | None = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _check_base(self.base))
        object.__setattr__(self, "scale", _check_scale(self.scale))
        if self.objective not in OBJECTIVES:
            raise OptionError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        n = self.search_samples
        if isinstance(n, bool) or not isinstance(n, int | None) or (n is not None and n < 1):
            raise OptionError(f"search_samples must be an integer >= 1 or None, got {n!r}")
        if self.per_channel not in (True, False, "auto"):
            raise OptionError(
                f"per_channel must be True, False or 'auto', got {self.per_channel!r}"
            )
        for name in ("threshold_shift", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.base == "global" and self.bias_correction:
            raise OptionError("base='global' cannot be combined with bias_correction=True")

    @classmethod
    def preset(cls, name: str) -> SearchConfig:
        """The named settings of :data:`SEARCH_PRESETS` (``"default"``, ``"paper"``)."""
        try:
            return SEARCH_PRESETS[name]
        except (KeyError, TypeError):
            raise OptionError(
                f"unknown search preset {name!r}; choose one of {', '.join(SEARCH_PRESETS)}"
            ) from None

    @classmethod
    def of(cls, search: SearchConfig | str) -> SearchConfig:
        """``search`` itself, or the preset it names."""
        return search if isinstance(search, SearchConfig) else cls.preset(search)

    def replace(self, **changes: object) -> SearchConfig:
        """A copy with some fields changed (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def changes(self) -> dict:
        """The fields that differ from the defaults, in field order (``convert`` keywords)."""
        default = SearchConfig()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    def describe(self) -> dict:
        """What the plan records (``Plan.search``)."""
        return {
            "base": self.base if isinstance(self.base, str) else "fixed",
            "scale": self.scale,
            "objective": self.objective,
            "per_channel": self.per_channel,
            "bias_correction": self.bias_correction,
            "shift": self.threshold_shift,
            "search_samples": self.search_samples,
        }


def _check_base(base: object) -> str | float | tuple[float, ...]:
    if isinstance(base, str):
        if base not in ("auto", "global"):
            raise OptionError(
                f"base must be 'auto', 'global', a number in (1, 2] or a list, got {base!r}"
            )
        return base
    if isinstance(base, Sequence):
        vals = tuple(float(b) for b in base)
        for b in vals:
            pc.check_params(b, 1)
        return vals
    pc.check_params(base, 1)
    return float(base)  # type: ignore[arg-type]


def _check_scale(scale: object) -> str | float:
    if scale in ("auto", "max"):
        return scale  # type: ignore[return-value]
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale <= 100:
        return float(scale)
    raise OptionError(f"scale must be 'auto', 'max' or a percentile in (0, 100], got {scale!r}")


#: Named search settings. ``default``: what :func:`onespike.convert` does without
#: options (the error at the next layers, per-channel scales for convolutions);
#: ``paper``: the search of Hwang & Kung as this project reads it (each layer's own
#: activation error, one scale and one base per layer), row 1 of the ablation.
SEARCH_PRESETS: dict[str, SearchConfig] = {
    "default": SearchConfig(),
    "paper": SearchConfig(objective="activation", per_channel=False),
}


def _rel_err(a: Tensor, ref: Tensor) -> float:
    den = float((ref.double() ** 2).sum())
    num = float(((a.double() - ref.double()) ** 2).sum())
    return num / den if den > 0 else num


def channel_scales(per_channel: bool | str, values: Tensor) -> bool:
    """Whether a layer whose activations are ``values`` gets one scale per channel.

    ``"auto"`` (the default): feature maps (``[N, C, ...]`` with positions, i.e. the
    outputs of convolutions) get one scale per channel, pooled over all positions;
    ``[N, C]`` activations (Linear layers, graph convolutions) keep one scale per layer,
    since a unit's percentile would rest on only ``N`` calibration values.
    """
    if per_channel == "auto":
        return values.dim() > 2
    return bool(per_channel) and values.dim() >= 2


def _percentiles(values: Tensor, qs: Sequence[float], per_channel: bool | str) -> list[Tensor]:
    """Percentiles of the positive values (per channel along dim 1 if asked)."""
    gen = np.random.default_rng(0)
    if channel_scales(per_channel, values):
        c = values.shape[1]
        flat = values.transpose(0, 1).reshape(c, -1).double().numpy()
        out = []
        for q in qs:
            row = []
            for ch in flat:
                pos = ch[ch > 0]
                row.append(np.percentile(pos, q) if pos.size else 0.0)
            out.append(torch.tensor(row, dtype=torch.float32))
        return [_safe_scale(s) for s in out]
    flat = values.reshape(-1).double().numpy()
    pos = flat[flat > 0]
    if pos.size > 2_000_000:
        keep = np.concatenate([gen.choice(pos, 2_000_000, replace=False), [pos.max()]])
        pos = keep
    if pos.size == 0:
        return [torch.tensor(1.0)]
    return [_safe_scale(torch.tensor(float(np.percentile(pos, q)))) for q in qs]


def _safe_scale(s: Tensor) -> Tensor:
    """Scales must be > 0: a dead channel gets scale 1 (it never fires anyway)."""
    s = s.to(torch.float32)
    return torch.where(s > 0, s, torch.ones_like(s))


class _Search:
    def __init__(
        self,
        traced: TracedModel,
        x: Tensor,
        cfg: SearchConfig,
        progress: bool,
        *,
        phases: int,
        input_coding: str = "analog",
    ):
        self.traced = traced
        self.cfg = cfg
        self.phases = phases
        self.input_coding = input_coding
        self.x = x
        self.progress = progress
        self.stats_source: _Search | None = None  # candidate scales from a larger set
        self.runner = Runner(traced.module)
        r = self.runner
        self.relus = traced.relus
        self.input = traced.input_node
        self.output = next(n for n in r.nodes if n.op == "output")
        with torch.no_grad():
            self.ann = r.forward_all(x)
        self._env: dict[Node, object] = {}
        self._env_chosen: dict[Node, tuple[Tensor, float]] = {}
        self.regions: dict[Node, Region] = {t: r.region(t) for t in [*self.relus, self.output]}
        self.consumers: dict[Node, list[Node]] = {n: [] for n in [self.input, *self.relus]}
        for t, reg in self.regions.items():
            roots = {self._root(s) for s in reg.spike_sources}
            for root in roots:
                if root is not None:
                    self.consumers[root].append(t)
        self.derived: dict[Node, list[Node]] = {n: [] for n in [self.input, *self.relus]}
        for n in r.nodes:
            role = r.role(n)
            if n.op != "placeholder" and role in ("maxpool", "linear") and r.is_source(n):
                self.derived[self._root(n)].append(n)

    def _root(self, src: Node) -> Node | None:
        if src.op == "placeholder":
            return src
        if not self.runner.is_spiking(src):
            return None
        return self.runner.spiking_chain(src)[0]

    # --- the converted network so far -------------------------------------------------
    def quantizer(self, scale: Tensor, base: float) -> Callable[[Tensor], Tensor]:
        phases, shift = self.phases, self.cfg.threshold_shift

        def q(pre: Tensor) -> Tensor:
            return pc.quantize(pre, pc.channel_shape(scale, pre.dim()), base, phases, shift=shift)

        return q

    def env_with(
        self, chosen: dict[Node, tuple[Tensor, float]], upto: Node | None = None
    ) -> dict[Node, object]:
        """Every node's value with the chosen layers converted, the others plain ReLU.

        With ``upto`` only the nodes up to that one (topological order) are
        guaranteed. Values are cached: a node is recomputed only when a layer
        before it was chosen anew since the last call (or :meth:`invalidate_after`
        was called), so the layer-by-layer search costs about one forward pass
        per layer instead of one per layer per layer.
        """
        order = self.runner.order
        changed = [
            n for n in {*chosen, *self._env_chosen} if chosen.get(n) is not self._env_chosen.get(n)
        ]
        if changed:
            first = 0 if self.input in changed else min(order[n] for n in changed)
            self._invalidate_from(first)
        self._env_chosen = dict(chosen)
        repl = {n: self.quantizer(s, b) for n, (s, b) in chosen.items() if n is not self.input}
        runner = Runner(self.traced.module, repl)
        env = self._env
        stop = len(runner.nodes) if upto is None else order[upto] + 1
        with torch.no_grad():
            for n in runner.nodes[:stop]:
                if n not in env:
                    env[n] = (
                        self.encode_input(chosen)
                        if n.op == "placeholder"
                        else runner.run_node(n, env)
                    )
        return dict(env)

    def _invalidate_from(self, first: int) -> None:
        order = self.runner.order
        self._env = {n: v for n, v in self._env.items() if order[n] < first}

    def invalidate_after(self, node: Node) -> None:
        """Forget cached values after ``node`` (the modules after it changed)."""
        self._invalidate_from(self.runner.order[node] + 1)

    def encode_input(self, chosen: dict[Node, tuple[Tensor, float]]) -> Tensor:
        if self.input_coding == "binary":
            return binary.decode(binary.encode(self.x, self.phases), self.phases)
        if self.input_coding == "single" and self.input in chosen:
            s, b = chosen[self.input]
            return self.quantizer(s, b)(self.x)
        return self.x

    def score(self, node: Node, q: Tensor, env: dict[Node, object]) -> float:
        """Relative squared error at the consumers of ``node`` when it outputs ``q``."""
        if self.cfg.objective == "activation":
            ref = self.ann[node]
            return _rel_err(q, ref)
        if self.cfg.objective == "output":  # the logits, the later layers still ReLU
            order = self.runner.order
            pre = self.regions[self.output].pre
            env = {n: v for n, v in env.items() if order[n] < order[node]}
            env[node] = q
            rest = [n for n in self.runner.nodes if order[node] < order[n] <= order[pre]]
            with torch.no_grad():
                self.runner.run(env, rest)
            return _rel_err(env[pre], self.ann[pre])
        env = dict(env)
        env[node] = q
        with torch.no_grad():
            self.runner.run(env, self.derived[node])
            total = 0.0
            for t in self.consumers[node]:
                reg = self.regions[t]
                self.runner.run(env, reg.nodes)
                total += _rel_err(env[reg.pre], self.ann[reg.pre])
        return total

    # --- the search ------------------------------------------------------------------
    def candidates_for(self, layer_index: int, values: Tensor) -> tuple[list[Tensor], list[float]]:
        cfg = self.cfg
        if isinstance(cfg.base, tuple):
            bases = [cfg.base[layer_index]]
        elif isinstance(cfg.base, (int, float)):
            bases = [float(cfg.base)]
        else:
            bases = list(BASE_GRID)
        if cfg.scale == "auto":
            qs: Sequence[float] = SCALE_PERCENTILES
        elif cfg.scale == "max":
            qs = (100.0,)
        else:
            qs = (float(cfg.scale),)
        return _percentiles(values, qs, cfg.per_channel), bases

    def layer_input(self, node: Node, env: dict[Node, object]) -> Tensor:
        """What layer ``node`` codes: its pre-activation (converted or ANN), or the input."""
        if node is self.input:
            return self.x
        pre_node = node.args[0]
        return self.ann[pre_node] if self.cfg.objective == "activation" else env[pre_node]

    def search_layer(
        self,
        node: Node,
        index: int,
        env: dict[Node, object],
        bases_override: list[float] | None,
        stats: Tensor,
    ) -> tuple[Tensor, float, float]:
        pre = self.layer_input(node, env)
        scales, bases = self.candidates_for(index, stats)
        if bases_override is not None:
            bases = bases_override
        best = (float("inf"), scales[0], bases[0])
        cache: dict[tuple[int, float], float] = {}

        def evaluate(i: int, b: float) -> None:
            nonlocal best
            if (i, b) in cache:
                return
            q = self.quantizer(scales[i], b)(pre)
            e = cache[(i, b)] = self.score(node, q, env)
            if e < best[0]:
                best = (e, scales[i], b)

        # coordinate descent: the coarse base grid (every other base) at a middle
        # scale, every scale at the best base, the base's fine neighbours at the
        # best scale, and once more every scale; about 25 candidates per layer.
        def best_index() -> tuple[int, float]:
            return next((i, b) for (i, b), e in cache.items() if e == best[0])

        i0 = min(2, len(scales) - 1)
        for b in bases[1::2] if len(bases) > 2 else bases:
            evaluate(i0, b)
        for _ in range(2):
            _, b = best_index()
            for i in range(len(scales)):
                evaluate(i, b)
            i, b = best_index()
            j = bases.index(b)
            for bb in bases[max(j - 2, 0) : j + 3]:
                evaluate(i, bb)
        return best[1], best[2], best[0]

    def bias_correct(self, node: Node, env: dict[Node, object]) -> None:
        """Shift the bias of each consumer's last Conv/Linear by the mean error per channel."""
        with torch.no_grad():
            env = dict(env)
            self.runner.run(env, self.derived[node])
            for t in self.consumers[node]:
                reg = self.regions[t]
                if self.runner.role(reg.pre) != "weighted" or reg.pre.op != "call_module":
                    continue
                m = self.runner.modules[reg.pre.target]
                if m.bias is None:
                    continue
                self.runner.run(env, reg.nodes)
                diff = (env[reg.pre] - self.ann[reg.pre]).double()
                dims = [d for d in range(diff.dim()) if d != 1] if diff.dim() > 1 else [0]
                mean = diff.mean(dim=dims)
                m.bias.data -= mean.to(m.bias.dtype)

    def run_sequential(self, bases_override: list[float] | None = None, desc: str = "calibrate"):
        chosen: dict[Node, tuple[Tensor, float]] = {}
        errors: dict[Node, float] = {}
        order = ([self.input] if self.input_coding == "single" else []) + list(self.relus)
        it = tqdm(order, desc=desc, disable=not self.progress, leave=False)
        for i, node in enumerate(it):
            upto = max(self.consumers[node], key=self.runner.order.__getitem__, default=None)
            env = self.env_with(chosen, upto)
            idx = i - (1 if self.input_coding == "single" else 0)
            full = self.stats_source
            stats = (
                self.layer_input(node, env)
                if full is None
                else full.layer_input(node, full.env_with(chosen, upto))
            )
            s, b, e = self.search_layer(node, idx, env, bases_override, stats)
            chosen[node] = (s, b)
            errors[node] = e
            if self.cfg.bias_correction and node is not self.input:
                env = self.env_with(chosen, upto)
                self.bias_correct(node, env)
                for srch in {self, full or self}:
                    srch.invalidate_after(node)
        return chosen, errors

    def output_error(self, chosen: dict[Node, tuple[Tensor, float]]) -> float:
        env = self.env_with(chosen)
        pre = self.regions[self.output].pre
        return _rel_err(env[pre], self.ann[pre])


def batch_independent(runner: Runner) -> bool:
    """True unless samples interact (a fixed matrix mixes rows of the input, as in a GCN)."""
    return not any(runner.role(n) == "weighted" and n.op == "call_function" for n in runner.nodes)


def fire_windows(runner: Runner, relus: Sequence[Node]) -> tuple[dict[Node, int], int]:
    """Fire window of every spiking layer and the output's input window.

    The input is sent (or applied as a current) in window 0. A layer listens
    in the latest fire window among its sources and fires in the next one.
    """
    fire: dict[Node, int] = {}

    def src_window(s: Node) -> int:
        if s.op == "placeholder" or runner.role(s) == "input":
            return 0
        root = runner.spiking_chain(s)[0]
        return 0 if root.op == "placeholder" else fire[root]

    for n in relus:
        reg = runner.region(n)
        srcs = [s for s in reg.spike_sources]
        fire[n] = max((src_window(s) for s in srcs), default=0) + 1
    out = next(n for n in runner.nodes if n.op == "output")
    reg = runner.region(out)
    if runner.is_spiking(reg.pre):
        out_window = fire[runner.spiking_chain(reg.pre)[0]]
    else:
        out_window = max((src_window(s) for s in reg.spike_sources), default=0)
    return fire, out_window


def calibrate(
    traced: TracedModel,
    x: Tensor,
    cfg: SearchConfig,
    *,
    phases: int,
    input_coding: str = "analog",
    progress: bool = True,
) -> Plan:
    """Search every spiking layer's code on calibration inputs ``x`` ``[N, ...]``.

    ``phases`` is the window ``T``; ``input_coding`` one of
    :data:`onespike.plan.INPUT_CODINGS` (``"single"`` searches the input's code too).

    Modifies ``traced.module`` only when ``cfg.bias_correction`` is set (its
    biases); ``traced`` is the converter's private copy of the ANN.
    """
    x_search = x
    n_search = cfg.search_samples
    if n_search is not None and x.shape[0] > n_search and batch_independent(Runner(traced.module)):
        x_search = x[: cfg.search_samples]
    job = {"phases": phases, "input_coding": input_coding}
    search = _Search(traced, x_search, cfg, progress, **job)
    full = _Search(traced, x, cfg, progress=False, **job) if x_search is not x else search
    if full is not search:
        search.stats_source = full
    if cfg.base == "global":
        # one base for every layer, scored by the error of the logits: every 4th base
        # of the grid, then the grid's neighbours (two each side) of the best one
        tried: dict[float, tuple] = {}
        bar = tqdm(desc="global base", disable=not progress, leave=False)

        def run_base(b: float) -> None:
            if b not in tried:
                chosen, errors = search.run_sequential([b], desc=f"base {b}")
                tried[b] = (search.output_error(chosen), chosen, errors)
                bar.update()

        for b in BASE_GRID[::4]:
            run_base(b)
        j = BASE_GRID.index(min(tried, key=lambda b: tried[b][0]))
        for b in BASE_GRID[max(j - 2, 0) : j + 3]:
            run_base(b)
        bar.close()
        _, chosen, errors = min(tried.values(), key=lambda t: t[0])
    else:
        chosen, errors = search.run_sequential()
    search = full  # the plan's figures on the whole calibration set
    env = search.env_with(chosen)
    fire, out_window = fire_windows(search.runner, search.relus)

    def lp_for(node: Node, name: str, act: Tensor, pre: Tensor, window: int) -> LayerPlan:
        s, b = chosen[node]
        q = search.quantizer(s, b)(pre)
        scale = tuple(float(v) for v in s) if s.dim() > 0 else float(s)
        return LayerPlan(
            name=name,
            neurons=int(act[0].numel()),
            scale=scale,
            base=float(b),
            phases=phases,
            shift=cfg.threshold_shift,
            act_error=_rel_err(q, act),
            out_error=float(errors[node]),
            fire_window=window,
        )

    layers = []
    for n in search.relus:
        pre = env[n.args[0]]
        layers.append(lp_for(n, traced.names[n], torch.relu(pre), pre, fire[n]))
    inp = None
    if input_coding == "single":
        inp = lp_for(search.input, "input", x, x, 0)
    search_info = cfg.describe()
    return Plan(
        phases=phases,
        input_coding=input_coding,
        layers=tuple(layers),
        input=inp,
        latency_steps=(out_window + 1) * phases,
        search=search_info,
    )
