"""Planetoid citation graphs (Cora, CiteSeer, PubMed) with the standard public split.

Follows the loader of Kipf & Welling (``gcn/utils.py``) and PyTorch Geometric's
``read_planetoid_data``: features are ``vstack(allx, tx)`` with the test rows put back at
their node ids, CiteSeer's isolated test nodes (absent from ``tx``) become zero rows,
labels are the argmax of ``vstack(ally, ty)``, train = the first ``len(y)`` nodes,
val = the next 500, test = the ids in ``ind.NAME.test.index``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from onespike.errors import OptionError

from ._common import (
    PICKLE_ERRORS,
    DataError,
    PathLike,
    check_choice,
    missing_file_message,
    resolve_root,
    safe_unpickle,
)

__all__ = [
    "PLANETOID_FILES",
    "PLANETOID_NAMES",
    "Graph",
    "load_planetoid",
    "normalized_adjacency",
]

PLANETOID_NAMES: tuple[str, ...] = ("cora", "citeseer", "pubmed")
PLANETOID_FILES: tuple[str, ...] = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
_NUM_VAL = 500


def _check_edge_index(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    if num_nodes < 0:
        raise OptionError(f"num_nodes must be >= 0, not {num_nodes}")
    ei = torch.as_tensor(edge_index)
    if ei.numel() == 0:
        return torch.empty(2, 0, dtype=torch.int64, device=ei.device)
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise OptionError(f"edge_index must have shape [2, E], not {list(ei.shape)}")
    if ei.dtype.is_floating_point or ei.dtype == torch.bool:
        raise OptionError(f"edge_index must hold integers, not {ei.dtype}")
    ei = ei.to(torch.int64)
    if int(ei.min()) < 0 or int(ei.max()) >= num_nodes:
        raise OptionError(
            f"edge_index holds node ids in [{int(ei.min())}, {int(ei.max())}], "
            f"outside [0, {num_nodes})"
        )
    return ei


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """GCN propagation matrix ``D^-1/2 (A + I) D^-1/2`` as a sparse COO tensor.

    ``A`` is the 0/1 adjacency of ``edge_index`` (repeated edges count once, self loops in
    the input are dropped, then ``I`` gives every node one self loop of weight 1) and ``D``
    its row degrees, so an isolated node keeps the entry 1 on the diagonal. For an
    undirected graph pass both directions of each edge; the result is then symmetric.

    Args:
        edge_index: int64 [2, E], row ``i`` -> column ``j`` for each edge; may be empty.
        num_nodes: N, the number of nodes (ids are 0..N-1); 0 gives a 0x0 matrix.

    Returns:
        Coalesced float32 sparse COO tensor [N, N] on ``edge_index``'s device.
    """
    ei = _check_edge_index(edge_index, num_nodes)
    device = ei.device
    ei = ei[:, ei[0] != ei[1]]
    loops = torch.arange(num_nodes, dtype=torch.int64, device=device)
    idx = torch.cat([ei, torch.stack([loops, loops])], dim=1)
    # Deduplicate (so repeated edges weigh 1) via unique row-major keys, sorted.
    keys = torch.unique(idx[0] * max(num_nodes, 1) + idx[1])
    n = max(num_nodes, 1)
    row, col = keys // n, keys % n
    deg = torch.bincount(row, minlength=num_nodes).to(torch.float32)
    dinv = deg.pow(-0.5)
    values = dinv[row] * dinv[col]
    adj = torch.sparse_coo_tensor(
        torch.stack([row, col]),
        values,
        (num_nodes, num_nodes),
        dtype=torch.float32,
        check_invariants=False,  # indices are in range, sorted and unique by construction
        is_coalesced=True,
    )
    return adj.coalesce()


@dataclass(frozen=True, eq=False)
class Graph:
    """A node-classification graph with a fixed train/val/test split.

    Attributes:
        name: data set name, e.g. ``"cora"``.
        features: float32 [N, F] node features, as stored (raw bag-of-words / TF-IDF);
            see :meth:`row_normalized`.
        labels: int64 [N] class indices (0 for CiteSeer's padded nodes, as in PyG).
        train_idx, val_idx, test_idx: int64 node ids of the three splits (sorted).
        edge_index: int64 [2, E] edges, both directions of every undirected edge, no self
            loops, no duplicates, sorted by (source, target).
        num_nodes: N.
        num_classes: C.
    """

    name: str
    features: torch.Tensor
    labels: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    test_idx: torch.Tensor
    edge_index: torch.Tensor
    num_nodes: int
    num_classes: int

    @property
    def num_features(self) -> int:
        """F, the feature width."""
        return int(self.features.shape[1])

    @property
    def num_edges(self) -> int:
        """Number of undirected edges (``edge_index`` holds twice as many columns)."""
        return int(self.edge_index.shape[1]) // 2

    def row_normalized(self) -> Graph:
        """Copy whose feature rows sum to 1 (each row divided by its sum; zero rows stay 0)."""
        sums = self.features.sum(dim=1, keepdim=True)
        safe = torch.where(sums == 0, torch.ones_like(sums), sums)
        return dataclasses.replace(self, features=self.features / safe)

    def normalized_adjacency(self) -> torch.Tensor:
        """``D^-1/2 (A + I) D^-1/2``: coalesced float32 sparse COO [N, N], symmetric."""
        return normalized_adjacency(self.edge_index, self.num_nodes)

    def to(self, device: torch.device | str) -> Graph:
        """Copy with every tensor moved to ``device``."""
        moved: dict[str, Any] = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"Graph(name={self.name!r}, num_nodes={self.num_nodes}, "
            f"num_features={self.num_features}, num_classes={self.num_classes}, "
            f"num_edges={self.num_edges}, train/val/test={len(self.train_idx)}/"
            f"{len(self.val_idx)}/{len(self.test_idx)})"
        )


def _read_object(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return safe_unpickle(f, encoding="latin1")
    except PICKLE_ERRORS as exc:
        raise DataError(
            f"Planetoid file {path} is corrupt or not a Planetoid pickle "
            f"({type(exc).__name__}: {exc}); delete it and download it again."
        ) from exc


def _read_test_index(path: Path) -> np.ndarray:
    try:
        lines = path.read_text(encoding="ascii").split()
        return np.array([int(tok) for tok in lines], dtype=np.int64)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"Planetoid file {path} must hold one integer a line ({exc}); "
            f"delete it and download it again."
        ) from exc


def _dense(m: Any, path: Path) -> np.ndarray:
    """scipy sparse or array-like -> 2-D float32 numpy array."""
    try:
        arr = m.toarray() if sp.issparse(m) else np.asarray(m)
        arr = arr.astype(np.float32, copy=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"Planetoid file {path} does not hold a matrix ({exc}).") from exc
    if arr.ndim != 2:
        raise DataError(f"Planetoid file {path} holds a {arr.ndim}-D array, not a matrix.")
    return arr


def _edges_from_dict(graph: Mapping[Any, Any], num_nodes: int, path: Path) -> np.ndarray:
    """Dict of adjacency lists -> int64 [2, E], symmetric, no self loops, no duplicates."""
    try:
        src = np.fromiter((int(u) for u, vs in graph.items() for _ in vs), dtype=np.int64)
        dst = np.fromiter((int(v) for vs in graph.values() for v in vs), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"Planetoid file {path} must map node ids to lists of node ids ({exc})."
        ) from exc
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= num_nodes):
        hi = int(max(src.max(), dst.max()))
        raise DataError(
            f"Planetoid file {path} names node {hi}, but the feature files hold only "
            f"{num_nodes} nodes; the files do not belong together."
        )
    row = np.concatenate([src, dst])
    col = np.concatenate([dst, src])
    keep = row != col
    keys = np.unique(row[keep] * max(num_nodes, 1) + col[keep])
    return np.stack([keys // max(num_nodes, 1), keys % max(num_nodes, 1)])


def load_planetoid(name: str, root: PathLike | None = None) -> Graph:
    """Load a Planetoid citation graph with its standard split.

    Reads ``<root>/planetoid/ind.{name}.{x,y,tx,ty,allx,ally,graph,test.index}``
    (Python 2 pickles, read with ``encoding="latin1"`` by an unpickler that only accepts
    numpy/scipy/container types).

    Args:
        name: ``"cora"`` (2708 nodes), ``"citeseer"`` (3327) or ``"pubmed"`` (19717).
        root: data folder; default :func:`onespike.data.data_root`.

    Returns:
        A :class:`Graph`. The validation split is the 500 nodes after the training nodes,
        cut short if fewer labelled non-test nodes exist (only in toy files).

    Raises:
        DataError: unknown name, missing, corrupt or mutually inconsistent files.
    """
    name = check_choice("Planetoid data set", name, PLANETOID_NAMES)
    paths = _planetoid_paths(name, root)
    x, y, tx, ty, allx, ally = (
        _dense(_read_object(paths[k]), paths[k]) for k in ("x", "y", "tx", "ty", "allx", "ally")
    )
    graph = _read_object(paths["graph"])
    test_index = _read_test_index(paths["test.index"])
    if not isinstance(graph, Mapping):
        raise DataError(
            f"Planetoid file {paths['graph']} holds a {type(graph).__name__}, "
            f"not a dict of adjacency lists."
        )
    inconsistent = _inconsistency(name, paths["x"].parent)
    _check_fit(inconsistent, x, y, tx, ty, allx, ally, test_index)
    n_known = len(allx)
    sorted_test = np.sort(test_index)
    if len(tx) and sorted_test[0] != n_known:
        raise inconsistent(f"the smallest test id is {sorted_test[0]}, not {n_known}")
    tx, ty = _pad_isolated(tx, ty, sorted_test)

    features = np.vstack([allx, tx])
    features[test_index] = features[sorted_test]
    onehot = np.vstack([ally, ty])
    onehot[test_index] = onehot[sorted_test]
    labels = onehot.argmax(axis=1).astype(np.int64)
    num_nodes = len(features)

    edge_index = _edges_from_dict(graph, num_nodes, paths["graph"])
    n_train = len(y)
    n_val_end = min(n_train + _NUM_VAL, n_known)

    return Graph(
        name=name,
        features=torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
        labels=torch.from_numpy(labels),
        train_idx=torch.arange(n_train, dtype=torch.int64),
        val_idx=torch.arange(n_train, n_val_end, dtype=torch.int64),
        test_idx=torch.from_numpy(sorted_test.astype(np.int64)),
        edge_index=torch.from_numpy(edge_index.astype(np.int64)),
        num_nodes=num_nodes,
        num_classes=int(onehot.shape[1]),
    )


def _planetoid_paths(name: str, root: PathLike | None) -> dict[str, Path]:
    """The data set's files by extension; a :class:`DataError` naming the first missing."""
    root_path, how = resolve_root(root)
    folder = root_path / "planetoid"
    paths = {ext: folder / f"ind.{name}.{ext}" for ext in PLANETOID_FILES}
    for ext, path in paths.items():
        if not path.is_file():
            raise DataError(
                missing_file_message(
                    f"Planetoid file 'ind.{name}.{ext}'",
                    path,
                    root_path,
                    how,
                    "planetoid",
                    f"download_planetoid({name!r})",
                )
            )
    return paths


def _inconsistency(name: str, folder: Path) -> Callable[[str], DataError]:
    """The error for files of ``name`` in ``folder`` that do not fit together."""

    def inconsistent(what: str) -> DataError:
        return DataError(
            f"Planetoid files ind.{name}.* in {folder} do not fit together: {what}; "
            f"download them again."
        )

    return inconsistent


def _check_fit(
    inconsistent: Callable[[str], DataError], x, y, tx, ty, allx, ally, test_index
) -> None:
    """Widths and node counts of the files agree, and test.index has one id per row of tx."""
    if not (x.shape[1] == tx.shape[1] == allx.shape[1]):
        raise inconsistent(
            f"feature widths x {x.shape[1]}, tx {tx.shape[1]}, allx {allx.shape[1]} differ"
        )
    if not (y.shape[1] == ty.shape[1] == ally.shape[1]):
        raise inconsistent("label widths of y, ty and ally differ")
    if len(x) != len(y) or len(tx) != len(ty) or len(allx) != len(ally):
        raise inconsistent("a feature file and its label file hold different node counts")
    if len(y) > len(allx):
        raise inconsistent(f"{len(y)} training nodes but only {len(allx)} rows in allx")
    if len(test_index) != len(tx) or len(np.unique(test_index)) != len(test_index):
        raise inconsistent(
            f"test.index holds {len(test_index)} ids ({len(np.unique(test_index))} distinct) "
            f"for {len(tx)} rows of tx"
        )


def _pad_isolated(tx: np.ndarray, ty: np.ndarray, sorted_test: np.ndarray) -> tuple:
    """``(tx, ty)`` over the full range of test ids. CiteSeer: some test ids have no row in
    tx (isolated nodes); they get zero rows, as Kipf & Welling and PyG do."""
    if not len(tx) or sorted_test[-1] - sorted_test[0] + 1 <= len(tx):
        return tx, ty
    span = int(sorted_test[-1] - sorted_test[0] + 1)
    tx_ext = np.zeros((span, tx.shape[1]), dtype=np.float32)
    tx_ext[sorted_test - sorted_test[0]] = tx
    ty_ext = np.zeros((span, ty.shape[1]), dtype=np.float32)
    ty_ext[sorted_test - sorted_test[0]] = ty
    return tx_ext, ty_ext
