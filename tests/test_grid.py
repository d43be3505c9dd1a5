import dataclasses

import pytest
import torch

from bdlib.config import override
from bdlib.profiles import resolve
from bdlib.study import grid


def test_cells_cover_the_product_and_undefended_once_per_attack_and_seed():
    cells = grid.cells(["badnets", "blended"], [grid.UNDEFENDED, "ft", "ntml"], [0, 1], [0.01, 0.05])
    assert len(cells) == 2 * 2 * 2 * 2 + 2 * 2
    assert len({c for c in cells if c.defense == grid.UNDEFENDED}) == 4
    assert len(set(cells)) == len(cells)


def test_overrides_round_trip_for_workers():
    cfg = override(resolve("smoke"), {"train.epochs": 1, "attacks.badnets.poison_rate": 0.2, "defenses.ft.steps": 1})
    again = override(resolve("smoke"), grid._overrides(cfg))
    assert again == dataclasses.replace(cfg, progress=again.progress)


def test_dask_grid_agrees_with_the_sequential_grid(tmp_path, monkeypatch):
    distributed = pytest.importorskip("dask.distributed", reason="the [dask] extra is not installed")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two single-threaded workers on two cores
    from bdlib import experiment

    cfg = override(
        resolve("smoke", device="cpu"), {"n_train": 600, "n_test": 200, "train.epochs": 1, "defenses.ft.steps": 1}
    )
    cells = grid.cells(["badnets"], [*grid.BASELINES, "ft"], [0, 1], [0.05])
    results = {}
    for mode in ("sequential", "dask"):
        monkeypatch.setenv("BDLIB_CACHE", str(tmp_path / mode))  # separate stores: both really compute
        experiment.store.cache_clear()
        if mode == "dask":
            with (
                distributed.LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                results[mode] = grid.run(cfg, cells, client)
        else:
            # The same thread count as the workers: CPU kernels may sum in another order with
            # another number of threads, and a last-bit difference can flip one test prediction.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                results[mode] = grid.run(cfg, cells)
            finally:
                torch.set_num_threads(threads)
    experiment.store.cache_clear()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(results["sequential"]) == strip(results["dask"])
    assert {r["defense"] for r in results["dask"]} == {grid.UNDEFENDED, grid.CLEAN, "ft"}
    # The floor: the clean model (not the victim) under the same trigger.
    by = {(r["defense"], r["seed"]): r for r in results["sequential"]}
    assert all(by[(grid.CLEAN, s)]["ASR"] < by[(grid.UNDEFENDED, s)]["ASR"] for s in (0, 1))


def test_close_dask_stops_a_local_cluster_and_accepts_none():
    distributed = pytest.importorskip("dask.distributed", reason="the [dask] extra is not installed")
    from bdlib.study.grid import close_dask

    close_dask(None)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    client = distributed.Client(cluster)
    close_dask(client)
    assert client.status == "closed" and cluster.status.name == "closed"


def test_a_worker_sets_itself_up_like_a_notebook(monkeypatch):
    from bdlib.train import RUNTIME, configure

    seen = {}
    monkeypatch.setattr(grid, "run_cell", lambda cfg, cell: seen.update(cfg=cfg) or {})
    torch.manual_seed(999)
    payload = {
        "profile": "smoke",
        "attack": "badnets",
        "seed": 7,
        "device": "cpu",
        "overrides": {"deterministic": False, "train.epochs": 1},
    }
    try:
        grid._run_cell_remote(payload, grid.Cell("badnets", "ft", 7, 0.05))
        assert torch.initial_seed() == 7  # seeded by bdlib.setup, as a notebook is
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        assert not RUNTIME.deterministic and seen["cfg"].train.epochs == 1 and seen["cfg"].device == "cpu"
    finally:
        configure(deterministic=True, compile=False)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
