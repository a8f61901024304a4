"""A reference simulator over a NIR file written by :func:`onespike.export_nir`.

It reads the file and nothing else: no onespike plan, no onespike module (this file
imports only ``torch``, ``numpy`` and ``nir``, so it can be copied out as the reader
of record). It is clocked: one global step at a time, ``latency_steps`` steps in all,
windows of ``T`` steps; at every step each node of the graph, in the order of the
file's ``node_order``, does what its NIR type and its metadata say
(:mod:`onespike.nir_export` describes them):

- ``Input``: ``analog``: a current ``x / T_in`` during the input's ``T_in`` steps (its
  ``phases``: ``T``, or 1 for a plan with ``input_window=1``); ``phase``: the spikes of
  step ``k`` are bit ``T-1-k`` of ``floor(x * 2^T)`` (clipped), each worth ``2^-T``.
- ``IF`` (``spiking_layer``): during ``input_window`` a membrane compartment per sender
  base, multiplied by that base every step before the step's weighted input is added
  (an analog current is just added); at the window's end the compartments and the bias
  (the weights' output for zero input) are summed and divided by ``scale``. During
  ``fire_window`` the membrane is compared at step ``k`` with ``fire_thresholds[k]``,
  fires once at most, and is multiplied by ``base``. ``input_encoder``: the same fire
  window (window 0) on ``x / scale``.
- A spike of an ``IF`` is worth ``scale * base^-(T-1)`` at the listener's window end.
- ``SumPool2d`` marked ``max_pool_spikes``: the first spike of each pool window passes.
- ``Delay``: the input of ``delay`` steps earlier.
- ``Conv1d``/``Conv2d``/``Affine``/``Linear``/``AvgPool2d``/``Flatten``: evaluated on
  the step's input (without bias; the bias once, at the window's end).
- ``I`` (``readout``): integrates like a layer; at the end of its input window its
  membrane is the output.

The arithmetic is that of :mod:`onespike.simulate` operation by operation, so the
phases, counts and outputs equal onespike's step simulator bit for bit (and its
event path's, up to the ties at a threshold that float32 can produce; none in float64).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class ReferenceRun:
    """Result of :func:`simulate`: like :class:`onespike.SimulationResult`.

    ``spike_phases[name]``: int64 phase of every neuron of the spiking layer ``name``
    (``-1``: no spike); ``spike_counts[name]``: spikes each neuron fired, counted as
    they happen; ``input_spikes``: spikes per input element (spike input codings).
    """

    output: Tensor
    spike_phases: dict[str, Tensor]
    spike_counts: dict[str, Tensor]
    input_spikes: Tensor | None
    steps: int


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ints(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(a))


class _Carrier:
    """What a node emits at the current step: spikes (bool) or an analog current."""

    def __init__(self, kind: str, base: float):
        self.kind = kind  # "analog" | "spike" (single or multi-spike)
        self.base = base
        self.now: Tensor | None = None  # this step's spikes (bool) or current
        self.unit: Tensor | None = None  # value of one spike at the window's last step
        self.shape: tuple[int, ...] | None = None  # full shape, batch included


class _Reference:
    def __init__(self, graph, x: Tensor, dtype: torch.dtype):
        self.g, self.x, self.dtype = graph, x, dtype
        self.device = x.device  # every tensor lives where the input does
        meta = graph.metadata
        self.T = int(meta["phases"])
        self.latency = int(meta["latency_steps"])
        self.coding = _s(meta["input_coding"])
        self.order: list[str] = json.loads(_s(meta["node_order"]))
        self.index = {n: i for i, n in enumerate(self.order)}
        self.preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for a, b in graph.edges:
            self.preds[b].append(a)
        self.exprs = {}
        for name, node in graph.nodes.items():
            md = node.metadata or {}
            self.exprs[name] = json.loads(_s(md["inputs"])) if "inputs" in md else None
        self.carriers: dict[str, _Carrier] = {}
        self.delays: dict[str, deque] = {}
        self.pool_passed: dict[str, Tensor] = {}
        self.state: dict[str, dict] = {}
        self.phases: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.input_spikes: Tensor | None = None
        self.output: Tensor | None = None
        self.regions: dict[str, tuple[list[str], list[str]]] = {}
        self.weights: dict[str, tuple[Tensor, Tensor | None]] = {}

    # -- graph helpers ------------------------------------------------------------------

    def role(self, name: str) -> str:
        md = self.g.nodes[name].metadata or {}
        return _s(md.get("onespike_role", md.get("onespike_op", "")))

    def md(self, name: str) -> dict:
        return self.g.nodes[name].metadata or {}

    def input_of(self, name: str, env: dict[str, Tensor]) -> Tensor:
        expr = self.exprs[name]
        if expr is None:
            (p,) = self.preds[name]
            return env[p]

        def ev(e):
            if isinstance(e, str):
                return env[e]
            acc = ev(e[0])
            for y in e[1:]:
                acc = acc + ev(y)
            return acc

        return ev(expr)

    def region(self, target: str) -> tuple[list[str], list[str]]:
        """Inner nodes (in order) and spike/current sources (in order) feeding ``target``."""
        if target not in self.regions:
            inner, sources, stack = set(), set(), list(self.preds[target])
            while stack:
                n = stack.pop()
                if n in inner or n in sources:
                    continue
                if n in self.carriers:
                    sources.add(n)
                else:
                    inner.add(n)
                    stack.extend(self.preds[n])
            key = self.index.__getitem__
            self.regions[target] = (sorted(inner, key=key), sorted(sources, key=key))
        return self.regions[target]

    def params(self, name: str) -> tuple[Tensor, Tensor | None]:
        if name not in self.weights:
            node = self.g.nodes[name]
            w = torch.from_numpy(np.array(node.weight)).to(self.device, self.dtype)
            b = getattr(node, "bias", None)
            has_bias = bool(self.md(name).get("has_bias", b is not None))
            bias = torch.from_numpy(np.array(b)).to(self.device, self.dtype) if has_bias else None
            self.weights[name] = (w, bias)
        return self.weights[name]

    def apply(self, name: str, v: Tensor, bias: bool) -> Tensor:
        import nir

        node = self.g.nodes[name]
        if isinstance(node, (nir.Conv2d, nir.Conv1d)):
            w, b = self.params(name)
            pad = node.padding
            pad = _s(pad) if isinstance(pad, (str, bytes)) else _ints(pad)
            conv = F.conv2d if isinstance(node, nir.Conv2d) else F.conv1d
            return conv(
                v,
                w,
                b if bias else None,
                _ints(node.stride),
                pad,
                _ints(node.dilation),
                int(node.groups),
            )
        if isinstance(node, (nir.Affine, nir.Linear)):
            w, b = self.params(name)
            return F.linear(v, w, b if bias else None)
        if isinstance(node, nir.AvgPool2d):
            if self.role(name) == "adaptive_avg_pool2d":
                return F.adaptive_avg_pool2d(v, _ints(self.md(name)["output_size"]))
            k, s, p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
            return F.avg_pool2d(v, k, s, p)
        if isinstance(node, nir.Flatten):
            return self.flatten(name, v)
        raise ValueError(f"node '{name}' ({type(node).__name__}) is not a synaptic operator")

    def flatten(self, name: str, v: Tensor) -> Tensor:
        node = self.g.nodes[name]
        start, end = int(node.start_dim), int(node.end_dim)
        return torch.flatten(v, start + 1, end + 1 if end >= 0 else end)

    def evaluate(self, target: str, values: dict[str, Tensor], *, bias: bool) -> Tensor:
        inner, sources = self.region(target)
        env = {}
        for s in sources:
            env[s] = values[s] if s in values else self.zeros(self.carriers[s].shape, self.dtype)
        for n in inner:
            env[n] = self.apply(n, self.input_of(n, env), bias)
        return self.input_of(target, env)

    # -- the nodes ----------------------------------------------------------------------

    def zeros(self, shape, dtype: torch.dtype) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def scale(self, name: str, ndim: int) -> Tensor:
        s = torch.tensor(np.asarray(self.md(name)["scale"], dtype=np.float64).tolist(),
                         dtype=torch.float32, device=self.device).to(self.dtype)  # fmt: skip
        return s if s.dim() == 0 else s.reshape((-1,) + (1,) * (ndim - 2))

    def start_fire(self, name: str, z: Tensor) -> None:
        md = self.md(name)
        thresholds = torch.from_numpy(np.asarray(md["fire_thresholds"], dtype=np.float64))
        self.state[name] = {
            "v": z.clone(),
            "silent": torch.ones(z.shape, dtype=torch.bool, device=z.device),
            "phase": torch.full(z.shape, -1, dtype=torch.int64, device=z.device),
            "count": torch.zeros(z.shape, dtype=torch.int64, device=z.device),
            "th": thresholds.to(self.dtype).tolist(),
            "base": float(md["base"]),
        }
        c = self.carriers[name]
        unit = self.scale(name, z.dim()) * float(md["base"]) ** -(int(md["phases"]) - 1)
        c.unit, c.shape = unit.expand(z.shape).to(self.dtype), tuple(z.shape)

    def fire_step(self, name: str, k: int) -> None:
        st = self.state[name]
        fire = (st["v"] >= st["th"][k]).logical_and_(st["silent"])
        st["count"] += fire
        st["phase"][fire] = k
        st["silent"].logical_and_(fire.logical_not())
        st["v"].mul_(st["base"])
        self.carriers[name].now = fire

    def timing(self, name: str) -> tuple[int, int, int]:
        """``(input_start, fire_start, phases)`` of an ``IF`` node, in steps (files without
        the step fields: the window indices times ``T``); for the readout ``fire_start`` is
        the end of its input window."""
        md = self.md(name)
        if "input_start" in md:
            end = md["input_end"] if "input_end" in md else md["fire_start"]
            return int(md["input_start"]), int(end), int(md.get("phases", self.T))
        w_in = int(md["input_window"])
        return w_in * self.T, (w_in + 1) * self.T, int(md.get("phases", self.T))

    def integrate(self, name: str, t: int) -> None:
        """One step of ``name``'s input window: every compartment takes its input (a sender
        that has not started yet, per-layer windows, sends nothing)."""
        _, sources = self.region(name)
        st = self.state.setdefault(name, {"u": {}})
        groups: dict[tuple[str, float], list[str]] = {}
        for s in sources:
            c = self.carriers[s]
            key = ("analog" if c.kind == "analog" else "spike", c.base)
            groups.setdefault(key, []).append(s)
        for key, members in groups.items():
            if key[0] == "analog":
                vals = {s: self.carriers[s].now for s in members}
                if any(v is None for v in vals.values()):
                    continue  # the current has not arrived yet
                current = self.evaluate(name, vals, bias=False)
                if key not in st["u"]:
                    st["u"][key] = torch.zeros_like(current)
                st["u"][key].add_(current)
            else:
                vals = {}
                for s in members:
                    c = self.carriers[s]
                    if c.unit is None:
                        continue  # not started: no spikes yet
                    spikes = c.now if c.now is not None else self.zeros(c.shape, torch.bool)
                    vals[s] = spikes.to(self.dtype) * c.unit
                inp = self.evaluate(name, vals, bias=False)
                u = st["u"].get(key)
                st["u"][key] = inp if u is None else u.mul_(key[1]).add_(inp)
        if t == self.timing(name)[1] - 1:  # the window's end: compartments, then the bias
            total = None
            for u in st["u"].values():
                total = u if total is None else total.add_(u)
            b = self.evaluate(name, {}, bias=True)
            return b if total is None else total.add_(b)
        return None

    def emit_input(self, name: str, t: int) -> None:
        c = self.carriers[name]
        k = t
        # an analog input's window is its own (the Input's 'phases', 1 with windows='auto')
        t_in = int(self.md(name).get("phases", self.T)) if c.kind == "analog" else self.T
        if t >= t_in or self.coding == "single":
            c.now = None
        elif c.kind == "analog":
            c.now = self.x / t_in
        else:  # the multi-spike base-2 phase code
            top = 2**self.T
            n = torch.floor(self.x.to(torch.float64) * top).to(torch.int64).clamp(0, top - 1)
            c.now = ((n >> (self.T - 1 - k)) & 1).bool()
            spikes = c.now.to(torch.int64)
            self.input_spikes = spikes if self.input_spikes is None else self.input_spikes + spikes

    def run(self) -> ReferenceRun:
        import nir

        T, x = self.T, self.x
        for name in self.order:  # which nodes carry spikes or the input current
            node = self.g.nodes[name]
            preds = self.preds[name]
            if isinstance(node, nir.Input):
                # single-spike input coding: the encoder IF reads x; the Input sends nothing
                kind, base = ("spike", 2.0) if self.coding == "binary" else ("analog", 1.0)
                c = self.carriers[name] = _Carrier(kind, base)
                c.shape = tuple(x.shape)
                if kind == "spike":
                    c.unit = torch.full(x.shape, 2.0**-T, dtype=self.dtype, device=self.device)
            elif isinstance(node, nir.IF):
                c = self.carriers[name] = _Carrier("spike", float(self.md(name)["base"]))
                c.shape = (x.shape[0], *np.shape(node.r))  # known before it starts
            elif isinstance(node, (nir.SumPool2d, nir.Flatten, nir.Delay)) and all(
                p in self.carriers for p in preds
            ):
                if isinstance(node, nir.SumPool2d) and self.role(name) != "max_pool_spikes":
                    raise ValueError(f"node '{name}': sum pooling of spikes is not onespike's")
                (p,) = preds
                self.carriers[name] = _Carrier(self.carriers[p].kind, self.carriers[p].base)
                if isinstance(node, nir.Delay):
                    d = int(np.asarray(node.delay).reshape(-1)[0])
                    self.delays[name] = deque([None] * d)
                self.carriers[name].shape = self._carried_shape(name, node, p)
        for t in range(self.latency):
            for name in self.order:
                self.step(name, t)
        assert self.output is not None, "the readout never ended its input window"
        return ReferenceRun(self.output, self.phases, self.counts, self.input_spikes, self.latency)

    def step(self, name: str, t: int) -> None:
        import nir

        node = self.g.nodes[name]
        md = self.md(name)
        role = self.role(name)
        if isinstance(node, nir.Input):
            self.emit_input(name, t)
        elif isinstance(node, nir.IF):
            c = self.carriers[name]
            c.now = None
            if role == "input_encoder":
                start, fire_start, width = 0, 0, int(md.get("phases", self.T))
            else:
                start, fire_start, width = self.timing(name)
            if role == "input_encoder" and t == 0:
                self.start_fire(name, self.x / self.scale(name, self.x.dim()))
            if role != "input_encoder" and start <= t < fire_start:
                u = self.integrate(name, t)
                if u is not None:
                    self.start_fire(name, u / self.scale(name, u.dim()))
            k = t - fire_start
            if 0 <= k < width:
                self.fire_step(name, k)
                if k == width - 1:
                    st = self.state[name]
                    if role == "input_encoder":
                        self.input_spikes = st["count"]
                    else:
                        self.phases[_s(md["name"])] = st["phase"]
                        self.counts[_s(md["name"])] = st["count"]
        elif isinstance(node, nir.I):
            start, end, _ = self.timing(name)
            if start <= t < end:
                u = self.integrate(name, t)
                if u is not None:
                    self.output = u
        elif name in self.carriers:
            self.carry(name, node)

    def _carried_shape(self, name: str, node, src: str) -> tuple[int, ...] | None:
        """The full shape of what a pool, flatten or delay of ``src`` carries."""
        import nir

        shape = self.carriers[src].shape
        if shape is None or isinstance(node, nir.Delay):
            return shape
        zero = self.zeros(shape, self.dtype)
        if isinstance(node, nir.Flatten):
            return tuple(self.flatten(name, zero).shape)
        k, s, pad = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
        return tuple(F.max_pool2d(zero, k, s, pad).shape)

    def carry(self, name: str, node) -> None:
        """Max-pooling, flatten and delay of spikes (or of the input current)."""
        import nir

        (p,) = self.preds[name]
        src, c = self.carriers[p], self.carriers[name]
        if isinstance(node, nir.Delay):
            q = self.delays[name]
            q.append(src.now)
            c.now = q.popleft()
            c.unit, c.shape = src.unit, src.shape
            return
        if src.shape is None or (src.kind == "spike" and src.unit is None):  # not started yet
            c.now = None
            return
        if isinstance(node, nir.Flatten):
            c.now = None if src.now is None else self.flatten(name, src.now)
            if c.unit is None:
                c.unit = self.flatten(name, src.unit) if src.unit is not None else None
                ref = self.zeros(src.shape, torch.bool)
                c.shape = tuple(self.flatten(name, ref).shape)
            return
        # max-pooling of spikes: the first spike of each pool window passes
        k, s, pad = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
        if c.unit is None:
            c.unit = F.max_pool2d(src.unit, k, s, pad)
            c.shape = tuple(c.unit.shape)
            self.pool_passed[name] = torch.zeros(c.shape, dtype=torch.bool, device=self.device)
        if src.now is None:
            c.now = None
            return
        hit = F.max_pool2d(src.now.to(self.dtype), k, s, pad) > 0
        passed = self.pool_passed[name]
        c.now = hit.logical_and_(passed.logical_not())
        passed.logical_or_(c.now)


#: The graph metadata entry holding :func:`graph_digest` of a file from ``export_nir``.
DIGEST_KEY = "onespike_sha256"


def _canon(v, h) -> None:
    """Feed a canonical form of a metadata or field value to the hash ``h``: the same
    before ``nir.write`` and after ``nir.read`` (strings as text, numbers and arrays as
    dtype, shape and bytes, dicts by sorted key)."""
    if isinstance(v, dict):
        h.update(b"{%d" % len(v))
        for k in sorted(v, key=str):
            _canon(str(k), h)
            _canon(v[k], h)
        h.update(b"}")
        return
    if isinstance(v, (str, bytes)):
        b = v if isinstance(v, bytes) else v.encode()
        h.update(b"s%d:" % len(b) + b)
        return
    if v is None:
        h.update(b"n")
        return
    a = np.asarray(v)
    if a.dtype.kind in "SUO":
        h.update(b"[%d" % a.size)
        for item in a.reshape(-1):
            _canon(item if isinstance(item, (str, bytes)) else str(item), h)
        h.update(b"]")
        return
    a = np.ascontiguousarray(a)
    h.update(f"a{a.dtype.str}{a.shape}:".encode())
    h.update(a.tobytes())


def graph_digest(graph) -> str:
    """SHA-256 of a NIR graph as ``export_nir`` writes it: the graph metadata (all but
    :data:`DIGEST_KEY`), every node (name, NIR type, every field: weights, shapes,
    strides, its metadata) and the edges in order. An edited base, scale, threshold,
    weight or edge changes it."""
    h = hashlib.sha256(b"onespike.nir digest\n")
    meta = {k: v for k, v in (graph.metadata or {}).items() if k != DIGEST_KEY}
    _canon(meta, h)
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        _canon(name, h)
        _canon(type(node).__name__, h)
        if dataclasses.is_dataclass(node):
            _canon({f.name: getattr(node, f.name) for f in dataclasses.fields(node)}, h)
        else:  # pragma: no cover (every NIR node is a dataclass)
            _canon(dict(vars(node)), h)
    _canon([f"{a}\u2192{b}" for a, b in graph.edges], h)
    return h.hexdigest()


def check_digest(graph) -> None:
    """Raise ``ValueError`` unless the graph carries its :func:`graph_digest` (a file from
    ``export_nir`` that was not changed since)."""
    meta = graph.metadata or {}
    want = meta.get(DIGEST_KEY)
    if want is None:
        raise ValueError(
            "the NIR file has no onespike checksum (exported by an older onespike?): "
            "export it again"
        )
    if _s(want) != graph_digest(graph):
        raise ValueError(
            "the NIR file is damaged or was edited: its nodes and metadata do not match "
            "their checksum; export it again"
        )


def simulate(
    source: str | os.PathLike | object, x: Tensor, *, dtype: torch.dtype | None = None
) -> ReferenceRun:
    """Run the NIR graph ``source`` (a file from ``export_nir`` or a ``nir.NIRGraph``) on ``x``.

    ``x``: a batch ``[N, *input_shape]``; ``dtype`` (default: ``x``'s) is the precision
    of the membranes and weights. Returns phases and counts per spiking layer (by the
    layer names of the metadata) and the output.
    """
    import nir

    graph = source if isinstance(source, nir.NIRGraph) else nir.read(str(source))
    meta = graph.metadata or {}
    if _s(meta.get("format", "")) != "onespike.nir":
        raise ValueError("the NIR graph was not exported by onespike (no phase-code metadata)")
    check_digest(graph)  # a file changed since export_nir is refused, not run
    dtype = dtype or x.dtype
    with torch.no_grad():
        return _Reference(graph, x.to(dtype), dtype).run()


__all__ = ["DIGEST_KEY", "ReferenceRun", "check_digest", "graph_digest", "simulate"]
