"""How the runner sets OpenMP for each notebook's kernel: spin when the machine is quiet,
wait passively when another process is busy.

PyTorch's CPU kernels run on OpenMP threads that spin between parallel regions before they
sleep (libgomp spins ``GOMP_SPINCOUNT`` = 300,000 times by default). On a quiet machine that
is the fastest setting; beside another busy process on the same cores the spinning threads
steal the cores the other thread of the same region is waiting for, and training slows by an
order of magnitude. ``benchmarks/omp_contention.py`` measured it, back to back, on two cores
(2026-11-23, SmallCNN, images/s idle / beside a competitor): 2 threads, default 4,745 / 216;
``OMP_WAIT_POLICY=PASSIVE`` 3,657 / 2,186; ``GOMP_SPINCOUNT=1000`` 3,739 / 2,151; 1 thread
2,917 / 2,804. No setting is best in both columns, and OpenMP reads its settings once, when
the kernel starts, so the runner looks before it starts each kernel: if other processes keep
at least ``BUSY_CORES`` cores busy it starts the kernel with ``OMP_WAIT_POLICY=PASSIVE``,
otherwise with the default. A value the user set (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``)
is always kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

BUSY_CORES = 0.5  # other processes' load, in cores, from which kernels wait passively
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
PROC_STAT = Path("/proc/stat")


def cpu_times(stat: Path) -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from the first line of /proc/stat."""
    fields = [float(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 0.3, stat: Path = PROC_STAT) -> float | None:
    """How many cores are busy over the next ``window`` seconds (None where /proc/stat is absent).

    Called while the runner's own kernels are stopped, so what it measures is other processes.
    """
    try:
        b0, t0 = cpu_times(stat)
        time.sleep(window)
        b1, t1 = cpu_times(stat)
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return 0.0
    return (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1)


def user_chose(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user set an OpenMP wait variable (then the runner changes nothing)."""
    return any(k in environ for k in USER_KEYS)


def kernel_env(busy: float | None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The OpenMP variables to start a kernel with, given the cores others keep ``busy``."""
    if user_chose(environ) or busy is None or busy < BUSY_CORES:
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def for_kernel(environ: Mapping[str, str] = os.environ) -> tuple[dict[str, str], str | None]:
    """What the runner starts the next kernel with: the OpenMP variables and the log line (None
    when it keeps OpenMP's default). Samples the CPU only when the user has not chosen."""
    busy = None if user_chose(environ) else busy_cores()
    env = kernel_env(busy, environ)
    return env, describe(env, busy)


def describe(env: Mapping[str, str], busy: float | None) -> str | None:
    """One line for the runner's log when it departs from OpenMP's default (None otherwise)."""
    if not env:
        return None
    return (
        f"other processes keep {busy:.1f} core(s) busy: OpenMP threads wait passively in this "
        "notebook (set OMP_WAIT_POLICY yourself to choose)"
    )
