"""Observers: what the calibration search reads from the network and the data.

The search in :mod:`onespike.calibrate` chooses each spiking layer's code; what it
observes to do so is here:

- activation statistics: the positive values a layer codes (:class:`Positives`), per
  channel or per layer (:func:`channel_scales`), and their percentiles, bit-equal to
  ``numpy.percentile`` (:func:`percentiles`), the candidate scales;
- the network converted so far: the code of a layer (:class:`Code`,
  :func:`quantizer_of`) and the input as the first layers receive it
  (:func:`encode_input`);
- statistics over the whole calibration set, read chunk by chunk of
  :data:`STATS_CHUNK` samples and reduced across ranks under a process group
  (:class:`StreamStats`: the scales' values gathered in the chunks' order, the plan's
  error sums replayed in that order), so that every rank ends with the figures one
  process makes, bit for bit;
- the relative squared error every score and figure is measured in (:func:`rel_err`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from onespike import distributed
from onespike.codes import binary
from onespike.codes import phase as pc
from onespike.codes import signed as sc
from onespike.codes import softmax as smx
from onespike.graph import Runner
from onespike.stream import Batches
from onespike.trace import TracedModel

Node = fx.Node
Tensor = torch.Tensor


def rel_err(a: Tensor, ref: Tensor) -> float:
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


@dataclass
class Positives:
    """The positive values of a layer's input, the statistics its scale candidates come
    from: one flat tensor per channel (``channel``) or one for the whole layer, in the
    order of ``values.transpose(0, 1)`` resp. ``values.reshape(-1)``. Built from one
    tensor or, chunk by chunk, from a stream (:meth:`extend`): the same values in the
    same order either way."""

    channel: bool
    parts: list[list[Tensor]]

    @classmethod
    def of(cls, values: Tensor, per_channel: bool | str) -> Positives:
        out = cls(channel_scales(per_channel, values), [])
        out.extend(values)
        return out

    def extend(self, values: Tensor) -> None:
        if self.channel:
            flat = values.transpose(0, 1).reshape(values.shape[1], -1)
            rows = [ch[ch > 0] for ch in flat]
        else:
            flat = values.reshape(-1)
            rows = [flat[flat > 0]]
        if not self.parts:
            self.parts = [[] for _ in rows]
        for acc, r in zip(self.parts, rows):
            acc.append(r)

    def values(self) -> list[Tensor]:
        return [p[0] if len(p) == 1 else torch.cat(p) for p in self.parts]


def percentile(sorted_vals: Tensor, q: float) -> float:
    """``numpy.percentile(v, q)`` (linear method) of sorted float64 values, to the bit,
    on the values' device."""
    n = sorted_vals.numel()
    v = (n - 1) * (q / 100)
    if v >= n - 1:
        return float(sorted_vals[-1])
    lo = math.floor(v)
    g = v - lo
    a, b = sorted_vals[lo : lo + 2].tolist()
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def percentiles(
    values: Tensor | Positives, qs: Sequence[float], per_channel: bool | str
) -> list[Tensor]:
    """Percentiles of the positive values (per channel along dim 1 if asked)."""
    pos = values if isinstance(values, Positives) else Positives.of(values, per_channel)
    rows = pos.values()
    dev = rows[0].device
    if pos.channel:
        srt = [r.double().sort().values for r in rows]
        out = []
        for q in qs:
            row = [percentile(r, q) if r.numel() else 0.0 for r in srt]
            out.append(torch.tensor(row, dtype=torch.float32, device=dev))
        return [safe_scale(s) for s in out]
    flat = rows[0].double()
    if flat.numel() > 2_000_000:  # a fixed random sample, and the maximum
        gen = np.random.default_rng(0)
        idx = torch.from_numpy(gen.choice(flat.numel(), 2_000_000, replace=False)).to(dev)
        flat = torch.cat([flat[idx], flat.max().reshape(1)])
    if flat.numel() == 0:
        return [torch.tensor(1.0, device=dev)]
    srt = flat.sort().values
    return [safe_scale(torch.tensor(percentile(srt, q), device=dev)) for q in qs]


def safe_scale(s: Tensor) -> Tensor:
    """Scales must be > 0: a dead channel gets scale 1 (it never fires anyway)."""
    s = s.to(torch.float32)
    return torch.where(s > 0, s, torch.ones_like(s))


@dataclass(frozen=True)
class Code:
    """What a search codes with: the windows, the threshold rule, the input coding.

    ``phases`` is the nominal window ``T`` (the input's window, and every spiking
    layer's unless ``windows`` names the layer: its own window ``T_l``, by node name).
    """

    phases: int
    threshold_shift: bool
    input_coding: str
    windows: tuple[tuple[str, int], ...] = ()
    #: the kind of each spiking layer that is not a ReLU (by node name): ``"signed"``
    #: or ``"softmax"`` (:attr:`onespike.trace.TracedModel.kinds`)
    kinds: tuple[tuple[str, str], ...] = ()

    def window(self, node: Node) -> int:
        """The window of spiking layer ``node`` (the input's: ``phases``)."""
        return dict(self.windows).get(node.name, self.phases)

    def kind(self, node: Node | None) -> str:
        """The kind of spiking layer ``node`` (``"relu"``; the input: ``"relu"`` too)."""
        return "relu" if node is None else dict(self.kinds).get(node.name, "relu")

    def with_windows(self, windows: dict[str, int]) -> Code:
        """This code with the layers' windows ``windows`` (by node name)."""
        return dataclasses.replace(self, windows=tuple(sorted(windows.items())))


def quantizer_of(
    scale: Tensor, base: float, code: Code, node: Node | None = None
) -> Callable[[Tensor], Tensor]:
    """The code of one layer (``node``; None: the input) as a function of its pre-activation."""
    phases = code.phases if node is None else code.window(node)
    threshold_shift = code.threshold_shift
    kind = code.kind(node)
    if kind == "softmax":  # exponential neurons: scale 1 (the row maximum), E / rowsum(E)
        return lambda pre: smx.spike_softmax(pre, base, phases, threshold_shift=threshold_shift)
    quantize = sc.quantize_signed if kind == "signed" else pc.quantize

    def q(pre: Tensor) -> Tensor:
        return quantize(
            pre, pc.channel_shape(scale, pre.dim()), base, phases, threshold_shift=threshold_shift
        )

    return q


def coded_values(kind: str, pre: Tensor) -> Tensor:
    """What a layer of ``kind`` codes from its pre-activation ``pre``, whose positive values
    its candidate scales come from: ``pre`` (a ReLU layer: its positive part), ``|pre|``
    (signed neurons code the magnitude)."""
    return pre.abs() if kind == "signed" else pre


def activation_of(kind: str, pre: Tensor, cap: float | None = None) -> Tensor:
    """The ANN's activation a layer of ``kind`` stands for: ``relu(pre)`` (clipped at
    ``cap``), ``pre`` itself (signed) or ``softmax(pre)`` over the last dimension."""
    if kind == "signed":
        return pre
    if kind == "softmax":
        return torch.softmax(pre, dim=-1)
    return pre.clamp(min=0, max=cap)


def encode_input(
    x: Tensor, input_node: Node, chosen: dict[Node, tuple[Tensor, float]], code: Code
) -> Tensor:
    """The input as the converted network's first layers receive it."""
    if code.input_coding == "binary":
        return binary.decode(binary.encode(x, code.phases), code.phases)
    if code.input_coding == "single" and input_node in chosen:
        s, b = chosen[input_node]
        return quantizer_of(s, b, code, input_node)(x)
    return x


def converted_runner(
    module: fx.GraphModule, chosen: dict[Node, tuple[Tensor, float]], code: Code, input_node: Node
) -> Runner:
    """A runner of ``module`` with the ``chosen`` spiking layers coded (``code``), the
    others still ReLU (the input's code is applied by :func:`encode_input`)."""
    repl = {n: quantizer_of(s, b, code, n) for n, (s, b) in chosen.items() if n is not input_node}
    return Runner(module, repl)


#: Samples per chunk when the calibration statistics are read from the whole set.
STATS_CHUNK = 512


class StreamStats:
    """Statistics of the whole calibration set, read chunk by chunk.

    The search scores its candidates on the first ``search_samples`` inputs; the
    candidate scales come from every input. For each spiking layer this runs the
    network converted so far on every chunk of :data:`STATS_CHUNK` samples, up to the
    layer's input, and keeps only the layer's positive input values
    (:class:`Positives`).

    A stream (a DataLoader, a Dataset, a list) is read once per layer and nothing of a
    chunk is kept but those values. A tensor is already in memory: each chunk's
    *frontier* (the values later nodes still need) is kept, so the network runs once
    in all instead of once per layer. Both do the same operations on the same chunks
    (:meth:`Batches.chunks`), so a tensor and a loader of the same samples give the
    same plan bit for bit.

    Under a process group (:mod:`onespike.distributed`) ``data`` is this rank's shard
    (``None``: an empty one), cut at multiples of :data:`STATS_CHUNK`: each rank runs
    its own chunks and :meth:`positives` gathers every rank's values, in rank order,
    which is the order of the chunks in one process. The percentiles are those of the
    whole set, bit for bit.
    """

    def __init__(
        self,
        traced: TracedModel,
        data: Batches | None,
        code: Code,
        *,
        objective: str,
        bias_correction: bool,
    ):
        self.traced = traced
        self.data = data
        self.code = code
        self.input = traced.input_node
        self.keep_frontier = data is not None and data.in_memory
        # objective "activation" codes the ANN's values, and they come from the ANN as it
        # was before any bias correction, as in the search
        self.ann_input = objective == "activation"
        fixed = self.ann_input and bias_correction
        self.ann_module = copy.deepcopy(traced.module) if fixed else traced.module
        self._ann_nodes = {n.name: n for n in self.ann_module.graph.nodes}
        self._frontier: dict[bool, list[list]] = {}  # per chunk: [next node index, values]
        self._chosen_seen: dict[Node, object] = {}

    def set_code(self, code: Code) -> None:
        """Code with ``code`` (other windows) from now on: the kept values are forgotten."""
        self.code = code
        self._frontier = {}
        self._chosen_seen = {}

    def env(
        self,
        x: Tensor,
        chosen: dict[Node, tuple[Tensor, float]],
        stop: Node | None = None,
    ) -> dict[Node, object]:
        """Node values for a chunk ``x``, the chosen layers converted (up to ``stop``)."""
        with torch.no_grad():
            return self._runner(chosen, ann=False).run_upto({}, stop, self._input(x, chosen, False))

    def _runner(self, chosen: dict[Node, tuple[Tensor, float]], ann: bool) -> Runner:
        if ann:
            return Runner(self.ann_module)
        return converted_runner(self.traced.module, chosen, self.code, self.input)

    def _input(
        self, x: Tensor, chosen: dict[Node, tuple[Tensor, float]], ann: bool
    ) -> Callable[[], Tensor]:
        """The chunk ``x`` as the ANN (``ann``) or the converted network receives it."""
        return lambda: x if ann else encode_input(x, self.input, chosen, self.code)

    def _values_of(
        self, pre: Node, chosen: dict[Node, tuple[Tensor, float]], ann: bool
    ) -> Iterator[Tensor]:
        """The value of node ``pre`` on every chunk, in order."""
        if any(chosen.get(n) is not v for n, v in self._chosen_seen.items()):
            self._frontier = {}  # a new search (base="global" runs one per base)
        self._chosen_seen = dict(chosen)
        runner = self._runner(chosen, ann)
        if ann:  # the same node of the ANN's graph (a copy when biases get corrected)
            pre = self._ann_nodes[pre.name]
        chunks = distributed.chunks(self.data, STATS_CHUNK)
        if not self.keep_frontier:
            for x, _ in chunks:
                with torch.no_grad():
                    yield runner.run_upto({}, pre, self._input(x, chosen, ann))[pre]
            return
        states = self._frontier.setdefault(ann, [])
        stop = runner.order[pre]
        for i, (x, _) in enumerate(chunks):
            if i == len(states):
                states.append([0, {}])
            pos, env = states[i]
            with torch.no_grad():
                runner.run_upto(env, pre, self._input(x, chosen, ann), start=pos)
            done = max(pos, stop + 1)
            yield env[pre]
            order = runner.order  # keep what a node not yet computed needs
            states[i] = [
                done,
                {n: v for n, v in env.items() if any(order[u] >= done for u in n.users)},
            ]

    def positives(
        self, node: Node, chosen: dict[Node, tuple[Tensor, float]], per_channel: bool | str
    ) -> Positives:
        """What layer ``node`` codes (as the search's ``layer_input``), over every sample."""
        if node is self.input:
            values: Iterable[Tensor] = (x for x, _ in distributed.chunks(self.data, STATS_CHUNK))
        else:
            kind = self.code.kind(node)
            values = (
                coded_values(kind, v) for v in self._values_of(node.args[0], chosen, self.ann_input)
            )
        out: Positives | None = None
        for v in values:
            if out is None:
                out = Positives.of(v, per_channel)
            else:
                out.extend(v)
        if distributed.active():  # every rank's values, in the order of the chunks
            mine = None if out is None else out.channel
            channel = next(c for c in distributed.gather_objects(mine) if c is not None)
            rows = distributed.all_gather_rows(None if out is None else out.values())
            return Positives(channel, [[r] for r in rows])
        assert out is not None  # the data is not empty (checked by as_batches)
        return out

    def figures(
        self, chosen: dict[Node, tuple[Tensor, float]], relus: Sequence[Node], code: Code
    ) -> dict[Node, list[float]]:
        """Each layer's ``[|q - a|^2, |a|^2, neurons]`` (:func:`layer_figures`, coded with
        ``code``) over every sample: chunk by chunk on this rank's shard, then every rank's
        chunks added up in the chunks' order (one process's sums, bit for bit)."""
        per_chunk = []
        for xc, _ in distributed.chunks(self.data, STATS_CHUNK):
            env = self.env(xc, chosen)
            one: dict[Node, list[float]] = {}
            layer_figures(env, xc, chosen, relus, self.input, code, one, self.traced.caps)
            per_chunk.append({n.name: v for n, v in one.items()})
        by_name = {n.name: n for n in [self.input, *relus]}
        sums: dict[Node, list[float]] = {}
        for part in distributed.gather_objects(per_chunk):
            for one_chunk in part:
                for name, (num, den, neurons) in one_chunk.items():
                    acc = sums.setdefault(by_name[name], [0.0, 0.0, neurons])
                    acc[0] += num
                    acc[1] += den
        return sums


def layer_figures(
    env: dict[Node, object],
    x: Tensor,
    chosen: dict[Node, tuple[Tensor, float]],
    relus: Sequence[Node],
    input_node: Node,
    code: Code,
    sums: dict[Node, list[float]],
    caps: dict[Node, float],
) -> None:
    """Add each layer's ``|q - a|^2``, ``|a|^2`` and neuron count on one chunk to ``sums``."""
    items = [(n, env[n.args[0]], None) for n in relus]
    if code.input_coding == "single":
        items.append((input_node, x, x))
    for n, pre, act in items:
        s, b = chosen[n]
        q = quantizer_of(s, b, code, n)(pre)
        a = act if act is not None else activation_of(code.kind(n), pre, caps.get(n))
        acc = sums.setdefault(n, [0.0, 0.0, float(a[0].numel())])
        acc[0] += float(((q.double() - a.double()) ** 2).sum())
        acc[1] += float((a.double() ** 2).sum())
