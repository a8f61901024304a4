"""Running parts of a traced graph: one node, a region, the whole graph.

The calibration search, the step-by-step simulator and the cost model all
evaluate *regions*: the nodes between the spike sources feeding a layer (or
the output) and that layer. A region is affine in its sources' values, so it
can be evaluated with its biases (the ANN) or without them (the synaptic part
that spikes travel through). A product of two spiking tensors (attention) inside a
region is not: the region is affine in the product's value, which the step simulator
accumulates by traces and the cost model counts by pairs (:meth:`Runner.direct_sources`
are the sources that reach the target other than through one).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from onespike.trace import SPIKING, is_reshape, role

Node = fx.Node
Tensor = torch.Tensor


def _fetch_attr(gm: fx.GraphModule, target: str) -> Tensor:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def weighted_call(m: nn.Module, x: Tensor, *, bias: bool = True, weight: Tensor | None = None):
    """Apply a Conv/Linear module, optionally without its bias or with another weight."""
    w = m.weight if weight is None else weight
    b = m.bias if bias else None
    if isinstance(m, nn.Linear):
        return F.linear(x, w, b)
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.Conv1d):
        return F.conv1d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    return m(x)  # custom weighted module (has no bias handling)


class Runner:
    """Evaluates nodes of a traced graph on tensors held in an environment dict."""

    def __init__(self, gm: fx.GraphModule, replacements: dict[Node, Callable] | None = None):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.replacements = replacements or {}

    def role(self, node: Node) -> str | None:
        return role(node, self.modules)

    def run_node(self, node: Node, env: dict[Node, object], *, bias: bool = True) -> object:
        """Value of ``node`` from its arguments' values in ``env``."""
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node in self.replacements:  # a ReLU replaced by its code: the input only
            return self.replacements[node](args[0])
        op = node.op
        if op == "get_attr":
            return _fetch_attr(self.gm, node.target)
        if op == "call_module":
            m = self.modules[node.target]
            if not bias and self.role(node) == "weighted":
                return weighted_call(m, *args, bias=False)
            return m(*args, **kwargs)
        if op == "call_function":
            return node.target(*args, **kwargs)
        if op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, node.target)(*rest, **kwargs)
        if op == "output":
            return args[0]
        raise RuntimeError(f"cannot run node {node.name} ({op})")

    def on_input(self, node: Node, env: dict[Node, object]) -> Callable[[Tensor], Tensor]:
        """``node`` as a function of its first input, its other inputs read from ``env``
        (a max-pool applied to spikes, phases or units in place of its input's value)."""

        def apply(value: Tensor) -> Tensor:
            full = {a: env.get(a) for a in node.all_input_nodes}
            return self.run_node(node, {**full, node.args[0]: value})  # type: ignore[return-value]

        return apply

    def run(
        self,
        env: dict[Node, object],
        nodes: Iterable[Node],
        *,
        bias: bool = True,
    ) -> dict[Node, object]:
        """Evaluate ``nodes`` (topological order) into ``env``; returns ``env``."""
        for n in nodes:
            env[n] = self.run_node(n, env, bias=bias)
        return env

    def run_upto(
        self,
        env: dict[Node, object],
        stop: Node | None,
        x: Tensor | Callable[[], Tensor],
        *,
        start: int = 0,
    ) -> dict[Node, object]:
        """Run the graph up to ``stop`` (included; None: to the output) with the input ``x``.

        Evaluates, in topological order, every node from position ``start`` up to
        ``stop`` that ``env`` does not hold yet (a cache or a chunk's frontier keeps
        what was computed before); the input node takes ``x``: a tensor, or a function
        that makes it (the input as the converted network's first layers receive it,
        encoded only when the input node is evaluated). Returns ``env``.
        """
        last = len(self.nodes) if stop is None else self.order[stop] + 1
        for n in self.nodes[start:last]:
            if n in env:
                continue
            if n.op == "placeholder":
                env[n] = x() if callable(x) else x
            else:
                env[n] = self.run_node(n, env)
        return env

    def forward_all(self, x: Tensor) -> dict[Node, object]:
        """Every node's value for input ``x`` (placeholder included)."""
        return self.run_upto({}, None, x)

    def is_source(self, node: Node) -> bool:
        """Nodes whose value a region takes as given: input, spikes, constants. Spikes
        moved by a reshape or an index are spikes; a ``chunk``/``split`` of spikes (a tuple)
        is not a source itself, each piece taken from it is."""
        r = self.role(node)
        if r in ("input", "const", "maxpool") or r in SPIKING:
            return True
        return self.moves_spikes(node) and not _multi(node)

    def moves_spikes(self, node: Node) -> bool:
        """A reshape (``view``, ``transpose``, ``chunk``, ...) or an index (``x[:, 0]``, a
        piece of ``chunk``) of spikes: the same spikes, moved."""
        r = self.role(node)
        if r != "linear":
            return False
        moves = is_reshape(node, self.modules) or node.target is operator.getitem
        return moves and self.is_spiking(node.args[0])

    def is_spiking(self, node: object) -> bool:
        if not isinstance(node, Node):
            return False
        r = self.role(node)
        if r in SPIKING:
            return True
        if r == "maxpool":
            return self.is_spiking(node.args[0])
        return self.moves_spikes(node)

    def region(self, target: Node) -> Region:
        """Nodes feeding ``target``'s input from the nearest sources (the dendritic tree).

        ``target`` is a ReLU (its input is the pre-activation) or the output
        node. Shape nodes used by region nodes are included.
        """
        inner: set[Node] = set()
        sources: set[Node] = set()
        stack = [a for a in target.all_input_nodes]
        while stack:
            n = stack.pop()
            if n in inner or n in sources:
                continue
            if self.is_source(n):
                sources.add(n)
                continue
            inner.add(n)
            stack.extend(n.all_input_nodes)
        nodes = sorted(inner, key=self.order.__getitem__)
        srcs = sorted(sources, key=self.order.__getitem__)
        return Region(target, target.args[0], nodes, srcs)

    def direct_sources(self, reg: Region) -> list[Node]:
        """The spike sources of ``reg`` whose spikes reach its target other than through a
        product of two spiking tensors (those land on a membrane; a product's factors
        feed its accumulator instead)."""
        inner = set(reg.nodes)
        found: set[Node] = set()
        stack, seen = [reg.pre], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in reg.spike_sources:
                found.add(n)
            elif n in inner and self.role(n) != "product":
                stack.extend(n.all_input_nodes)
        return [s for s in reg.spike_sources if s in found]

    def spiking_chain(self, node: Node) -> list[Node]:
        """Spike nodes derived from a source by max-pool/reshape, in order (source first)."""
        chain = [node]
        while self.role(chain[-1]) not in SPIKING and self.role(chain[-1]) != "input":
            chain.append(chain[-1].args[0])
        return chain[::-1]


def _multi(node: Node) -> bool:
    """``chunk`` / ``split`` (method or function): a tuple of tensors."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and name in ("chunk", "split")


@dataclass
class Region:
    """The dendritic region of a ReLU or of the output."""

    target: Node  # the ReLU or output node
    pre: Node  # the node whose value is the pre-activation (target's input)
    nodes: list[Node]  # inner nodes, topological order
    sources: list[Node]  # spike sources, input and constants feeding it

    @property
    def spike_sources(self) -> list[Node]:
        return [s for s in self.sources if s.op != "get_attr"]
