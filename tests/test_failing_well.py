"""Failing well: each fault reaches the user as one paragraph, a failed run leaves the figures as
they were, the store reports its repairs and works for a second user, a full disk is named.

The runner tests use tiny notebooks of their own (a kernel start each, no training), so they
take seconds: a cell that raises, a kernel killed as an out-of-memory kill would, Ctrl-C.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from bdlib import figures, progress
from bdlib.config import TrainConfig
from bdlib.profiles import profile
from bdlib.runner import cli
from bdlib.runner.notebooks import check_parameters, notebooks, parse_value
from bdlib.store import Store
from bdlib.train import TrainingDiverged, fit

REPO = Path(__file__).resolve().parent.parent


def _notebook(path: Path, *cells: str) -> Path:
    """A notebook whose first code cell is tagged ``parameters`` (``profile = "smoke"``)."""
    code = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": 'profile = "smoke"\n'}]
    code += [{"cell_type": "code", "metadata": {}, "source": c} for c in cells]
    for i, c in enumerate(code):
        c.update(id=f"cell-{i}", execution_count=None, outputs=[])
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = {"cells": code, "metadata": {"kernelspec": kernel, "language_info": {"name": "python"}}, "nbformat": 4}
    nb["nbformat_minor"] = 5
    path.write_text(json.dumps(nb))
    return path


SAVE = (
    "import os\n"
    "from pathlib import Path\n"
    "out = Path(os.environ['BDLIB_FIGURES'])\n"
    "out.mkdir(parents=True, exist_ok=True)\n"
    "(out / 'a.json').write_text('new')\n"
    '(out / \'manifest.json\').write_text(\'{"a": {"notebook": "nb"}}\')\n'
)


def _runner(tmp: Path, nb: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "BDLIB_CACHE": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "bdlib", "run", str(nb), "--profile", "smoke", *args]
    cmd += ["--figures", str(tmp / "figures"), "--out", str(tmp / "executed")]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _old_figures(tmp: Path) -> dict[str, bytes]:
    figs = tmp / "figures"
    figs.mkdir()
    (figs / "a.json").write_text("good")
    (figs / "manifest.json").write_text('{"a": {"notebook": "old"}}')
    return {p.name: p.read_bytes() for p in figs.iterdir()}


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if not p.name.endswith(".lock")}


def test_a_failing_cell_leaves_the_figures_as_they_were_and_names_the_notebooks_own_cell(tmp_path):
    before = _old_figures(tmp_path)
    nb = _notebook(tmp_path / "fails.ipynb", "x = 1\n", SAVE + "raise ValueError('broken on purpose')\n")
    proc = _runner(tmp_path, nb)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "fails.ipynb failed in code cell 3 of 3: ValueError: broken on purpose" in err
    assert "Traceback" not in out + err and "is unchanged" in err
    assert _files(tmp_path / "figures") == before
    assert not list(tmp_path.glob(".figures-staging-*"))


REPAIR = (
    "import torch\n"
    "from bdlib.store import Store\n"
    "s = Store(os.environ['BDLIB_CACHE'])\n"
    "e = s.get_or_compute('model', {'a': 1}, lambda: ({'w': torch.ones(2)}, {}))\n"
    "(s.path(e.key) / 'tensors.safetensors').write_bytes(b'torn')\n"
    "s.get_or_compute('model', {'a': 1}, lambda: ({'w': torch.ones(2)}, {}))\n"
)


def test_a_successful_run_moves_its_figures_into_place_and_lists_store_repairs(tmp_path):
    _old_figures(tmp_path)
    (tmp_path / "figures" / "b.json").write_text("kept")
    nb = _notebook(tmp_path / "ok.ipynb", SAVE + REPAIR)
    proc = _runner(tmp_path, nb)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "ok: store: entry " in out and "is corrupt" in out and "discarded, to be recomputed" in out
    assert "2 results computed (2 model), 0 loaded from the store, 1 store repair (listed above)" in out
    figs = tmp_path / "figures"
    assert (figs / "a.json").read_text() == "new" and (figs / "b.json").read_text() == "kept"
    assert json.loads((figs / "manifest.json").read_text()) == {"a": {"notebook": "nb"}}
    assert not list(tmp_path.glob(".figures-staging-*"))


def test_a_killed_kernel_is_one_paragraph_about_memory(tmp_path):
    before = _old_figures(tmp_path)
    kill = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    nb = _notebook(tmp_path / "killed.ipynb", "from bdlib import session\nsession.prepare()\n", SAVE + kill)
    proc = _runner(tmp_path, nb)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "the kernel died in code cell 3" in err and "memory" in err and "GiB" in err
    assert "Traceback" not in out + err and "DeadKernelError" not in err
    assert _files(tmp_path / "figures") == before


def test_ctrl_c_is_one_paragraph_saying_a_rerun_resumes(tmp_path):
    before = _old_figures(tmp_path)
    asleep = tmp_path / "asleep"
    nb = _notebook(
        tmp_path / "slow.ipynb", SAVE + f"import time\nopen({str(asleep)!r}, 'w').close()\ntime.sleep(120)\n"
    )
    # A test run started in the background (a script's `cmd &`, no job control) ignores SIGINT, and
    # a child inherits an ignored signal: start the runner as from a terminal, where it is handled.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = _runner(tmp_path, nb)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    while not asleep.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the kernel is sleeping in cell 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted (Ctrl-C)" in err and "resumes" in err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err
    assert _files(tmp_path / "figures") == before


def _main(*argv: str, capsys) -> tuple[int, str]:
    code = cli.main(["run", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["01", "-p", "attacks", "[badnets]"], "not valid JSON"),
        (["01", "-p", "seeds", "0"], "'seeds' must be a list"),
        (["01", "-p", "attacks", '["badnet"]'], "badnets"),
        (["06", "-p", "defenses", '["nad", "anq"]'], "anp"),
        (["06", "-p", "budgets", '{"clean": [0.05], "attacks": ["badnet"], "seeds": [0]}'], "badnets"),
        (["06", "-p", "budgets", '{"clean": [0.05], "attacks": ["badnets"]}'], "keys clean, attacks, seeds"),
        (["06", "-p", "overrides", '{"tuning.defenses": ["ftt"]}'], "'ftt' is unknown"),
        (["01", "-p", "overrides", '{"train.epochs": 0}'], "'train.epochs' must be an integer >= 1, got 0"),
        (["01", "-p", "overrides", '{"train.epoch": 1}'], "did you mean 'epochs'"),
        (["01", "--profile", "smoke", "-p", "profile", "quick"], "disagree"),
        (["01", "-p", "profile", "fast"], "smoke"),
    ],
)
def test_bad_parameters_are_refused_before_a_kernel_starts_naming_the_field(argv, expected, capsys, tmp_path):
    start = time.perf_counter()
    code, err = _main(*argv, "--figures", str(tmp_path / "f"), "--out", str(tmp_path / "e"), capsys=capsys)
    assert code == 1 and expected in err, err
    assert time.perf_counter() - start < 5  # no kernel was started
    assert not (tmp_path / "e").exists()


def test_good_parameters_pass_and_a_plain_string_is_accepted_where_the_default_is_a_string():
    nb = notebooks(["01"])[0]
    out = check_parameters(nb, {"device": parse_value("cpu"), "attacks": parse_value("badnets")})
    assert out == {"device": "cpu", "attacks": "badnets"} and type(out["device"]) is str
    budgets = {"clean": [0.05], "attacks": ["badnets"], "seeds": [0]}
    given = {"profile": "paper", "budgets": budgets, "seeds": [0], "defenses": "all"}
    assert check_parameters(notebooks(["06"])[0], given) == given


def test_fit_stops_at_the_first_non_finite_epoch_naming_the_stage_and_learning_rate():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 2, (64,), generator=gen)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    cfg = TrainConfig(epochs=5, batch_size=16, lr=1e12, crop_pad=0, flip=False)
    with pytest.raises(TrainingDiverged, match=r"\(FT\).*epoch [12]/5 is (nan|inf).*learning rate 1e\+12"):
        fit(model, x, y, cfg, seed=0, desc="FT")


def test_store_repairs_reach_the_runner_and_its_summary(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.STATUS_ENV, str(tmp_path))
    store = Store(tmp_path / "cache")
    entry = store.get_or_compute("model", {"a": 1}, lambda: ({"w": torch.ones(2)}, {}))
    (store.path(entry.key) / "tensors.safetensors").write_bytes(b"garbage")
    again = store.get_or_compute("model", {"a": 1}, lambda: ({"w": torch.ones(2)}, {}))
    assert torch.equal(again.tensors["w"], torch.ones(2))
    counts = progress.read_store_log(tmp_path)
    assert len(counts["notices"]) == 1 and entry.key[:12] in counts["notices"][0]
    assert "corrupt" in counts["notices"][0] and "recomputed" in counts["notices"][0]
    assert cli.store_summary(counts) == (
        "2 results computed (2 model), 0 loaded from the store, 1 store repair (listed above)"
    )


def test_a_full_disk_names_the_directory_and_its_free_space_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    import bdlib.store as store_module

    def full(*a, **k):
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(store_module, "save_file", full)
    store = Store(tmp_path / "cache")
    with pytest.raises(OSError, match="no space left on the disk of the store") as err:
        store.put("a" * 64, {"w": torch.ones(1)}, {})
    assert (
        err.value.errno == errno.ENOSPC and str(tmp_path / "cache") in str(err.value) and "MiB free" in str(err.value)
    )
    assert not (tmp_path / "cache" / "aa").exists() and not any((tmp_path / "cache" / "tmp").iterdir())

    def no_room(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("BDLIB_FIGURES", str(tmp_path / "figs"))
    monkeypatch.setattr(figures.tempfile, "mkstemp", no_room)
    with pytest.raises(OSError, match="figures directory") as err:
        figures.save_metrics("x", {"a": 1}, profile("smoke"))
    assert str(tmp_path / "figs") in str(err.value) and "BDLIB_FIGURES" in str(err.value)


# ---- a store shared by two users ---------------------------------------------------------


def _as(uid: int, gid: int, umask: int, root: Path, action: str, arg: str) -> str:
    """Run one store action as another user, in a forked child (it needs no interpreter of its
    own, which another user could not reach under /root): ``write`` prints the key, ``read``
    the entry's sum or the permission error."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, act, report, leave without cleanup
        out = ""
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            store = Store(root)
            if action == "write":
                out = store.get_or_compute("model", {"who": arg}, lambda: ({"w": torch.ones(3)}, {})).key
            else:
                try:
                    out = f"read {float(store.get(arg).tensors['w'].sum())}"
                except PermissionError as err:
                    out = f"denied: {err}"
        except BaseException as err:  # anything else: reported to the test
            out = f"failed: {type(err).__name__}: {err}"
        finally:
            os.write(writer, out.encode())
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two other users (CI runs as root)")
def test_a_second_user_reads_and_extends_an_instructors_cache_and_permission_problems_say_so():
    shared = Path(tempfile.mkdtemp(prefix="bdlib-shared-"))
    try:
        os.chmod(shared, 0o755)  # mkdtemp makes it private
        root = shared / "cache"
        root.mkdir()
        # The instructor's set-up (README, "A shared cache"): a group-writable, setgid store, umask 002.
        os.chown(root, 60001, 60000)
        os.chmod(root, 0o2775)
        key = _as(60001, 60000, 0o002, root, "write", "instructor")
        assert len(key) == 64, key
        assert _as(60002, 60000, 0o002, root, "read", key) == "read 3.0"
        mine = _as(60002, 60000, 0o002, root, "write", "student")  # a new entry, shard and lock
        assert len(mine) == 64, mine
        assert _as(60001, 60000, 0o002, root, "read", mine) == "read 3.0"
        # A private entry (umask 077) is a permission problem, reported as such and kept.
        private = _as(60001, 60000, 0o077, root, "write", "private")
        assert len(private) == 64, private
        denied = _as(60002, 60000, 0o002, root, "read", private)
        assert denied.startswith("denied: bdlib store: permission denied reading"), denied
        assert "chmod -R g+rwX" in denied and "corrupt" not in denied
        assert Store(root).get(private) is not None  # not discarded
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_a_store_that_is_not_a_writable_directory_is_refused_before_a_kernel_starts(
    kind, capsys, tmp_path, monkeypatch
):
    (tmp_path / "store").write_text("not a directory")
    where = tmp_path / "store" if kind == "a file" else tmp_path / "store" / "cache"
    monkeypatch.setenv("BDLIB_CACHE", str(where))
    start = time.perf_counter()
    code, err = _main("01", "--figures", str(tmp_path / "f"), "--out", str(tmp_path / "e"), capsys=capsys)
    assert code == 1 and "the store" in err and "BDLIB_CACHE" in err and "is a file" in err, err
    assert time.perf_counter() - start < 5 and not (tmp_path / "e").exists()  # no kernel was started


def test_a_read_only_store_is_refused_in_one_sentence(tmp_path, monkeypatch):
    from bdlib import store

    monkeypatch.setenv("BDLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user other than root
    with pytest.raises(store.StoreAccessError, match=r"the store .* is not writable by you .*set BDLIB_CACHE"):
        store.check_root()


def test_a_device_the_machine_lacks_is_refused_before_a_kernel_starts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Exception, match="device 'cuda' was requested but torch sees no CUDA device.*'auto'"):
        check_parameters(notebooks(["04"])[0], {"device": "cuda"})
