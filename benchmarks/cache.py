"""`make figures` cold against warm: every notebook twice on an empty store, seconds per notebook.

Both runs use the real runner (``python -m bdlib run``) on a fresh temporary store and figure
directory, so the repository's own cache and figures are untouched. The first run computes
everything (cold); the second finds every model and result in the store (warm).

    PYTHONPATH=. python benchmarks/cache.py [--profile quick] [NOTEBOOK ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(\d\d_\w+): ([\d.]+) s(;|$)")  # the runner's end-of-notebook line


def run_all(profile: str, notebooks: list[str], cache: Path, out: Path) -> tuple[dict[str, float], float]:
    """Per-notebook seconds as the runner reports them, and the wall time of the whole command."""
    env = {**os.environ, "BDLIB_CACHE": str(cache), "BDLIB_PROGRESS": "0"}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bdlib",
            "run",
            *notebooks,
            "--profile",
            profile,
            "--figures",
            str(out / "figures"),
            "--out",
            str(out / "executed"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the {profile} run failed:\n{proc.stderr[-3000:]}")
    seconds = {m.group(1): float(m.group(2)) for m in map(LINE.match, proc.stdout.splitlines()) if m}
    return seconds, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="notebook stems (default: all)")
    ap.add_argument("--profile", default="quick")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bdlib-bench-") as tmp:
        tmp = Path(tmp)
        cold, cold_wall = run_all(args.profile, args.notebooks, tmp / "cache", tmp / "cold")
        warm, warm_wall = run_all(args.profile, args.notebooks, tmp / "cache", tmp / "warm")
    print(f"profile {args.profile}, {os.cpu_count()} CPUs")
    print(f"{'notebook':22s} {'cold s':>8s} {'warm s':>8s} {'warm/cold':>10s}")
    for name in cold:
        print(f"{name:22s} {cold[name]:8.1f} {warm[name]:8.1f} {warm[name] / cold[name]:10.3f}")
    print(
        f"{'total (wall)':22s} {cold_wall:8.1f} {warm_wall:8.1f} {warm_wall / cold_wall:10.3f}"
        f"   (1/{cold_wall / warm_wall:.0f})"
    )


if __name__ == "__main__":
    main()
