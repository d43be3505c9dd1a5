"""Independent cells in the notebook's process against worker processes, one per core.

The same cells (the victims of ``--attacks`` on ``--seed``, then every defense of ``--defenses``
on each, at the profile's settings) are computed twice from an empty store, back to back: once in
one process (``$BDLIB_WORKERS=1``), once through :func:`bdlib.pool.prefetch` on ``--workers``
processes. Each mode runs in its own interpreter (``python benchmarks/pool.py --mode ...``) so
neither inherits the other's threads or loaded modules. Prints both wall times, their ratio and
how far the two modes' numbers differ. Under the one-thread rule (``bdlib.experiment.CPU_THREADS``)
both compute every result with one thread, so the numbers agree; before it (the 2026-12-07
measurement in benchmarks/README.md) the one process used two threads and they did not.

    python benchmarks/pool.py [--profile quick] [--attacks badnets blended] [--seed 100]
        [--defenses ft nad anp ibau none ntml mcldef] [--workers 2] [--json out.json]

Seed 100 is a tuning seed: no figure reports it. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def one_mode(args: argparse.Namespace) -> dict:
    """Compute every cell in this process (``--mode serial``) or through the pool (``pool``)."""
    from bdlib import experiment, pool
    from bdlib.session import setup

    cfg = setup(args.profile, attack=args.attacks[0], seed=args.seed, attack_names=args.attacks)
    cfgs = [experiment.with_run(cfg, attack=a, seed=args.seed) for a in args.attacks]
    t0 = time.perf_counter()
    handed = pool.prefetch([(experiment.poisoned_model, (c,)) for c in cfgs])
    for c in cfgs:
        experiment.poisoned_model(c)
    pairs = [(c, d) for c in cfgs for d in args.defenses]
    handed += pool.prefetch([(experiment.defend, (c, d)) for c, d in pairs])
    rows = [{"attack": c.attack, "defense": d, **experiment.defend(c, d).metrics} for c, d in pairs]
    return {"seconds": time.perf_counter() - t0, "handed": handed, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--attacks", nargs="+", default=["badnets", "blended"])
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--defenses", nargs="+", default=["ft", "nad", "anp", "ibau", "none", "ntml", "mcldef"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=["serial", "pool"], help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write both modes' times and rows here")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args)))
        return

    out = {}
    for mode, workers in (("serial", 1), ("pool", args.workers)):
        with tempfile.TemporaryDirectory(prefix="bdlib-pool-bench-") as store:
            env = {**os.environ, "BDLIB_CACHE": store, "BDLIB_WORKERS": str(workers)}
            cmd = [sys.executable, __file__, "--mode", mode, "--profile", args.profile, "--seed", str(args.seed)]
            cmd += ["--attacks", *args.attacks, "--defenses", *args.defenses]
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{mode:>6}: {out[mode]['seconds']:7.1f} s ({workers} process(es); {out[mode]['handed']} job(s) to workers)"
        )
    ratio = out["pool"]["seconds"] / out["serial"]["seconds"]
    cells = len(out["serial"]["rows"])
    print(f"pool / serial: {ratio:.2f} ({cells} defense cells and {len(args.attacks)} victims, seed {args.seed})")
    diffs = {
        k: max(abs(a[k] - b[k]) for a, b in zip(out["serial"]["rows"], out["pool"]["rows"])) for k in ("BA", "ASR")
    }
    print(f"largest difference between the modes' numbers: BA {diffs['BA']:.2f}, ASR {diffs['ASR']:.2f} points")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({**out, "ratio": ratio, "max_diff": diffs}, f, indent=1)


if __name__ == "__main__":
    main()
