"""Where output goes, progress reporting and its side channel, papermill parameter checks, quiet logs."""

import io
import json
import logging
import os

import pytest

from bdlib import paths, progress, session
from bdlib.config import ConfigError
from bdlib.runner import cli

# ---------------------------------------------------------------- where output goes


def test_project_dir_is_the_nearest_with_a_marker_else_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "proj" / "notebooks").mkdir(parents=True)
    (tmp_path / "proj" / ".git").mkdir()
    assert paths.project_dir(tmp_path / "proj" / "notebooks") == tmp_path / "proj"
    (tmp_path / "loose").mkdir()
    monkeypatch.chdir(tmp_path / "loose")
    assert paths.project_dir() == tmp_path / "loose"


def test_figures_of_profiles_other_than_quick_never_go_to_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BDLIB_FIGURES", raising=False)
    monkeypatch.delenv("BDLIB_CACHE", raising=False)
    assert paths.figures_dir("quick") == tmp_path / "figures"
    assert paths.figures_dir("smoke") == tmp_path / "build" / "figures" / "smoke"
    assert paths.figures_dir("paper") == tmp_path / "build" / "figures" / "paper"
    assert paths.cache_dir() == tmp_path / ".bdlib-cache"
    assert paths.executed_dir() == tmp_path / "build" / "executed"
    monkeypatch.setenv("BDLIB_FIGURES", str(tmp_path / "mine"))
    monkeypatch.setenv("BDLIB_CACHE", str(tmp_path / "store"))
    assert paths.figures_dir("smoke") == paths.figures_dir("quick") == tmp_path / "mine"
    assert paths.cache_dir() == tmp_path / "store"


def test_figures_save_writes_a_smoke_figure_under_build_not_figures(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bdlib import figures
    from bdlib.profiles import resolve

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BDLIB_FIGURES", raising=False)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    figures.save(fig, "line", resolve("smoke"))
    assert (tmp_path / "build" / "figures" / "smoke" / "line.png").exists()
    assert not (tmp_path / "figures").exists()
    assert not plt.fignum_exists(fig.number)


# ---------------------------------------------------------------- progress and its side channel


def test_bar_reports_each_epoch_and_tasks_to_the_status_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.STATUS_ENV, str(tmp_path))
    seen = []
    progress.set_cell(5)
    with progress.task("training the badnets victim, seed 1"):
        for _ in progress.bar(range(3), "fit", show=False):
            seen.append(progress.read_stage(tmp_path))
    assert [s["stage"].split(" · ")[:3] for s in seen] == [
        ["training the badnets victim, seed 1", "fit", f"epoch {i}/3"] for i in (1, 2, 3)
    ]
    assert all(s["cell"] == 5 for s in seen)
    assert progress.read_stage(tmp_path)["stage"] == ""  # the task and its step are over


def test_bar_outside_a_kernel_draws_a_text_bar_on_stderr_and_passes_items_through(capsys, monkeypatch):
    monkeypatch.delenv(progress.STATUS_ENV, raising=False)
    b = progress.bar(range(4), "work")
    assert [i for i in b] == [0, 1, 2, 3] and b.done == 4
    err = capsys.readouterr().err
    assert "work" in err and "IProgress" not in err
    assert list(progress.bar(range(2), "quiet", show=False)) == [0, 1]
    assert "quiet" not in capsys.readouterr().err


def test_store_events_are_counted_from_the_log(tmp_path, monkeypatch):
    import torch

    from bdlib.store import Store

    monkeypatch.setenv(progress.STATUS_ENV, str(tmp_path / "status"))
    (tmp_path / "status").mkdir()
    s = Store(tmp_path / "cache")
    for spec in ({"a": 1}, {"a": 1}, {"a": 2}, {"a": 1}):
        s.get_or_compute("thing", spec, lambda: ({"w": torch.ones(1)}, {}))
    counts = progress.read_store_log(tmp_path / "status")
    assert counts == {"computed": {"thing": 2}, "loaded": {"thing": 2}, "notices": [], "diverged": []}
    assert cli.store_summary(counts) == "2 results computed (2 thing), 2 loaded from the store"
    assert cli.store_summary({"computed": {}, "loaded": {"x": 1}}) == "0 results computed, 1 loaded from the store"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_runner_live_line_on_a_terminal_and_plain_lines_otherwise(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv(progress.STATUS_ENV, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")  # the live line is cut to the terminal's width
    progress.set_cell(4)
    with progress.task("training the blended victim, seed 2"):
        it = iter(progress.bar(range(6), "fit", show=False))
        next(it), next(it), next(it)
        term, plain = _Terminal(), io.StringIO()
        with cli.Live("01_poisoning", tmp_path, 17, term), cli.Live("01_poisoning", tmp_path, 17, plain, every=0.5):
            time.sleep(1.3)
    shown = term.getvalue()
    assert "\r\033[K01_poisoning · cell 4/17 · training the blended victim, seed 2 · fit · epoch 3/6" in shown
    assert shown.endswith("\r\033[K")  # the live line is cleared before the notebook's end line
    lines = plain.getvalue().splitlines()
    assert lines and "\r" not in plain.getvalue() and "\033" not in plain.getvalue()
    assert lines[0].startswith("  01_poisoning · cell 4/17 · training the blended victim, seed 2")


def test_last_run_time_comes_from_the_manifest(tmp_path):
    assert cli.last_seconds(tmp_path, "01_poisoning", "quick") is None
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "a": {"notebook": "01_poisoning", "profile": "quick", "seconds": 100.0},
                "b": {"notebook": "01_poisoning", "profile": "quick", "seconds": 20.5},
                "c": {"notebook": "01_poisoning", "profile": "smoke", "seconds": 7.0},
                "d": {"notebook": "02_nt_stage", "profile": "quick", "seconds": 9.0},
            }
        )
    )
    assert cli.last_seconds(tmp_path, "01_poisoning", "quick") == 120.5
    assert cli.last_seconds(tmp_path, "01_poisoning", "paper") is None


def test_warnings_written_by_cells_are_collected_for_the_runner():
    nb = {
        "cells": [
            {
                "outputs": [
                    {
                        "output_type": "stream",
                        "name": "stderr",
                        "text": "x.py:3: UserWarning: bdlib: few poisons\n  warnings.warn(\n",
                    }
                ]
            },
            {"outputs": [{"output_type": "stream", "name": "stdout", "text": "RuntimeWarning: printed\n"}]},
        ]
    }
    assert cli.notebook_warnings(nb) == ["cell 0: x.py:3: UserWarning: bdlib: few poisons"]


# ---------------------------------------------------------------- papermill parameters, quiet logs


NOTEBOOK_PARAMS = 'profile = "quick"\nattacks = "all"\nseeds = None\n'


def test_an_injected_parameter_the_notebook_lacks_is_refused_with_the_valid_names():
    history = ["", NOTEBOOK_PARAMS, '# Parameters\nprofile = "smoke"\natack = "badnets"\n', "cfg = bdlib.setup(...)"]
    with pytest.raises(ConfigError) as err:
        session.check_injected_parameters(history)
    assert "'atack'" in str(err.value) and "profile, attacks, seeds" in str(err.value)
    assert "'profile'" not in str(err.value).split(";")[0]


def test_known_injected_parameters_and_runs_without_papermill_pass():
    session.check_injected_parameters(["", NOTEBOOK_PARAMS, '# Parameters\nprofile = "smoke"\nseeds = [0]\n'])
    session.check_injected_parameters(["", NOTEBOOK_PARAMS, "cfg = bdlib.setup(profile)"])  # JupyterLab
    session.check_injected_parameters([])
    assert session.assigned_names("a = 1\nb: int = 2\nprint(a)\nc.d = 3\n") == ["a", "b"]
    session.prepare()  # outside a kernel: nothing to do, no error


def test_dask_nanny_shutdown_warning_is_dropped_and_other_warnings_are_kept(caplog):
    session.quiet_dask()
    session.quiet_dask()  # idempotent
    log = logging.getLogger("distributed.nanny")
    with caplog.at_level(logging.WARNING, logger="distributed.nanny"):
        log.warning("Worker process still alive after 3.2 seconds, killing")
        log.warning("Worker process 123 was killed by signal 9")
    assert [r.getMessage() for r in caplog.records] == ["Worker process 123 was killed by signal 9"]


def test_openmp_waits_passively_only_beside_a_busy_process_and_keeps_the_users_choice(tmp_path):
    from bdlib.runner import openmp

    assert openmp.kernel_env(0.1, environ={}) == {}  # quiet: OpenMP's default, the fastest idle
    assert openmp.kernel_env(None, environ={}) == {}  # not measurable (no /proc/stat)
    assert openmp.kernel_env(1.2, environ={}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp.kernel_env(1.2, environ={"OMP_WAIT_POLICY": "ACTIVE"}) == {}  # the user's choice stays
    assert openmp.kernel_env(1.2, environ={"GOMP_SPINCOUNT": "10"}) == {}
    assert "1.2 core(s) busy" in openmp.describe({"OMP_WAIT_POLICY": "PASSIVE"}, 1.2)
    assert openmp.describe({}, 0.1) is None
    assert openmp.for_kernel({"OMP_WAIT_POLICY": "PASSIVE"}) == ({}, None)  # the user chose: no sampling
    # /proc/stat's first line: user nice system idle iowait ...; busy = total - idle - iowait
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    assert openmp.cpu_times(stat) == (200.0, 1000.0)
    assert openmp.busy_cores(0.0, stat) == 0.0  # nothing moved between the two reads
    assert openmp.busy_cores(0.0, tmp_path / "absent") is None
    measured = openmp.busy_cores(0.05)
    assert measured is None or 0.0 <= measured <= (os.cpu_count() or 1) + 1e-6
