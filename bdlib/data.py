"""Dataset resolution and loading into uint8 tensors.

Three image-classification datasets are supported (see :data:`DATASETS`).  Each is
looked for on disk first and downloaded through torchvision only as a last resort,
so that experiments run offline whenever a local copy exists:

* ``fmnist``  : ``$BDLIB_DATA/fashion-mnist/``, then the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/`` or wherever
  ``dpkg -L`` says it put the files), then a previous torchvision download, then a
  fresh torchvision download.
* ``cifar10`` : ``$BDLIB_DATA/cifar-10-batches-py/``, then a torchvision download.
* ``cifar100``: ``$BDLIB_DATA/cifar-100-python/``, then a torchvision download.

All parsing is done here: idx files with numpy, CIFAR pickles with a restricted
unpickler that can only rebuild numpy arrays, so no file read by this module can
execute code.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "Dataset",
    "DataNotFound",
    "load",
    "clear_cache",
    "data_root",
    "read_idx",
    "subset",
    "split_indices",
]

DATASETS: tuple[str, ...] = ("fmnist", "cifar10", "cifar100")

FMNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The four idx files of (Fashion-)MNIST; each may be present gzipped or plain.
_FMNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_FMNIST_DEB_PACKAGE = "dataset-fashion-mnist"
# Module-level so tests can point it elsewhere (this machine may have the package).
_SYSTEM_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_CIFAR100_DIR = "cifar-100-python"
_CIFAR100_FILES = ("train", "test", "meta")

_DOWNLOAD_SOURCE = "torchvision-download"


class DataNotFound(RuntimeError):
    """No local copy of a dataset was found and it could not (or may not) be downloaded."""


# --------------------------------------------------------------------------- Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held fully in memory.

    Images are uint8 N×C×H×W, labels int64 N.  The tensors are shared by every caller
    of :func:`load` (results are cached), so treat them as read-only: clone before
    modifying in place.
    """

    name: str
    x_train: torch.Tensor  # uint8, N×C×H×W, contiguous
    y_train: torch.Tensor  # int64, N
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str  # directory the files came from, or "torchvision-download"
    # Cache for fingerprint(); a frozen dataclass cannot use functools.cached_property.
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Fail at construction rather than deep inside a training loop.
        object.__setattr__(self, "classes", tuple(self.classes))
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"x_{split} must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(f"y_{split} must be int64 of shape (N,), got {y.dtype} {tuple(y.shape)}")
            if len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train images {tuple(self.x_train.shape[1:])} and test images "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )

    def __repr__(self) -> str:
        # The generated repr would print tensor contents; shapes are what one wants to see.
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, classes={self.num_classes}, source={self.source!r})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (length of :attr:`classes`)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Image channels C (1 for fmnist, 3 for CIFAR)."""
        return int(self.x_train.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """Image size (H, W)."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def fingerprint(self) -> str:
        """First 16 hex digits of a sha256 over name, shapes and raw tensor bytes.

        Identifies the exact data an experiment ran on.  Computed once and cached on
        the instance (the tensors are assumed not to be modified in place).
        """
        if self._fingerprint is None:
            tensors = (self.x_train, self.y_train, self.x_test, self.y_test)
            h = hashlib.sha256()
            h.update(self.name.encode() + b"\0")
            h.update(repr([tuple(t.shape) for t in tensors]).encode() + b"\0")
            for t in tensors:
                arr = t.detach().cpu().contiguous().numpy()
                # Fixed little-endian byte order so the value is the same on every host.
                arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
                h.update(memoryview(arr).cast("B"))
            object.__setattr__(self, "_fingerprint", h.hexdigest()[:16])
        assert self._fingerprint is not None
        return self._fingerprint


# --------------------------------------------------------------------------- paths


def data_root() -> Path:
    """Directory holding datasets: ``$BDLIB_DATA`` if set (and non-empty), else ``~/.cache/bdlib/data``."""
    env = os.environ.get("BDLIB_DATA", "").strip()
    return Path(env).expanduser() if env else Path("~/.cache/bdlib/data").expanduser()


# --------------------------------------------------------------------------- idx


# idx type code (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    """Bytes of ``path``, transparently gunzipped (detected by magic, not by suffix)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt gzip data ({e})") from e


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (as used by MNIST / Fashion-MNIST), gzipped or plain.

    Header: two zero bytes, a type code, the number of dimensions, then one
    big-endian uint32 per dimension.  Returns a writable array in native byte order.
    Raises ValueError if the file is not a well-formed idx file.
    """
    path = Path(path)
    buf = _read_maybe_gzip(path)
    if len(buf) < 4:
        raise ValueError(f"{path}: not an idx file (only {len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    code, ndim = buf[2], buf[3]
    if buf[0] != 0 or buf[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad idx magic number 0x{magic:08x}; expected 0x0000TTDD with type "
            f"TT in {{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and DD>=1 dimensions "
            "(e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: truncated idx header ({len(buf)} bytes, need {header})")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) - header != expected:
        raise ValueError(
            f"{path}: idx header says shape {dims} of {dtype.name} ({expected} bytes) "
            f"but the file holds {len(buf) - header} data bytes"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    # astype copies: gives a writable array (torch.from_numpy warns on read-only) in native order.
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


# --------------------------------------------------------------------------- restricted pickle


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Take the array-rebuilding helpers from numpy's own reducers rather than importing
    # numpy.core (deprecated alias in numpy 2) or numpy._core (absent in numpy 1).
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol-5 array rebuild: _frombuffer(buf, dtype, shape, order)
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol <3 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): __import__("_codecs").encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    # Plain value constructors: calling them cannot run foreign code.
    for mod in ("builtins", "__builtin__"):
        for t in (set, frozenset, bytearray, complex, slice, range):
            allowed[(mod, t.__name__)] = t
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays.

    Every code path by which a pickle can reach a callable (GLOBAL, STACK_GLOBAL,
    INST, OBJ, EXT*) goes through find_class, so refusing here blocks code execution.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global '{module}.{name}' in pickle (only numpy array data is allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in dataset pickles")


def _safe_unpickle(f: BinaryIO) -> Any:
    """Load a pickle that may only contain plain containers and numpy arrays."""
    # encoding="bytes": the CIFAR files are Python 2 pickles whose str keys become bytes.
    return _RestrictedUnpickler(f, encoding="bytes").load()


def _load_pickle_file(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            obj = _safe_unpickle(f)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}") from e
        except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"{path}: not a valid CIFAR python pickle ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _get(d: dict, key: str, path: Path) -> Any:
    """``d[key]`` whether the pickle stored the key as bytes (Python 2) or str."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: key {key!r} missing (found {sorted(map(repr, d))})")


def _names(seq: Any) -> tuple[str, ...]:
    return tuple(s.decode() if isinstance(s, (bytes, bytearray)) else str(s) for s in seq)


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle_file(path)
    data = np.asarray(_get(d, "data", path))
    labels = np.asarray(_get(d, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 N×3072, got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
    # Rows are the R plane, then G, then B, each 32×32 row-major: exactly C×H×W order.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# --------------------------------------------------------------------------- readers


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    def own(a: np.ndarray, dtype: type) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=dtype)
        # Protocol-5 pickles rebuild read-only views on the file bytes; torch needs writable memory.
        return a if a.flags.writeable else a.copy()

    return torch.from_numpy(own(x, np.uint8)), torch.from_numpy(own(y, np.int64))


def _fmnist_files(d: Path) -> dict[str, Path] | None:
    """The four idx files in ``d`` (gz preferred, plain accepted), or None if any is missing."""
    found = {}
    for key, stem in _FMNIST_FILES.items():
        for cand in (d / f"{stem}.gz", d / stem):
            if cand.is_file():
                found[key] = cand
                break
        else:
            return None
    return found


def _read_fmnist(files: dict[str, Path], source: str) -> Dataset:
    arrays = {}
    for split in ("train", "test"):
        x, y = read_idx(files[f"x_{split}"]), read_idx(files[f"y_{split}"])
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{files[f'x_{split}']}: expected uint8 N×28×28 images, got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{files[f'y_{split}']}: expected {len(x)} integer labels, got {y.dtype} {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= len(FMNIST_CLASSES)):
            raise ValueError(f"{files[f'y_{split}']}: labels outside 0..{len(FMNIST_CLASSES) - 1}")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _to_tensors(x[:, None], y)
    return Dataset(name="fmnist", classes=FMNIST_CLASSES, source=source, **arrays)


def _has_all(d: Path, names: Sequence[str]) -> bool:
    return all((d / n).is_file() for n in names)


def _read_cifar10(d: Path, source: str) -> Dataset:
    meta = _load_pickle_file(d / "batches.meta")
    classes = _names(_get(meta, "label_names", d / "batches.meta"))
    parts = [_cifar_batch(d / f"data_batch_{i}", "labels", len(classes)) for i in range(1, 6)]
    x_tr, y_tr = _to_tensors(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    x_te, y_te = _to_tensors(*_cifar_batch(d / "test_batch", "labels", len(classes)))
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, classes, source)


def _read_cifar100(d: Path, source: str) -> Dataset:
    meta = _load_pickle_file(d / "meta")
    classes = _names(_get(meta, "fine_label_names", d / "meta"))
    x_tr, y_tr = _to_tensors(*_cifar_batch(d / "train", "fine_labels", len(classes)))
    x_te, y_te = _to_tensors(*_cifar_batch(d / "test", "fine_labels", len(classes)))
    return Dataset("cifar100", x_tr, y_tr, x_te, y_te, classes, source)


# --------------------------------------------------------------------------- system / download


def _run_dpkg_list(package: str) -> list[str]:
    """Paths installed by a Debian package (``dpkg -L``); empty if unknown or no dpkg."""
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


def _fmnist_system_dirs() -> list[Path]:
    """Where the Debian package put the files: the standard dir, else what dpkg lists."""
    if _fmnist_files(_SYSTEM_FMNIST_DIR) is not None:
        return [_SYSTEM_FMNIST_DIR]
    dirs: list[Path] = [_SYSTEM_FMNIST_DIR]  # still reported in "Looked in"
    stem = _FMNIST_FILES["x_train"]
    for line in _run_dpkg_list(_FMNIST_DEB_PACKAGE):
        p = Path(line.strip())
        if p.name in (stem, stem + ".gz") and p.parent not in dirs:
            dirs.append(p.parent)
    return dirs


def _download(name: str, root: Path) -> Path:
    """Fetch ``name`` with torchvision into ``root``; return the directory holding its files.

    The only function in this module that touches the network (tests replace it).
    """
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    if name == "fmnist":
        # Its constructor parses idx files itself (no pickle), so it is safe to use as-is.
        tvd.FashionMNIST(str(root), train=True, download=True)
        return root / "FashionMNIST" / "raw"
    # For CIFAR, call the archive download directly: the dataset constructors would
    # unpickle the batches with the unrestricted pickle module.
    cls, folder = {"cifar10": (tvd.CIFAR10, _CIFAR10_DIR), "cifar100": (tvd.CIFAR100, _CIFAR100_DIR)}[name]
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    return root / folder


def _describe(d: Path, names: Sequence[str]) -> str:
    if not d.exists():
        return f"{d} (does not exist)"
    missing = [n for n in names if not (d / n).is_file()]
    return f"{d} (missing {', '.join(missing)})" if missing else str(d)


def _not_found(name: str, looked: list[str], download_note: str) -> DataNotFound:
    where = "; ".join(looked)
    if name == "fmnist":
        how = (
            "Install it with `sudo apt-get install dataset-fashion-mnist`, or put the four idx "
            "files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte; .gz or uncompressed) in $BDLIB_DATA/fashion-mnist/, "
            "or allow torchvision to download it (network needed)."
        )
        title = "Fashion-MNIST"
    else:
        title, folder, archive, files = {
            "cifar10": ("CIFAR-10", _CIFAR10_DIR, "cifar-10-python.tar.gz", _CIFAR10_FILES),
            "cifar100": ("CIFAR-100", _CIFAR100_DIR, "cifar-100-python.tar.gz", _CIFAR100_FILES),
        }[name]
        how = (
            f"Download the python version ({archive}) from https://www.cs.toronto.edu/~kriz/cifar.html, "
            f"extract it so that the directory {folder}/ (files {', '.join(files)}) sits inside some "
            "directory D, and set "
            f"BDLIB_DATA=D ($BDLIB_DATA must point to the parent of {folder}/, currently {data_root()}); "
            "or allow torchvision to download it (network needed)."
        )
    return DataNotFound(f"{title} not found. Looked in: {where}. {how} {download_note}")


def _describe_fmnist(d: Path) -> str:
    if not d.exists():
        return f"{d} (does not exist)"
    missing = [s for s in _FMNIST_FILES.values() if not ((d / s).is_file() or (d / f"{s}.gz").is_file())]
    return f"{d} (missing {', '.join(f'{m}[.gz]' for m in missing)})"


def _read_fmnist_dir(d: Path, source: str) -> Dataset:
    files = _fmnist_files(d)
    if files is None:
        raise DataNotFound(f"Fashion-MNIST download finished but {_describe_fmnist(d)}")
    return _read_fmnist(files, source)


def _resolve_and_read(name: str, root: Path, download: bool) -> Dataset:
    looked: list[str] = []
    if name == "fmnist":
        # Order: user's dir, Debian package, an earlier torchvision download.
        for d in [root / "fashion-mnist", *_fmnist_system_dirs(), root / "FashionMNIST" / "raw"]:
            files = _fmnist_files(d)
            if files is not None:
                return _read_fmnist(files, str(d))
            looked.append(_describe_fmnist(d))
        read = _read_fmnist_dir
    else:
        folder, names, read = {
            "cifar10": (_CIFAR10_DIR, _CIFAR10_FILES, _read_cifar10),
            "cifar100": (_CIFAR100_DIR, _CIFAR100_FILES, _read_cifar100),
        }[name]
        d = root / folder  # also where torchvision extracts its download
        if _has_all(d, names):
            return read(d, str(d))
        looked.append(_describe(d, names))

    if not download:
        raise _not_found(name, looked, "(Download was not attempted: download=False.)")
    try:
        d = _download(name, root)
    except Exception as e:  # any failure (offline, DNS, bad checksum, no torchvision) means "not found"
        raise _not_found(name, looked, f"(Download via torchvision failed: {type(e).__name__}: {e})") from e
    return read(d, _DOWNLOAD_SOURCE)


@functools.cache
def _load_cached(name: str, root: str, download: bool) -> Dataset:
    # Loading takes seconds (gunzip/unpickle + copies), so reuse within a process.
    # Failures raise and are therefore not cached: a later call looks again.
    return _resolve_and_read(name, Path(root), download)


def clear_cache() -> None:
    """Forget every dataset loaded so far in this process (e.g. after changing files on disk)."""
    _load_cached.cache_clear()


def load(name: str, *, download: bool = True) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`), from disk if possible.

    ``download=False`` never touches the network.  Raises ValueError for an unknown
    name, DataNotFound when no copy exists and none could be downloaded, and
    ValueError / pickle.UnpicklingError for a malformed or unsafe file.  Results are
    cached per (name, data root).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is unknown; choose one of: {', '.join(DATASETS)}")
    root = str(data_root().resolve())
    return _load_cached(name, root, bool(download))


# --------------------------------------------------------------------------- index sampling


def _as_labels(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor, got {getattr(y, 'shape', type(y))}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integers, got {y.dtype}")
    return y.detach().cpu().long()


def _allocate(avail: list[int], n: int, g: torch.Generator) -> list[int]:
    """Split ``n`` over classes proportionally to ``avail`` (largest remainder method).

    Exact integer arithmetic; ties in the remainder are broken randomly by ``g`` so no
    class is systematically favoured.  Never exceeds ``avail[k]`` when n <= sum(avail).
    """
    total = sum(avail)
    tie = torch.rand(len(avail), generator=g).tolist()
    if total == 0 or n == 0:
        return [0] * len(avail)
    base = [a * n // total for a in avail]
    rem = [a * n % total for a in avail]
    extra = n - sum(base)
    order = sorted(range(len(avail)), key=lambda k: (-rem[k], tie[k]))
    for k in order[:extra]:
        base[k] += 1
    return base


def split_indices(y: torch.Tensor, sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Disjoint, class-stratified index sets of the given sizes (sorted LongTensors).

    Used for clean-subset views and held-out attacker data.  Each set's class counts
    are proportional to what is left of each class (for balanced labels they differ
    by at most one).  Deterministic given ``seed``.  ValueError if a size is negative
    or the sizes add up to more than ``len(y)``.
    """
    y = _as_labels(y)
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"sizes must be non-negative, got {sizes}")
    if sum(sizes) > len(y):
        raise ValueError(f"sizes {sizes} add up to {sum(sizes)} > {len(y)} available samples")
    g = torch.Generator().manual_seed(int(seed))
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    # A random permutation stably sorted by class: each class's indices, in random order, contiguous.
    perm = torch.randperm(len(y), generator=g)
    order = perm[torch.argsort(inverse[perm], stable=True)]
    counts_l = counts.tolist()
    starts = [0]
    for c in counts_l[:-1]:
        starts.append(starts[-1] + c)
    taken = [0] * len(counts_l)
    out = []
    for size in sizes:
        quota = _allocate([c - t for c, t in zip(counts_l, taken)], size, g)
        parts = [order[starts[k] + taken[k] : starts[k] + taken[k] + q] for k, q in enumerate(quota) if q]
        idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        out.append(torch.sort(idx).values)
        taken = [t + q for t, q in zip(taken, quota)]
    return out


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int, *, stratified: bool = True) -> torch.Tensor:
    """Sorted LongTensor of ``n`` indices into (x, y), deterministic by ``seed``.

    Stratified by default (class counts proportional, as equal as possible).
    ``n=None`` or ``n >= len(y)`` gives all indices; ``n <= 0`` is a ValueError.
    """
    y = _as_labels(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if n is not None and n <= 0:
        raise ValueError(f"n must be positive (or None for all), got {n}")
    if n is None or n >= len(y):
        return torch.arange(len(y), dtype=torch.long)
    if stratified:
        return split_indices(y, [n], seed)[0]
    g = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(len(y), generator=g)[:n]).values
