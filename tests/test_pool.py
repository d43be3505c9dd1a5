"""bdlib.pool: the store's missing results found without computing, then computed on worker processes."""

import logging
import os

import pytest
import torch

from bdlib import experiment, pool, store
from bdlib.config import override
from bdlib.profiles import resolve


def _cfg():
    return override(
        resolve("smoke", device="cpu"), {"n_train": 600, "n_test": 200, "train.epochs": 1, "defenses.ft.steps": 1}
    )


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    def use(name: str):
        monkeypatch.setenv("BDLIB_CACHE", str(tmp_path / name))
        experiment.store.cache_clear()
        return tmp_path / name

    yield use
    experiment.store.cache_clear()


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(pool.ENV, value)
    with pytest.raises(ValueError, match=r"\$BDLIB_WORKERS.*1 or more.*'auto'"):
        pool.workers()


def test_worker_count_from_the_environment_and_cores_on_the_cpu_by_default(monkeypatch):
    monkeypatch.setenv(pool.ENV, "3")
    assert pool.workers("cuda") == 3
    monkeypatch.setenv(pool.ENV, "1")
    assert pool.workers("cpu") == 1  # none: everything in this process
    cores = min(pool.MAX_AUTO, len(os.sched_getaffinity(0)))
    for value in ("auto", None):  # on by default: the one-thread rule makes the numbers the same
        if value is None:
            monkeypatch.delenv(pool.ENV)
        else:
            monkeypatch.setenv(pool.ENV, value)
        assert pool.workers("cuda") == 1
        assert pool.workers("cpu") == cores


def test_missing_computes_nothing_and_records_nothing(fresh_store):
    root = fresh_store("empty")
    cfg = _cfg()
    used = dict(store.USED)
    found = pool.missing([(experiment.defend, (cfg, "ft")), (experiment.poisoned_model, (cfg,))])
    assert [kind for _, kind in found] == ["trigger", "trigger"]  # the first missing result of each: the victim's
    assert not any(root.glob("*/*/meta.json")) and store.USED == used
    assert [len(p) for p in pool.plan([(experiment.defend, (cfg, "ft"))])] == [1, 1]  # the victim, then the cell
    # Victims that share a trigger (one attack and seed, two poisoning rates) run in one worker, in
    # turn: the trigger is computed once, nobody waits on another's lock; clean models by seed.
    other_rate = override(cfg, {"attacks.badnets.poison_rate": 0.05})
    jobs = [(experiment.poisoned_model, (c,)) for c in (cfg, other_rate)] + [(experiment.clean_model, (cfg,))]
    jobs.append((experiment.defend, (cfg, "ft")))
    victims, cells = pool.plan(jobs)
    assert [[args[0] for _, args in g] for g in victims] == [[cfg, other_rate], [cfg]]
    assert [fn for fn, _ in victims[1]] == [experiment.clean_model] and len(cells) == 1


def test_workers_compute_what_this_process_would(fresh_store, monkeypatch):
    cfg = _cfg()
    jobs = [
        (experiment.defend, (experiment.with_run(cfg, attack="badnets", seed=s), d))
        for s in (0, 1)
        for d in ("ft", "nad")
    ]
    results = {}
    for mode in ("serial", "pool"):
        fresh_store(mode)
        monkeypatch.setenv(pool.ENV, "1" if mode == "serial" else "2")
        threads = torch.get_num_threads()
        # This process at two threads, the workers at one: the one-thread rule (experiment.CPU_THREADS)
        # computes every stored result with one thread wherever it runs, so the numbers agree.
        torch.set_num_threads(2)
        try:
            handed = pool.prefetch(jobs)
            if mode == "pool":
                assert handed == 2 + 4  # two victims, then four cells
                assert pool.missing(jobs) == []  # everything stored before the loop runs
                assert pool.prefetch(jobs) == 0
            else:
                assert handed == 0
            results[mode] = [fn(*args).metrics for fn, args in jobs]
        finally:
            torch.set_num_threads(threads)
    pool.shutdown()
    assert results["serial"] == results["pool"]


def _fails(cfg):
    raise RuntimeError("boom")


def test_a_job_failing_in_a_worker_is_left_to_the_caller(fresh_store, monkeypatch, caplog):
    fresh_store("failing")
    monkeypatch.setenv(pool.ENV, "2")
    cfg = _cfg()
    with caplog.at_level(logging.WARNING, logger="bdlib.pool"):
        # A victim job that raises in the worker: logged, not raised; the later phase is not handed out.
        monkeypatch.setattr(pool, "plan", lambda jobs: [[[(_fails, (cfg,))]], [[(experiment.defend, (cfg, "ft"))]]])
        assert pool.prefetch([(experiment.defend, (cfg, "ft"))]) == 1
    pool.shutdown()
    assert "_fails (badnets, seed 0): RuntimeError: boom" in caplog.text


def test_a_stored_result_is_computed_by_one_thread_and_the_process_keeps_its_own(fresh_store, monkeypatch):
    from threadpoolctl import threadpool_info

    fresh_store("threads")
    seen = []
    real_fit = experiment.fit

    def fit(*args, **kwargs):
        seen.append((torch.get_num_threads(), {p["num_threads"] for p in threadpool_info()}))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(experiment, "fit", fit)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        experiment.clean_model(_cfg())
        assert seen == [(experiment.CPU_THREADS, {experiment.CPU_THREADS})]
        assert torch.get_num_threads() == 2  # restored: what the notebook itself computes keeps its threads
        experiment.clean_model(_cfg())  # stored: loaded, nothing trained
        assert len(seen) == 1
    finally:
        torch.set_num_threads(threads)


def test_nothing_is_handed_out_while_probing(fresh_store, monkeypatch):
    root = fresh_store("probing")
    monkeypatch.setenv(pool.ENV, "2")
    jobs = [(experiment.defend, (experiment.with_run(_cfg(), seed=s), "ft")) for s in (0, 1)]
    with store.probing():
        assert pool.prefetch(jobs) == 0
        with pytest.raises(store.NotStored):
            jobs[0][0](*jobs[0][1])
    assert not any(root.glob("*/*/meta.json"))


def test_results_reads_each_stored_result_once_and_records_it_as_used(fresh_store, monkeypatch):
    fresh_store("results")
    monkeypatch.setenv(pool.ENV, "2")
    cfg = _cfg()
    jobs = [(experiment.defend, (experiment.with_run(cfg, seed=s), "ft")) for s in (0, 1)]
    first = [r.metrics for r in pool.results(jobs)]  # computed on the workers, then read
    pool.shutdown()
    reads = []
    real_get = store.Store.get

    def get(self, key):
        reads.append(key)
        return real_get(self, key)

    monkeypatch.setattr(store.Store, "get", get)
    store.USED.clear()
    again = pool.results(jobs)
    assert [r.metrics for r in again] == first
    assert len(reads) == len(set(reads))  # warm: the probe's reads are the loop's, none twice
    assert {r.key for r in again} <= set(store.USED)  # and what it read counts as used (provenance)
    monkeypatch.setenv(pool.ENV, "1")
    reads.clear()
    assert [r.metrics for r in pool.results(jobs)] == first  # one process: called in order
    assert len(reads) == len(set(reads))
