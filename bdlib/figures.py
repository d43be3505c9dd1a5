"""Saving figures (PNG + PDF, no volatile metadata), metrics JSON, and ``figures/manifest.json``.

The runner tells a notebook where to write through the environment (``BDLIB_FIGURES``,
``BDLIB_NOTEBOOK``, ``BDLIB_PARAMETERS``); run by hand, a notebook writes to ``figures/``.
Each saved figure is listed in the manifest with its notebook, profile, parameters, config key
and the seconds spent since the previous figure (or the notebook's set-up).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from bdlib.config import Config, as_dict
from bdlib.store import canonical_json

REPO = Path(__file__).resolve().parent.parent
_clock = {"last": time.perf_counter()}


def figures_dir() -> Path:
    return Path(os.environ.get("BDLIB_FIGURES", REPO / "figures"))


def start_clock() -> None:
    """Called by ``bdlib.setup``: the first figure's seconds count from here."""
    _clock["last"] = time.perf_counter()


# Kernel choices enter the key only when changed from these defaults, so the keys of runs that
# leave them alone stayed what they were before the fields existed.
_RUNTIME_DEFAULTS = {"deterministic": True, "compile": False}


def config_key(cfg: Config) -> str:
    import hashlib

    fields = {k: v for k, v in as_dict(cfg).items()
              if not (k in _RUNTIME_DEFAULTS and v == _RUNTIME_DEFAULTS[k])}
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(fig: Any, name: str, cfg: Config) -> list[Path]:
    """Write ``name``.png and ``name``.pdf and record them in the manifest."""
    import io

    import matplotlib.pyplot as plt

    out = figures_dir()
    paths = []
    for ext, meta in (("png", {"Software": None}),
                      ("pdf", {"Creator": None, "Producer": None, "CreationDate": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        path = out / f"{name}.{ext}"
        _atomic_write(path, buf.getvalue())
        paths.append(path)
    _record(name, {"files": [p.name for p in paths]}, cfg)
    plt.close(fig)
    return paths


def save_metrics(name: str, metrics: Any, cfg: Config) -> Path:
    """Write ``name``.json (the numbers behind a notebook's figures) and record it."""
    path = figures_dir() / f"{name}.json"
    body = {"profile": cfg.profile, "config_key": config_key(cfg), "metrics": metrics}
    _atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    _record(name, {"files": [path.name]}, cfg)
    return path


def _record(name: str, entry: dict, cfg: Config) -> None:
    now = time.perf_counter()
    seconds, _clock["last"] = now - _clock["last"], now
    entry = {**entry,
             "notebook": os.environ.get("BDLIB_NOTEBOOK", "interactive"),
             "profile": cfg.profile,
             "parameters": json.loads(os.environ.get("BDLIB_PARAMETERS", "{}")),
             "config_key": config_key(cfg),
             "seconds": round(seconds, 2)}
    path = figures_dir() / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest[name] = entry
        _atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
