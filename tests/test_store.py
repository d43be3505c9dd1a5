"""Tests for bdlib.store: keys, round-trips, integrity, atomicity and concurrency."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

import bdlib.store as store_mod
from bdlib.store import CODE_SALT, Entry, Store, canonical_json

torch.set_num_threads(1)

KIND = "test.artifact"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cache")


def _entry_dirs(store: Store) -> list[Path]:
    if not store.root.exists():
        return []
    return [p for shard in store.root.iterdir() if store_mod._SHARD_RE.match(shard.name) for p in shard.iterdir()]


def _tmp_children(store: Store) -> list[Path]:
    tmp = store.root / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def _sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "u8": torch.randint(0, 256, (3, 4), dtype=torch.uint8, generator=g),
        "mask": torch.rand(5, generator=g) > 0.5,
        "w": torch.randn(2, 3, generator=g),
        "idx": torch.tensor([0, 7, 2**40], dtype=torch.int64),
    }


# ---------------------------------------------------------------- keys / json


def test_code_salt_is_16_hex() -> None:
    assert len(CODE_SALT) == 16
    int(CODE_SALT, 16)


def test_key_stable_across_dict_ordering(store: Store) -> None:
    a = {"lr": 0.1, "epochs": 3, "poison": {"rate": 0.05, "target": 0}}
    b = {"poison": {"target": 0, "rate": 0.05}, "epochs": 3, "lr": 0.1}
    assert store.key(KIND, a) == store.key(KIND, b)
    assert len(store.key(KIND, a)) == 64
    # Same key from an independent Store object (key does not depend on root).
    assert Store("/nonexistent/elsewhere").key(KIND, a) == store.key(KIND, a)


def test_key_changes_with_any_value_and_kind(store: Store) -> None:
    base = {"lr": 0.1, "epochs": 3, "poison": {"rate": 0.05, "target": 0}, "shape": (3, 32)}
    k0 = store.key(KIND, base)
    variants = [
        {**base, "lr": 0.2},
        {**base, "epochs": 4},
        {**base, "poison": {"rate": 0.05, "target": 1}},
        {**base, "shape": (3, 33)},
        {**base, "extra": None},
        {**base, "epochs": 3.0},  # int vs float is a real difference in a config
    ]
    keys = {store.key(KIND, v) for v in variants}
    assert k0 not in keys and len(keys) == len(variants)
    assert store.key("other.kind", base) != k0


def test_key_includes_code_salt(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    k0 = store.key(KIND, {"a": 1})
    monkeypatch.setattr(store_mod, "CODE_SALT", "0" * 16)
    assert store.key(KIND, {"a": 1}) != k0


@dataclasses.dataclass(frozen=True)
class _Inner:
    rate: float
    path: Path


@dataclasses.dataclass
class _Cfg:
    name: str
    shape: tuple[int, int]
    inner: _Inner
    device: torch.device


def test_canonical_json_normalises() -> None:
    cfg = _Cfg("badnets", (3, 32), _Inner(0.1, Path("/data/x")), torch.device("cpu"))
    out = canonical_json({"z": 1, "cfg": cfg, "t": (1, (2, 3)), "f": 1.0})
    assert out == (
        '{"cfg":{"device":"cpu","inner":{"path":"/data/x","rate":0.1},"name":"badnets","shape":[3,32]},'
        '"f":1.0,"t":[1,[2,3]],"z":1}'
    )
    assert json.loads(out)["f"] == 1.0 and isinstance(json.loads(out)["f"], float)
    # Tuple and list spell the same config.
    assert canonical_json({"a": (1, 2)}) == canonical_json({"a": [1, 2]})
    # Non-ASCII escaped, so the bytes are stable.
    assert canonical_json({"k": "é"}) == '{"k":"\\u00e9"}'


def test_canonical_json_rejects_object_with_path() -> None:
    with pytest.raises(TypeError) as ei:
        canonical_json({"a": {"b": [1, object()]}})
    msg = str(ei.value)
    assert "object" in msg and "a.b[1]" in msg
    with pytest.raises(TypeError, match="set"):
        canonical_json({"s": {1, 2}})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


# ---------------------------------------------------------------- round trip


def test_put_get_roundtrip(store: Store) -> None:
    key = store.key(KIND, {"n": 1})
    tensors = _sample_tensors()
    meta = {"acc": 0.93, "classes": ["cat", "dog"], "cfg": (1, 2)}
    assert store.get(key) is None
    assert not store.root.exists()  # created lazily
    e = store.put(key, tensors, meta, kind=KIND, spec={"n": 1})
    assert isinstance(e, Entry) and e.key == key
    assert store.path(key) == store.root / key[:2] / key
    assert (store.path(key) / "tensors.safetensors").is_file()

    got = Store(store.root).get(key)
    assert got is not None and set(got.tensors) == set(tensors)
    for name, t in tensors.items():
        assert got.tensors[name].dtype == t.dtype
        assert got.tensors[name].device.type == "cpu"
        assert torch.equal(got.tensors[name], t)
    assert got.meta["acc"] == 0.93 and got.meta["classes"] == ["cat", "dog"] and got.meta["cfg"] == [1, 2]
    assert got.meta["key"] == key and got.meta["kind"] == KIND and got.meta["spec"] == {"n": 1}
    assert got.meta["salt"] == CODE_SALT
    assert got.meta["created"].endswith("+00:00")
    assert set(got.meta["files"]) == {"tensors.safetensors"}
    assert key in store
    assert store.key(KIND, {"n": 2}) not in store
    assert "not-a-key" not in store
    assert _tmp_children(store) == []


def test_put_handles_views_noncontiguous_and_shared(store: Store) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    p = torch.nn.Parameter(torch.ones(2))
    tensors = {"t": base.t(), "view": base[1], "base": base, "param": p}
    e = store.put(store.key(KIND, {"v": 1}), tensors, {})
    assert torch.equal(e.tensors["t"], base.t())
    assert torch.equal(e.tensors["view"], base[1])
    assert torch.equal(e.tensors["base"], base)
    assert not e.tensors["param"].requires_grad


def test_metadata_only_entry(store: Store) -> None:
    key = store.key("metrics", {"m": 1})
    e = store.put(key, {}, {"asr": 0.01, "clean_acc": 0.9})
    assert e.tensors == {}
    got = Store(store.root).get(key)
    assert got is not None and got.tensors == {} and got.meta["asr"] == 0.01


def test_put_keeps_existing_valid_entry(store: Store) -> None:
    key = store.key(KIND, {"n": 1})
    store.put(key, {"x": torch.zeros(2)}, {"v": 1})
    e2 = store.put(key, {"x": torch.ones(2)}, {"v": 2})
    assert e2.meta["v"] == 1 and torch.equal(e2.tensors["x"], torch.zeros(2))
    assert store.get(key).meta["v"] == 1
    assert _tmp_children(store) == []


def test_put_rejects_bad_key(store: Store) -> None:
    with pytest.raises(ValueError):
        store.put("../../etc", {}, {})
    with pytest.raises(ValueError):
        store.path("ABC")


# ---------------------------------------------------------------- get_or_compute


def test_get_or_compute_computes_once(store: Store) -> None:
    calls: list[int] = []

    def compute():
        calls.append(1)
        return {"w": torch.full((3,), 2.5)}, {"note": "hi"}

    e1 = store.get_or_compute(KIND, {"a": 1}, compute)
    assert calls == [1]
    assert isinstance(e1.meta["seconds"], float) and e1.meta["seconds"] >= 0
    assert e1.meta["note"] == "hi" and e1.key == store.key(KIND, {"a": 1})

    e2 = Store(store.root).get_or_compute(KIND, {"a": 1}, compute)
    assert calls == [1]
    assert torch.equal(e2.tensors["w"], e1.tensors["w"]) and e2.meta == e1.meta

    Store(store.root).get_or_compute(KIND, {"a": 2}, compute)
    assert calls == [1, 1]


def test_get_or_compute_keeps_compute_seconds(store: Store) -> None:
    e = store.get_or_compute(KIND, {"a": 1}, lambda: ({}, {"seconds": 123.0}))
    assert e.meta["seconds"] == 123.0


# ---------------------------------------------------------------- corruption


def _counting_compute(calls: list[int]):
    def compute():
        calls.append(1)
        return {"w": torch.arange(100, dtype=torch.float32)}, {"n": len(calls)}

    return compute


def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))


def _truncate_meta(p: Path) -> None:
    text = p.read_text()
    p.write_text(text[: len(text) // 2])


def _delete(p: Path) -> None:
    p.unlink()


@pytest.mark.parametrize(
    "filename, damage, reason",
    [
        ("tensors.safetensors", _flip_last_byte, "sha256"),
        ("meta.json", _truncate_meta, "meta.json"),
        ("tensors.safetensors", _delete, "missing"),
        ("meta.json", _delete, "missing"),
    ],
)
def test_corrupt_entry_is_recomputed(store: Store, caplog, filename, damage, reason) -> None:
    calls: list[int] = []
    compute = _counting_compute(calls)
    e = store.get_or_compute(KIND, {"c": 1}, compute)
    damage(store.path(e.key) / filename)

    fresh = Store(store.root)
    with caplog.at_level(logging.WARNING, logger="bdlib.store"):
        assert fresh.get(e.key) is None
    assert any(e.key in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert not store.path(e.key).exists()  # bad entry moved aside and deleted

    # get_or_compute recomputes a missing entry...
    e2 = store.get_or_compute(KIND, {"c": 1}, compute)
    assert calls == [1, 1] and e2.key == e.key
    # ...and one it finds corrupt itself.
    damage(store.path(e.key) / filename)
    e3 = fresh.get_or_compute(KIND, {"c": 1}, compute)
    assert calls == [1, 1, 1] and e3.meta["n"] == 3
    assert torch.equal(e3.tensors["w"], torch.arange(100, dtype=torch.float32))
    assert e3.key in Store(store.root)  # recomputed entry is valid
    assert _tmp_children(store) == []


def test_unparseable_safetensors_with_matching_hash(store: Store, caplog) -> None:
    e = store.put(store.key(KIND, {"p": 1}), {"w": torch.zeros(3)}, {})
    d = store.path(e.key)
    (d / "tensors.safetensors").write_bytes(b"garbage, not safetensors")
    meta = json.loads((d / "meta.json").read_text())
    meta["files"]["tensors.safetensors"] = hashlib.sha256(b"garbage, not safetensors").hexdigest()
    (d / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="bdlib.store"):
        assert store.get(e.key) is None
    assert any("parse" in r.getMessage() for r in caplog.records)
    assert e.key not in store


def test_meta_recording_other_key_is_corrupt(store: Store) -> None:
    k1, k2 = store.key(KIND, {"a": 1}), store.key(KIND, {"a": 2})
    store.put(k1, {}, {})
    store.path(k2).parent.mkdir(parents=True, exist_ok=True)
    os.rename(store.path(k1), store.path(k2))
    assert store.get(k2) is None


def test_put_replaces_corrupt_existing_entry(store: Store) -> None:
    key = store.key(KIND, {"n": 1})
    store.put(key, {"x": torch.zeros(4)}, {"v": 1})
    _flip_last_byte(store.path(key) / "tensors.safetensors")
    e = store.put(key, {"x": torch.ones(4)}, {"v": 2})
    assert e.meta["v"] == 2 and torch.equal(store.get(key).tensors["x"], torch.ones(4))


# ---------------------------------------------------------------- atomicity


def test_compute_raising_leaves_nothing(store: Store) -> None:
    def boom():
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        store.get_or_compute(KIND, {"x": 1}, boom)
    key = store.key(KIND, {"x": 1})
    assert not store.path(key).exists()
    assert _entry_dirs(store) == [] and _tmp_children(store) == []
    # The lock was released: a later call computes normally.
    e = store.get_or_compute(KIND, {"x": 1}, lambda: ({"a": torch.ones(1)}, {}))
    assert key in store and e.key == key


def test_crash_during_tensor_write(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = store_mod.save_file

    def half_write(tensors, filename, *a, **k):
        real_save(tensors, filename, *a, **k)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "save_file", half_write)
    key = store.key(KIND, {"x": 2})
    with pytest.raises(OSError, match="disk full"):
        store.get_or_compute(KIND, {"x": 2}, lambda: ({"w": torch.randn(64)}, {}))
    assert not store.path(key).exists()
    assert _entry_dirs(store) == [] and _tmp_children(store) == []
    assert store.get(key) is None


def test_crash_during_rename(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    tried: list[str] = []

    def failing_replace(src, dst, *a, **k):
        if str(store.root) in str(src):
            tried.append(str(src))
            raise OSError("crash before rename")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(store_mod.os, "replace", failing_replace)
    key = store.key(KIND, {"x": 3})
    with pytest.raises(OSError, match="crash before rename"):
        store.put(key, {"w": torch.randn(8)}, {"m": 1})
    assert tried  # the rename really was attempted (all files were written by then)
    assert not store.path(key).exists()
    assert _entry_dirs(store) == [] and _tmp_children(store) == []


def test_non_serialisable_meta_writes_nothing(store: Store) -> None:
    key = store.key(KIND, {"x": 4})
    with pytest.raises(TypeError, match="meta.model"):
        store.put(key, {"w": torch.zeros(1)}, {"model": torch.nn.Linear(1, 1)})
    assert not store.root.exists()
    with pytest.raises(TypeError):
        store.get_or_compute(KIND, {"x": 4}, lambda: ({}, {"bad": object()}))
    assert _entry_dirs(store) == [] and _tmp_children(store) == []
    with pytest.raises(TypeError):
        store.put(key, {"w": [1, 2]}, {})  # type: ignore[dict-item]
    assert _entry_dirs(store) == []


# ---------------------------------------------------------------- concurrency


def _worker(root: str, counter: str, barrier, queue) -> None:
    import time

    import torch as _torch

    from bdlib.store import Store as _Store

    _torch.set_num_threads(1)

    def compute():
        time.sleep(0.3)
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        # Unseeded: two computations would give different tensors.
        return {"w": _torch.randn(16), "u": _torch.randint(0, 255, (4,), dtype=_torch.uint8)}, {"pid": os.getpid()}

    barrier.wait()
    e = _Store(root).get_or_compute("test.concurrent", {"k": 1}, compute)
    queue.put((e.key, e.tensors["w"].tolist(), e.tensors["u"].tolist(), e.meta["pid"]))


def test_concurrent_writers_compute_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    root, counter = str(tmp_path / "cache"), str(tmp_path / "counter.txt")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(root, counter, barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(Path(counter).read_text().splitlines()) == 1
    assert len({repr(r) for r in results}) == 1
    assert Store(root).get(results[0][0]) is not None
    assert _tmp_children(Store(root)) == []


# ---------------------------------------------------------------- location / safety


def test_env_var_and_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDLIB_CACHE", str(tmp_path / "envcache"))
    s = Store()
    assert s.root == tmp_path / "envcache"
    s.put(s.key(KIND, {}), {}, {})
    assert (tmp_path / "envcache").is_dir()

    monkeypatch.delenv("BDLIB_CACHE")
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    monkeypatch.chdir(project / "notebooks")  # a notebook's kernel runs in notebooks/
    assert Store().root == project / ".bdlib-cache"
    package = Path(store_mod.__file__).resolve().parent
    assert package not in Store().root.parents
    assert Store(tmp_path / "explicit").root == tmp_path / "explicit"


def test_clear(store: Store, tmp_path: Path) -> None:
    Store(tmp_path / "never").clear()  # no root: no error, nothing created
    assert not (tmp_path / "never").exists()
    e = store.get_or_compute(KIND, {"a": 1}, lambda: ({"w": torch.ones(2)}, {}))
    (store.root / "unrelated.txt").write_text("keep me")
    store.clear()
    assert e.key not in store and _entry_dirs(store) == []
    assert (store.root / "unrelated.txt").exists()


def test_store_source_has_no_code_execution_loaders() -> None:
    src = Path(store_mod.__file__).read_text()
    assert "pickle" not in src
    assert "torch.load" not in src
    assert "eval(" not in src and "exec(" not in src


def test_concurrent_threads_compute_once(store: Store) -> None:
    import threading
    import time

    calls: list[int] = []
    results: list[Entry] = []
    barrier = threading.Barrier(4)

    def compute():
        calls.append(1)
        time.sleep(0.1)
        return {"w": torch.randn(8)}, {}

    def run():
        barrier.wait()
        results.append(store.get_or_compute(KIND, {"threads": 1}, compute))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(results) == 4
    assert all(torch.equal(r.tensors["w"], results[0].tensors["w"]) for r in results)
