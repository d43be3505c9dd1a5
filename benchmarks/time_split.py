"""Where a cold run's time went: the store's recorded seconds, summed by kind of work.

Every stored result records the wall time of its computation (``seconds`` in its meta.json), so
the store a cold ``make figures`` filled is a profile of that run: victims and triggers, each
defense's cells, and each cached stage (NT-ML's NT models, MCLDef's inversions, ANP's masks,
NAD's teachers) apart. A stage's seconds are also inside the defended model that first computed
it; the table subtracts them there, so the rows add up to the computing time.

    python benchmarks/time_split.py [STORE] [--markdown] [--used figures/provenance.json]

STORE defaults to ``$BDLIB_CACHE`` or the project's ``.bdlib-cache``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", nargs="?", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (for benchmarks/README.md)")
    ap.add_argument(
        "--used", type=Path, default=None, help="a provenance.json: count only the results its figures used"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
