"""Every notebook, end to end, through the real runner on profile smoke, into a temp dir."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bdlib.notebooks import NOTEBOOKS, notebooks, parameters

REPO = Path(__file__).resolve().parent.parent
ALL = notebooks()


def _run(tmp: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BDLIB_CACHE": str(cache or tmp / "cache")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bdlib",
            "run",
            *args,
            "--figures",
            str(tmp / "figures"),
            "--out",
            str(tmp / "executed"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


# 01 poisons with every attack (each trigger and victim is checked below); 02-06 defend three of
# them, which cover every figure's code path (03's ML curves and 06's budget curves need BadNets,
# Blended and Narcissus) at half the cost of six. The sweeps inside a notebook (02's τ, the clean
# budgets of 03 and 06) run on two values each: a curve's code path, not its resolution. Every
# defense on every attack runs on quick (make figures) and, on ResNet-18, for BadNets in
# tests/test_paper_path.
DEFENDED = ["badnets", "blended", "narcissus"]
SWEEPS = {
    "02": {"taus": [2.0, 4.0]},
    "03": {"budgets": [0.01, 0.05]},
    "06": {"budgets": {"clean": [0.01, 0.05], "attacks": ["badnets", "narcissus"], "seeds": [0]}},
}


def _expected_parameters(nb: Path) -> dict:
    if nb.stem.startswith("01"):
        return {"profile": "smoke"}
    return {"profile": "smoke", "attacks": DEFENDED, **SWEEPS.get(nb.stem[:2], {})}


def _parameter_args(stem: str) -> list[str]:
    """The runner's ``-p NAME JSON`` arguments that give notebook ``stem`` its smoke-run parameters."""
    given = _expected_parameters(Path(stem)).items()
    return [x for k, v in given if k != "profile" for x in ("-p", k, json.dumps(v))]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    sources = {p: p.read_bytes() for p in ALL}
    # One runner call per parameter set (a notebook takes only its own parameters), in order: 01
    # fills the store the others read.
    calls = [[ALL[0].stem]] + [[p.stem] for p in ALL[1:] if p.stem[:2] in SWEEPS]
    calls.append([p.stem for p in ALL[1:] if p.stem[:2] not in SWEEPS])
    out, err = "", ""
    for stems in calls:
        proc = _run(tmp, *stems, "--profile", "smoke", *_parameter_args(stems[0]))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out, err = out + proc.stdout, err + proc.stderr
    (tmp / "stdout").write_text(out)
    (tmp / "stderr").write_text(err)
    assert {p: p.read_bytes() for p in ALL} == sources, "the runner wrote over a source notebook"
    return tmp


@pytest.mark.parametrize("nb", ALL, ids=[p.stem for p in ALL])
def test_every_saved_figure_is_shown_in_the_executed_notebook(smoke_run, nb):
    manifest = json.loads((smoke_run / "figures" / "manifest.json").read_text())
    saved = sorted(k for k, v in manifest.items() if v["notebook"] == nb.stem and f"{k}.png" in v["files"])
    executed = json.loads((smoke_run / "executed" / nb.name).read_text())
    images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert saved, f"{nb.stem} saved no figure"
    assert len(images) == len(saved), f"{nb.stem}: {len(saved)} figures saved, {len(images)} images shown"
    assert sorted(o["metadata"]["bdlib_figure"] for o in images) == saved


@pytest.mark.parametrize("nb", ALL, ids=[p.stem for p in ALL])
def test_progress_renders_as_one_line_per_cell_without_widget_warnings(smoke_run, nb):
    executed = json.loads((smoke_run / "executed" / nb.name).read_text())
    shown = []
    for cell in executed["cells"]:
        outputs = cell.get("outputs", [])
        text = json.dumps(outputs)
        assert "IProgress" not in text and "TqdmWarning" not in text and "application/vnd.jupyter.widget" not in text
        progress = [o for o in outputs if o.get("metadata", {}).get("bdlib_progress")]
        assert len(progress) <= 1, f"{nb.stem}: {len(progress)} progress outputs in one cell"
        shown += ["".join(o["data"]["text/plain"]) for o in progress]
    if nb.stem.startswith("01"):  # it trains every victim on a cold store
        assert any(re.search(r"training the \w+ victim, seed 0 · \d+ epochs in \d+ s", s) for s in shown), shown


def test_runner_reports_start_end_and_store_counts_in_plain_lines_and_no_jupyter_noise(smoke_run):
    out, err = (smoke_run / "stdout").read_text(), (smoke_run / "stderr").read_text()
    for nb in ALL:
        assert f"{nb.stem}: started on smoke" in out
        assert re.search(rf"^{nb.stem}: [0-9.]+ s; \d+ results? computed.*, \d+ loaded from the store$", out, re.M), out
    assert "\r" not in out and "\033[" not in out, "a live line was drawn although stdout is not a terminal"
    assert "without encryption" not in err + out and "IPKernelApp" not in err, err[-2000:]
    assert not re.search(r"^01_poisoning: .*; 0 results computed", out, re.M), "a cold store computed nothing"


def test_warm_rerun_loads_everything_from_the_store_and_says_so(smoke_run):
    nb = ALL[3]
    args = _parameter_args(nb.stem)
    proc = _run(smoke_run / "warm", nb.stem, "--profile", "smoke", *args, cache=smoke_run / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{nb.stem}: started on smoke" in proc.stdout
    m = re.search(rf"^{nb.stem}: [0-9.]+ s; 0 results computed, (\d+) loaded from the store$", proc.stdout, re.M)
    assert m and int(m.group(1)) > 0, proc.stdout


@pytest.mark.parametrize("nb", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs_on_smoke_and_writes_its_figures(smoke_run, nb):
    figs = smoke_run / "figures"
    manifest = json.loads((figs / "manifest.json").read_text())
    mine = {k: v for k, v in manifest.items() if v["notebook"] == nb.stem}
    assert mine, f"{nb.stem} recorded nothing in the manifest"
    for entry in mine.values():
        assert entry["profile"] == "smoke" and entry["parameters"] == _expected_parameters(nb)
        for f in entry["files"]:
            assert (figs / f).stat().st_size > 0
    assert (smoke_run / "executed" / nb.name).exists()
    jsons = [f for e in mine.values() for f in e["files"] if f.endswith(".json")]
    assert jsons, f"{nb.stem} wrote no metrics file"
    for f in jsons:
        body = json.loads((figs / f).read_text())
        values = list(_numbers(body["metrics"], ("BA", "ASR", "RA")))
        assert values and all(0.0 <= v <= 100.0 for v in values)
        assert any(v > 30.0 for v in values), "every accuracy is below chance-level sanity"


def _numbers(obj, keys):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and isinstance(v, (int, float)):
                yield float(v)
            elif k in keys and isinstance(v, list) and v and isinstance(v[0], (int, float)):
                yield float(v[0])
            else:
                yield from _numbers(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v, keys)


def test_every_attack_poisons_on_smoke(smoke_run, monkeypatch):
    from poisoning_checks import assert_every_attack_poisons

    from bdlib import experiment as ex
    from bdlib import session

    monkeypatch.setenv("BDLIB_CACHE", str(smoke_run / "cache"))
    ex.store.cache_clear()
    stored = len(list((smoke_run / "cache").glob("*/*/meta.json")))
    try:
        assert_every_attack_poisons(ex, session.setup("smoke", device="cpu", progress=False))
        # Everything came from the store the notebooks filled: nothing was recomputed here.
        assert len(list((smoke_run / "cache").glob("*/*/meta.json"))) == stored
    finally:
        ex.store.cache_clear()


def test_every_notebook_has_the_standard_parameters():
    for nb in ALL:
        assert {"profile", "device", "overrides"} <= set(parameters(nb)), nb.name


def test_unknown_parameter_is_refused_with_the_valid_names(tmp_path):
    proc = _run(tmp_path, ALL[0].stem, "-p", "profil", "smoke")
    assert proc.returncode != 0
    assert "profil" in proc.stderr and "profile" in proc.stderr


def test_a_bad_override_is_reported_in_one_paragraph_before_any_kernel(tmp_path):
    proc = _run(tmp_path, ALL[0].stem, "--profile", "smoke", "-p", "overrides", '{"train.epoch": 1}')
    assert proc.returncode == 1
    assert f"error: {ALL[0].name}: " in proc.stderr and "Traceback" not in proc.stderr
    assert "did you mean 'epochs'" in proc.stderr and "started" not in proc.stdout
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
    proc = _papermill(nb, tmp_path, "attacks: [badnets]", profile="smoke")
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
