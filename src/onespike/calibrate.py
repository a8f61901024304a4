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
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx
from tqdm.auto import tqdm

from onespike import distributed, observe
from onespike.codes import phase as pc
from onespike.errors import OptionError
from onespike.graph import Region, Runner
from onespike.observe import (
    Code,
    Positives,
    StreamStats,
    activation_of,
    coded_values,
    converted_runner,
    encode_input,
    layer_figures,
    percentiles,
    quantizer_of,
    rel_err,
)
from onespike.plan import LayerPlan, Plan
from onespike.stream import Batches, as_batches
from onespike.trace import TracedModel, op_of

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
        spike_tolerance: trade a little error for fewer spikes. ``0`` (default): each
            layer takes the candidate of least error. A positive value ``t``: every base is
            also scored at the best scale, and the layer takes, among the scored
            candidates that add at most ``(1 + t)`` times the error the best one adds
            (the error over the floor that the layers before it leave: the score with
            this layer exact), the one whose code fires fewest spikes on the search
            samples (a neuron whose value lies below its smallest level stays silent).
    """

    base: str | float | tuple[float, ...] = "auto"
    scale: str | float = "auto"
    threshold_shift: bool = True
    objective: str = "next"
    per_channel: bool | str = "auto"
    bias_correction: bool = False
    search_samples: int | None = 256
    spike_tolerance: float = 0.0

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
        t = self.spike_tolerance
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < math.inf:
            raise OptionError(f"spike_tolerance must be a number >= 0, got {t!r}")
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
            "threshold_shift": self.threshold_shift,
            "search_samples": self.search_samples,
        } | ({"spike_tolerance": self.spike_tolerance} if self.spike_tolerance else {})


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


class _Search:
    """The layer-by-layer search on the search samples ``x`` (held in memory).

    Holds the ANN's value of every node on ``x`` (the references), the network
    converted so far (a cache of node values, :meth:`env_with`, computed by one
    :class:`~onespike.graph.Runner` up to the node needed), and for every spiking layer
    (and the input) where its spikes arrive: ``consumers`` (the spiking layers and the
    output whose regions it feeds), ``derived`` (the max-pools and reshapes of its
    spikes) and ``regions`` (each consumer's dendritic region). :meth:`run_sequential`
    chooses the layers' codes in topological order (:meth:`search_layer`: candidate
    scales from :func:`~onespike.observe.percentiles` of what the layer codes, bases
    from the grid, scored by the objective in :meth:`score`); :meth:`set_windows`
    changes the layers' windows (``windows=`` and ``"auto"``); :meth:`logits` and
    :meth:`held_out` measure a choice on other inputs. ``stats_source`` (set by
    :func:`calibrate` when the set is larger than the search samples) gives the
    candidate scales over every sample instead of ``x`` alone.
    """

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
        self.code = code_of(traced, phases, cfg.threshold_shift, input_coding)
        self.x = x
        self.progress = progress
        self.stats_source: StreamStats | None = None  # candidate scales from a larger set
        self.runner = Runner(traced.module)
        r = self.runner
        self.relus = traced.relus
        self.input = traced.input_node
        self.output = next(n for n in r.nodes if n.op == "output")
        with torch.no_grad():
            self.ann = r.forward_all(x)
        self._env: dict[Node, object] = {}
        self._env_chosen: dict[Node, tuple[Tensor, float]] = {}
        self.candidates: dict[Node, tuple[list[Tensor], list[float]]] = {}
        self.regions: dict[Node, Region] = {t: r.region(t) for t in [*self.relus, self.output]}
        self.consumers: dict[Node, list[Node]] = {n: [] for n in [self.input, *self.relus]}
        for t, reg in self.regions.items():
            roots = {self._root(s) for s in reg.spike_sources}
            for root in roots:
                if root is not None:
                    self.consumers[root].append(t)
        self.derived: dict[Node, list[Node]] = {n: [] for n in [self.input, *self.relus]}
        for n in r.nodes:
            if n.op != "placeholder" and (r.role(n) == "maxpool" or r.moves_spikes(n)):
                self.derived[self._root(n)].append(n)

    def _root(self, src: Node) -> Node | None:
        """The spiking layer (or the input) whose spikes ``src`` carries; None: no spikes."""
        if src.op == "placeholder":
            return src
        if not self.runner.is_spiking(src):
            return None
        return self.runner.spiking_chain(src)[0]

    # --- the converted network so far -------------------------------------------------
    def quantizer(self, scale: Tensor, base: float, node: Node) -> Callable[[Tensor], Tensor]:
        """The code of spiking layer ``node`` at its current window."""
        return quantizer_of(scale, base, self.code, node)

    def converted(self, chosen: dict[Node, tuple[Tensor, float]]) -> Runner:
        """A runner of the network with the ``chosen`` layers coded, the others ReLU."""
        return converted_runner(self.traced.module, chosen, self.code, self.input)

    def set_windows(self, windows: dict[str, int]) -> None:
        """Code the spiking layers with these windows (by node name) from now on; every
        cached value that a window could change is forgotten."""
        old = self.code
        self.code = old.with_windows(windows)
        changed = [n for n in self.relus if old.window(n) != self.code.window(n)]
        if changed:
            self._invalidate_from(min(self.runner.order[n] for n in changed))
            if self.stats_source is not None:
                self.stats_source.set_code(self.code)

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
        with torch.no_grad():
            self.converted(chosen).run_upto(self._env, upto, lambda: self.encode_input(chosen))
        return dict(self._env)

    def _invalidate_from(self, first: int) -> None:
        """Forget the cached values of the nodes from topological position ``first`` on."""
        order = self.runner.order
        self._env = {n: v for n, v in self._env.items() if order[n] < first}

    def invalidate_after(self, node: Node) -> None:
        """Forget cached values after ``node`` (the modules after it changed)."""
        self._invalidate_from(self.runner.order[node] + 1)

    def encode_input(self, chosen: dict[Node, tuple[Tensor, float]]) -> Tensor:
        """The search samples as the first layers receive them (the input's code)."""
        return encode_input(self.x, self.input, chosen, self.code)

    def score(self, node: Node, q: Tensor, env: dict[Node, object]) -> float:
        """Relative squared error at the consumers of ``node`` when it outputs ``q``."""
        if self.cfg.objective == "activation":
            ref = self.ann[node]
            return rel_err(q, ref)
        if self.cfg.objective == "output":  # the logits, the later layers still ReLU
            order = self.runner.order
            pre = self.regions[self.output].pre
            env = {n: v for n, v in env.items() if order[n] < order[node]}
            env[node] = q
            rest = [n for n in self.runner.nodes if order[node] < order[n] <= order[pre]]
            with torch.no_grad():
                self.runner.run(env, rest)
            return rel_err(env[pre], self.ann[pre])
        env = dict(env)
        env[node] = q
        with torch.no_grad():
            self.runner.run(env, self.derived[node])
            total = 0.0
            for t in self.consumers[node]:
                reg = self.regions[t]
                self.runner.run(env, reg.nodes)
                total += rel_err(env[reg.pre], self.ann[reg.pre])
        return total

    # --- the search ------------------------------------------------------------------
    def candidates_for(
        self, layer_index: int, values: Tensor | Positives, node: Node | None = None
    ) -> tuple[list[Tensor], list[float]]:
        """The candidate scales (percentiles of ``values``) and bases of the
        ``layer_index``-th spiking layer (``node``), as the config allows. Exponential
        neurons (a softmax) have the scale 1: their values are ``exp(score - rowmax)``,
        the winner's is 1; only their base is searched."""
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
        if self.code.kind(node) == "softmax":
            return [torch.tensor(1.0, device=self.x.device)], bases
        return percentiles(values, qs, cfg.per_channel), bases

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
        stats: Tensor | Positives | None,
    ) -> tuple[Tensor, float, float]:
        """Search one layer's scale and base; ``stats`` None: the candidates of the last
        search of this layer (the same layers before it converted the same way)."""
        pre = self.layer_input(node, env)
        if stats is None:
            scales, bases = self.candidates[node]
        else:
            scales, bases = self.candidates_for(index, stats, node)
            self.candidates[node] = (scales, bases)
        cap = self.traced.caps.get(node)
        if cap is not None:  # a clipped ReLU: its activations never exceed the cap
            scales = [s.clamp(max=cap) for s in scales]
        if bases_override is not None:
            bases = bases_override
        best = (float("inf"), scales[0], bases[0])
        cache: dict[tuple[int, float], float] = {}
        fired: dict[tuple[int, float], float] = {}  # spikes of each candidate's code

        def score_of(i: int, b: float) -> tuple[float, float]:
            q = self.quantizer(scales[i], b, node)(pre)
            return self.score(node, q, env), float((q != 0).sum())

        def evaluate_all(pairs: Iterable[tuple[int, float]]) -> None:
            """Score the candidates not yet scored, then take the best in ``pairs``' order
            (the order one at a time would take). Under a process group the ranks share
            the candidates out and gather the scores: each score is computed exactly as
            one process computes it, so the choice is the same."""
            nonlocal best
            todo = list(dict.fromkeys(p for p in pairs if p not in cache))
            world = distributed.world_size()
            if world > 1 and len(todo) > 1:
                mine = {p: score_of(*p) for p in todo[distributed.rank() :: world]}
                got = {p: e for part in distributed.gather_objects(mine) for p, e in part.items()}
            else:
                got = {p: score_of(*p) for p in todo}
            for p in todo:
                e, fired[p] = got[p]
                cache[p] = e
                if e < best[0]:
                    best = (e, scales[p[0]], p[1])

        # coordinate descent: the coarse base grid (every other base) at a middle
        # scale, every scale at the best base, the base's fine neighbours at the
        # best scale, and once more every scale; about 25 candidates per layer.
        def best_index() -> tuple[int, float]:
            return next((i, b) for (i, b), e in cache.items() if e == best[0])

        i0 = min(2, len(scales) - 1)
        evaluate_all((i0, b) for b in (bases[1::2] if len(bases) > 2 else bases))
        for _ in range(2):
            _, b = best_index()
            evaluate_all((i, b) for i in range(len(scales)))
            i, b = best_index()
            j = bases.index(b)
            evaluate_all((i, bb) for bb in bases[max(j - 2, 0) : j + 3])
        tol = self.cfg.spike_tolerance
        if tol > 0:  # fewest spikes while the error this layer adds grows by at most tol
            i, _ = best_index()
            evaluate_all((i, bb) for bb in bases)
            exact = pre if node is self.input else activation_of(self.code.kind(node), pre, cap)
            floor = min(self.score(node, exact, env), best[0])  # the error from upstream
            ok = [p for p, e in cache.items() if e - floor <= (1 + tol) * (best[0] - floor)]
            i, b = min(ok, key=lambda p: (fired[p], cache[p]))
            return scales[i], b, cache[(i, b)]
        return best[1], best[2], best[0]

    def bias_correct(self, node: Node, env: dict[Node, object]) -> None:
        """Shift the bias of each consumer's last Conv/Linear by the mean error per channel
        of the consumer's pre-activation (:meth:`bias_terms`: for a residual sum, on the
        Conv/Linear term of the sum, so the error the shortcut carries is corrected too)."""
        with torch.no_grad():
            env = dict(env)
            self.runner.run(env, self.derived[node])
            for t in self.consumers[node]:
                reg = self.regions[t]
                terms = self.bias_terms(reg.pre)
                if not terms:
                    continue
                self.runner.run(env, reg.nodes)
                # the first term of the sum's own shape (not one broadcast into it)
                term = next((a for a in terms if env[a].shape == env[reg.pre].shape), None)
                if term is None:
                    continue
                m = self.runner.modules[term.target]
                diff = (env[reg.pre] - self.ann[reg.pre]).double()
                # a Linear's channels are the last dimension ([N, tokens, d] too)
                ch = diff.dim() - 1 if isinstance(m, torch.nn.Linear) else 1
                dims = [d for d in range(diff.dim()) if d != ch] if diff.dim() > 1 else [0]
                mean = diff.mean(dim=dims)
                m.bias.data -= mean.to(m.bias.dtype)

    def bias_terms(self, pre: Node) -> list[Node]:
        """The Conv/Linear nodes with a bias that could move the pre-activation ``pre``
        channel for channel: ``pre`` itself, or, when ``pre`` is a sum (a residual add),
        its terms that are Conv/Linear outputs."""
        runner = self.runner
        terms = [pre]
        entry = op_of(pre, runner.modules)
        if entry is not None and entry.nir == "sum":
            terms = [a for a in pre.args if isinstance(a, Node)]
        return [
            a
            for a in terms
            if runner.role(a) == "weighted"
            and a.op == "call_module"
            and runner.modules[a.target].bias is not None
        ]

    def run_sequential(self, bases_override: list[float] | None = None, desc: str = "calibrate"):
        """Search every layer (the input first with the single-spike input code) in
        topological order, each seeing the layers before it converted as chosen; with
        ``bases_override``, only those bases. Returns the chosen ``(scale, base)`` and
        the search error of every layer."""
        chosen: dict[Node, tuple[Tensor, float]] = {}
        errors: dict[Node, float] = {}
        order = ([self.input] if self.input_coding == "single" else []) + list(self.relus)
        it = tqdm(order, desc=desc, disable=not self.progress, leave=False)
        for i, node in enumerate(it):
            upto = max(self.consumers[node], key=self.runner.order.__getitem__, default=None)
            env = self.env_with(chosen, upto)
            idx = i - (1 if self.input_coding == "single" else 0)
            full = self.stats_source
            kind = self.code.kind(node)
            stats = (
                coded_values(kind, self.layer_input(node, env))
                if full is None or kind == "softmax"  # a softmax's scale is 1: no statistics
                else full.positives(node, chosen, self.cfg.per_channel)
            )
            s, b, e = self.search_layer(node, idx, env, bases_override, stats)
            chosen[node] = (s, b)
            errors[node] = e
            if self.cfg.bias_correction and node is not self.input:
                env = self.env_with(chosen, upto)
                self.bias_correct(node, env)
                self.invalidate_after(node)
        return chosen, errors

    def output_error(self, chosen: dict[Node, tuple[Tensor, float]]) -> float:
        """The relative squared error of the logits on the search samples, ``chosen``
        converted (at the current windows)."""
        env = self.env_with(chosen)
        pre = self.regions[self.output].pre
        return rel_err(env[pre], self.ann[pre])

    def logits(self, x: Tensor, chosen: dict[Node, tuple[Tensor, float]] | None) -> Tensor:
        """The logits on other inputs ``x`` (chunk by chunk): of the network converted
        with ``chosen`` at the current windows, or of the ANN (None)."""
        pre = self.regions[self.output].pre
        runner = self.converted(chosen or {})
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], observe.STATS_CHUNK):
                xc = x[i : i + observe.STATS_CHUNK]
                xin = xc if chosen is None else encode_input(xc, self.input, chosen, self.code)
                out.append(runner.run_upto({}, pre, xin)[pre])
        return torch.cat(out)

    def held_out(
        self, chosen: dict[Node, tuple[Tensor, float]], x: Tensor, ann_logits: Tensor
    ) -> HeldOut:
        """The converted network (``chosen``, current windows) on held-out inputs ``x``:
        top-1 agreement with the ANN's logits ``ann_logits`` and the logits error."""
        q = self.logits(x, chosen)
        same = q.argmax(1) == ann_logits.argmax(1) if q.dim() > 1 else torch.zeros(0)
        return HeldOut(int(same.sum()), int(same.numel()), rel_err(q, ann_logits))


def code_of(traced: TracedModel, phases: int, threshold_shift: bool, input_coding: str) -> Code:
    """The :class:`~onespike.observe.Code` a search of ``traced`` starts from: every window
    ``phases``, and the kind of every spiking layer that is not a ReLU."""
    kinds = tuple((n.name, k) for n, k in traced.kinds.items())
    return Code(phases, threshold_shift, input_coding, kinds=kinds)


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


def fire_steps(
    runner: Runner, relus: Sequence[Node], windows: Sequence[int], input_steps: int
) -> tuple[dict[Node, int], int]:
    """First step of every spiking layer's fire window, and the latency in steps.

    ``windows``: each layer's window ``T_l`` (in the order of ``relus``); the input is
    sent (or applied as a current) in steps ``0 .. input_steps - 1``. A layer listens
    while its latest source fires and fires right after: its fire window starts when
    the last of its sources' windows ends (spikes of a source that ended earlier, a
    shortcut, are delayed until then) and lasts ``T_l`` steps. The latency is the end
    of the last window the output listens to: the sum of the windows along the
    longest path, ``input_steps + sum(T_l)`` for a chain. With every ``T_l = T =
    input_steps`` a layer of fire window ``w`` (:func:`fire_windows`) starts at
    ``w * T`` and the latency is ``(out_window + 1) * T``.
    """
    start: dict[Node, int] = {}
    width = dict(zip(relus, windows))

    def src_end(s: Node) -> int:
        if s.op == "placeholder" or runner.role(s) == "input":
            return input_steps
        root = runner.spiking_chain(s)[0]
        return input_steps if root.op == "placeholder" else start[root] + width[root]

    for n in relus:
        reg = runner.region(n)
        start[n] = max((src_end(s) for s in reg.spike_sources), default=input_steps)
    out = next(n for n in runner.nodes if n.op == "output")
    reg = runner.region(out)
    if runner.is_spiking(reg.pre):
        latency = src_end(reg.pre)
    else:
        latency = max((src_end(s) for s in reg.spike_sources), default=input_steps)
    return start, latency


#: ``windows="auto"`` measures every layer at the windows ``T - AUTO_SPAN .. T + AUTO_SPAN``
#: (those >= 1) and chooses among them.
AUTO_SPAN = 2

#: ``windows="auto"`` searches this many allocations of the latency budget (the best one
#: by the measured sensitivity and its next best neighbours) beside the uniform windows.
AUTO_CANDIDATES = 3

#: ``windows="auto"`` chooses among its candidates on at most this many held-out
#: calibration samples (those after the ``search_samples`` the search scores on).
AUTO_HOLDOUT = 4096


def check_windows(windows: object, layers: int | None = None) -> str | tuple[int, ...] | None:
    """``windows`` as :func:`calibrate` takes it: None (every layer gets the window
    ``phases``), ``"auto"``, or one integer >= 1 per spiking layer (a tuple).

    Raises :class:`~onespike.errors.OptionError` naming what is wrong; ``layers`` (the
    model's number of spiking layers, if known) checks the length.
    """
    if windows is None or windows == "auto":
        return windows  # type: ignore[return-value]
    if isinstance(windows, str) or not isinstance(windows, Sequence):
        raise OptionError(
            "windows must be None, 'auto' or a list of one integer >= 1 per spiking layer, "
            f"got {windows!r}"
        )
    for i, w in enumerate(windows):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise OptionError(f"windows[{i}] must be an integer >= 1 (steps), got {w!r}")
    if layers is not None and len(windows) != layers:
        raise OptionError(
            f"windows has {len(windows)} values but the model has {layers} spiking layers "
            "(one window per spiking layer, in the order of the plan)"
        )
    return tuple(int(w) for w in windows)


def check_input_window(
    input_window: object, input_coding: str, phases: int, windows: object = None
) -> int:
    """The input's window in steps.

    ``input_window`` None: 1 for an analog input with ``windows="auto"`` (a constant
    current needs one step to deliver ``W x``; the steps saved go to the spiking layers),
    ``phases`` otherwise. An integer ``>= 1`` is taken for an analog input only: the
    binary code sends ``phases`` bits and the single-spike input code fires over
    ``phases`` steps, so their window stays ``phases``.
    """
    if input_window is None:
        return 1 if windows == "auto" and input_coding == "analog" else phases
    w = input_window
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
        raise OptionError(f"input_window must be an integer >= 1 (steps) or None, got {w!r}")
    if input_coding != "analog" and int(w) != phases:
        raise OptionError(
            f"input_window={w} needs input_coding='analog': the {input_coding!r} input code "
            f"sends its spikes over the {phases} steps of the window phases"
        )
    return int(w)


def _allocate(
    curves: Sequence[dict[int, float]],
    start: Sequence[int],
    latency: Callable[[list[int]], int],
    budget: int,
) -> list[int]:
    """Windows that minimise ``sum(curves[l][w_l])`` with ``latency(w) <= budget``.

    A greedy descent from ``start`` over the measured windows of each layer: at every
    step the best of: one more step for a layer, one step less for a layer, or both
    (a step moved from one layer to another), among the moves that keep the latency
    within the budget; until no move lowers the sum. Each move lowers it, so it ends.
    """
    w = list(start)
    cur = _predicted(curves, w)
    while True:
        best: tuple[float, list[int]] | None = None
        for new in _moves(curves, w):
            c = _predicted(curves, new)
            better = c < cur - 1e-12 * abs(cur) and (best is None or c < best[0])
            if better and latency(new) <= budget:
                best = (c, new)
        if best is None:
            return w
        cur, w = best


def _predicted(curves: Sequence[dict[int, float]], ws: Sequence[int]) -> float:
    """The sensitivity model's figure of windows ``ws``: the sum of the layers' errors."""
    return sum(curves[i][ws[i]] for i in range(len(ws)))


def _moves(curves: Sequence[dict[int, float]], w: Sequence[int]) -> Iterator[list[int]]:
    """Every windows one move from ``w`` (a step more or less for one layer, or a step
    moved from one layer to another), among the windows measured."""
    n = len(w)
    for j in range(n):
        for dj in (1, -1):
            if w[j] + dj not in curves[j]:
                continue
            for i in [None, *range(n)]:
                new = list(w)
                new[j] += dj
                if i is not None:
                    if i == j or new[i] - dj not in curves[i]:
                        continue
                    new[i] -= dj
                yield new


def _candidates(
    curves: Sequence[dict[int, float]],
    start: Sequence[int],
    latency: Callable[[list[int]], int],
    budget: int,
    count: int,
) -> list[list[int]]:
    """Up to ``count`` allocations within the budget, none of them ``start``: the greedy
    one (:func:`_allocate`), then its neighbours (one move away) that use the whole
    budget, best predicted first. The sensitivity model adds the layers' errors as if
    they were independent; the candidates hedge against its error, and a held-out
    measurement chooses among them."""
    best = _allocate(curves, start, latency, budget)
    out = [] if best == list(start) else [best]
    lat = latency(best)
    near = {
        tuple(m)
        for m in _moves(curves, best)
        if m != list(start) and latency(m) <= budget and latency(m) >= lat
    }
    ranked = sorted(near, key=lambda m: (_predicted(curves, m), m))
    out += [list(m) for m in ranked if list(m) != best]
    return out[:count]


@dataclass(frozen=True)
class HeldOut:
    """A candidate plan measured on held-out calibration samples: how many of them it
    classifies as the ANN does (``agree`` of ``samples``; top-1) and the relative
    squared error of its logits (``error``)."""

    agree: int
    samples: int
    error: float


def choose_held_out(scores: Sequence[HeldOut]) -> int:
    """The index of the best candidate: most held-out samples agreeing with the ANN, the
    logits error breaking ties, the earlier candidate (the uniform plan, first) on a full
    tie. Agreement follows accuracy; the logits error does not always (a plan can lower
    it and flip more decisions)."""
    return min(range(len(scores)), key=lambda i: (-scores[i].agree, scores[i].error, i))


def _auto_windows(
    search: _Search,
    traced: TracedModel,
    phases: int,
    budget: int,
    latency: Callable,
    held_x: Tensor | None,
) -> tuple[dict[Node, tuple[Tensor, float]], dict[Node, float], list[int], dict]:
    """``windows="auto"``: each layer's window by its measured sensitivity.

    1. The uniform search (every window ``T``), and its error of the logits ``E_T``.
    2. Sensitivity: for every layer ``l`` and window ``w`` in ``T-AUTO_SPAN .. T+AUTO_SPAN``
       (>= 1), layer ``l`` is searched anew at ``w`` (the layers before it as in 1, so at
       the windows actually upstream of it) and the error of the logits ``e_l(w)`` is
       measured with the other layers as in 1.
    3. Candidates (:func:`_candidates`): the windows minimising ``sum_l e_l(w_l)`` whose
       latency (the longest path, the input's window included) is at most ``budget``,
       the uniform network's, as mixed-precision quantisation gives bits to the layers
       that gain most from them; and its best neighbours, up to :data:`AUTO_CANDIDATES`.
    4. Each candidate is searched again, layer by layer, every layer at its window and
       seeing the layers before it at theirs.
    5. The choice, uniform windows included, on ``held_x`` (calibration samples the
       search never scored): the most top-1 agreement with the ANN, the error of the
       logits there breaking ties (:func:`choose_held_out`). Without held-out samples
       (the whole set searched) the choice falls back to the error of the logits on
       the search samples, and the record says so.

    Returns the chosen codes, the search errors, the windows and what the plan records.
    """
    relus = list(search.relus)
    uniform = [phases] * len(relus)
    state0 = _bias_state(traced) if search.cfg.bias_correction else None
    ann_held = search.logits(held_x, None) if held_x is not None else None

    def measure(chosen: dict[Node, tuple[Tensor, float]]) -> HeldOut:
        if held_x is None:  # no held-out samples: the search samples' logits error
            return HeldOut(0, 0, search.output_error(chosen))
        return search.held_out(chosen, held_x, ann_held)

    search.set_windows({n.name: phases for n in relus})
    chosen_u, errors_u = search.run_sequential(desc="windows: uniform")
    state_u = _bias_state(traced) if state0 is not None else None
    e_uniform = search.output_error(chosen_u)
    curves = _sensitivity(search, chosen_u, e_uniform, phases)
    scores = [measure(chosen_u)]
    cands = _candidates(curves, uniform, latency, budget, AUTO_CANDIDATES)
    info: dict = {
        "uniform_output_error": e_uniform,
        # per layer: [window, error of the logits] for every window measured
        "sensitivity": {
            traced.names[n]: [[w, e] for w, e in sorted(c.items())] for n, c in zip(relus, curves)
        },
        "criterion": (
            "held-out top-1 agreement with the ANN, logits error breaking ties"
            if held_x is not None
            else "logits error on the search samples (no held-out samples)"
        ),
        "held_out_samples": 0 if held_x is None else int(held_x.shape[0]),
    }
    rows = [{"windows": uniform, "output_error": e_uniform}]
    best = (chosen_u, errors_u, uniform, state_u)
    for ws in cands:
        if state0 is not None:
            _set_bias_state(traced, state0)
            search.invalidate_after(search.input)
        search.set_windows({n.name: w for n, w in zip(relus, ws)})
        chosen, errors = search.run_sequential(desc=f"windows: {ws}")
        rows.append({"windows": ws, "output_error": search.output_error(chosen)})
        scores.append(measure(chosen))
        if choose_held_out(scores) == len(scores) - 1:  # the best so far
            state = _bias_state(traced) if state0 is not None else None
            best = (chosen, errors, ws, state)
    for row, sc in zip(rows, scores):
        row["predicted"] = _predicted(curves, row["windows"])
        if held_x is not None:
            row.update(held_out_agree=sc.agree, held_out_error=sc.error)
    pick = choose_held_out(scores)
    chosen, errors, windows, state = best
    assert windows == rows[pick]["windows"]
    info.update(
        candidates=rows,
        kept="uniform" if pick == 0 else "auto",
        chosen_output_error=rows[pick]["output_error"],
    )
    if cands:  # the allocation the sensitivity model ranks first
        info.update(allocated=cands[0], allocated_output_error=rows[1]["output_error"])
    if state is not None:
        _set_bias_state(traced, state)
        search.invalidate_after(search.input)
    search.set_windows({n.name: w for n, w in zip(relus, windows)})
    return chosen, errors, windows, info


def _sensitivity(
    search: _Search, chosen_u: dict[Node, tuple[Tensor, float]], e_uniform: float, phases: int
) -> list[dict[int, float]]:
    """Step 2 of :func:`_auto_windows`: per spiking layer, the error of the logits at each
    window ``w`` in ``T-AUTO_SPAN .. T+AUTO_SPAN`` (>= 1), the layer searched anew at ``w``
    after the layers before it as in the uniform search ``chosen_u``, every other layer
    as there. Leaves every window at ``T``."""
    relus = list(search.relus)
    order = ([search.input] if search.input_coding == "single" else []) + relus
    lo, hi = max(1, phases - AUTO_SPAN), phases + AUTO_SPAN
    curves: list[dict[int, float]] = []
    bar = tqdm(relus, desc="windows: sensitivity", disable=not search.progress, leave=False)
    for idx, node in enumerate(bar):
        before = {n: chosen_u[n] for n in order[: order.index(node)]}
        upto = max(search.consumers[node], key=search.runner.order.__getitem__, default=None)
        curve = {phases: e_uniform}
        for w in range(lo, hi + 1):
            if w == phases:
                continue
            search.set_windows({n.name: (w if n is node else phases) for n in relus})
            env = search.env_with(before, upto)
            s, b, _ = search.search_layer(node, idx, env, None, None)
            curve[w] = search.output_error({**chosen_u, node: (s, b)})
        curves.append(curve)
    search.set_windows({n.name: phases for n in relus})
    return curves


def _bias_state(traced: TracedModel) -> dict[str, Tensor]:
    """A copy of the module's parameters (bias correction changes the biases)."""
    return {k: v.detach().clone() for k, v in traced.module.state_dict().items()}


def _set_bias_state(traced: TracedModel, state: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for k, v in traced.module.state_dict().items():
            v.copy_(state[k])


def calibrate(
    traced: TracedModel,
    x: Tensor | Batches,
    cfg: SearchConfig,
    *,
    phases: int,
    input_coding: str = "analog",
    progress: bool = True,
    windows: str | Sequence[int] | None = None,
    input_window: int | None = None,
) -> Plan:
    """Search every spiking layer's code on calibration inputs ``x`` ``[N, ...]``.

    ``phases`` is the window ``T``; ``input_coding`` one of
    :data:`onespike.plan.INPUT_CODINGS` (``"single"`` searches the input's code too).

    ``windows``: None (every spiking layer's window is ``T``), one window ``T_l >= 1``
    per spiking layer, or ``"auto"``: each layer's window chosen by its measured
    sensitivity so that the latency is at most the uniform network's (every window
    ``T``, the input's too), the candidates compared on held-out calibration samples
    (:func:`_auto_windows`). Every layer is searched for its own window, seeing the
    layers before it at theirs. The latency is the sum of the windows along the
    longest path, the input's included (:func:`fire_steps`).

    ``input_window``: the input's window in steps (:func:`check_input_window`): None
    gives 1 for an analog input with ``windows="auto"`` (the constant current ``W x``
    is delivered in one step, exactly), ``T`` otherwise; an integer for an analog
    input. Recorded as ``plan.input_window`` when it is not ``T``.

    ``x``: a tensor, or a :class:`~onespike.stream.Batches` (a DataLoader, a Dataset, a
    list of batches, wrapped by :func:`~onespike.stream.as_batches`). The search holds
    the first ``cfg.search_samples`` inputs in memory; the statistics over the whole set
    (candidate scales, the plan's errors) are read chunk by chunk (:class:`StreamStats`),
    so a stream larger than memory is never materialised. Unless ``search_samples`` is
    None or the model mixes samples (a GCN): then the search needs the whole set at once.

    Under a process group (:mod:`onespike.distributed`; every rank given the same
    ``x``): every rank runs the search on the same first ``search_samples`` inputs (the
    same work, no communication: it is small), and the statistics over the whole set
    are shared out: each rank reads its contiguous shard of :data:`STATS_CHUNK`-sample
    chunks, the candidate scales are percentiles of every rank's values gathered
    (exact), the plan's error figures are sums replayed in the chunks' order. Every
    rank ends with the plan one process makes, bit for bit. When the whole set is
    searched (``search_samples`` None or >= the set, or a graph model) every rank does
    all the work, and the plan is again the same.

    Modifies ``traced.module`` only when ``cfg.bias_correction`` is set (its
    biases); ``traced`` is the converter's private copy of the ANN.
    """
    windows = check_windows(windows, len(traced.relus))
    if windows == "auto" and cfg.base == "global":
        raise OptionError("windows='auto' cannot be combined with base='global'")
    input_steps = check_input_window(input_window, input_coding, phases, windows)
    data = as_batches(x)
    n_search = cfg.search_samples
    search_all = (
        n_search is None or data.count <= n_search or not batch_independent(Runner(traced.module))
    )
    x_search = data.head(None if search_all else n_search)
    code = code_of(traced, phases, cfg.threshold_shift, input_coding)
    search = _Search(traced, x_search, cfg, progress, phases=phases, input_coding=input_coding)
    stream = None
    if not search_all:
        shard = distributed.shard(data, observe.STATS_CHUNK)
        stream = StreamStats(
            traced, shard, code, objective=cfg.objective, bias_correction=cfg.bias_correction
        )
    search.stats_source = stream
    relus = list(search.relus)
    window_info: dict | None = None

    def latency_of(ws: Sequence[int]) -> int:
        return fire_steps(search.runner, relus, ws, input_steps)[1]

    if isinstance(windows, tuple):
        search.set_windows({n.name: w for n, w in zip(relus, windows)})
    if windows == "auto":
        # the budget: the latency of the uniform network (every window T, the input's too)
        budget = fire_steps(search.runner, relus, [phases] * len(relus), phases)[1]
        held_x = None
        if not search_all and data.count > n_search:  # the samples the search never scores
            held_x = data.window(n_search, min(data.count, n_search + AUTO_HOLDOUT)).head(None)
        chosen, errors, _, window_info = _auto_windows(
            search, traced, phases, budget, latency_of, held_x
        )
    elif cfg.base == "global":
        chosen, errors = _global_base(search, progress)
    else:
        chosen, errors = search.run_sequential()
    code = search.code
    # the plan's figures on the whole calibration set
    sums: dict[Node, list[float]] = {}
    if stream is None:
        env = search.env_with(chosen)
        layer_figures(env, x_search, chosen, search.relus, search.input, code, sums, traced.caps)
    else:  # chunk by chunk (on this rank's shard), then added up in the chunks' order
        sums = stream.figures(chosen, search.relus, code)
    _, latency = fire_steps(search.runner, relus, [code.window(n) for n in relus], input_steps)
    layers, inp = _layer_plans(search, traced, cfg, chosen, errors, sums, input_coding)
    search_info = cfg.describe()
    if windows is not None:  # the uniform plan's record stays as it was
        search_info["windows"] = "auto" if windows == "auto" else "list"
    if window_info is not None:
        search_info["auto_windows"] = window_info
    return Plan(
        phases=phases,
        input_coding=input_coding,
        layers=tuple(layers),
        input=inp,
        latency_steps=latency,
        search=search_info,
        input_window=None if input_steps == phases else input_steps,
    )


def _global_base(search: _Search, progress: bool) -> tuple[dict, dict]:
    """One base for every layer (``base="global"``), scored by the error of the logits:
    every 4th base of the grid, then the grid's neighbours (two each side) of the best
    one. Returns the chosen ``(scale, base)`` per layer and the layers' output errors."""
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
    return chosen, errors


def _layer_plans(
    search: _Search,
    traced: TracedModel,
    cfg: SearchConfig,
    chosen: dict,
    errors: dict,
    sums: dict[Node, list[float]],
    input_coding: str,
) -> tuple[list[LayerPlan], LayerPlan | None]:
    """The spiking layers' plans, in graph order, and the input's (``"single"`` coding)."""
    code = search.code
    fire, _ = fire_windows(search.runner, search.relus)

    def lp_for(node: Node, name: str, window: int) -> LayerPlan:
        s, b = chosen[node]
        num, den, neurons = sums[node]
        scale = tuple(float(v) for v in s) if s.dim() > 0 else float(s)
        return LayerPlan(
            name=name,
            neurons=int(neurons),
            scale=scale,
            base=float(b),
            phases=code.window(node),
            threshold_shift=cfg.threshold_shift,
            act_error=num / den if den > 0 else num,
            out_error=float(errors[node]),
            fire_window=window,
            kind=traced.kind(node) if node is not search.input else "relu",
        )

    layers = [lp_for(n, traced.names[n], fire[n]) for n in search.relus]
    inp = lp_for(search.input, "input", 0) if input_coding == "single" else None
    return layers, inp
