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
from bdlib.files import UMASK, disk_full_named
from bdlib.runner import notebooks, provenance
from bdlib.store import canonical_json

_clock = {"last": time.perf_counter()}
# The parameter values the running notebook's kernel ran with (``bdlib.setup`` reads them from
# the kernel: the parameters cell, papermill's injected cell applied); None outside a kernel.
_ran: dict[str, Any] = {"parameters": None}
# A saved PNG (150 dpi) is shown at the size matplotlib's inline backend (100 dpi) would give it.
_SHOWN_SCALE = 100 / 150


def start_clock(parameters: dict[str, Any] | None = None) -> None:
    """Called by ``bdlib.setup``: the first figure's seconds count from here; ``parameters`` are
    the values the notebook runs with, when the kernel knows them (:func:`bdlib.session.ran_parameters`)."""
    _clock["last"] = time.perf_counter()
    _ran["parameters"] = parameters


def _notebook(name: str) -> Path | None:
    """The committed notebook a figure ``name`` belongs to: ``$BDLIB_NOTEBOOK`` (the runner's), else
    the one whose number starts the name (``04_detection`` -> ``04_none``); None for neither."""
    stem = os.environ.get("BDLIB_NOTEBOOK")
    found = [p for p in notebooks.notebooks() if (p.stem == stem if stem else name.startswith(p.stem[:3]))]
    return found[0] if len(found) == 1 else None


def _parameters() -> dict[str, Any] | None:
    given = os.environ.get("BDLIB_PARAMETERS")
    return json.loads(given) if given is not None else _ran["parameters"]


def committed_run(name: str, cfg: Config) -> bool:
    """Whether a figure ``name`` comes from the committed configuration: profile quick and its
    notebook's default parameters (every value the run was given equals the notebook's default).
    A run with other parameters, an edited parameters cell, or outside a known notebook is not."""
    nb, given = _notebook(name), _parameters()
    if cfg.profile != paths.DEFAULT_PROFILE or nb is None or given is None:
        return False
    defaults = notebooks.parameters(nb)
    return all(k in defaults and defaults[k] == v for k, v in given.items())


def directory(name: str, cfg: Config) -> Path:
    """Where figure ``name`` goes: ``$BDLIB_FIGURES`` (the runner's staging directory, or the
    user's choice), else ``figures/`` for the committed configuration (:func:`committed_run`) and
    ``build/figures/<profile>/`` for any other run (:func:`bdlib.paths.figures_dir`)."""
    return paths.figures_dir(cfg.profile, committed=committed_run(name, cfg))


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


def save(fig: Any, name: str, cfg: Config) -> None:
    """Write ``name``.png and ``name``.pdf, record them in the manifest, and show the figure
    in the notebook (in a Jupyter kernel); then close it, so it is shown once. Returns nothing,
    so a notebook cell ending in ``figures.save(...)`` shows the figure and no list of paths."""
    import io

    import matplotlib.pyplot as plt

    out = directory(name, cfg)
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
    path = directory(name, cfg) / f"{name}.json"
    body = {"profile": cfg.profile, "config_key": config_key(cfg), "metrics": metrics}
    _atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    _record(name, {"files": [path.name]}, cfg)
    return path


def _record(name: str, entry: dict, cfg: Config) -> None:
    now = time.perf_counter()
    seconds, _clock["last"] = now - _clock["last"], now
    nb = _notebook(name)
    stem = os.environ.get("BDLIB_NOTEBOOK") or (nb.stem if nb is not None else "interactive")
    given = _parameters()
    code = provenance.record(stem)
    entry = {
        **entry,
        "notebook": stem,
        "profile": cfg.profile,
        # The values the run was given; "unknown" where neither the runner nor the kernel knows them.
        "parameters": given if given is not None else "unknown",
        "config_key": config_key(cfg),
        "code": code["code"],
        "seconds": round(seconds, 2),
    }
    out = directory(name, cfg)
    out.mkdir(parents=True, exist_ok=True)
    _merge(out / "manifest.json", {name: entry})
    _merge(out / provenance.FILE, {stem: code})


def _merge(path: Path, entries: dict) -> None:
    """Update the JSON object in ``path`` with ``entries`` (locked, atomic)."""
    with FileLock(str(path) + ".lock"):
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc.update(entries)
        _atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def publish(staging: Path, dest: Path) -> list[Path]:
    """Move a finished run's files from ``staging`` into ``dest`` and merge its manifest entries
    into ``dest``/manifest.json (the runner stages each notebook's output, so that a failed run
    leaves ``dest`` as it was). Returns the files moved."""
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    merged = ("manifest.json", provenance.FILE)
    for f in sorted(staging.iterdir()):
        if f.is_file() and f.name not in merged and not f.name.endswith(".lock"):
            os.replace(f, dest / f.name)
            moved.append(dest / f.name)
    for name in merged:
        staged = staging / name
        if staged.exists():
            _merge(dest / name, json.loads(staged.read_text()))
    return moved
