"""Replay the protocol's pruning on a full sweep: does spending less choose the same?

A full sweep is every cell of the comparison protocol's grids and of NT-ML's readings sweep on
every tuning seed, none pruned. This applies ``tune.far_settings`` to its first tuning seed's
rows exactly as ``tune.spend`` does, for the profile's ``prune_factor`` and ``prune_margin`` and
the alternatives in :data:`RULES`, and prints per rule the cells run, their recorded seconds and
whether every choice (``tune.select`` per defense, ``readings.select_variant``) equals the full
sweep's.

    python benchmarks/prune_replay.py [ROWS]          # default: the committed sweep of 2026-12-07
    BDLIB_CACHE=STORE python benchmarks/prune_replay.py --dump ROWS [--profile quick]

``--dump`` reads the full sweep from a store that holds it (nothing is computed: a missing cell
is an error) and writes its rows; the committed file was dumped from the store of the
2026-12-07 cold run, before the pruning existed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bdlib.config import TuningConfig
from bdlib.study import readings, tune

ROWS = Path(__file__).parent / "data" / "protocol-sweep-quick-2026-12-07.json"
RULES = [(None, None), (2.0, None), (1.5, None), (1.5, 20.0), (1.5, 10.0), (1.0, None)]


def dump(profile: str, out: Path) -> None:
    from bdlib import attacks, defenses, store
    from bdlib import cells as C
    from bdlib.cells import label, tuning_cell
    from bdlib.session import setup

    cfg = setup(profile, progress=False)
    t = cfg.tuning
    grid = [
        tuning_cell(d, a, s, st)
        for d in tune.tuned(cfg, list(defenses.REGISTRY))
        for st in tune.settings(d, t.grid_points)
        for a in t.attacks
        for s in t.seeds
    ]
    variant = [
        tuning_cell("ntml", a, s, readings.variant_setting(v), label(v))
        for a in attacks.REGISTRY
        for s in readings.variant_seeds(cfg, a)
        for v in readings.variants()
    ]
    with store.probing():
        doc = {"profile": profile, "grid": C.run(cfg, grid), "readings": C.run(cfg, variant)}
    out.write_text(json.dumps(doc, indent=0, default=str) + "\n")
    print(f"{len(doc['grid'])} grid and {len(doc['readings'])} readings rows: {out}")


def kept(rows: list[dict], first: int, factor, margin, max_cost: float) -> list[dict]:
    far = tune.far_settings([r for r in rows if r["seed"] == first], max_cost, factor, margin)
    return [r for r in rows if r["seed"] == first or (r["defense"], r["setting"]) not in far]


def replay(path: Path) -> None:
    doc = json.loads(path.read_text())
    g, v = doc["grid"], doc["readings"]
    t = TuningConfig()
    first = min(r["seed"] for r in g)
    full_g, full_v = tune.select(g, t.max_cost), readings.select_variant(v, t.max_cost)
    print(
        f"{path.name}: {len(g)} grid cells, {len(v)} readings cells; the default rule: "
        f"prune_factor {t.prune_factor}, prune_margin {t.prune_margin}"
    )
    print("| prune_factor | prune_margin | grid cells | grid s | readings cells | readings s | same choices |")
    print("|---|---|---:|---:|---:|---:|---|")
    for factor, margin in RULES:
        kg, kv = kept(g, first, factor, margin, t.max_cost), kept(v, first, factor, margin, t.max_cost)
        sg, sv = tune.select(kg, t.max_cost), readings.select_variant(kv, t.max_cost)
        moved = [d for d in full_g if sg[d]["setting"] != full_g[d]["setting"]]
        if sv["setting"] != full_v["setting"]:
            moved.append("ntml reading")
        print(
            f"| {factor} | {margin} | {len(kg)} | {sum(r['seconds'] for r in kg):,.0f} | {len(kv)} | "
            f"{sum(r['seconds'] for r in kv):,.0f} | {'yes' if not moved else 'no: ' + ', '.join(moved)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="?", type=Path, default=ROWS)
    ap.add_argument("--dump", type=Path, help="write the full sweep's rows from the store to this file")
    ap.add_argument("--profile", default="quick")
    args = ap.parse_args()
    if args.dump:
        dump(args.profile, args.dump)
    else:
        replay(args.rows)


if __name__ == "__main__":
    main()
