"""Tests of onespike.data: real files where cheap, fake file layouts for the rest."""

from __future__ import annotations

import filecmp
import gzip
import hashlib
import io
import os
import pickle
import urllib.error
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from PIL import Image

import onespike.data as D
import onespike.data.download as download_mod
from onespike.data import (
    CIFAR10_CLASSES,
    DataError,
    Graph,
    cache_dir,
    data_root,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    load_planetoid,
    normalized_adjacency,
)

REPO = Path(__file__).resolve().parents[1]
REAL = (REPO.parent / "shared" / "data").resolve()

needs_real = pytest.mark.skipif(
    not (REAL / "mnist").is_dir(), reason=f"real data folder {REAL} not present"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Never write caches into the user's home during tests."""
    monkeypatch.setenv("ONESPIKE_CACHE", str(tmp_path_factory.mktemp("cache")))


def _idx_bytes(magic: int, dims: list[int], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


def _write_gz(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(data)


def _write_fake_mnist(folder: Path, n: int, prefix: str = "t10k", labels_n: int | None = None):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    lbls = rng.integers(0, 10, size=labels_n if labels_n is not None else n, dtype=np.uint8)
    _write_gz(
        folder / f"{prefix}-images-idx3-ubyte.gz", _idx_bytes(0x803, [n, 28, 28], imgs.tobytes())
    )
    _write_gz(
        folder / f"{prefix}-labels-idx1-ubyte.gz", _idx_bytes(0x801, [len(lbls)], lbls.tobytes())
    )
    return imgs, lbls


# ----------------------------------------------------------------------------- folders


def test_data_root_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path / "nowhere"))
    assert data_root() == (tmp_path / "nowhere").absolute()


def test_data_root_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ONESPIKE_DATA", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "proj" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert data_root() == home / ".onespike" / "data"  # nothing exists: the default
    (home / ".onespike" / "data").mkdir(parents=True)
    assert data_root() == home / ".onespike" / "data"
    (tmp_path / "proj" / "shared" / "data").mkdir(parents=True)
    assert data_root() == tmp_path / "proj" / "shared" / "data"
    (work / "data").mkdir()
    assert data_root() == work / "data"


def test_cache_dir_env_and_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONESPIKE_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("ONESPIKE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "onespike"


# ----------------------------------------------------------------------------- MNIST


@needs_real
def test_mnist_test_split() -> None:
    x, y = load_mnist("test", root=REAL)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # The canonical MNIST test-set class histogram and mean intensity.
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(x.mean()) - 0.1325) < 2e-3


@needs_real
def test_mnist_train_split() -> None:
    x, y = load_mnist("train", root=REAL)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    counts = torch.bincount(y, minlength=10)
    assert len(counts) == 10 and int(counts.min()) > 5000


@needs_real
def test_fashion_mnist_loads() -> None:
    x, y = load_fashion_mnist("test", root=REAL)
    assert x.shape == (10000, 1, 28, 28) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert torch.bincount(y).tolist() == [1000] * 10
    x2, y2 = load_mnist("test", root=REAL, dataset="fashion-mnist")
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_shipped_copy_is_the_real_test_set() -> None:
    shipped = D.mnist.shipped_mnist_dir()
    for name in D.mnist.mnist_file_names("test"):
        assert (shipped / name).is_file()
        if (REAL / "mnist" / name).is_file():
            assert filecmp.cmp(shipped / name, REAL / "mnist" / name, shallow=False)


def test_shipped_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    x, y = load_mnist()  # nothing under tmp_path: the copy inside the package
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist()[1] == 1135
    x2, _ = load_mnist("test", root=tmp_path / "also-empty")
    assert torch.equal(x, x2)


def test_files_under_root_win_over_shipped_copy(tmp_path: Path) -> None:
    imgs, lbls = _write_fake_mnist(tmp_path / "mnist", 7)
    x, y = load_mnist("test", root=tmp_path)
    assert x.shape == (7, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(imgs).float() / 255)
    assert y.tolist() == lbls.tolist()


def test_uncompressed_idx_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    lbls = np.arange(3, dtype=np.uint8)
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(0x803, [3, 28, 28], bytes(3 * 784)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(0x801, [3], lbls.tobytes()))
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("split", "dataset", "missing"),
    [
        ("train", "mnist", "train-images-idx3-ubyte.gz"),
        ("test", "fashion-mnist", "t10k-images-idx3-ubyte.gz"),
    ],
)
def test_missing_file_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, split: str, dataset: str, missing: str
) -> None:
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_mnist(split, dataset=dataset)
    msg = str(err.value)
    assert missing in msg and "ONESPIKE_DATA" in msg and str(tmp_path) in msg
    assert "download_mnist" in msg


def test_bad_names() -> None:
    with pytest.raises(DataError, match="split"):
        load_mnist("validation")
    with pytest.raises(DataError, match="dataset"):
        load_mnist("test", dataset="kmnist")
    with pytest.raises(DataError, match="split"):
        load_cifar10("val")
    with pytest.raises(DataError, match="cora"):
        load_planetoid("reddit")


def test_bad_magic(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    _write_fake_mnist(folder, 4)
    _write_gz(folder / "t10k-labels-idx1-ubyte.gz", _idx_bytes(0x803, [4], bytes(4)))
    with pytest.raises(DataError, match=r"magic number 0x00000803.*t10k|t10k.*magic number"):
        load_fashion_mnist("test", root=tmp_path)


def test_truncated_gzip(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    _write_fake_mnist(folder, 50)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated") as err:
        load_fashion_mnist("test", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)


def test_not_gzip(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    _write_fake_mnist(folder, 2)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="gzip"):
        load_fashion_mnist("test", root=tmp_path)


def test_idx_payload_and_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    _write_fake_mnist(folder, 5)
    _write_gz(folder / "t10k-labels-idx1-ubyte.gz", _idx_bytes(0x801, [5], bytes(3)))
    with pytest.raises(DataError, match="promises 5 data bytes but it holds 3"):
        load_fashion_mnist("test", root=tmp_path)
    _write_fake_mnist(folder, 5, labels_n=4)
    with pytest.raises(DataError, match=r"5 images but .* 4 labels"):
        load_fashion_mnist("test", root=tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10


CIFAR_RELEASE = REAL / "cifar10" / "cifar-10-batches-py"
needs_cifar = pytest.mark.skipif(
    not CIFAR_RELEASE.is_dir(), reason=f"real CIFAR-10 release {CIFAR_RELEASE} not present"
)


@needs_cifar
def test_cifar10_shared_copy_is_the_original_release() -> None:
    """The md5 of every file equals the published checksums of cifar-10-python.tar.gz."""
    published = {
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    }
    for name, md5 in published.items():
        assert hashlib.md5((CIFAR_RELEASE / name).read_bytes()).hexdigest() == md5, name


@needs_cifar
def test_cifar10_release_splits() -> None:
    x, y = load_cifar10("test", root=REAL)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [1000] * 10
    # the release's own order (not sorted by class): cat, ship, ship, airplane, frog, ...
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # raw bytes / 255, exactly: every value is a multiple of 1/255
    assert torch.equal((x[:50] * 255).round() / 255, x[:50])
    xt, yt = load_cifar10("train", root=REAL)
    assert xt.shape == (50000, 3, 32, 32) and torch.bincount(yt).tolist() == [5000] * 10


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _fake_cifar_zip(path: Path, prefix: str = "CIFAR-10-images/", per_class: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("test", "train"):
            zf.writestr(f"{prefix}{split}/", "")
            # Written in scrambled order: the loader must sort.
            for c in reversed(range(10)):
                for k in reversed(range(per_class)):
                    color = (20 * c, 100 if split == "test" else 200, 10 * k)
                    zf.writestr(f"{prefix}{split}/{CIFAR10_CLASSES[c]}/{k}.jpg", _jpeg(color))
        zf.writestr("__MACOSX/test/airplane/._0.jpg", b"junk")


def test_fake_cifar_zip_order_values_and_cache_key(tmp_path: Path) -> None:
    zpath = tmp_path / "cifar10" / "cifar10-jpeg.zip"
    _fake_cifar_zip(zpath, per_class=11)
    x, y = load_cifar10("test", root=tmp_path)
    assert x.shape == (110, 3, 32, 32)
    assert y.tolist() == [c for c in range(10) for _ in range(11)]
    # Natural file-name order within a class: 0, 1, ..., 10 (blue channel = 10 * k).
    blue = (x[:11, 2].mean(dim=(1, 2)) * 255).round()
    assert torch.allclose(blue, torch.arange(11.0) * 10, atol=3)
    assert torch.allclose(x[:, 1].mean(dim=(1, 2)) * 255, torch.full((110,), 100.0), atol=3)
    xt, _ = load_cifar10("train", root=tmp_path)
    assert torch.allclose(xt[:, 1].mean(dim=(1, 2)) * 255, torch.full((110,), 200.0), atol=3)
    # A changed zip (size/mtime) is decoded again rather than served from the stale cache.
    _fake_cifar_zip(zpath, prefix="", per_class=1)
    x3, y3 = load_cifar10("test", root=tmp_path)
    assert x3.shape == (10, 3, 32, 32) and y3.tolist() == list(range(10))


def test_cifar_zip_problems(tmp_path: Path) -> None:
    zpath = tmp_path / "cifar10" / "cifar10-jpeg.zip"
    zpath.parent.mkdir(parents=True)
    zpath.write_bytes(b"PK\x03\x04 definitely not a whole zip file")
    with pytest.raises(DataError, match="not a valid zip"):
        load_cifar10("test", root=tmp_path)
    _fake_cifar_zip(zpath, per_class=1)
    zpath.write_bytes(zpath.read_bytes()[:-200])  # central directory cut off
    with pytest.raises(DataError, match="not a valid zip"):
        load_cifar10("test", root=tmp_path)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("test/airplane/0.jpg", b"\xff\xd8 broken jpeg")
    with pytest.raises(DataError, match=r"test/airplane/0\.jpg"):
        load_cifar10("test", root=tmp_path)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("test/unicorn/0.jpg", _jpeg((1, 2, 3)))
    with pytest.raises(DataError, match="unknown class folder"):
        load_cifar10("test", root=tmp_path)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("train/cat/0.jpg", _jpeg((1, 2, 3)))
    with pytest.raises(DataError, match="no test/"):
        load_cifar10("test", root=tmp_path)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("test/cat/0.jpg", _jpeg((1, 2, 3), size=16))
    with pytest.raises(DataError, match="not 32x32"):
        load_cifar10("test", root=tmp_path)


def test_cifar_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_cifar10()
    msg = str(err.value)
    assert "cifar10-jpeg.zip" in msg and "ONESPIKE_DATA" in msg and "download_cifar10" in msg


def _fake_batches(folder: Path, n: int = 3, str_keys: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        key = (lambda k: k) if str_keys else (lambda k: k.encode())
        batch = {key("data"): data, key("labels"): labels, key("batch_label"): name}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        out[name] = (data, labels)
    return out


@pytest.mark.parametrize("str_keys", [False, True])
def test_fake_cifar_python_release(tmp_path: Path, str_keys: bool) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches = _fake_batches(folder, str_keys=str_keys)
    (tmp_path / "cifar10" / "cifar10-jpeg.zip").write_bytes(b"ignored: the pickles win")
    x, y = load_cifar10("test", root=tmp_path)
    data, labels = batches["test_batch"]
    assert x.shape == (3, 3, 32, 32) and y.tolist() == labels
    assert torch.equal(x, torch.from_numpy(data.reshape(3, 3, 32, 32)).float() / 255)
    xt, yt = load_cifar10("train", root=tmp_path)
    assert xt.shape == (15, 3, 32, 32)
    assert yt.tolist() == [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]


def test_fake_cifar_python_release_problems(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _fake_batches(folder)
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="test_batch is corrupt"):
        load_cifar10("test", root=tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar10("test", root=tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_cifar10("train", root=tmp_path)


# ----------------------------------------------------------------------------- Planetoid


def _read_pickle(path: Path):
    with path.open("rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy.sparse.csr in old pickles
        return pickle.load(f, encoding="latin1")


@needs_real
def test_cora() -> None:
    g = load_planetoid("cora", root=REAL)
    assert isinstance(g, Graph) and g.name == "cora"
    assert (g.num_nodes, g.num_features, g.num_classes) == (2708, 1433, 7)
    assert g.features.shape == (2708, 1433) and g.features.dtype == torch.float32
    assert g.labels.shape == (2708,) and g.labels.dtype == torch.int64
    assert (len(g.train_idx), len(g.val_idx), len(g.test_idx)) == (140, 500, 1000)
    assert g.train_idx.tolist() == list(range(140))
    assert g.val_idx.tolist() == list(range(140, 640))
    assert torch.bincount(g.labels[g.train_idx]).tolist() == [20] * 7
    assert g.edge_index.shape == (2, 10556) and g.num_edges == 5278
    ei = g.edge_index
    assert ei.dtype == torch.int64 and bool((ei[0] != ei[1]).all())
    fwd = set(map(tuple, ei.t().tolist()))
    assert len(fwd) == 10556 and fwd == {(j, i) for i, j in fwd}
    # Node test.index[k] carries row k of tx / ty (the standard reordering).
    folder = REAL / "planetoid"
    test_index = np.loadtxt(folder / "ind.cora.test.index", dtype=np.int64)
    tx = _read_pickle(folder / "ind.cora.tx").toarray()
    ty = _read_pickle(folder / "ind.cora.ty")
    assert g.test_idx.tolist() == sorted(test_index.tolist())
    assert np.array_equal(g.features[test_index].numpy(), tx)
    assert np.array_equal(g.labels[test_index].numpy(), ty.argmax(1))
    allx = _read_pickle(folder / "ind.cora.allx").toarray()
    assert np.array_equal(g.features[:1708].numpy(), allx)
    assert set(torch.unique(g.features).tolist()) == {0.0, 1.0}  # raw bag of words
    rn = g.row_normalized()
    assert torch.allclose(rn.features.sum(1), torch.ones(2708))
    assert rn.num_nodes == g.num_nodes and torch.equal(rn.edge_index, g.edge_index)
    assert "cora" in repr(g) and "2708" in repr(g)


@needs_real
def test_citeseer() -> None:
    g = load_planetoid("citeseer", root=REAL)
    assert (g.num_nodes, g.num_features, g.num_classes) == (3327, 3703, 6)
    assert (len(g.train_idx), len(g.val_idx), len(g.test_idx)) == (120, 500, 1000)
    assert torch.bincount(g.labels[g.train_idx]).tolist() == [20] * 6
    assert g.edge_index.shape == (2, 9104)
    assert bool((g.edge_index[0] != g.edge_index[1]).all())
    # 3327 - 2312 (allx) - 1000 (tx) = 15 padded, feature-less nodes outside the test set.
    zero = (g.features.abs().sum(1) == 0).nonzero().flatten()
    padded = sorted(set(range(2312, 3327)) - set(g.test_idx.tolist()))
    assert len(padded) == 15 and set(padded) <= set(zero.tolist())
    rn = g.row_normalized()
    sums = rn.features.sum(1)
    assert bool((sums[zero] == 0).all())
    nonzero = sums != 0
    assert torch.allclose(sums[nonzero], torch.ones(int(nonzero.sum())))


def _dense_gcn(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    a = torch.zeros(n, n, dtype=torch.float64)
    if edge_index.numel():
        a[edge_index[0], edge_index[1]] = 1.0
    a.fill_diagonal_(1.0)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def test_normalized_adjacency_against_dense() -> None:
    g = torch.Generator().manual_seed(0)
    n = 9
    pairs = torch.randint(0, n, (2, 20), generator=g)
    ei = torch.cat([pairs, pairs.flip(0)], dim=1)  # undirected, with duplicates and loops
    adj = normalized_adjacency(ei, n)
    assert adj.is_sparse and adj.is_coalesced() and adj.dtype == torch.float32
    dense = adj.to_dense().double()
    ref = _dense_gcn(ei, n)
    assert torch.allclose(dense, ref, atol=1e-6)
    assert torch.allclose(dense, dense.t())
    assert torch.allclose(torch.sparse.sum(adj, dim=1).to_dense().double(), ref.sum(1), atol=1e-6)


@needs_real
def test_cora_normalized_adjacency() -> None:
    g = load_planetoid("cora", root=REAL)
    adj = g.normalized_adjacency()
    assert adj.shape == (2708, 2708) and adj._nnz() == 10556 + 2708
    dense = adj.to_dense()
    assert torch.equal(dense, dense.t())
    assert torch.allclose(dense.double(), _dense_gcn(g.edge_index, 2708), atol=1e-6)


def test_normalized_adjacency_edge_cases() -> None:
    empty = torch.empty(2, 0, dtype=torch.int64)
    a0 = normalized_adjacency(empty, 0)
    assert a0.shape == (0, 0) and a0._nnz() == 0
    assert torch.equal(normalized_adjacency(empty, 1).to_dense(), torch.ones(1, 1))
    assert torch.equal(normalized_adjacency(empty, 4).to_dense(), torch.eye(4))
    assert torch.equal(
        normalized_adjacency(torch.tensor([[0], [0]]), 1).to_dense(), torch.ones(1, 1)
    )
    # Node 2 isolated: keeps weight 1 on its diagonal; 0-1 edge gets 1/2 everywhere.
    a = normalized_adjacency(torch.tensor([[0, 1, 0], [1, 0, 1]]), 3).to_dense()
    assert torch.allclose(a, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="outside"):
        normalized_adjacency(torch.tensor([[0], [3]]), 3)
    with pytest.raises(ValueError, match="shape"):
        normalized_adjacency(torch.zeros(3, 2, dtype=torch.int64), 3)


def _write_planetoid(
    folder: Path,
    name: str,
    *,
    n_train: int,
    n_allx: int,
    test_index: list[int],
    n_feat: int = 5,
    n_cls: int = 3,
    graph: dict[int, list[int]] | None = None,
) -> dict[str, object]:
    """A Planetoid file layout with node-identifying features: row of node i starts with i."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)

    def feats(ids: list[int]) -> sp.csr_matrix:
        m = rng.random((len(ids), n_feat)).astype(np.float32)
        m[:, 0] = ids
        return sp.csr_matrix(m)

    def onehot(ids: list[int]) -> np.ndarray:
        return np.eye(n_cls, dtype=np.int32)[[i % n_cls for i in ids]]

    allx_ids = list(range(n_allx))
    objs: dict[str, object] = {
        "x": feats(allx_ids[:n_train]),
        "y": onehot(allx_ids[:n_train]),
        "allx": feats(allx_ids),
        "ally": onehot(allx_ids),
        "tx": feats(test_index),
        "ty": onehot(test_index),
        "graph": graph if graph is not None else {0: [1, 1, 0], 1: [0, 2], 2: [1]},
    }
    for ext, obj in objs.items():
        with (folder / f"ind.{name}.{ext}").open("wb") as f:
            pickle.dump(obj, f, protocol=2)
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_index))
    return objs


def test_fake_pubmed_layout(tmp_path: Path) -> None:
    from collections import defaultdict

    test_index = [525, 520, 529, 522, 521, 528, 523, 527, 524, 526]
    graph: dict[int, list[int]] = defaultdict(list, {0: [1, 529], 5: [5, 6, 6], 529: [0]})
    _write_planetoid(
        tmp_path / "planetoid", "pubmed", n_train=6, n_allx=520, test_index=test_index, graph=graph
    )
    g = load_planetoid("pubmed", root=tmp_path)
    assert (g.num_nodes, g.num_features, g.num_classes) == (530, 5, 3)
    assert g.train_idx.tolist() == list(range(6))
    assert g.val_idx.tolist() == list(range(6, 506))
    assert g.test_idx.tolist() == list(range(520, 530))
    assert g.features[:, 0].tolist() == list(range(530))  # every node got its own row
    assert g.labels.tolist() == [i % 3 for i in range(530)]
    assert g.edge_index.tolist() == [[0, 0, 1, 5, 6, 529], [1, 529, 0, 6, 5, 0]]


def test_fake_planetoid_padding_and_val_clamp(tmp_path: Path) -> None:
    # Test ids 10..16 with 12 and 14 absent from tx (CiteSeer's isolated test nodes).
    test_index = [16, 10, 13, 11, 15]
    _write_planetoid(
        tmp_path / "planetoid", "citeseer", n_train=4, n_allx=10, test_index=test_index
    )
    g = load_planetoid("citeseer", root=tmp_path)
    assert g.num_nodes == 17
    assert g.val_idx.tolist() == list(range(4, 10))  # fewer than 500 non-test nodes
    present = [*range(10), *sorted(test_index)]
    assert g.features[present, 0].tolist() == present
    assert g.features[[12, 14]].abs().sum().item() == 0
    assert g.labels[[12, 14]].tolist() == [0, 0]
    assert g.labels[present].tolist() == [i % 3 for i in present]


def test_planetoid_problems(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONESPIKE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_planetoid("cora")
    msg = str(err.value)
    assert "ind.cora.x" in msg and "ONESPIKE_DATA" in msg and "download_planetoid" in msg
    folder = tmp_path / "planetoid"
    _write_planetoid(folder, "cora", n_train=2, n_allx=4, test_index=[4, 5])
    assert load_planetoid("CORA").num_nodes == 6
    (folder / "ind.cora.graph").write_bytes(b"\x80\x02}q\x00(K\x00")  # cut short
    with pytest.raises(DataError, match=r"ind\.cora\.graph is corrupt"):
        load_planetoid("cora")
    _write_planetoid(folder, "cora", n_train=2, n_allx=4, test_index=[4, 5], graph={0: [9]})
    with pytest.raises(DataError, match="names node 9"):
        load_planetoid("cora")
    _write_planetoid(folder, "cora", n_train=2, n_allx=4, test_index=[4, 5])
    (folder / "ind.cora.test.index").write_text("4\n5\n6\n")
    with pytest.raises(DataError, match="do not fit together"):
        load_planetoid("cora")
    (folder / "ind.cora.test.index").write_text("4\nfive\n")
    with pytest.raises(DataError, match="one integer a line"):
        load_planetoid("cora")


def test_graph_is_frozen_and_movable(tmp_path: Path) -> None:
    _write_planetoid(tmp_path / "planetoid", "cora", n_train=2, n_allx=4, test_index=[4, 5])
    g = load_planetoid("cora", root=tmp_path)
    with pytest.raises(AttributeError):
        g.num_nodes = 3  # type: ignore[misc]
    moved = g.to("cpu")
    assert torch.equal(moved.features, g.features) and moved.name == g.name


# ----------------------------------------------------------------------------- downloads


def test_download_errors_are_data_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download"):
        D.download_mnist(root=tmp_path)
    with pytest.raises(DataError, match="could not download"):
        D.download_planetoid("cora", root=tmp_path)
    with pytest.raises(DataError, match="could not download"):
        D.download_cifar10(root=tmp_path)
    assert not list(tmp_path.rglob("*.part"))


@needs_real
def test_download_helpers_from_local_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The download code paths, fed from file:// URLs instead of the network."""
    monkeypatch.setattr(download_mod, "PLANETOID_URL", (REAL / "planetoid").as_uri() + "/")
    folder = D.download_planetoid("cora", root=tmp_path)
    assert load_planetoid("cora", root=tmp_path).num_edges == 5278
    assert folder == tmp_path / "planetoid"
    fake = tmp_path / "mirror-bad"
    _write_fake_mnist(fake, 2, prefix="train")
    _write_fake_mnist(fake, 2)
    (fake / "t10k-images-idx3-ubyte.gz").write_bytes(b"broken")
    good = (REAL / "fashion-mnist").as_uri() + "/"
    monkeypatch.setitem(download_mod.MNIST_MIRRORS, "fashion-mnist", (good,))
    D.download_mnist(root=tmp_path / "r", dataset="fashion-mnist")
    x, _ = load_fashion_mnist("test", root=tmp_path / "r")
    assert x.shape == (10000, 1, 28, 28)
    monkeypatch.setitem(download_mod.MNIST_MIRRORS, "mnist", (fake.as_uri() + "/",))
    with pytest.raises(DataError, match="gzip"):
        D.download_mnist(root=tmp_path / "m")
    assert not (tmp_path / "m" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_download_cifar10_extracts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import hashlib
    import tarfile

    src = tmp_path / "src" / "cifar-10-batches-py"
    batches = _fake_batches(src)
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    monkeypatch.setattr(download_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(download_mod, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "root"
    target = D.download_cifar10(root=root)
    assert target == root / "cifar10" / "cifar-10-batches-py"
    assert not (root / "cifar10" / "cifar-10-python.tar.gz").exists()
    _, y = load_cifar10("test", root=root)
    assert y.tolist() == batches["test_batch"][1]
    monkeypatch.setattr(download_mod, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="MD5"):
        D.download_cifar10(root=tmp_path / "other")
