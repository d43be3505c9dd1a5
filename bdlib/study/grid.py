"""The comparison grid: attack × defense × seed × clean budget, each cell independent and cached.

Sequential by default. Given a Dask ``distributed.Client`` (a ``LocalCluster``, a scheduler
address, or dask-jobqueue on SLURM — the ``dask`` extra), the cells run on the cluster's
workers; every worker reads and writes the same store, so ``$BDLIB_CACHE`` must be on a
filesystem they share. Cells that an earlier notebook computed are found in the store.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from bdlib import cells as C
from bdlib.cells import BASELINES, CLEAN, UNDEFENDED, Cell, run_cell  # noqa: F401 (the grid's names)
from bdlib.config import Config, as_dict
from bdlib.profiles import profile
from bdlib.session import setup


def cells(
    attacks: Sequence[str], defenses: Sequence[str], seeds: Sequence[int], budgets: Sequence[float]
) -> list[Cell]:
    """Every combination; the undefended model and the clean-model floor do not depend on the
    clean budget (one cell each, at the first budget)."""
    out = [
        Cell(a, d, s, b) for a, d, s, b in itertools.product(attacks, defenses, seeds, budgets) if d not in BASELINES
    ]
    for base in BASELINES:
        if base in defenses:
            out += [Cell(a, base, s, budgets[0]) for a, s in itertools.product(attacks, seeds)]
    return out


def _run_cell_remote(cfg_dict: dict, cell: Cell) -> dict[str, Any]:
    # Workers rebuild the Config from plain data, so nothing but JSON-like values is shipped, and
    # set themselves up exactly as a notebook does (bdlib.setup): the same validation, data check,
    # kernel choices (deterministic or cudnn.benchmark, torch.compile) and seeds.
    cfg = setup(
        cfg_dict["profile"],
        attack=cfg_dict["attack"],
        seed=cfg_dict["seed"],
        device=cfg_dict["device"],
        overrides=cfg_dict["overrides"],
        progress=False,
        attack_names=[cell.attack],
    )
    return run_cell(cfg, cell)


def run(cfg: Config, grid: Sequence[Cell], client: Any = None) -> list[dict[str, Any]]:
    """Every cell's row, in the order of ``grid``; on ``client``'s cluster when one is given, else
    on this machine's worker processes (:mod:`bdlib.pool`) first, then read in order."""
    if client is None:
        # No per-epoch bars for the grid's hundreds of short cells (the runner's line names each cell).
        return C.run(dataclasses.replace(cfg, progress=False), grid)
    payload = {
        "profile": cfg.profile,
        "attack": cfg.attack,
        "seed": cfg.seed,
        "device": cfg.device,
        "overrides": _overrides(cfg),
    }
    futures = client.map(_run_cell_remote, [payload] * len(grid), list(grid), pure=False)
    return client.gather(futures)


def _overrides(cfg: Config) -> dict[str, Any]:
    """The dotted overrides that turn the profile's Config into ``cfg`` (for workers)."""
    base, mine = _flatten(as_dict(profile(cfg.profile))), _flatten(as_dict(cfg))
    skip = {"attack", "seed", "device", "progress"}
    return {k: v for k, v in mine.items() if base.get(k) != v and k not in skip}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):  # the train / attacks / defenses groups and each method's Params
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dask_client(address: str | None):
    """None -> no cluster (sequential); "local" -> a LocalCluster on this machine; else a scheduler address."""
    if address is None:
        return None
    from dask.distributed import Client, LocalCluster

    if address == "local":
        return Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True))
    return Client(address)


def close_dask(client) -> None:
    """Close the notebook's client, and its LocalCluster if it started one (a remote one is left running)."""
    if client is None:
        return
    cluster = client.cluster  # None when connected to a scheduler address
    client.close()
    if cluster is not None:
        cluster.close()
