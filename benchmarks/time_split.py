"""Where a cold run's time went: the store's recorded seconds, summed by kind of work.

Every stored result records the wall time of its computation (``seconds`` in its meta.json), so
the store a cold ``make figures`` filled is a profile of that run: victims and triggers, each
defense's cells, and each cached stage (NT-ML's NT models, MCLDef's inversions, ANP's masks,
NAD's teachers) apart. A stage's seconds are also inside the defended model that first computed
it; the table subtracts them there, so the rows add up to the computing time.

    python benchmarks/time_split.py [STORE] [--markdown] [--used figures/provenance.json]
        [--executed build/executed]

With ``--executed`` (the executed notebooks of the run that filled the store, with papermill's
timestamps), a second table splits each notebook's wall time into its kernel's start-up, the
results computed while it ran (by their ``created`` time) and the rest: loading results,
evaluations, embeddings and figures.

STORE defaults to ``$BDLIB_CACHE`` or the project's ``.bdlib-cache``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from bdlib import paths


def work(meta: dict) -> str:
    """A result's kind of work: ``victim``, ``trigger``, ``ft cell``, ``ntml stage nt``, ..."""
    kind, spec = meta.get("kind", "?"), meta.get("spec", {})
    if kind == "poisoned_model":
        return "victim"
    if kind == "defended_model":
        return f"{spec.get('defense')} cell"
    if kind == "defense_stage":
        return f"{spec.get('defense')} stage {spec.get('stage')}"
    return kind


def split(store: Path, keys: set[str] | None = None) -> dict[str, dict[str, float]]:
    """``{work: {"n": count, "seconds": own seconds}}`` over every entry of ``store`` (only those of
    ``keys`` when given: the results the committed figures used, from ``figures/provenance.json``)."""
    metas = [json.loads(p.read_text()) for p in store.glob("??/*/meta.json") if keys is None or p.parent.name in keys]
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "seconds": 0.0})
    # A stage is computed inside the first defended cell of its victim and defense: its seconds
    # are counted once, under the stage, and taken off that defense's cells.
    stages: dict[str, float] = defaultdict(float)
    for m in metas:
        w = work(m)
        out[w]["n"] += 1
        out[w]["seconds"] += float(m.get("seconds", 0.0))
        if m.get("kind") == "defense_stage":
            stages[f"{m['spec'].get('defense')} cell"] += float(m.get("seconds", 0.0))
    for cell, seconds in stages.items():
        if cell in out:
            out[cell]["seconds"] = max(0.0, out[cell]["seconds"] - seconds)
    return dict(out)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def by_notebook(store: Path, executed: Path) -> list[dict]:
    """Per executed notebook: wall seconds, its kernel's start-up (until the first cell ran), the
    own seconds of the results created while it ran (stages taken off their cells, as in
    :func:`split`), and the rest."""
    metas = [json.loads(p.read_text()) for p in store.glob("??/*/meta.json")]
    rows = []
    for nb_path in sorted(executed.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        pm = nb["metadata"].get("papermill", {})
        if not pm.get("start_time") or not pm.get("end_time"):
            continue
        start, end = _time(pm["start_time"]), _time(pm["end_time"])
        cells = [c["metadata"].get("papermill", {}) for c in nb["cells"] if c["cell_type"] == "code"]
        first = min((_time(c["start_time"]) for c in cells if c.get("start_time")), default=start)
        mine = [m for m in metas if "created" in m and start <= _time(m["created"]) <= end]
        computed = sum(float(m.get("seconds", 0.0)) for m in mine if m.get("kind") != "defense_stage")
        wall = (end - start).total_seconds()
        start_up = (first - start).total_seconds()
        rows.append(
            {
                "notebook": nb_path.stem,
                "wall": wall,
                "start-up": start_up,
                "computed": computed,
                "results": len(mine),
                "rest": wall - start_up - computed,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", nargs="?", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (for benchmarks/README.md)")
    ap.add_argument(
        "--used", type=Path, default=None, help="a provenance.json: count only the results its figures used"
    )
    ap.add_argument(
        "--executed", type=Path, default=None, help="the run's executed notebooks: a per-notebook table too"
    )
    args = ap.parse_args(argv)
    store = args.store or paths.cache_dir()
    keys = None
    if args.used:
        keys = {k for entry in json.loads(args.used.read_text()).values() for k in entry["results"]}
    rows = sorted(split(store, keys).items(), key=lambda kv: -kv[1]["seconds"])
    total = sum(v["seconds"] for _, v in rows) or 1.0
    if args.markdown:
        print("| work | results | seconds | share |\n|---|---:|---:|---:|")
        for w, v in rows:
            print(f"| {w} | {v['n']:.0f} | {v['seconds']:,.0f} | {100 * v['seconds'] / total:.1f} % |")
        print(f"| all | {sum(v['n'] for _, v in rows):.0f} | {total:,.0f} | 100 % |")
    else:
        for w, v in rows:
            print(f"{w:<32} {v['n']:>5.0f} {v['seconds']:>9.1f} s {100 * v['seconds'] / total:5.1f} %")
        print(f"{'all':<32} {sum(v['n'] for _, v in rows):>5.0f} {total:>9.1f} s")
    if args.executed:
        nbs = by_notebook(store, args.executed)
        cols = ("wall", "start-up", "computed", "rest")
        print("\n| notebook | results computed | " + " | ".join(f"{c} s" for c in cols) + " |")
        print("|---|---:|" + "---:|" * len(cols))
        for r in nbs + [{"notebook": "all", **{k: sum(r[k] for r in nbs) for k in ("results", *cols)}}]:
            print(f"| {r['notebook']} | {r['results']} | " + " | ".join(f"{r[c]:,.0f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
