"""Saving figures (PNG + PDF, no volatile metadata), metrics JSON, and ``figures/manifest.json``.

A saved figure is also shown in the notebook that saved it (the PNG just written, so the reader
sees the file), executed copies included. Where files go is ``bdlib.paths.figures_dir``:
``$BDLIB_FIGURES`` (the runner sets it from ``--figures``), else ``figures/`` of the user's
project for profile ``quick`` and ``build/figures/<profile>/`` for the others. The runner also
passes ``BDLIB_NOTEBOOK`` and ``BDLIB_PARAMETERS`` for the manifest, which lists each saved
file with its notebook, profile, parameters, config key and the seconds spent since the
previous figure (or the notebook's set-up).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from bdlib import paths, progress
from bdlib.config import Config, as_dict
from bdlib.store import UMASK, canonical_json, disk_full_named

_clock = {"last": time.perf_counter()}
# A saved PNG (150 dpi) is shown at the size matplotlib's inline backend (100 dpi) would give it.
_SHOWN_SCALE = 100 / 150


def start_clock() -> None:
    """Called by ``bdlib.setup``: the first figure's seconds count from here."""
    _clock["last"] = time.perf_counter()


# Fields that enter the key only when changed from these defaults, so the keys of runs that leave
# them alone stayed what they were before the fields existed: the kernel choices, and fields added
# later. Dotted paths into ``as_dict(cfg)`` -> default.
_OMITTED_AT_DEFAULT = {
    "deterministic": True,
    "compile": False,
    "tuning.grid_points": None,
    "tuning.defenses": None,
    "extra_seeds": [3, 4],
    "embedding_points": 1500,
}


def config_key(cfg: Config) -> str:
    import hashlib

    fields = as_dict(cfg)
    for dotted, default in _OMITTED_AT_DEFAULT.items():
        *groups, name = dotted.split(".")
        parent = fields
        for g in groups:
            parent = parent[g]
        if parent.get(name, default) == default:
            parent.pop(name, None)
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    with disk_full_named(path.parent, "figures directory"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private; a figure is for everyone
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save(fig: Any, name: str, cfg: Config) -> list[Path]:
    """Write ``name``.png and ``name``.pdf, record them in the manifest, and show the figure
    in the notebook (in a Jupyter kernel); then close it, so it is shown once."""
    import io

    import matplotlib.pyplot as plt

    out = paths.figures_dir(cfg.profile)
    written, blobs = [], {}
    for ext, meta in (("png", {"Software": None}), ("pdf", {"Creator": None, "Producer": None, "CreationDate": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        blobs[ext] = buf.getvalue()
        path = out / f"{name}.{ext}"
        _atomic_write(path, blobs[ext])
        written.append(path)
    _record(name, {"files": [p.name for p in written]}, cfg)
    _show(name, blobs["png"])
    plt.close(fig)
    return written


def _show(name: str, png: bytes) -> None:
    """Display the saved PNG in the running notebook (nothing outside a Jupyter kernel)."""
    if progress.kernel_shell() is None:
        return
    import base64
    import struct

    from IPython.display import display

    width = struct.unpack(">I", png[16:20])[0]  # the PNG header's IHDR width
    bundle = {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<figure {name}>"}
    display(bundle, raw=True, metadata={"image/png": {"width": round(width * _SHOWN_SCALE)}, "bdlib_figure": name})


def save_metrics(name: str, metrics: Any, cfg: Config) -> Path:
    """Write ``name``.json (the numbers behind a notebook's figures) and record it."""
    path = paths.figures_dir(cfg.profile) / f"{name}.json"
    body = {"profile": cfg.profile, "config_key": config_key(cfg), "metrics": metrics}
    _atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    _record(name, {"files": [path.name]}, cfg)
    return path


def _record(name: str, entry: dict, cfg: Config) -> None:
    now = time.perf_counter()
    seconds, _clock["last"] = now - _clock["last"], now
    entry = {
        **entry,
        "notebook": os.environ.get("BDLIB_NOTEBOOK", "interactive"),
        "profile": cfg.profile,
        "parameters": json.loads(os.environ.get("BDLIB_PARAMETERS", "{}")),
        "config_key": config_key(cfg),
        "seconds": round(seconds, 2),
    }
    path = paths.figures_dir(cfg.profile) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest[name] = entry
        _atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def publish(staging: Path, dest: Path) -> list[Path]:
    """Move a finished run's files from ``staging`` into ``dest`` and merge its manifest entries
    into ``dest``/manifest.json (the runner stages each notebook's output, so that a failed run
    leaves ``dest`` as it was). Returns the files moved."""
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in sorted(staging.iterdir()):
        if f.is_file() and f.name != "manifest.json" and not f.name.endswith(".lock"):
            os.replace(f, dest / f.name)
            moved.append(dest / f.name)
    staged = staging / "manifest.json"
    if staged.exists():
        path = dest / "manifest.json"
        with FileLock(str(path) + ".lock"):
            manifest = json.loads(path.read_text()) if path.exists() else {}
            manifest.update(json.loads(staged.read_text()))
            _atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return moved
