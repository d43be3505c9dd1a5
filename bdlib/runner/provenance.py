"""Which code made the figures, and whether the current code would make them again.

Each notebook's run records, beside its figures (``provenance.json`` in the figures directory):
the fingerprint of the code its figures depend on, the normalised hash of each module in it
(:func:`bdlib.store.code_hash`: comments, docstrings and formatting do not count), and every
store result it used with the method modules that result depends on. The modules are:

* every module whose code a used result depends on (the core, and the attack and defense
  modules of the results the notebook used: :func:`bdlib.store.dependencies`);
* :data:`STUDY_MODULES`, the code that turns results into figures and sets the study up
  (profiles, the protocol, the ledger, the reports, the plots, the figure writer);
* the notebook's own code cells.

The store, the runner and its side channel are not among them: editing those changes no figure.
:func:`check` (``python -m bdlib status``) compares the record with the current code, without
training anything, and says which committed figures are stale, why, and how many results a
regeneration would compute.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from bdlib import paths, store
from bdlib.runner import notebooks

FILE = "provenance.json"

# The modules every notebook's figures depend on besides its results' own (see the docstring).
# The study and report packages count whole: every module in them, however many there are.
_PKG = Path(__file__).resolve().parents[1]  # the bdlib package (this module is bdlib/runner/provenance.py)
STUDY_MODULES = (
    "config.py",
    "profiles.py",
    "session.py",
    "attacks/__init__.py",
    "defenses/__init__.py",
    "cells.py",
    *sorted(p.relative_to(_PKG).as_posix() for pkg in ("study", "report") for p in (_PKG / pkg).glob("*.py")),
    "plots.py",
    "figures.py",
)
# Every method module's per-profile values (its ``PROFILES`` block, which its code hash leaves
# out: :func:`bdlib.store.normalised_source`), as one pseudo-module of the record.
PROFILE_VALUES = "attacks+defenses:PROFILES"
# A change in one of these may change any result's key (a profile value, a config default, how a
# notebook is set up): the regeneration count is then an upper bound.
SETTING_MODULES = ("config.py", "profiles.py", "session.py", PROFILE_VALUES)


def profile_values_hash() -> str:
    """sha256 (first 16 hex) of every attack's and defense's ``PROFILES`` block, as code: what
    their code hashes leave out (:func:`bdlib.store.declares_profiles`)."""
    h = hashlib.sha256()
    for path in sorted([*(_PKG / "attacks").glob("*.py"), *(_PKG / "defenses").glob("*.py")]):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if store.declares_profiles(node):
                h.update(f"{path.relative_to(_PKG).as_posix()}\0{ast.unparse(node)}\0".encode())
    return h.hexdigest()[:16]


def notebook_hash(stem: str) -> str | None:
    """sha256 (first 16 hex) of the committed notebook's code cells, or None if it is not one."""
    path = notebooks.NOTEBOOKS / f"{stem}.ipynb"
    if not path.is_file():
        return None
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n\0\n".join("".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "code")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()[:16]


def fingerprint(hashes: Mapping[str, str]) -> str:
    """One 16-hex fingerprint of ``{module: hash}``."""
    return hashlib.sha256(store.canonical_json(dict(hashes)).encode("ascii")).hexdigest()[:16]


def current(modules: list[str] | tuple[str, ...], stem: str) -> dict[str, str]:
    """The current hash of each module (``"missing"`` for one that is gone) and of the notebook."""
    out = {}
    for m in modules:
        if m.startswith("notebooks/"):
            continue
        if m == PROFILE_VALUES:
            out[m] = profile_values_hash()
            continue
        try:
            out[m] = store.code_hash(m)
        except (OSError, SyntaxError):
            out[m] = "missing"
    nb = notebook_hash(stem)
    if nb is not None:
        out[f"notebooks/{stem}.ipynb"] = nb
    return out


THROUGHPUT_ENV = "BDLIB_THROUGHPUT"  # the runner's measurement, handed to each notebook's kernel


def measure_throughput(n: int = 12000, epochs: int = 2) -> float:
    """This machine's training throughput, images/s: bdlib's loop training the small CNN on ``n``
    Fashion-MNIST images (quick's data, batch and model) for ``epochs`` epochs, the last one timed
    (steady state), as ``benchmarks/train_throughput.py`` reports it. A few seconds."""
    import time

    import torch

    from bdlib import data, models
    from bdlib.config import TrainConfig
    from bdlib.train import fit

    ds = data.load("fmnist")
    x, y = ds.x_train[:n], ds.y_train[:n]
    torch.manual_seed(0)
    model = models.build("smallcnn", 1, 10, "fmnist").to(memory_format=torch.channels_last)
    stamps = [time.perf_counter()]

    def tick(epoch: int, m: Any) -> dict:
        stamps.append(time.perf_counter())
        return {}

    fit(model, x, y, TrainConfig(epochs=epochs, batch_size=128, lr=0.05, crop_pad=0), seed=0, on_epoch=tick)
    return len(y) / (stamps[-1] - stamps[-2])


def record(stem: str) -> dict[str, Any]:
    """What this process's notebook ``stem`` used so far: its code fingerprint, the hash of each
    module its figures depend on, and each store result with the method modules it depends on
    (the core modules, which every result depends on, left out)."""
    core = set(store.CORE_MODULES)
    modules = set(STUDY_MODULES) | core | {PROFILE_VALUES}
    results = {}
    for key, (kind, deps) in sorted(store.USED.items()):
        modules |= deps
        results[key] = [kind, sorted(deps - core)]
    hashes = current(sorted(modules), stem)
    made = {"date": time.strftime("%Y-%m-%d", time.gmtime())}
    if os.environ.get(THROUGHPUT_ENV):
        made["throughput"] = round(float(os.environ[THROUGHPUT_ENV]))
    return {"code": fingerprint(hashes), **made, "modules": hashes, "results": results}


def stale(entry: Mapping[str, Any], now: Mapping[str, str]) -> dict[str, Any]:
    """Compare one notebook's record with the current hashes ``now`` (of the same modules):
    ``{"changed": [module, ...], "results": n}``, n the recorded results that depend on a changed
    module (every result depends on the core; method modules per result)."""
    changed = sorted(m for m, h in entry["modules"].items() if now.get(m) != h)
    core = set(store.CORE_MODULES) | set(SETTING_MODULES)
    if core & set(changed):
        n = len(entry["results"])
    else:
        n = sum(1 for kind, deps in entry["results"].values() if set(deps) & set(changed))
    return {"changed": changed, "results": n}


def check(figures: Path | None = None) -> list[dict[str, Any]]:
    """Per committed notebook: ``{"notebook", "state", "why", "results"}`` where state is
    ``current``, ``stale`` or ``missing``, for the figures of profile quick in ``figures``."""
    figures = figures or paths.figures_dir()
    try:
        manifest = json.loads((figures / "manifest.json").read_text(encoding="utf-8"))
    except OSError:
        manifest = {}
    try:
        recorded = json.loads((figures / FILE).read_text(encoding="utf-8"))
    except OSError:
        recorded = {}
    out = []
    for path in notebooks.notebooks():
        stem = path.stem
        mine = {k: v for k, v in manifest.items() if v.get("notebook") == stem}
        defaults = notebooks.parameters(path)
        row = {"notebook": stem, "state": "current", "why": "", "results": 0}
        entry = recorded.get(stem)
        if not mine:
            row.update(state="missing", why="no figure of it in the manifest")
        elif any(v.get("profile") != paths.DEFAULT_PROFILE for v in mine.values()):
            row.update(state="stale", why="made on another profile")
        elif any(any(defaults.get(k) != v for k, v in e.get("parameters", {}).items()) for e in mine.values()):
            row.update(state="stale", why="made with parameters other than the notebook's defaults")
        elif entry is None:
            row.update(state="stale", why="made before provenance was recorded (no entry in provenance.json)")
        elif any(not (figures / f).exists() for e in mine.values() for f in e.get("files", [])):
            row.update(state="missing", why="a file the manifest lists is not there")
        else:
            diff = stale(entry, current(sorted(entry["modules"]), stem))
            if diff["changed"]:
                row.update(
                    state="stale",
                    why="changed since: " + ", ".join(diff["changed"]),
                    results=diff["results"],
                )
        out.append(row)
    return out


def main() -> int:
    """``python -m bdlib status``: which committed figures the current code would not reproduce."""
    figures = paths.figures_dir()
    rows = check(figures)
    width = max(len(r["notebook"]) for r in rows) if rows else 0
    for r in rows:
        if r["state"] == "current":
            print(f"{r['notebook']:<{width}}  current")
        else:
            redo = f"; a regeneration computes about {r['results']} result(s)" if r["results"] else ""
            print(f"{r['notebook']:<{width}}  {r['state']}: {r['why']}{redo}")
    bad = [r for r in rows if r["state"] != "current"]
    print(
        f"{len(rows) - len(bad)} of {len(rows)} notebooks' figures in {figures} are what the current code makes"
        + ("" if not bad else "; `make figures` regenerates them"),
        file=sys.stdout,
    )
    return 1 if bad else 0


__all__ = [
    "FILE",
    "STUDY_MODULES",
    "THROUGHPUT_ENV",
    "measure_throughput",
    "check",
    "current",
    "fingerprint",
    "main",
    "notebook_hash",
    "record",
    "stale",
]
