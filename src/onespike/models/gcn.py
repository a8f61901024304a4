"""Graph convolutional networks (Kipf & Welling, 2017) for node classification.

Both models hold the graph's propagation matrix ``A_hat = D^-1/2 (A + I) D^-1/2`` as a
(non-persistent) sparse buffer ``adj`` and take the node-feature matrix ``[N, F]`` of the
whole graph as their input: dim 0 is the node axis, and one forward call classifies every
node (transductive). A graph convolution is written ``torch.sparse.mm(self.adj, fc(h))``
with a bias-free ``nn.Linear`` ``fc``, exactly the original ``A_hat H W`` (Kipf & Welling's
reference code has no biases) in its cheap order (features are transformed before they are
propagated). Every activation is its own non-in-place ``nn.ReLU``; dropout modules are
dropped by the converter. Both models trace with :func:`torch.fx.symbolic_trace`, and the
converter sees the aggregation as multiplication by a fixed matrix (a ``get_attr``).

The adjacency is not part of the ``state_dict`` (it is data, not a learned weight):
:func:`load_pretrained_gcn` and the builders :func:`gcn` / :func:`gcn_res` rebuild it from
the Planetoid files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onespike.errors import OptionError, UnknownNameError
from onespike.models.weights import (
    PretrainedWeightsNotFoundError,
    load_state_dict_file,
    weights_dir,
)

__all__ = [
    "GCN",
    "GCN_DATASETS",
    "GCN_MODELS",
    "DeepGCN",
    "gcn",
    "gcn_res",
    "gcn_weights_name",
    "load_pretrained_gcn",
]

GCN_DATASETS: tuple[str, ...] = ("cora", "citeseer")
GCN_MODELS: tuple[str, ...] = ("gcn", "gcn_res")


def _check_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """Return ``adj`` as a coalesced float32 sparse COO matrix, or raise ``OptionError``."""
    if not isinstance(adj, torch.Tensor):
        raise OptionError(f"adj must be a torch.Tensor [N, N], got {type(adj).__name__}")
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise OptionError(f"adj must be a square matrix [N, N], got shape {list(adj.shape)}")
    if not adj.is_sparse:
        adj = adj.to_sparse()
    adj = adj.coalesce().to(torch.float32)
    if adj._nnz() and not bool(torch.isfinite(adj.values()).all()):
        raise OptionError("adj contains NaN or Inf values")
    return adj


class GCN(nn.Module):
    """The two-layer GCN of Kipf & Welling (2017) for semi-supervised node classification.

    ``logits = A_hat relu(A_hat X W1) W2`` with dropout on the input of each layer::

        drop1 Dropout(p) -> fc1 Linear(F, hidden, bias=False) -> A_hat @ -> relu1
        drop2 Dropout(p) -> fc2 Linear(hidden, C, bias=False)  -> A_hat @

    Weights start Glorot-uniform, as in the reference code.

    Args:
        adj: the propagation matrix ``[N, N]`` (sparse COO preferred; a dense one is
            converted), normally :meth:`onespike.data.Graph.normalized_adjacency`.
        in_features: F, the width of the node features.
        num_classes: C.
        hidden: width of the hidden layer (16 in the paper).
        dropout: dropout probability (0.5 in the paper).
    """

    def __init__(
        self,
        adj: torch.Tensor,
        in_features: int,
        num_classes: int,
        hidden: int = 16,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.register_buffer("adj", _check_adjacency(adj), persistent=False)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_features, hidden, bias=False)
        self.relu1 = nn.ReLU(inplace=False)
        self.drop2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes, bias=False)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[N, C]`` for the node features ``x`` ``[N, F]`` of the whole graph."""
        h = self.relu1(torch.sparse.mm(self.adj, self.fc1(self.drop1(x))))
        return torch.sparse.mm(self.adj, self.fc2(self.drop2(h)))


class DeepGCN(nn.Module):
    """A deeper GCN: ``layers`` graph convolutions, optionally with residual connections.

    ``h_1 = relu(A_hat X W_0)``; for the hidden-to-hidden layers
    ``h_{l+1} = relu(A_hat h_l W_l + h_l)`` (residual, the form of Kipf & Welling's
    appendix B) or ``relu(A_hat h_l W_l)``; ``logits = A_hat h_{L-1} W_{L-1}``. Dropout
    before every layer. Modules: ``fc.{i}`` (bias-free Linear), ``relu.{i}``, ``drop.{i}``.

    Args:
        adj: the propagation matrix ``[N, N]`` (see :class:`GCN`).
        in_features: F.
        num_classes: C.
        hidden: width of every hidden layer.
        layers: number of graph convolutions (>= 2; 2 is the plain GCN layout).
        dropout: dropout probability.
        residual: add each hidden layer's input to its pre-activation.
    """

    def __init__(
        self,
        adj: torch.Tensor,
        in_features: int,
        num_classes: int,
        hidden: int = 64,
        layers: int = 4,
        dropout: float = 0.5,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if layers < 2:
            raise OptionError(f"DeepGCN needs at least 2 layers, got {layers}")
        self.register_buffer("adj", _check_adjacency(adj), persistent=False)
        self.residual = bool(residual)
        widths = [in_features] + [hidden] * (layers - 1) + [num_classes]
        self.drop = nn.ModuleList(nn.Dropout(dropout) for _ in range(layers))
        self.fc = nn.ModuleList(
            nn.Linear(widths[i], widths[i + 1], bias=False) for i in range(layers)
        )
        self.relu = nn.ModuleList(nn.ReLU(inplace=False) for _ in range(layers - 1))
        for fc in self.fc:
            nn.init.xavier_uniform_(fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[N, C]`` for the node features ``x`` ``[N, F]`` of the whole graph."""
        h = self.relu[0](torch.sparse.mm(self.adj, self.fc[0](self.drop[0](x))))
        for i in range(1, len(self.relu)):
            pre = torch.sparse.mm(self.adj, self.fc[i](self.drop[i](h)))
            h = self.relu[i](pre + h if self.residual else pre)
        return torch.sparse.mm(self.adj, self.fc[-1](self.drop[-1](h)))


def _graph_inputs(
    dataset: str,
    adj: torch.Tensor | None,
    in_features: int | None,
    num_classes: int | None,
    data_root: str | Path | None,
) -> tuple[torch.Tensor, int, int]:
    if adj is not None and in_features is not None and num_classes is not None:
        return adj, in_features, num_classes
    from onespike.data import load_planetoid

    g = load_planetoid(dataset, root=data_root)
    return (
        g.normalized_adjacency() if adj is None else adj,
        g.num_features if in_features is None else in_features,
        g.num_classes if num_classes is None else num_classes,
    )


def gcn(
    dataset: str = "cora",
    *,
    adj: torch.Tensor | None = None,
    in_features: int | None = None,
    num_classes: int | None = None,
    hidden: int = 16,
    dropout: float = 0.5,
    data_root: str | Path | None = None,
) -> GCN:
    """Build a freshly initialised :class:`GCN` for a Planetoid graph.

    What is not given (``adj``, ``in_features``, ``num_classes``) is read from the
    data set's files (:func:`onespike.data.load_planetoid`).
    """
    a, f, c = _graph_inputs(dataset, adj, in_features, num_classes, data_root)
    return GCN(a, f, c, hidden=hidden, dropout=dropout)


def gcn_res(
    dataset: str = "cora",
    *,
    adj: torch.Tensor | None = None,
    in_features: int | None = None,
    num_classes: int | None = None,
    hidden: int = 64,
    layers: int = 4,
    dropout: float = 0.5,
    residual: bool = True,
    data_root: str | Path | None = None,
) -> DeepGCN:
    """Build a freshly initialised residual :class:`DeepGCN` (4 layers) for a Planetoid graph."""
    a, f, c = _graph_inputs(dataset, adj, in_features, num_classes, data_root)
    return DeepGCN(a, f, c, hidden=hidden, layers=layers, dropout=dropout, residual=residual)


def gcn_weights_name(model: str, dataset: str, seed: int = 0) -> str:
    """Stem of a weight file: ``{model}_{dataset}`` for seed 0, ``..._s{seed}`` otherwise."""
    return f"{model}_{dataset}" if seed == 0 else f"{model}_{dataset}_s{seed}"


def load_pretrained_gcn(
    model: str = "gcn",
    dataset: str = "cora",
    seed: int = 0,
    *,
    root: str | Path | None = None,
    data_root: str | Path | None = None,
) -> tuple[nn.Module, Any]:
    """Load trained GCN weights together with the graph they were trained on.

    Args:
        model: ``"gcn"`` (Kipf & Welling, 2 layers) or ``"gcn_res"`` (4 layers, residual).
        dataset: ``"cora"`` or ``"citeseer"``.
        seed: training seed; the package ships seed 0, other seeds are looked up in
            ``root`` (written by ``python -m onespike.experiments.gcn train --seeds ...``).
        root: folder of ``{name}.pt`` / ``{name}.json``; default: the shipped weights.
        data_root: Planetoid data folder (default: :func:`onespike.data.data_root`).

    Returns:
        ``(model, graph)``: the model in eval mode with the graph's adjacency, and the
        row-normalised :class:`onespike.data.Graph` whose ``features`` are its input.

    Raises:
        PretrainedWeightsNotFoundError: no such weight file (the message gives the command).
        onespike.data.DataError: the Planetoid files are missing.
    """
    from onespike.data import load_planetoid

    if model not in GCN_MODELS:
        raise UnknownNameError(f"unknown graph model {model!r}; known: {', '.join(GCN_MODELS)}")
    d = Path(root) if root is not None else weights_dir()
    name = gcn_weights_name(model, dataset, seed)
    pt, side = d / f"{name}.pt", d / f"{name}.json"
    if not pt.is_file():
        raise PretrainedWeightsNotFoundError(
            f"no weights for {model!r} on {dataset!r} (seed {seed}): {pt} does not exist. "
            f"Produce them with:\n    python -m onespike.experiments.gcn train --model {model} "
            f"--dataset {dataset} --seeds {seed} --out {d}"
        )
    kwargs: dict[str, Any] = {}
    if side.is_file():
        kwargs = dict(json.loads(side.read_text()).get("model_kwargs", {}))
    kwargs.pop("dataset", None)
    graph = load_planetoid(dataset, root=data_root).row_normalized()
    builder = gcn if model == "gcn" else gcn_res
    net = builder(
        dataset,
        adj=graph.normalized_adjacency(),
        in_features=graph.num_features,
        num_classes=graph.num_classes,
        **kwargs,
    )
    net.load_state_dict(load_state_dict_file(pt))
    return net.eval(), graph
