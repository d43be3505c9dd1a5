"""Independent cached results computed on worker processes, one thread each, before a loop reads them.

The grid, the protocol's sweeps and the notebooks' tables each loop over cells that do not
depend on one another: (attack, seed, defense, setting). On a CPU, two single-thread processes
train more images per second than one process of two threads (``benchmarks/pool.py``), so before
such a loop runs, :func:`prefetch` finds which of its results the store lacks (without computing
any: :func:`bdlib.store.probing`) and computes them on ``workers()`` processes. The loop then
runs as it always did and reads every result from the store; the numbers are the same code's.
:func:`results` does both for a list of jobs and keeps what the probe already read, so a warm
run reads each result once.

Order: the victims (poisoned models, with their triggers) first, one group per attack and seed
(clean models one per seed); then the rest, grouped so that cells sharing an upstream stage (an NT stage across ML variants,
an inversion across learning rates, an ANP mask across thresholds) run one after another in the
same worker and compute it once. A job that fails in a worker is left to the loop, which
computes it in the notebook's own process and raises the real error there.

``$BDLIB_WORKERS`` sets the number of processes: unset or ``auto``, one per CPU core this
process may use (at most :data:`MAX_AUTO`) on the CPU, and none on a GPU (its kernels are the
limit, not the cores); ``1``, none (everything in the notebook's own process). The numbers are
the same either way: every stored result on a CPU is computed by one thread
(:data:`bdlib.experiment.CPU_THREADS`), in a worker or not, so the worker count only changes the
time (``benchmarks/pool.py``).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
import types
from collections.abc import Callable, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

from bdlib import experiment, progress
from bdlib.store import NotStored, is_probing, probing
from bdlib.train import RUNTIME, configure

ENV = "BDLIB_WORKERS"
MAX_AUTO = 8  # processes $BDLIB_WORKERS=auto may start (each holds the data and a model)
VICTIM_KINDS = ("trigger", "poisoned_model", "clean_model")

logger = logging.getLogger(__name__)

Job = tuple[Callable[..., Any], tuple]  # a module-level function that computes stored results, and its arguments
_pool: dict[str, Any] = {"executor": None, "size": 0, "runtime": None}


def workers(device: str = "cpu") -> int:
    """How many worker processes :func:`prefetch` uses: ``$BDLIB_WORKERS`` as a whole number, or
    (unset or ``auto``) the CPU cores this process may use, at most :data:`MAX_AUTO`, on the CPU
    and 1 (no workers) on any other device."""
    value = os.environ.get(ENV, "").strip() or "auto"
    if value == "auto":
        return max(1, min(MAX_AUTO, len(os.sched_getaffinity(0)))) if str(device).startswith("cpu") else 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"${ENV} must be a whole number of processes, 1 or more (1: no workers), or 'auto'; got {value!r}"
        )
    return n


def _probe(jobs: Sequence[Job], record: bool = False) -> tuple[dict[int, Any], list[tuple[Job, str]]]:
    """Each job tried inside :func:`bdlib.store.probing` (nothing computed): the results of those
    the store holds whole, by position, and the others, each with the kind of its first missing
    result. ``record``: what is read counts as used (:func:`bdlib.store.probing`)."""
    found: dict[int, Any] = {}
    todo = []
    for i, (fn, args) in enumerate(jobs):
        try:
            with probing(record):
                found[i] = fn(*args)
        except NotStored as err:
            todo.append(((fn, args), err.kind))
    return found, todo


def missing(jobs: Sequence[Job]) -> list[tuple[Job, str]]:
    """The jobs whose results the store lacks, each with the kind of the first missing result
    (a victim's when the victim is missing); nothing is computed and nothing recorded as used."""
    return _probe(jobs)[1]


def _group(fn: Callable, args: tuple) -> tuple:
    """Jobs of one group share upstream stages: the same function, victim and defense."""
    cfg = args[0]
    return (fn.__module__, fn.__name__, cfg.attack, cfg.seed, *[a for a in args[1:] if isinstance(a, str)])


def plan(jobs: Sequence[Job]) -> list[list[list[Job]]]:
    """Phases of groups of the missing jobs: the victims (one group per attack and seed), then the
    rest grouped by :func:`_group`, the largest groups first. Empty when the store holds all."""
    return _phases(missing(jobs))


def _phases(todo: Sequence[tuple[Job, str]]) -> list[list[list[Job]]]:
    """:func:`plan`'s phases of ``todo``: (job, kind of its first missing result) pairs."""
    victims: dict[tuple, list[Job]] = {}
    groups: dict[tuple, list[Job]] = {}
    for (fn, args), kind in todo:
        cfg = args[0]
        # One group per attack and seed (its trigger computed once), one per seed for clean models.
        if fn is experiment.clean_model:
            victims.setdefault(("clean", cfg.seed), []).append((fn, args))
        elif fn is experiment.poisoned_model:  # a victim itself (several: e.g. two poisoning rates)
            victims.setdefault((cfg.attack, cfg.seed), []).append((fn, args))
        else:
            if kind in VICTIM_KINDS and (cfg.attack, cfg.seed) not in victims:  # the victim first
                victims[(cfg.attack, cfg.seed)] = [(experiment.poisoned_model, (cfg,))]
            groups.setdefault(_group(fn, args), []).append((fn, args))
    phases = [list(victims.values()), sorted(groups.values(), key=len, reverse=True)]
    return [p for p in phases if p]


def _orphaned(parent: int) -> None:
    """Exit when the process that started this worker is gone (killed without a shutdown)."""
    while os.getppid() == parent:
        time.sleep(2)
    os._exit(0)


def _init(deterministic: bool, compile: bool) -> None:
    # Before torch is imported: one OpenMP thread, and no pool of its own.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ[ENV] = "1"
    threading.Thread(target=_orphaned, args=(os.getppid(),), daemon=True).start()
    # Ctrl-C and the runner's stop reach the whole process group: the parent handles them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    configure(deterministic, compile)


def _run_group(group: list[Job]) -> list[str]:
    """Run one group's jobs in order (in a worker); the errors, as text, of those that failed."""
    errors = []
    for fn, args in group:
        try:
            # No progress bars of its own: a worker's stderr is the terminal of the notebook's runner.
            fn(dataclasses.replace(args[0], progress=False), *args[1:])
        except Exception as err:  # the loop recomputes it in the notebook's process and raises there
            errors.append(f"{fn.__name__} ({args[0].attack}, seed {args[0].seed}): {type(err).__name__}: {err}")
    return errors


def _executor(size: int, runtime: tuple[bool, bool]) -> cf.ProcessPoolExecutor:
    """The process's pool, started once (spawned: a fresh interpreter, not a fork of a process
    with OpenMP threads) and kept until it exits; restarted if the size or kernel choices change."""
    if _pool["executor"] is not None and (_pool["size"], _pool["runtime"]) == (size, runtime):
        return _pool["executor"]
    shutdown()
    ctx = multiprocessing.get_context("spawn")
    _pool.update(executor=cf.ProcessPoolExecutor(size, ctx, _init, runtime), size=size, runtime=runtime)
    return _pool["executor"]


def shutdown() -> None:
    """Stop the worker processes (if any)."""
    ex = _pool["executor"]
    if ex is not None:
        ex.shutdown(wait=True, cancel_futures=True)
    _pool.update(executor=None, size=0, runtime=None)


atexit.register(shutdown)


def _read_only(d: dict) -> types.MappingProxyType:
    return types.MappingProxyType(d)


def _mapping_proxy(m: types.MappingProxyType) -> tuple:
    return _read_only, (dict(m),)


# A Config holds its attacks' and defenses' Params in read-only mappings; jobs travel to the
# workers as the same Config (pickled), not as a profile and overrides to rebuild.
ForkingPickler.register(types.MappingProxyType, _mapping_proxy)


def _size(jobs: Sequence[Job]) -> int:
    """How many worker processes ``jobs`` (not empty) go to: 0 with one process, or while
    probing (the caller only asks what is stored, nothing is computed). Each job's first argument
    is its Config (its device decides ``auto``)."""
    n = workers(getattr(jobs[0][1][0], "device", "cpu"))
    return 0 if n < 2 or is_probing() else n


def prefetch(jobs: Sequence[Job]) -> int:
    """Compute into the store, on :func:`workers` processes, the results of ``jobs`` it lacks;
    return how many jobs were handed out (0: all stored, or one process: the caller computes)."""
    n = _size(jobs) if jobs else 0
    return _hand_out(plan(jobs), n) if n else 0


def _hand_out(phases: list[list[list[Job]]], n: int) -> int:
    """Run ``phases`` on ``n`` worker processes; how many jobs were handed out."""
    if sum(len(g) for phase in phases for g in phase) < 2:
        return 0  # nothing missing, or one job: this process computes it (under the same one-thread rule)
    ex = _executor(n, (RUNTIME.deterministic, RUNTIME.compile))
    handed = 0
    for phase in phases:
        handed += sum(len(g) for g in phase)
        failed = False
        with progress.task(f"{sum(len(g) for g in phase)} result(s) on {n} worker processes"):
            for errors in ex.map(_run_group, phase):
                for e in errors:
                    failed = True
                    logger.warning("bdlib pool: %s; left to this process", e)
        if failed:  # e.g. a diverging victim: the caller's loop computes it here and raises the real error
            break
    return handed


def results(jobs: Sequence[Job]) -> list[Any]:
    """Each job's result, in order. With workers (:func:`workers`), each job is first read from
    the store if all of it is there (kept, counted as used: a warm run reads each result once);
    the rest are computed on the workers (:func:`prefetch`'s phases), then read. With one process,
    each job is simply called in order."""
    jobs = list(jobs)
    n = _size(jobs) if jobs else 0
    if not n:
        return [fn(*args) for fn, args in jobs]
    found, todo = _probe(jobs, record=True)
    _hand_out(_phases(todo), n)
    return [found[i] if i in found else fn(*args) for i, (fn, args) in enumerate(jobs)]


__all__ = ["ENV", "MAX_AUTO", "Job", "workers", "missing", "plan", "prefetch", "results", "shutdown"]
