"""Every notebook, end to end, through the real runner on profile smoke, into a temp dir."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bdlib.run import NOTEBOOKS, notebooks, parameters

REPO = Path(__file__).resolve().parent.parent
ALL = notebooks()


def _run(tmp: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "BDLIB_CACHE": str(cache or tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "bdlib", "run", *args, "--figures", str(tmp / "figures"),
                           "--out", str(tmp / "executed")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    sources = {p: p.read_bytes() for p in ALL}
    proc = _run(tmp, "--profile", "smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in ALL} == sources, "the runner wrote over a source notebook"
    return tmp


@pytest.mark.parametrize("nb", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs_on_smoke_and_writes_its_figures(smoke_run, nb):
    figs = smoke_run / "figures"
    manifest = json.loads((figs / "manifest.json").read_text())
    mine = {k: v for k, v in manifest.items() if v["notebook"] == nb.stem}
    assert mine, f"{nb.stem} recorded nothing in the manifest"
    for name, entry in mine.items():
        assert entry["profile"] == "smoke" and entry["parameters"] == {"profile": "smoke"}
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


def test_every_notebook_has_the_standard_parameters():
    for nb in ALL:
        assert {"profile", "device", "overrides"} <= set(parameters(nb)), nb.name


def test_unknown_parameter_is_refused_with_the_valid_names(tmp_path):
    proc = _run(tmp_path, ALL[0].stem, "-p", "profil", "smoke")
    assert proc.returncode != 0
    assert "profil" in proc.stderr and "profile" in proc.stderr


def test_failing_cell_is_reported_in_one_paragraph(tmp_path):
    proc = _run(tmp_path, ALL[0].stem, "--profile", "smoke", "-p", "overrides", '{"train.epoch": 1}')
    assert proc.returncode == 1
    assert f"{ALL[0].name} failed in cell" in proc.stderr
    assert "ConfigError" in proc.stderr and "did you mean 'epochs'" in proc.stderr
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").glob("*.png"))


def test_unknown_notebook_lists_the_choices():
    proc = subprocess.run([sys.executable, "-m", "bdlib", "run", "99_nothing"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and ALL[0].stem in proc.stderr
    assert NOTEBOOKS.exists()
