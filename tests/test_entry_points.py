"""The notebooks' entry points other than the smoke run: the runner's refusals before any kernel
(the CLI in this process; its exit status through a real process once), and plain papermill
(outside the repo, a misspelled parameter). Apart from tests/test_notebooks.py so that
pytest-xdist runs them beside the smoke run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from runner import REPO

from bdlib.runner import cli
from bdlib.runner.notebooks import NOTEBOOKS, notebooks, parameters

ALL = notebooks()


def test_every_notebook_has_the_standard_parameters():
    for nb in ALL:
        assert {"profile", "device", "overrides"} <= set(parameters(nb)), nb.name


def _main(tmp: Path, capsys, *argv: str) -> tuple[int, str, str]:
    """The runner's CLI in this process (its refusals come before any kernel or subprocess)."""
    code = cli.main(["run", *argv, "--figures", str(tmp / "figures"), "--out", str(tmp / "executed")])
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_parameter_is_refused_with_the_valid_names(tmp_path, capsys):
    code, _, err = _main(tmp_path, capsys, ALL[0].stem, "-p", "profil", "smoke")
    assert code != 0
    assert "profil" in err and "profile" in err


def test_a_bad_override_is_reported_in_one_paragraph_before_any_kernel(tmp_path, capsys):
    code, out, err = _main(tmp_path, capsys, ALL[0].stem, "--profile", "smoke", "-p", "overrides", '{"train.epoch": 1}')
    assert code == 1
    assert f"error: {ALL[0].name}: " in err and "Traceback" not in err
    assert "did you mean 'epochs'" in err and "started" not in out
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").glob("*.png"))


def test_unknown_notebook_lists_the_choices():
    proc = subprocess.run(
        [sys.executable, "-m", "bdlib", "run", "99_nothing"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 1 and ALL[0].stem in proc.stderr
    assert NOTEBOOKS.exists()


def _papermill(nb: Path, cwd: Path, *yaml: str, **params: str) -> subprocess.CompletedProcess:
    """papermill's own CLI: ``-p NAME VALUE`` passes VALUE as a string, ``-y YAML`` anything else."""
    env = {k: v for k, v in os.environ.items() if k not in ("BDLIB_CACHE", "BDLIB_FIGURES")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "papermill", str(nb), str(cwd / "out.ipynb"), "--no-progress-bar"]
    for k, v in params.items():
        cmd += ["-p", k, v]
    for text in yaml:
        cmd += ["-y", text]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_plain_papermill_outside_the_repo_writes_under_the_working_directory(tmp_path):
    repo_figures = _tree(REPO / "figures") if (REPO / "figures").exists() else {}
    nb = next(p for p in ALL if p.stem.startswith("04"))
    proc = _papermill(nb, tmp_path, "attacks: [badnets]", "overrides: {n_train: 200, n_test: 50}", profile="smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    figs = tmp_path / "build" / "figures" / "smoke"
    assert (figs / "manifest.json").exists() and list(figs.glob("04_*.png"))
    assert any((tmp_path / ".bdlib-cache").glob("??/*/meta.json")), "nothing was stored under the working directory"
    assert not (tmp_path / "figures").exists(), "a smoke run wrote where the quick figures live"
    assert (_tree(REPO / "figures") if (REPO / "figures").exists() else {}) == repo_figures, (
        "the repo's figures changed"
    )


def test_plain_papermill_refuses_a_misspelled_parameter_in_the_setup_cell(tmp_path):
    proc = _papermill(ALL[0], tmp_path, profile="smoke", atack="badnets")
    assert proc.returncode != 0
    out = json.loads((tmp_path / "out.ipynb").read_text())
    errors = [(i, o) for i, c in enumerate(out["cells"]) for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1
    i, err = errors[0]
    assert "bdlib.setup(" in "".join(out["cells"][i]["source"]), "the error did not come from the setup cell"
    assert err["ename"] == "ConfigError" and "'atack'" in err["evalue"]
    assert all(name in err["evalue"] for name in parameters(ALL[0]))
    assert not (tmp_path / "build").exists(), "the notebook went on past its setup cell"


def test_each_parameter_goes_to_the_notebooks_that_declare_it_all_checked_before_any_kernel(
    tmp_path, capsys, monkeypatch
):
    ran = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, params, out, figures: ran.append((path.stem, params)) or 0.0)
    code, _, err = _main(
        tmp_path, capsys, "02", "03", "--profile", "smoke", "-p", "taus", "[2.0]", "-p", "budgets", "[0.05]"
    )
    assert code == 0, err
    assert ran == [
        ("02_nt_stage", {"profile": "smoke", "taus": [2.0]}),
        ("03_mutual_learning", {"profile": "smoke", "budgets": [0.05]}),
    ]
    ran.clear()
    # 06's budgets is a dict: the bad value for the second notebook stops the run before the first.
    code, _, err = _main(tmp_path, capsys, "03", "06", "--profile", "smoke", "-p", "budgets", "[0.05]")
    assert code == 1 and "06_comparisons.ipynb: 'budgets' must be a dict" in err and ran == []
    code, _, err = _main(tmp_path, capsys, "01", "02", "-p", "budget", "[0.05]")
    assert code == 1 and ran == []
    assert "01_poisoning, 02_nt_stage: parameter(s) budget unknown; they take: " in err and "taus" in err
