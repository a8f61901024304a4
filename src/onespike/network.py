"""The spiking network: the traced graph with every ReLU replaced by a spiking layer.

``SpikingNetwork.forward`` is the event-exact fast path: every layer is
computed once from the decoded spikes of the layers before it (one conv or
matmul, as in the ANN), then the phase rule of :mod:`onespike.codes.phase`
gives every neuron's spike phase. Max-pooling of decoded values is the
earliest spike of the pool window. ``simulate(x, mode="step")`` runs the same
network step by step (:mod:`onespike.simulate`).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import fx, nn

from onespike.codes import binary
from onespike.codes import phase as pc
from onespike.codes import softmax as smx
from onespike.codes.phase import channel_shape
from onespike.errors import InputError, OptionError, check_batch
from onespike.plan import INPUT_CODINGS, LayerPlan, Plan, check_input_coding
from onespike.simulate import SimulationResult, simulate_steps
from onespike.trace import SPIKING, role

Tensor = torch.Tensor

__all__ = [
    "INPUT_CODINGS",
    "InputEncoder",
    "SimulationResult",
    "SpikeLayer",
    "SpikingNetwork",
    "channel_shape",
    "layer_keys",
]


def layer_keys(names: list[str]) -> list[str]:
    """The module key of each spiking layer, from its plan name: the one mapping between
    the two (a plan name can hold dots, a module key cannot).

    ``.`` becomes ``_`` (``layer1.0.relu`` -> ``layer1_0_relu``); a key already taken (a
    ReLU module applied at several places gives layers of the same plan name) or the name
    of an ``nn.ModuleDict`` attribute gets the first free suffix ``_2``, ``_3``, ... The
    layer is ``snn.spikes[key]``, the submodule ``spikes_<key>`` of ``snn.graph_module``,
    and its tensors are saved under those keys (``spikes.<key>.scale``, ...).
    """
    keys: list[str] = []
    attributes = nn.ModuleDict()  # its methods and attributes (training, ...) are taken
    for name in names:
        stem = name.replace(".", "_")
        key, k = stem, 1
        while key in keys or hasattr(attributes, key):
            k += 1
            key = f"{stem}_{k}"
        keys.append(key)
    return keys


class SpikeLayer(nn.Module):
    """A layer of single-spike neurons (replaces one ReLU, signed site or softmax).

    Input: pre-activation (any shape ``[N, C, ...]``); output: the decoded value
    of each neuron's spike, ``scale * B^-phase`` or 0. With ``record`` set, the
    phases of the last call are kept in ``last_phase`` (int64, -1 = no spike).

    Its ``kind`` (:attr:`onespike.plan.LayerPlan.kind`, also its graph role):
    ``"relu"`` phase neurons; ``"signed"`` signed neurons, ``sign(x) * code(|x|)``
    (:mod:`onespike.codes.signed`; the signs of the last call in ``last_sign``);
    ``"softmax"`` exponential neurons over the last dimension, scale 1: the spike-shift
    code of ``exp(x - rowmax)`` divided by its row sum (:func:`onespike.codes.softmax.
    spike_softmax`; the event path divides each value, the step simulator the product
    it feeds, once per row).
    """

    def __init__(self, lp: LayerPlan, device: torch.device | str | None = None):
        super().__init__()
        device = torch.device("cpu") if device is None else device
        self.kind = lp.kind
        self._onespike_role = lp.kind  # its role in the graph (onespike.trace.SPIKING)
        self.last_sign: Tensor | None = None
        self.name = lp.name
        self.base = float(lp.base)
        self.phases = int(lp.phases)
        self.threshold_shift = bool(lp.threshold_shift)
        scale = lp.scale if isinstance(lp.scale, tuple) else float(lp.scale)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32, device=device))
        # cached in float64, cast to the input's dtype per call
        f64 = torch.float64
        th = pc.ascending_thresholds(
            self.base, self.phases, threshold_shift=self.threshold_shift, dtype=f64
        )
        self.register_buffer("th_ascending", th.to(device), persistent=False)
        table = pc.value_table(self.base, self.phases, dtype=f64)
        self.register_buffer("table", table.to(device), persistent=False)
        self.record = False
        self.last_phase: Tensor | None = None

    def scale_for(self, x: Tensor) -> Tensor:
        return channel_shape(self.scale.to(x.dtype), x.dim())

    def _scaled_tables(self, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """Thresholds and values in activation units (one scale per layer only)."""
        if self.scale.dim() > 0:
            return None
        key = (dtype, self.scale.device, float(self.scale))
        if getattr(self, "_tables_key", None) != key:
            s = self.scale.double()
            self._tables = ((self.th_ascending * s).to(dtype), (self.table * s).to(dtype))
            self._tables_key = key
        return self._tables

    def encode(self, pre: Tensor) -> Tensor:
        """Spike phase of every neuron (int64, -1 = none) for pre-activations ``pre``
        (signed neurons: of ``|pre|``; exponential neurons: of ``exp(pre - rowmax)``)."""
        if self.kind == "softmax":
            return smx.exp_phases(pre, self.base, self.phases, threshold_shift=self.threshold_shift)
        if self.kind == "signed":
            pre = pre.abs().contiguous()
        tables = self._scaled_tables(pre.dtype)
        if tables is None:
            return pc.encode(
                pre / self.scale_for(pre),
                self.base,
                self.phases,
                threshold_shift=self.threshold_shift,
            )
        return pc.phase_from_reached(pc.reached(pre, tables[0]), self.phases)

    def decode(self, phase: Tensor, like: Tensor) -> Tensor:
        """Decoded values (same arithmetic as ``forward``: bit-identical outputs); ``like``
        is the pre-activation (its dtype; the signs of signed neurons)."""
        if self.kind == "signed":
            return torch.sign(like) * self._decode(phase, like)
        if self.kind == "softmax":
            e = self._decode(phase, like)
            return e / e.sum(dim=-1, keepdim=True)
        return self._decode(phase, like)

    def _decode(self, phase: Tensor, like: Tensor) -> Tensor:
        tables = self._scaled_tables(like.dtype)
        if tables is None:
            return pc.decode(phase, self.base, self.scale_for(like), self.phases)
        r = pc.reached_from_phase(phase, self.phases)
        return tables[1].index_select(0, r.reshape(-1)).view_as(phase)

    def forward(self, pre: Tensor) -> Tensor:
        if self.record or self.kind == "softmax":
            phase = self.encode(pre)
            if self.record:
                self.last_phase = phase
                if self.kind == "signed":
                    self.last_sign = torch.sign(pre).to(torch.int8).masked_fill_(phase < 0, 0)
            return self.decode(phase, pre)
        if self.kind == "signed":
            return torch.sign(pre) * self._quantize(pre.abs().contiguous())
        return self._quantize(pre)

    def _quantize(self, pre: Tensor) -> Tensor:
        tables = self._scaled_tables(pre.dtype)
        if tables is None:
            scale = self.scale_for(pre)
            return pc.quantize_normalised(pre / scale, self.th_ascending, self.table) * scale
        return pc.quantize_normalised(pre, *tables)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, kind={self.kind!r}, base={self.base:.3f}, phases={self.phases}, "
            f"threshold_shift={self.threshold_shift}"
        )


class InputEncoder(nn.Module):
    """Codes the network input: ``analog`` (identity), ``binary`` or ``single`` spikes."""

    _onespike_role = "input"

    def __init__(
        self,
        coding: str,
        phases: int,
        lp: LayerPlan | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        coding = check_input_coding(coding)
        self.coding = coding
        self.phases = phases
        self.record = False
        self.last_code: Tensor | None = None
        self.layer = SpikeLayer(lp, device) if coding == "single" else None
        if coding == "single" and lp is None:
            raise OptionError("single-spike input coding needs a layer plan")

    def forward(self, x: Tensor) -> Tensor:
        if self.coding == "analog":
            return x
        if self.coding == "binary":
            code = binary.encode(x, self.phases)
            if self.record:
                self.last_code = code
            return binary.decode(code, self.phases, x.dtype)
        phase = self.layer.encode(x)
        if self.record:
            self.last_code = phase
        return self.layer.decode(phase, x)


def _pool_before_code(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` where a max-pool that follows a spiking layer runs before it.

    The code is monotonic, so ``maxpool(code(x)) == code(maxpool(x))`` exactly (the
    max-pool rule of :func:`onespike.codes.phase.maxpool_phases`: the earliest spike passes)
    (the same float operations on the same winning values): the output does
    not change, and the code runs on a quarter of the values. Used by
    ``forward`` only; ``simulate`` records every neuron's phase on ``gm``.
    The copy shares its modules (and parameters) with ``gm``.
    """
    fast = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    modules = dict(fast.named_modules())
    for node in list(fast.graph.nodes):
        if role(node, modules) != "relu" or len(node.users) != 1:
            continue
        pool = next(iter(node.users))
        if role(pool, modules) != "maxpool" or pool.args[0] is not node:
            continue
        pool.replace_input_with(node, node.args[0])
        pool.replace_all_uses_with(node)
        node.args = (pool,)
        pool.append(node)
    fast.graph.lint()
    fast.recompile()
    return fast


class SpikingNetwork(nn.Module):
    """The converted network. ``forward(x)`` is the event-exact fast path."""

    def __init__(
        self,
        traced_module: fx.GraphModule,
        plan: Plan,
        input_shape: tuple[int, ...],
        *,
        ann_graph: fx.GraphModule | None = None,
    ):
        super().__init__()
        # the folded ANN, for costs and checks (the ANN a refined network was fitted to)
        self.ann_graph = copy.deepcopy(ann_graph if ann_graph is not None else traced_module)
        gm = copy.deepcopy(traced_module)
        self.plan = plan
        self.input_shape = tuple(input_shape)  # per-sample shape seen at calibration
        self.spikes = nn.ModuleDict()
        modules = dict(gm.named_modules())
        relus = [n for n in gm.graph.nodes if role(n, modules) in SPIKING]
        for node, lp in zip(relus, plan.layers):
            if role(node, modules) != lp.kind:
                raise OptionError(
                    f"spiking layer '{lp.name}' is of kind {lp.kind!r} in the plan; its place "
                    f"in the graph is a {role(node, modules)!r} layer"
                )
        if len(relus) != len(plan.layers):
            raise OptionError(
                f"the plan has {len(plan.layers)} spiking layers, the model {len(relus)} ReLUs"
            )
        # the spiking layers' scales live where the weights are
        tensors = (*traced_module.parameters(), *traced_module.buffers())
        device = next((t.device for t in tensors), None)
        for node, lp, key in zip(relus, plan.layers, layer_keys(self.layer_names)):
            self.spikes[key] = SpikeLayer(lp, device)
            gm.add_submodule(f"spikes_{key}", self.spikes[key])
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(f"spikes_{key}", (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        self.input_encoder = InputEncoder(plan.input_coding, plan.phases, plan.input, device)
        if plan.input_coding != "analog":
            gm.add_submodule("input_encoder", self.input_encoder)
            ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
            with gm.graph.inserting_after(ph):
                enc = gm.graph.call_module("input_encoder", (ph,))
            ph.replace_all_uses_with(enc, delete_user_cb=lambda u: u is not enc)
        gm.graph.lint()
        gm.recompile()
        self.graph_module = gm
        self._pooled_first = _pool_before_code(gm)

    @property
    def phases(self) -> int:
        return self.plan.phases

    @property
    def layer_names(self) -> list[str]:
        return [lp.name for lp in self.plan.layers]

    def check_input(self, x: Tensor, dtype: torch.dtype | None = None) -> None:
        """Raise :class:`~onespike.errors.InputError` (a ``ValueError``) for an input that
        is not a batch of the calibrated shape, on the network's device, in the network's
        dtype (or ``dtype``, where the run casts to it): an input is never cast silently
        (``snn(x.double())`` on a float32 network is refused, naming both dtypes)."""
        if isinstance(x, Tensor):
            ref = next((t for t in (*self.graph_module.parameters(), *self.spikes.buffers())
                        if t.is_floating_point()), None)  # fmt: skip
            if x.is_meta:
                raise InputError(
                    "input is on the meta device (a shape without values): pass real data"
                )
            if ref is not None and x.is_floating_point():
                casts = dtype is not None and dtype != torch.float32  # as simulate() does
                if not casts and x.dtype != ref.dtype:
                    raise InputError(
                        f"input has dtype {x.dtype}, the network computes in {ref.dtype}: "
                        f"pass x.to({ref.dtype}), or run the network in that dtype "
                        f"(snn.simulate(x, dtype=...) or snn.to({x.dtype}))"
                    )
                if x.device != ref.device:
                    raise InputError(
                        f"input is on {x.device}, the network on {ref.device}: "
                        f"pass x.to('{ref.device}') or move the network"
                    )
        check_batch(x, self.input_shape, what="input")
        if self.plan.input_coding != "analog" and (x.min() < 0 or x.max() > 1):
            raise InputError(
                f"input coding {self.plan.input_coding!r} needs inputs in [0, 1]; "
                f"got values in [{x.min().item():.3g}, {x.max().item():.3g}]"
            )

    def forward(self, x: Tensor) -> Tensor:
        """The event-exact fast path: the output for a batch ``x``."""
        self.check_input(x)
        return self._pooled_first(x)

    def _set_record(self, flag: bool) -> None:
        for m in self.spikes.values():
            m.record = flag
            m.last_phase = None
            m.last_sign = None
        self.input_encoder.record = flag
        self.input_encoder.last_code = None

    @torch.no_grad()
    def simulate(self, x: Tensor, mode: str = "event", *, dtype: torch.dtype | None = None):
        """Run the network and return spikes as well as the output.

        ``mode="event"``: the fast path, phases recorded from each layer.
        ``mode="step"``: the step-by-step simulator (windows of ``T`` steps,
        membranes multiplied by the base each step, one spike at most).
        ``dtype`` (e.g. ``torch.float64``) runs either in that precision.
        """
        self.check_input(x, dtype)
        net = self
        if dtype is not None and dtype != torch.float32:
            net = copy.deepcopy(self).to(dtype)
            x = x.to(dtype)
        if mode == "event":
            return net._simulate_event(x)
        if mode == "step":
            return simulate_steps(net.graph_module, net.plan, x)
        raise OptionError(f"mode must be 'event' or 'step', got {mode!r}")

    def _simulate_event(self, x: Tensor) -> SimulationResult:
        self._set_record(True)
        try:
            out = self.graph_module(x)
            phases = {m.name: m.last_phase for m in self.spikes.values()}
            signs = {m.name: m.last_sign for m in self.spikes.values() if m.kind == "signed"}
            code = self.input_encoder.last_code
        finally:
            self._set_record(False)
        counts = {k: (v >= 0).to(torch.int64) for k, v in phases.items()}
        in_spikes = None
        if code is not None:
            in_spikes = (
                binary.spike_count(code)
                if self.plan.input_coding == "binary"
                else (code >= 0).to(torch.int64)
            )
        return SimulationResult(out, phases, counts, "event", in_spikes, signs)

    #: The network file format, :mod:`onespike.serialize`, which sets itself here when
    #: it is imported (``import onespike`` does): it builds on this module, so this
    #: module does not import it.
    file_format: ClassVar[Any] = None

    def save(self, path) -> None:
        """Write the network to one safe file (:func:`onespike.serialize.save`)."""
        self.file_format.save(self, path)

    @classmethod
    def load(cls, path, *, device=None) -> SpikingNetwork:
        """Read a network written by :meth:`save` (:func:`onespike.serialize.load`)."""
        return cls.file_format.load(path, device=device)

    def extra_repr(self) -> str:
        return f"phases={self.phases}, input_coding={self.plan.input_coding!r}"
