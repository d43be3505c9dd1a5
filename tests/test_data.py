"""Tests for bdlib.data: the real loaders run on tiny files written in the real formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bdlib import data
from bdlib.data import DataNotFound, Dataset, load, read_idx, split_indices, subset

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- fixtures / writers


class _NoNetwork(Exception):
    pass


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test: fresh BDLIB_DATA, empty cache, and a download function that refuses."""
    calls: list[tuple[str, Path]] = []

    def refuse(name, root):
        calls.append((name, root))
        raise _NoNetwork("network disabled in tests")

    monkeypatch.setattr(data, "_download", refuse)
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("BDLIB_DATA", str(root))
    data.clear_cache()
    yield calls
    data.clear_cache()


@pytest.fixture
def no_system_fmnist(tmp_path, monkeypatch):
    """Hide the Debian package (this machine may have it installed)."""
    monkeypatch.setattr(data, "_SYSTEM_FMNIST_DIR", tmp_path / "no-such-system-dir")
    monkeypatch.setattr(data, "_run_dpkg_list", lambda package: [])


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> None:
    """Independent idx writer: 0x0000, type 0x08 (ubyte), ndim, big-endian dims, data."""
    assert arr.dtype == np.uint8
    payload = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_fmnist(d: Path, *, gz_train: bool, gz_test: bool, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "xtr": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "ytr": (np.arange(n_train) % 10).astype(np.uint8),
        "xte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "yte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    write_idx(d / "train-images-idx3-ubyte", arrays["xtr"], gz=gz_train)
    write_idx(d / "train-labels-idx1-ubyte", arrays["ytr"], gz=gz_train)
    write_idx(d / "t10k-images-idx3-ubyte", arrays["xte"], gz=gz_test)
    write_idx(d / "t10k-labels-idx1-ubyte", arrays["yte"], gz=gz_test)
    return arrays


def cifar_batch(n: int, rng, label_key: bytes, num_classes: int) -> dict:
    return {
        b"batch_label": b"test batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def dump(path: Path, obj, protocol=pickle.HIGHEST_PROTOCOL) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(d: Path, n_per_batch=4, n_test=3, protocol=pickle.HIGHEST_PROTOCOL, seed=1):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    batches = [cifar_batch(n_per_batch, rng, b"labels", 10) for _ in range(5)]
    # Image 0 of batch 1 is pure red: R plane 255, G and B planes 0.
    batches[0][b"data"][0] = np.concatenate([np.full(1024, 255), np.zeros(2048)]).astype(np.uint8)
    # Image 1 of batch 1: distinct value per plane and a gradient within the plane.
    batches[0][b"data"][1] = np.concatenate([np.arange(1024) % 256, np.full(1024, 7), np.full(1024, 9)]).astype(
        np.uint8
    )
    for i, b in enumerate(batches, 1):
        dump(d / f"data_batch_{i}", b, protocol)
    test = cifar_batch(n_test, rng, b"labels", 10)
    dump(d / "test_batch", test, protocol)
    dump(d / "batches.meta", {b"label_names": [s.encode() for s in CIFAR10_NAMES], b"num_vis": 3072}, protocol)
    return batches, test


class Evil:
    """Pickles to a call of os.system that would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- fmnist


@pytest.mark.parametrize("gz_train,gz_test", [(True, True), (False, False), (True, False)])
def test_load_fmnist_from_bdlib_data(gz_train, gz_test, isolated):
    d = data.data_root() / "fashion-mnist"
    arrays = make_fmnist(d, gz_train=gz_train, gz_test=gz_test)
    ds = load("fmnist")
    assert isinstance(ds, Dataset) and ds.name == "fmnist"
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (20, 1, 28, 28)
    assert ds.x_test.shape == (10, 1, 28, 28)
    assert ds.y_train.dtype == torch.int64 and ds.y_train.shape == (20,)
    assert ds.x_train.is_contiguous() and ds.x_test.is_contiguous()
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["xtr"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), arrays["xte"])
    assert ds.y_train.tolist() == arrays["ytr"].tolist()
    assert ds.y_test.tolist() == arrays["yte"].tolist()
    assert Path(ds.source).resolve() == d.resolve()
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"
    assert (ds.num_classes, ds.channels, ds.size) == (10, 1, (28, 28))
    assert isolated == []  # found locally: no download attempted


def test_load_is_cached_and_clear_cache_reloads():
    make_fmnist(data.data_root() / "fashion-mnist", gz_train=True, gz_test=True)
    a = load("fmnist")
    assert load("fmnist") is a
    data.clear_cache()
    assert load("fmnist") is not a


def test_bdlib_data_takes_precedence_over_system_dir(tmp_path, monkeypatch):
    sys_dir = tmp_path / "system"
    make_fmnist(sys_dir, gz_train=True, gz_test=True, seed=5)
    monkeypatch.setattr(data, "_SYSTEM_FMNIST_DIR", sys_dir)
    user = make_fmnist(data.data_root() / "fashion-mnist", gz_train=False, gz_test=False, n_train=12, seed=6)
    ds = load("fmnist")
    assert np.array_equal(ds.x_train[:, 0].numpy(), user["xtr"])
    data.clear_cache()
    monkeypatch.setenv("BDLIB_DATA", str(tmp_path / "empty"))
    assert Path(load("fmnist").source) == sys_dir


def test_dpkg_listed_location_used_when_standard_dir_missing(tmp_path, monkeypatch):
    elsewhere = tmp_path / "opt" / "fmnist"
    make_fmnist(elsewhere, gz_train=True, gz_test=True)
    monkeypatch.setattr(data, "_SYSTEM_FMNIST_DIR", tmp_path / "missing")
    listing = ["/.", str(elsewhere.parent), str(elsewhere)] + [
        str(elsewhere / f) for f in sorted(os.listdir(elsewhere))
    ]
    monkeypatch.setattr(data, "_run_dpkg_list", lambda package: listing if package == "dataset-fashion-mnist" else [])
    assert Path(load("fmnist").source) == elsewhere


def test_read_idx_bad_magic(tmp_path):
    p = tmp_path / "bad-idx"
    p.write_bytes(struct.pack(">I", 0x12345678) + b"\0" * 16)
    with pytest.raises(ValueError, match=r"bad idx magic number 0x12345678"):
        read_idx(p)
    q = tmp_path / "bad-idx.gz"
    q.write_bytes(gzip.compress(struct.pack(">I", 0x00000A03) + b"\0" * 16))  # unknown type code
    with pytest.raises(ValueError, match="magic"):
        read_idx(q)


def test_read_idx_truncated_and_corrupt_gzip(tmp_path):
    p = tmp_path / "short"
    p.write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="1568 bytes"):
        read_idx(p)
    g = tmp_path / "broken.gz"
    g.write_bytes(b"\x1f\x8b" + b"garbage" * 5)
    with pytest.raises(ValueError, match="gzip"):
        read_idx(g)


def test_read_idx_multibyte_big_endian(tmp_path):
    arr = np.array([[1, -2, 70000], [3, 4, -70000]], dtype=">i4")
    p = tmp_path / "ints"
    p.write_bytes(struct.pack(">HBB", 0, 0x0C, 2) + struct.pack(">2I", 2, 3) + arr.tobytes())
    out = read_idx(p)
    assert out.dtype == np.dtype("int32") and out.dtype.isnative
    assert out.tolist() == arr.tolist()


def test_bad_fmnist_file_in_bdlib_data_is_an_error_not_skipped():
    d = data.data_root() / "fashion-mnist"
    make_fmnist(d, gz_train=False, gz_test=False)
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x07\x07\x07\x07")
    with pytest.raises(ValueError, match="magic"):
        load("fmnist")


# --------------------------------------------------------------------------- cifar


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_cifar10(protocol):
    d = data.data_root() / "cifar-10-batches-py"
    batches, test = make_cifar10(d, protocol=protocol)
    ds = load("cifar10")
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.is_contiguous()
    # Pure red image: channel 0 all 255, channels 1 and 2 all 0.
    assert bool((ds.x_train[0, 0] == 255).all()) and bool((ds.x_train[0, 1:] == 0).all())
    # Row-major planes: pixel (r, c) of the R plane is byte 32*r + c.
    assert ds.x_train[1, 0, 1, 2].item() == 34 and ds.x_train[1, 0, 31, 31].item() == 1023 % 256
    assert bool((ds.x_train[1, 1] == 7).all()) and bool((ds.x_train[1, 2] == 9).all())
    want = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert np.array_equal(ds.x_train.numpy(), want)
    assert ds.y_train.tolist() == sum((b[b"labels"] for b in batches), [])
    assert ds.y_test.tolist() == test[b"labels"] and ds.y_test.dtype == torch.int64
    assert ds.classes == tuple(CIFAR10_NAMES)
    assert (ds.num_classes, ds.channels, ds.size) == (10, 3, (32, 32))
    assert Path(ds.source).resolve() == d.resolve()


def make_cifar100(d: Path, n_train=6, n_test=4, protocol=pickle.HIGHEST_PROTOCOL, seed=2):
    """CIFAR-100's python pickles (train, test, meta) with random images; train image 0 pure blue."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    train = cifar_batch(n_train, rng, b"fine_labels", 100)
    train[b"coarse_labels"] = [0] * n_train
    train[b"data"][0] = np.concatenate([np.zeros(2048), np.full(1024, 255)]).astype(np.uint8)  # pure blue
    test = cifar_batch(n_test, rng, b"fine_labels", 100)
    test[b"coarse_labels"] = [1] * n_test
    dump(d / "train", train, protocol)
    dump(d / "test", test, protocol)
    names = [f"class{i:03d}" for i in range(100)]
    dump(d / "meta", {b"fine_label_names": [s.encode() for s in names], b"coarse_label_names": [b"c"] * 20}, protocol)
    return train, test


def test_load_cifar100_fine_labels():
    train, test = make_cifar100(data.data_root() / "cifar-100-python")
    ds = load("cifar100")
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert bool((ds.x_train[0, 2] == 255).all()) and bool((ds.x_train[0, :2] == 0).all())
    assert ds.y_train.tolist() == train[b"fine_labels"]
    assert ds.y_test.tolist() == test[b"fine_labels"]
    assert ds.num_classes == 100 and ds.classes[7] == "class007"


class _Py2StylePickler(pickle.Pickler):
    """Emulates the original CIFAR files (Python 2 + numpy 1): arrays via
    numpy.core.multiarray._reconstruct and dtype state holding byte strings."""

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            return (np.dtype, ("u1", False, True), (3, b"|", None, None, None, -1, -1, 0))
        if isinstance(obj, np.ndarray):
            rebuild = np.zeros(1).__reduce__()[0]
            return (rebuild, (np.ndarray, (0,), b"b"), (1, obj.shape, obj.dtype, False, obj.tobytes()))
        return NotImplemented


def test_py2_style_cifar_pickles_load():
    d = data.data_root() / "cifar-10-batches-py"
    batches, _ = make_cifar10(d)
    for i, b in enumerate(batches, 1):
        buf = io.BytesIO()
        _Py2StylePickler(buf, protocol=3).dump(b)  # protocol 3: GLOBAL opcodes, bytes stay bytes
        raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
        (d / f"data_batch_{i}").write_bytes(raw)
    ds = load("cifar10")
    want = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert np.array_equal(ds.x_train.numpy(), want)


def test_forbidden_global_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global '(posix|nt)\.system'"):
        data._safe_unpickle(io.BytesIO(blob))
    assert not marker.exists()

    # Same through load(): a poisoned batch inside an otherwise valid CIFAR-10 directory.
    d = data.data_root() / "cifar-10-batches-py"
    make_cifar10(d)
    dump(d / "data_batch_3", {b"data": Evil(marker), b"labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match="data_batch_3.*forbidden global"):
        load("cifar10")
    assert not marker.exists()


def test_other_dangerous_globals_refused():
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("numpy", "load"), ("subprocess", "Popen")]:
        blob = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
        with pytest.raises(pickle.UnpicklingError, match=f"forbidden global '{module}.{name}'"):
            data._safe_unpickle(io.BytesIO(blob))


# --------------------------------------------------------------------------- not found / names


def test_fmnist_not_found_message(isolated, no_system_fmnist):
    root = data.data_root()
    with pytest.raises(DataNotFound) as ei:
        load("fmnist")
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeError)
    assert msg.startswith("Fashion-MNIST not found. Looked in:")
    assert str(root / "fashion-mnist") in msg
    assert str(data._SYSTEM_FMNIST_DIR) in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "$BDLIB_DATA/fashion-mnist/" in msg
    assert "network disabled in tests" in msg  # the download failure is reported
    assert [c[0] for c in isolated] == ["fmnist"]


def test_download_false_never_calls_download(isolated, no_system_fmnist):
    with pytest.raises(DataNotFound, match="download=False"):
        load("fmnist", download=False)
    with pytest.raises(DataNotFound, match="download=False"):
        load("cifar10", download=False)
    assert isolated == []


def test_partial_directory_reports_missing_files(no_system_fmnist):
    d = data.data_root() / "fashion-mnist"
    make_fmnist(d, gz_train=True, gz_test=True)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFound, match=r"missing t10k-labels-idx1-ubyte"):
        load("fmnist", download=False)


@pytest.mark.parametrize(
    "name,folder,title",
    [("cifar10", "cifar-10-batches-py", "CIFAR-10"), ("cifar100", "cifar-100-python", "CIFAR-100")],
)
def test_cifar_not_found_message(name, folder, title, isolated):
    root = data.data_root()
    with pytest.raises(DataNotFound) as ei:
        load(name)
    msg = str(ei.value)
    assert msg.startswith(f"{title} not found. Looked in: {root / folder}")
    assert f"{folder}/" in msg and "BDLIB_DATA" in msg and "parent" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert "network disabled in tests" in msg
    assert isolated == [(name, root.resolve())]


def test_download_path_is_used_when_it_succeeds(monkeypatch, no_system_fmnist):
    def fake_download(name, root):
        d = root / "FashionMNIST" / "raw"
        make_fmnist(d, gz_train=True, gz_test=False)
        return d

    monkeypatch.setattr(data, "_download", fake_download)
    ds = load("fmnist")
    assert ds.source == "torchvision-download" and ds.x_train.shape == (20, 1, 28, 28)
    # A later process finds the earlier download on disk.
    data.clear_cache()
    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("should not download again"))
    assert Path(load("fmnist").source).name == "raw"


def test_unknown_name():
    with pytest.raises(ValueError, match=r"dataset 'fminst' is unknown; choose one of: fmnist, cifar10, cifar100"):
        load("fminst")


def test_data_root(monkeypatch):
    monkeypatch.setenv("BDLIB_DATA", "/some/where")
    assert data.data_root() == Path("/some/where")
    monkeypatch.delenv("BDLIB_DATA")
    assert data.data_root() == Path.home() / ".cache" / "bdlib" / "data"


# --------------------------------------------------------------------------- subset / split


def balanced(n_per_class=50, k=10):
    return torch.arange(k).repeat_interleave(n_per_class)[
        torch.randperm(k * n_per_class, generator=torch.Generator().manual_seed(9))
    ]


def test_subset_stratified_sizes_and_balance():
    y = balanced()
    x = torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8)
    for n in (1, 7, 10, 33, 100, 499):
        idx = subset(x, y, n, seed=0)
        assert idx.dtype == torch.long and len(idx) == n and len(set(idx.tolist())) == n
        assert torch.equal(idx, torch.sort(idx).values)
        counts = torch.bincount(y[idx], minlength=10)
        assert int(counts.max() - counts.min()) <= 1, (n, counts)


def test_subset_proportional_on_imbalanced_labels():
    y = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    idx = subset(y, y, 100, seed=3)
    assert torch.bincount(y[idx]).tolist() == [60, 30, 10]


def test_subset_determinism_all_and_errors():
    y = balanced()
    a, b, c = subset(y, y, 40, seed=1), subset(y, y, 40, seed=1), subset(y, y, 40, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    u1, u2 = subset(y, y, 40, seed=1, stratified=False), subset(y, y, 40, seed=2, stratified=False)
    assert len(u1) == 40 and not torch.equal(u1, u2)
    assert torch.equal(subset(y, y, None, 0), torch.arange(len(y)))
    assert torch.equal(subset(y, y, 10_000, 0), torch.arange(len(y)))
    for bad in (0, -3):
        with pytest.raises(ValueError):
            subset(y, y, bad, 0)
    with pytest.raises(ValueError):
        subset(y[:10], y, 5, 0)


def test_split_indices_disjoint_stratified_deterministic():
    y = balanced(n_per_class=100)
    sets = split_indices(y, [55, 55, 200], seed=4)
    assert [len(s) for s in sets] == [55, 55, 200]
    allidx = torch.cat(sets)
    assert len(set(allidx.tolist())) == 310
    for s in sets:
        assert torch.equal(s, torch.sort(s).values)
        counts = torch.bincount(y[s], minlength=10)
        assert int(counts.max() - counts.min()) <= 1
    # The two 55-sets complement each other: together 11 per class.
    assert torch.bincount(y[torch.cat(sets[:2])], minlength=10).tolist() == [11] * 10
    again = split_indices(y, [55, 55, 200], seed=4)
    assert all(torch.equal(p, q) for p, q in zip(sets, again))
    other = split_indices(y, [55, 55, 200], seed=5)
    assert not torch.equal(sets[0], other[0])
    assert [len(s) for s in split_indices(y, [0, len(y)], 0)] == [0, len(y)]
    with pytest.raises(ValueError, match="1001"):
        split_indices(y, [500, 501], seed=0)
    with pytest.raises(ValueError):
        split_indices(y, [-1], seed=0)


# --------------------------------------------------------------------------- fingerprint


def _tiny_dataset(x_train: torch.Tensor) -> Dataset:
    return Dataset(
        name="fmnist",
        x_train=x_train,
        y_train=torch.zeros(len(x_train), dtype=torch.int64),
        x_test=torch.zeros(2, 1, 28, 28, dtype=torch.uint8),
        y_test=torch.zeros(2, dtype=torch.int64),
        classes=data.FMNIST_CLASSES,
        source="test",
    )


def test_fingerprint_changes_with_one_pixel():
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = _tiny_dataset(x)
    fp = a.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert a.fingerprint() == fp == _tiny_dataset(x.clone()).fingerprint()
    x2 = x.clone()
    x2[3, 0, 17, 4] ^= 1
    assert _tiny_dataset(x2).fingerprint() != fp
    assert repr(a) == "Dataset(name='fmnist', train=(5, 1, 28, 28), test=(2, 1, 28, 28), classes=10, source='test')"


def test_dataset_validates_tensors():
    with pytest.raises(ValueError, match="uint8"):
        _tiny_dataset(torch.zeros(5, 1, 28, 28))
    with pytest.raises(ValueError, match="labels"):
        Dataset(
            "x",
            torch.zeros(3, 1, 2, 2, dtype=torch.uint8),
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
            torch.zeros(1, dtype=torch.int64),
            ("a",),
            "t",
        )


# --------------------------------------------------------------------------- the real thing


@pytest.mark.skipif(
    not FMNIST_SYSTEM_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (/usr/share/datasets/fashion-mnist absent)",
)
def test_real_fashion_mnist_from_debian_package(isolated):
    ds = load("fmnist", download=False)  # BDLIB_DATA is an empty tmp dir, so the package copy is used
    assert ds.source == str(FMNIST_SYSTEM_DIR)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_test.dtype == torch.int64
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y_train[:5].tolist() == [9, 0, 0, 3, 0]  # well-known first labels of Fashion-MNIST
    assert isolated == []
