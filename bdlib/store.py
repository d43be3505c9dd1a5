"""Content-addressed artifact store.

Every expensive result (poisoned data, trained or defended model, metrics) is stored
under ``key = sha256(canonical_json({"kind", "spec", "salt"}))`` so a second run finds
it and skips the work. Tensors are kept as safetensors and metadata as JSON, so
nothing read back from the store can execute code.

Layout under ``root``::

    <key[:2]>/<key>/tensors.safetensors
    <key[:2]>/<key>/meta.json
    locks/<key>.lock        one file lock per key
    tmp/<random>/           entries being written, renamed into place when complete

Shared by several users (a class on one machine): entries are created with the permissions the
writer's umask allows (a umask of 002 and a group-writable, setgid ``root`` let a group read
and extend one store); an entry another user cannot read is reported as a permission problem
(:class:`StoreAccessError`), never discarded as corrupt. Every repair (a corrupt entry discarded,
a wait for another process) is reported to the runner (:func:`bdlib.progress.store_notice`).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from bdlib import progress
from bdlib.files import UMASK, disk_full_named
from bdlib.paths import cache_dir

__all__ = [
    "CODE_SALT",
    "CORE_MODULES",
    "source_hash",
    "code_hash",
    "normalised_source",
    "module_hash",
    "dependencies",
    "USED",
    "tensors_digest",
    "tensors_under",
    "Entry",
    "Store",
    "StoreAccessError",
    "canonical_json",
    "declares_profiles",
    "check_root",
    "NotStored",
    "probing",
    "is_probing",
]


class NotStored(LookupError):
    """Raised by :meth:`Store.get_or_compute` inside :func:`probing` for a result the store lacks."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind or 'entry'} {key[:12]} is not stored")
        self.kind, self.key = kind, key


_PROBING = [False, False]  # inside probing(); and whether it records what it finds as used


@contextlib.contextmanager
def probing(record: bool = False) -> Iterator[None]:
    """Within this block a lookup of a missing result raises :class:`NotStored` instead of
    computing it: how :mod:`bdlib.pool` finds the work to hand to its workers without doing any
    of it. Nothing is recorded as used, unless ``record``: then a stored result it reads counts
    as used and loaded (the caller keeps what the probe returned instead of reading it again)."""
    before = list(_PROBING)
    _PROBING[:] = [True, record]
    try:
        yield
    finally:
        _PROBING[:] = before


def is_probing() -> bool:
    """Whether this thread of work is inside :func:`probing`: nothing may be computed, not even
    on :mod:`bdlib.pool`'s workers."""
    return _PROBING[0]


class StoreAccessError(PermissionError):
    """A store entry or directory exists but this user may not read or write it."""


def _access_error(path: Path, root: Path, doing: str) -> StoreAccessError:
    try:
        st = path.stat()
        whose = f"owner uid {st.st_uid}, group gid {st.st_gid}, mode {st.st_mode & 0o7777:o}"
    except OSError:
        whose = "owner unknown"
    return StoreAccessError(
        f"bdlib store: permission denied {doing} {path} ({whose}; you are uid {os.getuid()}). The store "
        f"{root} belongs to another user: to share it, its owner runs `chmod -R g+rwX {root}` and "
        f"`chmod g+s {root}` with a group you share and works with umask 002 (README, 'A shared cache'); "
        "or set BDLIB_CACHE to a store of your own. Nothing was discarded."
    )


def check_root(root: Path | None = None) -> Path:
    """Refuse, in one sentence, a store location that is not a writable directory (checked
    before any kernel or training starts); return the location. A missing one is fine where
    its nearest existing parent is a writable directory (the store creates it)."""
    root = Path(root or cache_dir())
    fix = (
        "set BDLIB_CACHE to a directory you can write (or unset it for the project's .bdlib-cache/)"
        if os.environ.get("BDLIB_CACHE")
        else "set BDLIB_CACHE to a directory you can write"
    )
    where = (
        f"the store {root} (BDLIB_CACHE={os.environ['BDLIB_CACHE']})"
        if os.environ.get("BDLIB_CACHE")
        else f"the store {root}"
    )
    if root.exists() and not root.is_dir():
        raise StoreAccessError(f"{where} is a file, not a directory: {fix}")
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StoreAccessError(f"{where} cannot be created: {probe} is a file, not a directory; {fix}")
    if not os.access(probe, os.W_OK | os.X_OK):
        doing = "is not writable by you" if probe == root else f"cannot be created: {probe} is not writable by you"
        raise StoreAccessError(f"{where} {doing} (uid {os.getuid()}); {fix}")
    return root


logger = logging.getLogger(__name__)

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_SHARD_RE = re.compile(r"^[0-9a-f]{2}$")
# A temp dir older than this can only be debris of a killed writer: writes take seconds.
_STALE_TMP_SECONDS = 24 * 3600


# The modules every stored result depends on: the code that computes (data, models, training,
# metrics, the cached stages and the method interfaces). A method's own module is salted
# separately (``module_hash`` in the spec its caller builds), so editing one defense does not
# invalidate every cached model; the store, the runner, the reports and the plots never salt a
# result. Each module counts by its code only (:func:`normalised_source`): comments, docstrings
# and formatting do not change a key, nor does a method module's ``PROFILES`` (its per-profile
# values: they enter every result's key through its ``Params`` values, the config in the key, so
# declaring them is not code that computes, and moving them must not change the module's hash).
CORE_MODULES = (
    "data.py",
    "models.py",
    "train.py",
    "metrics.py",
    "experiment.py",
    "attacks/base.py",
    "defenses/base.py",
)
_PKG = Path(__file__).resolve().parent
_CODE_RE = re.compile(r"^([A-Za-z0-9_/]+\.py)@[0-9a-f]{16}$")


def declares_profiles(node: ast.stmt) -> bool:
    """Whether a module-level statement is a method's ``PROFILES = {...}`` (plain or annotated,
    a dict display): what :func:`normalised_source` leaves out of a module's code, and what
    :func:`bdlib.runner.provenance.profile_values_hash` tracks instead."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    else:
        return False
    named = len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id == "PROFILES"
    return named and isinstance(node.value, ast.Dict)


def normalised_source(text: str) -> str:
    """A module's code without its comments, docstrings and formatting: the source Python
    regenerates from the module's syntax tree with every docstring removed, and without a
    module-level ``PROFILES = {...}`` (a method's per-profile values, :mod:`bdlib.profiles`). Those
    values enter every result's key through its ``Params`` values (the config in the key), so
    where they are declared is not code that computes: the module's hash must not change when
    they move or change. Only a dict display counts (``config.PROFILES``, a tuple of names, stays)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]

    tree.body = [node for node in tree.body if not declares_profiles(node)]
    return ast.unparse(tree)


@functools.cache
def code_hash(relative: str) -> str:
    """sha256 (first 16 hex) of one bdlib module's normalised code (:func:`normalised_source`)."""
    text = (_PKG / relative).read_text(encoding="utf-8")
    return hashlib.sha256(normalised_source(text).encode("utf-8")).hexdigest()[:16]


def source_hash(*relative: str) -> str:
    """sha256 (first 16 hex) of the named bdlib modules' code (:func:`code_hash`), paths included."""
    h = hashlib.sha256()
    for rel in sorted(relative):
        # Separators keep (path, hash) pairs unambiguous when concatenated.
        h.update(f"{rel}\0{code_hash(rel)}\0".encode())
    return h.hexdigest()[:16]


CODE_SALT: str = source_hash(*CORE_MODULES)


def module_hash(fn: Callable) -> str:
    """``path@hash`` of the bdlib module defining ``fn`` (an attack's or defense's own file):
    part of the spec of every result that module computes, so the store knows which module
    a result depends on (:data:`USED`)."""
    import inspect

    rel = Path(inspect.getfile(fn)).resolve().relative_to(_PKG).as_posix()
    return f"{rel}@{code_hash(rel)}"


# Every result this process used (loaded or computed): key -> (kind, the modules whose code it
# depends on, its own and its upstream results' included). ``bdlib.figures`` records it per
# notebook, so ``python -m bdlib status`` can say which figures a code change makes stale.
USED: dict[str, tuple[str, frozenset[str]]] = {}


def dependencies(spec: Any) -> frozenset[str]:
    """The modules a result of ``spec`` depends on: the core modules, every ``path@hash`` in the
    spec, and the modules of every upstream result (a key in the spec) this process has used."""
    found = set(CORE_MODULES)

    def walk(v: Any) -> None:
        if isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            m = _CODE_RE.match(v)
            if m:
                found.add(m.group(1))
            elif v in USED:
                found.update(USED[v][1])

    walk(spec)
    return frozenset(found)


def tensors_under(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored under ``prefix.`` (one entry holds several groups), prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex) of named CPU tensors, e.g. a model's weights: which model a result
    was made with, for the key of a result computed from it."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _fmt_path(path: str) -> str:
    return path or "<root>"


def _normalise(obj: Any, path: str = "") -> Any:
    """Turn ``obj`` into plain JSON types, raising TypeError with the key path on failure."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite float {obj!r} at {_fmt_path(path)} is not valid JSON")
        return float(obj)
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Same result as dataclasses.asdict, but recursing here keeps the key path for errors.
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str):
                sk = k
            elif isinstance(k, int) and not isinstance(k, bool):
                sk = str(k)
            else:
                raise TypeError(
                    f"dict key {k!r} of type {type(k).__qualname__} at {_fmt_path(path)} "
                    "is not JSON-serialisable (use str or int keys)"
                )
            if sk in out:
                raise TypeError(f"dict key {k!r} at {_fmt_path(path)} collides with another key once stringified")
            out[sk] = _normalise(v, f"{path}.{sk}" if path else sk)
        return out
    if isinstance(obj, (list, tuple)):
        return [_normalise(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"object of type {type(obj).__module__}.{type(obj).__qualname__} at {_fmt_path(path)} is not JSON-serialisable"
    )


def canonical_json(obj: Any) -> str:
    """Deterministic compact JSON of ``obj`` (sorted keys, ASCII, no NaN).

    Dataclasses become dicts, tuples lists, paths/devices/dtypes strings. Anything else
    that JSON cannot represent raises TypeError naming the type and the key path.
    """
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_key(key: str) -> str:
    # Keys become path components, so reject anything that is not a sha256 hex digest.
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"invalid store key {key!r}: expected 64 lowercase hex characters")
    return key


class _Corrupt(Exception):
    pass


@dataclass(frozen=True, eq=False)
class Entry:
    """A stored artifact: its key, CPU tensors and JSON metadata."""

    key: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


class Store:
    """Content-addressed, integrity-checked, concurrency-safe artifact store."""

    root: Path

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        """Use ``root``, else ``$BDLIB_CACHE``, else ``.bdlib-cache`` in the user's project
        (``bdlib.paths``; never inside the installed package); created on first write."""
        if root is None:
            root = cache_dir()
        # Absolute so that worker processes with another cwd agree on the location.
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ keys
    def key(self, kind: str, spec: Mapping[str, Any]) -> str:
        """sha256 hex of the canonical JSON of ``kind``, ``spec`` and the code salt."""
        if not isinstance(kind, str):
            raise TypeError(f"kind must be str, got {type(kind).__qualname__}")
        doc = {"kind": kind, "spec": spec, "salt": CODE_SALT}
        return hashlib.sha256(canonical_json(doc).encode("ascii")).hexdigest()

    def path(self, key: str) -> Path:
        """Directory of the entry for ``key``."""
        _check_key(key)
        return self.root / key[:2] / key

    # ------------------------------------------------------------------ read
    def _load(self, key: str, p: Path) -> Entry:
        if not p.is_dir():
            raise _Corrupt("entry is not a directory")
        try:
            meta_text = (p / META_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _Corrupt(f"{META_FILE} is missing") from None
        except PermissionError:
            raise _access_error(p, self.root, "reading") from None
        except (OSError, UnicodeDecodeError) as e:
            raise _Corrupt(f"{META_FILE} unreadable: {e}") from None
        try:
            meta = json.loads(meta_text)
        except ValueError as e:
            raise _Corrupt(f"{META_FILE} is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise _Corrupt(f"{META_FILE} is not a JSON object")
        if meta.get("key") != key:
            raise _Corrupt(f"{META_FILE} records key {meta.get('key')!r}")
        files = meta.get("files")
        if not isinstance(files, dict) or not isinstance(files.get(TENSORS_FILE), str):
            raise _Corrupt(f"{META_FILE} has no sha256 for {TENSORS_FILE}")
        for name, digest in files.items():
            if name != TENSORS_FILE:
                fp = p / name
                try:
                    bad = "/" in name or "\\" in name or not fp.is_file() or _sha256_file(fp) != digest
                except PermissionError:
                    raise _access_error(fp, self.root, "reading") from None
                if bad:
                    raise _Corrupt(f"file {name!r} is missing or fails its sha256 check")
        try:
            # One read for both the hash and the parse, so they see the same bytes.
            data = (p / TENSORS_FILE).read_bytes()
        except FileNotFoundError:
            raise _Corrupt(f"{TENSORS_FILE} is missing") from None
        except PermissionError:
            raise _access_error(p / TENSORS_FILE, self.root, "reading") from None
        except OSError as e:
            raise _Corrupt(f"{TENSORS_FILE} unreadable: {e}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != files[TENSORS_FILE]:
            raise _Corrupt(f"sha256 of {TENSORS_FILE} is {digest}, expected {files[TENSORS_FILE]}")
        try:
            tensors = load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types on bad input
            raise _Corrupt(f"{TENSORS_FILE} does not parse: {e}") from None
        return Entry(key=key, tensors=dict(tensors), meta=meta)

    def _discard(self, p: Path, ino: int | None) -> None:
        # Only discard the directory we inspected: another process may have already
        # replaced it with a fresh valid entry.
        try:
            if ino is not None and p.stat().st_ino != ino:
                return
            tmp_root = self.root / "tmp"
            tmp_root.mkdir(parents=True, exist_ok=True)
            aside = self._mkdtemp(f"corrupt-{p.name[:8]}-", tmp_root)
            # Rename first so readers never observe a half-deleted entry.
            os.replace(p, aside / p.name)
            shutil.rmtree(aside, ignore_errors=True)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("bdlib store: could not remove corrupt entry %s: %s", p, e)

    def get(self, key: str) -> Entry | None:
        """Return the entry for ``key``; None if missing or corrupt (corrupt entries are deleted)."""
        p = self.path(key)
        try:
            ino: int | None = p.stat().st_ino
        except FileNotFoundError:
            return None
        except PermissionError:  # its shard directory is closed to this user
            raise _access_error(p.parent, self.root, "reading") from None
        try:
            return self._load(key, p)
        except _Corrupt as e:
            if not p.exists():
                # Removed by someone else while we were reading: simply missing.
                return None
            logger.warning("bdlib store: entry %s is corrupt (%s); discarding it", key, e)
            progress.store_notice(f"entry {key[:12]} is corrupt ({e}); discarded, to be recomputed")
            self._discard(p, ino)
            return None

    def __contains__(self, key: object) -> bool:
        """True if a valid (integrity-checked) entry exists for ``key``."""
        if not isinstance(key, str) or not _KEY_RE.match(key):
            return False
        return self.get(key) is not None

    # ----------------------------------------------------------------- write
    def _ensure_root(self) -> None:
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            # Keep a cache inside the repo out of version control.
            try:
                (self.root / ".gitignore").write_text("*\n", encoding="utf-8")
            except OSError:
                pass

    def _sweep_tmp(self) -> None:
        tmp_root = self.root / "tmp"
        try:
            children = list(tmp_root.iterdir())
        except OSError:
            return
        now = time.time()
        for c in children:
            try:
                if now - c.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(c, ignore_errors=True)
            except OSError:
                pass

    def put(
        self,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any],
        *,
        kind: str = "",
        spec: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Atomically store ``tensors`` and ``meta`` under ``key`` and return the stored entry.

        If a valid entry already exists it is kept and returned instead.
        """
        final = self.path(key)
        if not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a mapping, got {type(meta).__qualname__}")
        # Validate everything before touching the disk.
        meta_doc = _normalise(dict(meta), "meta")
        spec_doc = None if spec is None else _normalise(spec, "spec")
        if not isinstance(kind, str):
            raise TypeError(f"kind must be str, got {type(kind).__qualname__}")
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors must be a mapping, got {type(tensors).__qualname__}")
        to_save: dict[str, torch.Tensor] = {}
        seen_storage: set[int] = set()
        for name, t in tensors.items():
            if not isinstance(name, str):
                raise TypeError(f"tensor name {name!r} must be str")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensors[{name!r}] is {type(t).__qualname__}, not a torch.Tensor")
            t = t.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if t.numel() and ptr in seen_storage:
                # safetensors refuses tensors sharing memory (e.g. tied weights).
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            if t.numel():
                seen_storage.add(ptr)
            to_save[name] = t

        tmp_root = self.root / "tmp"
        with disk_full_named(self.root, "store"):
            try:
                self._ensure_root()
                tmp_root.mkdir(parents=True, exist_ok=True)
                self._sweep_tmp()
                tmp = self._mkdtemp(f"{key[:8]}-", tmp_root)
            except PermissionError as err:
                raise _access_error(Path(err.filename or tmp_root), self.root, "writing to") from None
            try:
                self._write(tmp, key, to_save, meta_doc, kind, spec_doc)
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, final)
                except PermissionError:
                    raise _access_error(final.parent, self.root, "writing to") from None
                except OSError:
                    # Destination exists (non-empty dir): keep it if valid, else replace it.
                    existing = self.get(key)
                    if existing is not None:
                        return existing
                    os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        entry = self.get(key)
        if entry is None:  # pragma: no cover - only if someone deletes it right away
            raise RuntimeError(f"entry {key} vanished or is invalid right after being written")
        return entry

    @staticmethod
    def _mkdtemp(prefix: str, parent: Path) -> Path:
        """A private temp dir, then opened up to what the umask allows (the entry keeps this mode)."""
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        os.chmod(tmp, 0o777 & ~UMASK)
        return tmp

    @staticmethod
    def _write(tmp: Path, key: str, to_save: dict, meta_doc: Any, kind: str, spec_doc: Any) -> None:
        """The entry's files, complete and synced, in ``tmp``."""
        save_file(to_save, str(tmp / TENSORS_FILE))
        os.chmod(tmp / TENSORS_FILE, 0o666 & ~UMASK)  # safetensors writes it private
        doc = dict(meta_doc)
        # Store bookkeeping wins over producer fields of the same name.
        doc.update(
            key=key,
            kind=kind,
            spec=spec_doc,
            salt=CODE_SALT,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(),
            files={TENSORS_FILE: _sha256_file(tmp / TENSORS_FILE)},
        )
        text = json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get_or_compute(
        self,
        kind: str,
        spec: Mapping[str, Any],
        compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]],
    ) -> Entry:
        """Return the stored entry for ``(kind, spec)``, computing and storing it if needed.

        Concurrent callers for one key serialise on a file lock; only the first computes.
        Each call is counted as ``loaded`` or ``computed`` (:func:`bdlib.progress.store_event`).
        ``meta["seconds"]`` records the wall time of ``compute`` unless it sets it itself.
        """
        key = self.key(kind, spec)
        entry = self.get(key)
        if _PROBING[0]:
            if entry is None:
                raise NotStored(kind, key)
            if _PROBING[1]:
                USED[key] = (kind, dependencies(spec))
                progress.store_event(kind, "loaded")
            return entry
        USED[key] = (kind, dependencies(spec))
        if entry is not None:
            progress.store_event(kind, "loaded")
            return entry
        self._ensure_root()
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_dir / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("bdlib store: waiting for another process computing %s %s", kind or "entry", key[:12])
            progress.store_notice(f"waited for another process computing {kind or 'entry'} {key[:12]}")
            lock.acquire()
        try:
            entry = self.get(key)
            if entry is not None:
                progress.store_event(kind, "loaded")
                return entry
            t0 = time.perf_counter()
            result = compute()
            seconds = time.perf_counter() - t0
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError("compute() must return a (tensors, meta) tuple")
            tensors, meta = result
            meta = dict(meta)
            meta.setdefault("seconds", float(seconds))
            entry = self.put(key, tensors, meta, kind=kind, spec=spec)
            progress.store_event(kind, "computed")
            return entry
        finally:
            lock.release()

    def clear(self) -> None:
        """Remove all entries, locks and temp files under ``root`` (if it exists).

        Only store-owned names (2-hex shard dirs, ``tmp``, ``locks``) are removed, so a
        mistaken ``$BDLIB_CACHE`` cannot wipe unrelated files.
        """
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.is_dir() and (child.name in ("tmp", "locks") or _SHARD_RE.match(child.name)):
                shutil.rmtree(child, ignore_errors=True)
