"""Tracing: the ANN as a ``torch.fx`` graph of linear operators and ReLUs.

``trace(model)`` copies the model (the user's module is never modified),
traces it with ``torch.fx``, folds every BatchNorm into the Conv/Linear before
it, drops Dropout and Identity, and checks every node against the list of
supported operators. Everything that is not supported is reported in one
:class:`UnsupportedModelError` that names each node, its operator and its place
in the model, before any calibration data is touched.

Node roles used by the rest of the package (see :func:`role`):

- ``"input"``: the single placeholder.
- ``"relu"``: a hidden ReLU (module, ``F.relu``, ``torch.relu``, ``x.relu()``)
  that becomes a layer of single-spike neurons; or a clipped ReLU ``min(max(x, 0), c)``
  (``nn.ReLU6``, ``nn.Hardtanh(0, c)``, ``F.relu6``, ``F.hardtanh(x, 0, c)``,
  ``torch.clamp(x, 0, c)``, ``x.clamp(min=0, max=c)``, ``torch.clip``), whose known
  upper bound ``c`` caps the layer's scale (:attr:`TracedModel.caps`). :func:`trace`
  rewrites every clipped ReLU as an ``nn.Hardtanh(0, c)`` module (``nn.ReLU6`` stays)
  and ``clamp(x, min=0)`` as an ``nn.ReLU``.

BatchNorm is folded into the Conv/Linear before it; a BatchNorm that follows a ReLU
(or anything but a Conv/Linear) is folded into the Conv/Linear after it instead,
where that is exact: that layer is its only user, called once, and is a Linear or a
convolution without padding (zero padding after the BatchNorm would be padding with
its shift). Any other BatchNorm is reported.
- ``"maxpool"``: a max-pooling whose input is spikes (exact: earliest spike wins).
- ``"weighted"``: Conv1d/Conv2d/Linear (bias allowed) and multiplication by a
  constant matrix (``torch.sparse.mm``/``torch.mm``/``@`` with a buffer), the
  operators that cost synaptic operations.
- ``"linear"``: weight-free linear operators (pooling averages, add, cat,
  flatten/view/reshape, transpose/permute/chunk/split, means, indexing a tensor,
  multiplication by a number). BatchNorm1d over the features of a token tensor,
  ``bn(x.transpose(1, 2)).transpose(1, 2)``, folds into the Linear before or after it.
- ``"shape"``: integer bookkeeping (``x.size()``, ``x.shape``, indexing a size, ``+ - * //``
  on sizes).
- ``"product"``: a matrix product of two activations (``q @ k.transpose(-2, -1)``,
  ``torch.matmul``, ``torch.bmm``): spike x spike, the product of the decoded values in
  the event path, by traces in the step simulator (issue 27).
- ``"softmax"``: a softmax over the last dimension, a spiking layer of exponential
  neurons (the spike-shift code of :mod:`onespike.codes.softmax`).
- ``"signed"``: a :class:`SignedSite` that :func:`trace` inserts where an operand of a
  product can be negative (:func:`product_sites`, kind ``"signed"``: the
  ``qkv`` Linear of a ViT): the identity in the ANN, a spiking layer of signed
  single-spike neurons (:mod:`onespike.codes.signed`) once converted.

The spiking layers are the nodes of the roles :data:`SPIKING` (``relu``, ``signed``,
``softmax``): :attr:`TracedModel.relus` lists them all, :attr:`TracedModel.kinds` says
which of the three each is.
- ``"refused"``: LayerNorm, GELU, ``nn.MultiheadAttention``, recognised only to be
  reported with what to write instead (``Op.instead``).
- ``"const"``: ``get_attr`` of a parameter or buffer.
- ``"output"``.
"""

from __future__ import annotations

import copy
import functools
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from onespike.errors import OptionError, UnsupportedModelError

Node = fx.Node
Tensor = torch.Tensor


# --------------------------------------------------------------------------------------
# THE table of supported operators
# --------------------------------------------------------------------------------------
#: What the cost walk does with an operator (:func:`onespike.engine.count_region`):
#: ``"synapses"`` one accumulate per event and synapse (a MAC per synapse on dense
#: values); ``"membrane"`` events land on a membrane here (one accumulate each: an add);
#: ``"pool_area"`` events pass, multiplied by the pool area (average pooling is folded
#: into the next weighted layer); ``"reshape"`` events move without being combined
#: (spikes stay spikes); ``"pass"`` events pass through the operator as computed;
#: ``"neurons"`` a spiking layer (counted by its neurons, not in a region); ``"free"``
#: integer bookkeeping or an operator that tracing removes.
#: ``"product"`` a product of two activations (spike x spike by traces: one accumulate
#: per pair of spikes, :func:`onespike.engine.count_region`); ``"softmax"`` a softmax over
#: the last dimension (exponential neurons by spike timing: counted as a spiking layer,
#: plus one division per row, :func:`onespike.accounting.cost`).
COSTS = ("synapses", "membrane", "pool_area", "reshape", "pass", "neurons", "free")
COSTS += ("product", "softmax")

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
_CONV += ("groups", "padding_mode")
_MAXPOOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL1 = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")

_NO_SAMPLE_MIX = "a fixed matrix times the activations mixes samples (a graph convolution)"
_NO_MAXPOOL = (
    "NIR has no max-pool node (onespike writes only a 2-d max-pooling module of spikes, "
    "as SumPool2d with metadata)"
)


@dataclass(frozen=True)
class Op:
    """One supported operator: how it is recognised, its role, its name in files, its
    NIR form and its cost.

    ``kind``/``target``: ``"module"`` and a module class (subclasses match too),
    ``"function"`` and the function, ``"method"`` and the method's name. ``role``: the
    node role (module docstring). ``name``: its stable name in onespike's files
    (:mod:`onespike.serialize`), ``None`` where tracing removes or rewrites it.
    ``nir``: the NIR node it is exported as (:mod:`onespike.nir_export`): a NIR class
    name, ``"IF"`` for a spiking layer, ``"sum"`` (edges into one node), ``"concat"``
    (zero-padded identity maps summed), ``"identity"`` (no node), or ``None`` with the
    reason in ``no_nir``. ``cost``: one of :data:`COSTS`. ``clip``: a clamp-like
    operator, a ReLU only with bounds ``(0, c)``. ``args``/``params``: a module's
    constructor arguments read from the instance and whether it has weight and bias.
    ``instead``: for role ``"refused"`` (an operator that is recognised only to be
    refused), what to write in its place.
    """

    kind: str
    target: object
    role: str
    name: str | None
    nir: str | None
    cost: str
    no_nir: str = ""
    clip: bool = False
    args: tuple[str, ...] = ()
    params: bool = False
    instead: str = ""


def _m(cls, role_, nir, cost, *, name=True, no_nir="", clip=False, args=(), params=False):
    return Op(
        "module", cls, role_, cls.__name__ if name else None, nir, cost, no_nir, clip, args, params
    )


def _f(fn, name, role_, nir, cost, no_nir=""):
    return Op("function", fn, role_, name, nir, cost, no_nir)


def _me(method, role_, nir, cost, *, name=True, no_nir="", clip=False):
    return Op("method", method, role_, method if name else None, nir, cost, no_nir, clip)


_TORCH_F = "torch.nn.functional."
_RM = "removed by tracing"
_NO_PRODUCT = "NIR has no product of two activations"
_NO_SOFTMAX = "NIR has no softmax"
_NO_SIGNED = "NIR has no signed single-spike neuron"
_NO_MOVE = "NIR has no transpose/permute/split of activations"
_USE_BN = "use BatchNorm1d over the features instead (it is folded into a Linear)"
_USE_RELU = "use ReLU instead (only ReLU becomes single-spike neurons)"
_USE_ATTN = (
    "write the attention explicitly with Linear layers, matmul (@) and softmax over the "
    "last dimension"
)


class SignedSite(nn.Module):
    """Where signed single-spike neurons go (issue 27): the identity in the ANN.

    :func:`trace` inserts one after each node whose values feed a product of two
    activations and can be negative (:func:`product_sites`, kind
    ``"signed"``); the converter makes it a layer of signed neurons
    (:class:`onespike.network.SpikeLayer` of kind ``"signed"``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


#: The roles of spiking layers: ReLU neurons (the phase code), signed neurons (one spike
#: of either sign) and exponential neurons (a softmax by spike timing).
SPIKING = ("relu", "signed", "softmax")


def _refused(kind: str, target: object, instead: str) -> Op:
    return Op(kind, target, "refused", None, None, "free", instead=instead)


OPS: tuple[Op, ...] = (
    # spiking layers: ReLUs and ReLUs clipped at c
    _m(nn.ReLU, "relu", "IF", "neurons", args=("inplace",)),
    _m(nn.ReLU6, "relu", "IF", "neurons", clip=True, args=("inplace",)),
    _m(nn.Hardtanh, "relu", "IF", "neurons", clip=True, args=("min_val", "max_val", "inplace")),
    _f(F.relu, _TORCH_F + "relu", "relu", "IF", "neurons"),
    _f(torch.relu, "torch.relu", "relu", "IF", "neurons"),
    _me("relu", "relu", "IF", "neurons"),
    *(  # rewritten by trace() as nn.Hardtanh(0, c) or nn.ReLU modules
        Op("function", fn, "relu", None, "IF", "neurons", clip=True)
        for fn in (F.relu6, F.hardtanh, torch.clamp, torch.clip)
    ),
    _me("clamp", "relu", "IF", "neurons", name=False, clip=True),
    _me("clip", "relu", "IF", "neurons", name=False, clip=True),
    # weighted: synaptic operations
    _m(nn.Conv1d, "weighted", "Conv1d", "synapses", args=_CONV, params=True),
    _m(nn.Conv2d, "weighted", "Conv2d", "synapses", args=_CONV, params=True),
    _m(
        nn.Linear,
        "weighted",
        "Affine",
        "synapses",
        args=("in_features", "out_features"),
        params=True,
    ),
    _f(operator.matmul, "operator.matmul", "weighted", None, "synapses", _NO_SAMPLE_MIX),
    _f(torch.mm, "torch.mm", "weighted", None, "synapses", _NO_SAMPLE_MIX),
    _f(torch.matmul, "torch.matmul", "weighted", None, "synapses", _NO_SAMPLE_MIX),
    _f(torch.spmm, "torch.spmm", "weighted", None, "synapses", _NO_SAMPLE_MIX),
    _f(torch.sparse.mm, "torch.sparse.mm", "weighted", None, "synapses", _NO_SAMPLE_MIX),
    # products of two activations (matmul/mm/@ above are products when neither factor is
    # a constant matrix, see role()) and softmax over the last dimension (issue 27)
    _f(torch.bmm, "torch.bmm", "product", None, "product", _NO_PRODUCT),
    _m(nn.Softmax, "softmax", None, "softmax", no_nir=_NO_SOFTMAX, args=("dim",)),
    _f(F.softmax, _TORCH_F + "softmax", "softmax", None, "softmax", _NO_SOFTMAX),
    _f(torch.softmax, "torch.softmax", "softmax", None, "softmax", _NO_SOFTMAX),
    _me("softmax", "softmax", None, "softmax", no_nir=_NO_SOFTMAX),
    _m(SignedSite, "signed", None, "neurons", no_nir=_NO_SIGNED),
    # max-pooling of spikes
    _m(nn.MaxPool1d, "maxpool", None, "pass", no_nir=_NO_MAXPOOL, args=_MAXPOOL),
    _m(nn.MaxPool2d, "maxpool", "SumPool2d", "pass", args=_MAXPOOL),
    _f(F.max_pool1d, _TORCH_F + "max_pool1d", "maxpool", None, "pass", _NO_MAXPOOL),
    _f(F.max_pool2d, _TORCH_F + "max_pool2d", "maxpool", None, "pass", _NO_MAXPOOL),
    # weight-free linear operators
    _m(nn.AvgPool1d, "linear", None, "pool_area", no_nir="NIR has no 1-d pooling", args=_AVGPOOL1),
    _m(nn.AvgPool2d, "linear", "AvgPool2d", "pool_area", args=(*_AVGPOOL1, "divisor_override")),
    _m(
        nn.AdaptiveAvgPool1d,
        "linear",
        None,
        "pool_area",
        no_nir="NIR has no 1-d pooling",
        args=("output_size",),
    ),
    _m(nn.AdaptiveAvgPool2d, "linear", "AvgPool2d", "pool_area", args=("output_size",)),
    *(
        _f(
            fn,
            _TORCH_F + fn.__name__,
            "linear",
            None,
            "pool_area",
            "only pooling modules are exported (use nn.AvgPool2d)",
        )
        for fn in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)
    ),
    _m(nn.Flatten, "linear", "Flatten", "reshape", args=("start_dim", "end_dim")),
    _f(torch.flatten, "torch.flatten", "linear", "Flatten", "reshape"),
    _me("view", "linear", "Flatten", "reshape"),
    _me("reshape", "linear", "Flatten", "reshape"),
    _me("flatten", "linear", "Flatten", "reshape"),
    _me("contiguous", "linear", "identity", "reshape"),
    *(_me(m, "linear", None, "reshape", no_nir=_NO_MOVE) for m in ("transpose", "permute")),
    *(_me(m, "linear", None, "reshape", no_nir=_NO_MOVE) for m in ("chunk", "split")),
    *(_me(m, "linear", None, "reshape", no_nir=_NO_MOVE) for m in ("unsqueeze", "expand")),
    *(
        _f(fn, f"torch.{fn.__name__}", "linear", None, "reshape", _NO_MOVE)
        for fn in (torch.transpose, torch.permute, torch.chunk, torch.split)
    ),
    _f(operator.add, "operator.add", "linear", "sum", "membrane"),
    _f(torch.add, "torch.add", "linear", "sum", "membrane"),
    _me("add", "linear", "sum", "membrane"),
    _f(torch.cat, "torch.cat", "linear", "concat", "pass"),
    _f(operator.mul, "operator.mul", "linear", None, "pass", "multiplication by a number"),
    _f(torch.mul, "torch.mul", "linear", None, "pass", "multiplication by a number"),
    _f(operator.truediv, "operator.truediv", "linear", None, "pass", "division by a number"),
    _me("mean", "linear", None, "pass", no_nir="a mean"),
    _f(torch.mean, "torch.mean", "linear", None, "pass", "a mean"),
    # integer bookkeeping
    _f(operator.getitem, "operator.getitem", "shape", None, "free"),
    _f(getattr, "builtins.getattr", "shape", None, "free"),  # x.shape, x.ndim only
    _me("size", "shape", None, "free"),
    _me("dim", "shape", None, "free"),
    *(  # on traced sizes only (see role())
        _f(fn, f"operator.{fn.__name__}", "shape", None, "free")
        for fn in (operator.floordiv, operator.sub, operator.pow)
    ),
    # recognised only to be refused before any work, with what to use instead
    _refused("module", nn.LayerNorm, _USE_BN),
    _refused("function", F.layer_norm, _USE_BN),
    _refused("module", nn.GELU, _USE_RELU),
    _refused("function", F.gelu, _USE_RELU),
    _refused("module", nn.MultiheadAttention, _USE_ATTN),
    _refused("function", F.scaled_dot_product_attention, _USE_ATTN),
    # removed by trace(): dropout and identity dropped, BatchNorm folded
    _m(nn.Identity, "drop", None, "free", no_nir=_RM),  # the file format keeps it by name
    *(
        _m(cls, "drop", None, "free", name=False, no_nir=_RM)
        for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d)
    ),
    _f(F.dropout, _TORCH_F + "dropout", "drop", None, "free", _RM),
)

MODULE_OPS: dict[type, Op] = {op.target: op for op in OPS if op.kind == "module"}
FUNCTION_OPS: dict[object, Op] = {}
for _op in OPS:  # the first entry wins among equal functions (torch.spmm == torch.mm)
    if _op.kind == "function":
        FUNCTION_OPS.setdefault(_op.target, _op)
METHOD_OPS: dict[str, Op] = {op.target: op for op in OPS if op.kind == "method"}


def op_of(node: Node, modules: dict[str, nn.Module] | None = None) -> Op | None:
    """The table entry of ``node``'s operator (a module matches through its class's
    bases), or ``None`` (placeholder, output, get_attr, an unsupported operator)."""
    if node.op == "call_module":
        if modules is None:
            return None
        for cls in type(modules[node.target]).__mro__:
            if cls in MODULE_OPS:
                return MODULE_OPS[cls]
        return None
    if node.op == "call_function":
        try:
            return FUNCTION_OPS.get(node.target)
        except TypeError:  # an unhashable target
            return None
    if node.op == "call_method":
        return METHOD_OPS.get(node.target)
    return None


def is_add(node: Node) -> bool:
    """True if ``node`` adds tensors (events land on a membrane; a sum in NIR)."""
    op = op_of(node)
    return op is not None and op.cost == "membrane"


def _role_modules(role_: str) -> tuple[type, ...]:
    return tuple(op.target for op in OPS if op.kind == "module" and op.role == role_)


_WEIGHTED_MODULES = _role_modules("weighted")
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
_DROP_MODULES = tuple(c for c in _role_modules("drop") if c not in _BN_MODULES)
_DROP_FUNCTIONS = tuple(op.target for op in OPS if op.kind == "function" and op.role == "drop")
_CLIP_METHODS = tuple(op.target for op in OPS if op.kind == "method" and op.clip)
_ACTIVATION_MODULES = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Mish,
    nn.SELU,
    nn.CELU,
    nn.Softmax,
    nn.LogSoftmax,
)


@dataclass
class TracedModel:
    """A folded, checked copy of the ANN as an ``fx.GraphModule``."""

    module: fx.GraphModule
    input_node: Node
    relus: list[Node]  # topological order
    names: dict[Node, str]  # readable name of every spiking layer
    caps: dict[Node, float] = field(default_factory=dict)  # clipped ReLUs: the bound c
    # issue 27: products of two activations (q @ k^T, attention @ v) and softmaxes over
    # the last dimension, topological order
    products: list[Node] = field(default_factory=list)
    softmaxes: list[Node] = field(default_factory=list)
    # the kind of every spiking layer (the role: "relu", "signed" or "softmax")
    kinds: dict[Node, str] = field(default_factory=dict)

    def kind(self, node: Node) -> str:
        """The kind of spiking layer ``node`` (``"relu"`` unless signed or softmax)."""
        return self.kinds.get(node, "relu")

    def modules(self) -> dict[str, nn.Module]:
        return dict(self.module.named_modules())


def _place(node: Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        fn = getattr(node.target, "__name__", str(node.target))
        return f"node '{node.name}' (function {fn})"
    if node.op == "call_method":
        return f"node '{node.name}' (method .{node.target}())"
    return f"node '{node.name}' ({node.op} {node.target})"


def clip_bounds(node: Node, modules: dict[str, nn.Module]) -> tuple[object, object] | None:
    """``(low, high)`` of a clamp-like node (``None`` = unbounded), or ``None`` if the
    node is not one (Hardtanh/ReLU6 modules, relu6/hardtanh/clamp/clip calls)."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Hardtanh):  # nn.ReLU6 too
            return float(m.min_val), float(m.max_val)
        return None
    args, kw = node.args[1:], node.kwargs
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        low = args[0] if args else kw.get("min_val", -1.0)
        return low, args[1] if len(args) > 1 else kw.get("max_val", 1.0)
    is_fn = node.op == "call_function" and node.target in (torch.clamp, torch.clip)
    if is_fn or (node.op == "call_method" and node.target in _CLIP_METHODS):
        low = args[0] if args else kw.get("min")
        return low, args[1] if len(args) > 1 else kw.get("max")
    return None


def _clip_problem(node: Node, modules: dict[str, nn.Module]) -> str | None:
    """Why a clamp-like node is not a (clipped) ReLU, or None if it is one."""
    low, high = clip_bounds(node, modules) or (None, None)
    num = (int, float)
    if any(isinstance(v, bool) or not (v is None or isinstance(v, num)) for v in (low, high)):
        return "the bounds of a clipped activation must be numbers (not tensors)"
    if low != 0:
        return (
            f"a clipped activation converts only as a ReLU capped at c, i.e. with lower bound "
            f"0 (here {low}, upper {high})"
        )
    if high is not None and not high > 0:
        return f"a clipped ReLU needs an upper bound c > 0 (here {high})"
    return None


def relu_cap(node: Node, modules: dict[str, nn.Module]) -> float | None:
    """The upper bound ``c`` of a clipped ReLU node; None for a plain ReLU."""
    b = clip_bounds(node, modules)
    return None if b is None or b[1] is None else float(b[1])


def spiking_caps(gm: fx.GraphModule) -> list[float | None]:
    """The clip bound (:func:`relu_cap`) of every spiking node of the folded ANN graph
    ``gm``, in graph order: the order of a converted network's ``spikes``."""
    modules = dict(gm.named_modules())
    return [relu_cap(n, modules) for n in gm.graph.nodes if role(n, modules) in SPIKING]


def role(node: Node, modules: dict[str, nn.Module]) -> str | None:
    """Role of a node in the conversion (module docstring), or ``None`` if unsupported."""
    op = node.op
    if op == "placeholder":
        return "input"
    if op == "output":
        return "output"
    if op == "get_attr":
        return "const"
    if op == "call_function" and node.target in _SIZE_ARITH and _is_size(node):
        return "shape"  # arithmetic on traced sizes (C // heads, N * 2)
    entry = op_of(node, modules)
    if entry is None:
        m = modules.get(node.target) if op == "call_module" else None
        return getattr(m, "_onespike_role", None)  # onespike's own spiking modules
    if entry.clip and _clip_problem(node, modules) is not None:
        return None
    if entry.target is getattr and not (len(node.args) > 1 and node.args[1] in ("shape", "ndim")):
        return None
    if entry.role == "weighted" and op == "call_function" and _is_product(node):
        return "product"
    if entry.role == "shape" and entry.target in _SIZE_ARITH and not _is_size(node):
        return None  # -, // or ** of tensors
    if entry.target is operator.getitem and not _is_size(node):
        return "linear"  # a part of a tensor (class token x[:, 0], a piece of chunk/split)
    return entry.role


_SIZE_ARITH = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv)
_SIZE_ARITH += (operator.pow,)


def _is_size(node: object) -> bool:
    """True if ``node`` is a number computed from traced sizes (``x.shape``, ``x.size()``,
    ``x.dim()``, indexing them, ``+ - * // / **`` on them and numbers) or a number."""
    if not isinstance(node, Node):
        return isinstance(node, (int, float)) and not isinstance(node, bool)
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr:
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        return _is_size(node.args[0])
    if node.op == "call_function" and node.target in _SIZE_ARITH:
        return all(_is_size(a) for a in node.args)
    return False


def _is_product(node: Node) -> bool:
    """A matrix product of two activations (neither factor a constant of the model)."""
    a = node.args[:2]
    return len(a) == 2 and all(isinstance(x, Node) and x.op != "get_attr" for x in a)


def softmax_dim(node: Node, modules: dict[str, nn.Module]) -> object:
    """The ``dim`` of a softmax node (module, function or method)."""
    if node.op == "call_module":
        return modules[node.target].dim
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")


def _is_swap12(node: object) -> bool:
    """``x.transpose(1, 2)`` (or ``-1, -2``, ``torch.transpose``, ``x.permute(0, 2, 1)``):
    the swap that puts a token tensor's features where BatchNorm1d normalises."""
    if not isinstance(node, Node):
        return False
    fn = node.op == "call_function" and node.target is torch.transpose
    if (node.op == "call_method" and node.target == "transpose") or fn:
        dims = node.args[1:3]
        return all(isinstance(d, int) for d in dims) and {d % 3 for d in dims} == {1, 2}
    if node.op == "call_method" and node.target == "permute":
        dims = node.args[1:] if not isinstance(node.args[1], (tuple, list)) else node.args[1]
        return all(isinstance(d, int) for d in dims) and [d % 3 for d in dims] == [0, 2, 1]
    return False


def _problems(gm: fx.GraphModule) -> list[str]:
    """Every reason the graph cannot be converted, one line each."""
    modules = dict(gm.named_modules())
    out: list[str] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        out.append(f"the model must take exactly one input tensor, it takes {len(placeholders)}")
    for node in gm.graph.nodes:
        where = _place(node, modules)
        out += [f"{where}: {why}" for why in _node_problems(node, modules, gm)]
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if outputs and not isinstance(outputs[0].args[0], Node):
        out.append("the model must return a single tensor (not a tuple, list or dict)")
    return out


def _node_problems(node: Node, modules: dict[str, nn.Module], gm: fx.GraphModule) -> list[str]:
    """Why ``node`` cannot be converted (none: an empty list)."""
    r = role(node, modules)
    if r is None:
        if clip_bounds(node, modules) is not None:
            return [_clip_problem(node, modules)]
        if node.op == "call_module" and isinstance(modules[node.target], _ACTIVATION_MODULES):
            return ["non-ReLU activation; only ReLU can become spiking neurons"]
        return ["unsupported operator"]
    if r == "refused":
        return [f"not convertible; {op_of(node, modules).instead}"]  # type: ignore[union-attr]
    out: list[str] = []
    if r == "softmax" and softmax_dim(node, modules) != -1:
        out.append(
            "softmax converts only over the last dimension: write dim=-1 "
            f"(here dim={softmax_dim(node, modules)!r})"
        )
    if r == "drop" and node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _BN_MODULES) and _fold_source(node, modules) is None:
            why = _forward_fold_problem(node, modules, gm)
            if why is not None:
                out.append(
                    "BatchNorm folds into the Conv/Linear before it (used nowhere else) or, "
                    f"after a ReLU, into the next one; {why}"
                )
    if r == "weighted" and node.op == "call_function":
        mat = node.args[0] if node.args else None
        if not (isinstance(mat, Node) and mat.op == "get_attr"):
            out.append(
                "a matrix product is supported as a fixed matrix (a buffer of the model) "
                "times the activations or as a product of two activations; for activations "
                "times a parameter use nn.Linear"
            )
    if r == "linear" and node.target in (operator.mul, torch.mul, operator.truediv):
        consts = [a for a in node.args if not isinstance(a, Node) or _is_size(a)]
        number = consts and (isinstance(consts[0], (int, float)) or _is_size(consts[0]))
        if len(consts) != 1 or not number:
            out.append("only multiplication/division by a number is supported")
    if r != "shape" and is_add(node) and any(not isinstance(a, Node) for a in node.args):
        out.append("adding a constant is not supported (add two tensors only)")
    if r == "maxpool" and not _is_spiking(node.args[0], modules):
        src = node.args[0]
        out.append(
            "max-pooling must take spikes: place it after a ReLU "
            f"(its input is node '{getattr(src, 'name', src)}')"
        )
    return out


def _is_spiking(node: object, modules: dict[str, nn.Module]) -> bool:
    """True if ``node`` carries spikes: a ReLU, or max-pool/reshape of spikes."""
    if not isinstance(node, Node):
        return False
    r = role(node, modules)
    if r in SPIKING:
        return True
    if r == "maxpool":
        return _is_spiking(node.args[0], modules)
    if r == "linear" and is_reshape(node, modules):
        return _is_spiking(node.args[0], modules)
    return False


def is_reshape(node: Node, modules: dict[str, nn.Module]) -> bool:
    """Flatten/view/reshape: moves values without combining them (spikes stay spikes)."""
    op = op_of(node, modules)
    return op is not None and op.cost == "reshape"


def _fold_source(bn_node: Node, modules: dict[str, nn.Module]) -> Node | None:
    """The Conv/Linear node ``bn_node`` folds into (backwards), or None. A BatchNorm1d
    over a token tensor's features, ``bn(linear(x).transpose(1, 2))``, folds into the
    Linear through the swap (each used once)."""
    prev = bn_node.args[0]
    if _is_swap12(prev) and isinstance(modules[bn_node.target], nn.BatchNorm1d):
        lin = prev.args[0]
        ok = len(prev.users) == 1 and isinstance(lin, Node) and lin.op == "call_module"
        if ok and isinstance(modules[lin.target], nn.Linear) and len(lin.users) == 1:
            return lin
        return None
    return prev if _foldable(bn_node, modules) else None


def _forward_target(bn_node: Node, modules: dict[str, nn.Module]) -> Node:
    """The node a BatchNorm's output goes to, through a swap back to ``[N, tokens, d]``
    (``bn(x).transpose(1, 2)``) for a BatchNorm1d whose only user is that swap."""
    nxt = next(iter(bn_node.users))
    swap = _is_swap12(nxt) and isinstance(modules[bn_node.target], nn.BatchNorm1d)
    if swap and len(nxt.users) == 1 and nxt.args[0] is bn_node:
        after = next(iter(nxt.users))
        if isinstance(modules.get(after.target) if after.op == "call_module" else None, nn.Linear):
            return after
    return nxt


def _foldable(bn_node: Node, modules: dict[str, nn.Module]) -> bool:
    prev = bn_node.args[0]
    return (
        isinstance(prev, Node)
        and prev.op == "call_module"
        and isinstance(modules[prev.target], _WEIGHTED_MODULES)
        and len(prev.users) == 1
    )


def _padding_free(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    p = m.padding
    return p == "valid" or (not isinstance(p, str) and all(int(v) == 0 for v in p))


def _forward_fold_problem(bn_node: Node, modules: dict[str, nn.Module], gm: fx.GraphModule):
    """Why ``bn_node`` cannot be folded into the layer after it (None: it can)."""
    users = list(bn_node.users)
    if len(users) != 1:
        return f"here it has {len(users)} users"
    nxt = _forward_target(bn_node, modules)
    m = modules.get(nxt.target) if nxt.op == "call_module" else None
    fed = bn_node if nxt is users[0] else users[0]  # or through the swap back
    if not isinstance(m, _WEIGHTED_MODULES) or nxt.args[0] is not fed:
        return f"here its output goes to {_place(nxt, modules)}, not a Conv/Linear"
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == nxt.target]
    if len(calls) != 1:
        return f"here {_place(nxt, modules)} is called {len(calls)} times"
    if not _padding_free(m):
        return (
            f"here {_place(nxt, modules)} pads its input (padding {m.padding}), which would "
            "pad with the BatchNorm's shift: use padding=0 there or move the BatchNorm "
            "before the ReLU"
        )
    bn = modules[bn_node.target]
    size = m.in_features if isinstance(m, nn.Linear) else m.in_channels
    if bn.num_features != size:
        return f"here its {bn.num_features} channels do not match {_place(nxt, modules)}"
    return None


def _bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[Tensor, Tensor, Tensor]:
    """``(gamma / sqrt(var + eps), beta, running_mean)`` of an eval-mode BN, in float64;
    ``UnsupportedModelError`` without running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModelError(
            f"{type(bn).__name__} without running statistics (track_running_stats=False) "
            "cannot be folded"
        )
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    a = gamma.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return a, beta.double(), bn.running_mean.double()


@torch.no_grad()
def fold_batchnorm_forward(bn: nn.BatchNorm1d | nn.BatchNorm2d, layer: nn.Module) -> None:
    """Fold ``bn`` (running statistics) into the Conv/Linear ``layer`` it feeds, in place.

    ``bn(s) = a * s + t`` per channel, so ``layer(bn(s)) = layer'(s)`` with the weights
    of input channel ``j`` multiplied by ``a[j]`` and ``t`` pushed through the weights
    into the bias (exact for a Linear and for a convolution without padding).
    """
    a, beta, mean = _bn_affine(bn)
    t = beta - mean * a
    w = layer.weight
    dtype = w.dtype
    groups = getattr(layer, "groups", 1)
    out_ch, in_per_group = w.shape[0], w.shape[1]
    per_w = (1, 1) + (1,) * (w.dim() - 2)

    def arrange(v: Tensor) -> Tensor:  # input channel j of output o's group, as [O, I/g, 1..]
        v = v.reshape(groups, in_per_group).repeat_interleave(out_ch // groups, dim=0)
        return v.reshape(v.shape + per_w[2:])

    wd = w.double()
    shift = (wd * arrange(t)).sum(dim=tuple(range(1, w.dim())))
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(shift)
    layer.weight = nn.Parameter((wd * arrange(a)).to(dtype))
    layer.bias = nn.Parameter((b + shift).to(dtype))


def _fold_bn(gm: fx.GraphModule) -> None:
    """Fold eval-mode BatchNorm into the Conv/Linear that feeds it, or else into the one
    it feeds (in place on the copy)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BN_MODULES):
            continue
        bn = modules[node.target]
        src = _fold_source(node, modules)
        if src is not None:  # the Conv/Linear before it (directly or through a swap)
            fold_batchnorm(modules[src.target], bn)
            node.replace_all_uses_with(node.args[0])
        elif _forward_fold_problem(node, modules, gm) is None:
            nxt = _forward_target(node, modules)
            fold_batchnorm_forward(bn, modules[nxt.target])
            node.replace_all_uses_with(node.args[0])
        else:
            continue  # reported by _problems
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


@torch.no_grad()
def fold_batchnorm(layer: nn.Module, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    """Fold ``bn`` (running statistics) into ``layer``'s weight and bias, in place."""
    inv, beta, mean = _bn_affine(bn)
    w = layer.weight
    dtype = w.dtype
    shape = (-1,) + (1,) * (w.dim() - 1)
    new_w = w.double() * inv.reshape(shape)
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(inv)
    new_b = (b - mean) * inv + beta
    layer.weight = nn.Parameter(new_w.to(dtype))
    layer.bias = nn.Parameter(new_b.to(dtype))


def _drop_passthrough(gm: fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_drop = (
            node.op == "call_module" and isinstance(modules[node.target], _DROP_MODULES)
        ) or (node.op == "call_function" and node.target in _DROP_FUNCTIONS)
        if is_drop:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


def layer_name(node: Node) -> str:
    """Readable name of a spiking layer: the module path, else the fx node name."""
    return str(node.target) if node.op == "call_module" else node.name


def unique_layer_names(relus: list[Node]) -> dict[Node, str]:
    """Every spiking layer's plan name, unique: its :func:`layer_name`, except that the
    calls of a module used more than once are named by their fx node (``relu``,
    ``relu_1``, ...), and a name already taken gets ``_2``, ``_3``, ... Results, plans
    and files key layers by these names, so two layers never share one."""
    counts: dict[str, int] = {}
    for n in relus:
        counts[layer_name(n)] = counts.get(layer_name(n), 0) + 1
    names: dict[Node, str] = {}
    taken: set[str] = set()
    for n in relus:
        name = layer_name(n) if counts[layer_name(n)] == 1 else n.name
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names[n] = name
    return names


#: Where :func:`trace` puts signed neurons: ``"operands"`` at the factors of products of
#: two activations that can be negative (what attention needs); ``"inputs"`` also at the
#: input of every Conv/Linear that reads values that are neither spikes nor the network
#: input (a transformer's residual stream, an attention's output, a token mean), so that
#: every weighted layer but the first reads spikes, as in SpikedAttention.
SIGNED_SITES = ("operands", "inputs")


def trace(model: nn.Module, *, signed: str = "operands") -> TracedModel:
    """Trace, fold and check a copy of ``model``.

    Raises :class:`UnsupportedModelError` listing every problem on one line (unsupported
    operator or activation with its place, unfoldable BatchNorm, max-pool on
    non-spikes, ...) before anything else happens. ``signed``: where signed neurons go
    (:data:`SIGNED_SITES`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if signed not in SIGNED_SITES:
        raise OptionError(f"signed must be one of {SIGNED_SITES}, got {signed!r}")
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...)
        raise UnsupportedModelError(
            f"the model could not be traced with torch.fx ({type(e).__name__}: {e}); "
            "data-dependent control flow in forward() is not supported"
        ) from None
    problems = _problems(gm)
    if problems:
        raise UnsupportedModelError(
            f"cannot convert {type(model).__name__}: {len(problems)} unsupported "
            "node(s): " + "; ".join(problems)
        )
    _fold_bn(gm)
    _drop_passthrough(gm)
    _canonical_clips(gm)
    _insert_signed_sites(gm, inputs=signed == "inputs")
    gm.delete_all_unused_submodules()
    modules = dict(gm.named_modules())
    relus = [n for n in gm.graph.nodes if role(n, modules) in SPIKING]
    caps = {n: c for n in relus if (c := relu_cap(n, modules)) is not None}
    if not relus:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no ReLU: there is nothing to turn into spiking neurons"
        )
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    products = [n for n in gm.graph.nodes if role(n, modules) == "product"]
    softmaxes = [n for n in gm.graph.nodes if role(n, modules) == "softmax"]
    kinds = {n: r for n in relus if (r := role(n, modules)) != "relu"}
    names = unique_layer_names(relus)
    return TracedModel(gm, placeholder, relus, names, caps, products, softmaxes, kinds)


def _insert_signed_sites(gm: fx.GraphModule, *, inputs: bool = False) -> None:
    """A :class:`SignedSite` after every node whose values feed a product of two
    activations and can be negative (kind ``"signed"`` of
    :func:`product_sites`, or the network input itself), once per node,
    taking all its uses: the values that node sends are carried by signed single-spike
    neurons (both factors of a product are spikes). With ``inputs``, also after the node
    that makes the values a Conv/Linear reads (traced back as a product's factor is),
    unless they are spikes already or the network input."""
    sites: list[Node] = []
    for ps in product_sites(gm):
        for site, kind in zip(ps.sites, ps.kinds):
            if kind in ("signed", "input") and site not in sites:
                sites.append(site)
    modules = dict(gm.named_modules())
    for n in gm.graph.nodes if inputs else ():
        if n.op != "call_module" or role(n, modules) != "weighted":
            continue
        site = _value_site(n.args[0], modules)
        dense = not _is_spiking(site, modules) and site.op != "placeholder"
        if dense and site not in sites:
            sites.append(site)
    for site in sites:
        name = f"{site.name}_signed"
        while hasattr(gm, name):
            name = f"{name}_"
        gm.add_submodule(name, SignedSite())
        with gm.graph.inserting_after(site):
            new = gm.graph.call_module(name, (site,))
        site.replace_all_uses_with(new, delete_user_cb=functools.partial(operator.is_not, new))
    gm.graph.lint()
    gm.recompile()


def _canonical_clips(gm: fx.GraphModule) -> None:
    """Every clamp-like ReLU as a module: ``nn.Hardtanh(0, c)``, or ``nn.ReLU`` without a
    bound (``nn.ReLU6`` and ``nn.Hardtanh`` modules stay). The layer keeps its name."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" or clip_bounds(node, modules) is None:
            continue
        cap = relu_cap(node, modules)
        name = node.name
        while hasattr(gm, name):
            name = f"{name}_"
        gm.add_submodule(name, nn.ReLU() if cap is None else nn.Hardtanh(0.0, cap))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


# --------------------------------------------------------------------------------------
# attention (issue 27): where the operands of a product of two activations come from
# --------------------------------------------------------------------------------------
_SCALING = (operator.mul, torch.mul, operator.truediv)


@dataclass(frozen=True)
class ProductSite:
    """The two operands of a product of two activations, each traced back through
    reshapes, indexing and scaling by a number (``q.view(...).transpose(1, 2)``,
    ``qkv.chunk(3)[0]``, ``k.transpose(-2, -1)``, ``q * scale``) to the node that makes
    its values: ``sites``. ``kinds`` says what each site is: ``"softmax"`` (exponential
    neurons, positive), ``"relu"`` (already single-spike neurons, positive), ``"input"``,
    or ``"signed"`` (any other value: a layer of signed single-spike neurons goes there)."""

    product: Node
    sites: tuple[Node, Node]
    kinds: tuple[str, str]


def _value_site(node: Node, modules: dict[str, nn.Module]) -> Node:
    """``node`` traced back through what moves or scales values without combining them."""
    while isinstance(node, Node):
        r = role(node, modules)
        moves = r == "linear" and (is_reshape(node, modules) or node.target is operator.getitem)
        scales = r == "linear" and node.target in _SCALING and isinstance(node.args[0], Node)
        if not (moves or scales):
            return node
        node = node.args[0]  # the tensor (a size argument is never args[0] here)
    return node


def product_sites(gm: fx.GraphModule) -> list[ProductSite]:
    """Every product of two activations in ``gm`` (topological order) with its operands'
    sites (:class:`ProductSite`): where a converter puts signed neurons for attention."""
    modules = dict(gm.named_modules())
    out = []
    for n in gm.graph.nodes:
        if role(n, modules) != "product":
            continue
        sites = tuple(_value_site(a, modules) for a in n.args[:2])
        kinds = tuple(
            r if (r := role(s, modules)) in ("softmax", "relu", "input") else "signed"
            for s in sites
        )
        out.append(ProductSite(n, sites, kinds))  # type: ignore[arg-type]
    return out
