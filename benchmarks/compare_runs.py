"""Compare two regenerations of notebook 06's grid: per-cell differences and every ledger verdict.

    python benchmarks/compare_runs.py figures/06_comparisons.json other/06_comparisons.json

Either file is a metrics JSON written by notebook 06 (``figures/06_comparisons.json``) or a
JSON object with a ``main`` (or ``grid``) list of grid rows. The ledger is recomputed from each
file's rows with the same code (``bdlib.study.claims.ledger``), so the comparison is of the results,
not of what each run printed. Exit status 1 when a verdict differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bdlib.study import claims


def rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    data = data.get("metrics", data)
    for key in ("grid", "main"):
        if key in data:
            return data[key]
    raise SystemExit(f"{path}: no 'grid' or 'main' rows (is it notebook 06's metrics JSON?)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    ra, rb = rows(args.a), rows(args.b)
    key = lambda r: (r["attack"], r["defense"], r["seed"], r["clean_fraction"])  # noqa: E731
    ia, ib = {key(r): r for r in ra}, {key(r): r for r in rb}
    both = sorted(set(ia) & set(ib))
    print(f"{len(both)} cells in both ({len(ia)} in {args.a}, {len(ib)} in {args.b})")
    for m in ("BA", "ASR"):
        d = sorted(abs(ia[k][m] - ib[k][m]) for k in both)
        worst = max(both, key=lambda k: abs(ia[k][m] - ib[k][m]))
        print(
            f"|Δ{m}|: median {statistics.median(d):.1f}, 90th percentile {d[int(0.9 * (len(d) - 1))]:.1f}, "
            f"max {d[-1]:.1f} ({worst[0]} / {worst[1]} / seed {worst[2]}: {ia[worst][m]:.1f} vs {ib[worst][m]:.1f})"
        )
    la = {e["id"]: e for e in claims.ledger([ia[k] for k in both])}
    lb = {e["id"]: e for e in claims.ledger([ib[k] for k in both])}
    changed = 0
    for cid in la:
        same = la[cid]["verdict"] == lb[cid]["verdict"]
        changed += not same
        print(f"{cid:>18}: {la[cid]['verdict']:<12} {lb[cid]['verdict']:<12} {'' if same else 'CHANGED'}")
    print("no verdict changed" if not changed else f"{changed} verdict(s) changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
