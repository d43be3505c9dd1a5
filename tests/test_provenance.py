"""Figures that know which code made them: normalised code salts, provenance, ``bdlib status``,
and only the committed configuration writing ``figures/``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bdlib import store
from bdlib.runner import notebooks, provenance

REPO = Path(__file__).resolve().parent.parent
SAMPLE = '''"""A method module."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    lr: float = 0.01  # the reference's lr


def run(model, ctx):
    """Fine-tune."""
    return fit(model, ctx.x, lr=Params().lr, epochs=10)
'''


def _edits_of_form_only(text: str) -> str:
    """The same code with its module docstring reworded, comments added and blank lines doubled:
    what a comment edit or ``ruff format`` does."""
    body = text.split('"""', 2)[2]
    return '"""Reworded."""\n# a new comment\n' + body.replace("\n\n", "\n\n\n") + "\n# a trailing comment\n"


def test_a_comment_or_formatting_edit_does_not_change_a_module_code_hash():
    assert store.normalised_source(_edits_of_form_only(SAMPLE)) == store.normalised_source(SAMPLE)
    changed = SAMPLE.replace("lr: float = 0.01", "lr: float = 0.02")
    assert changed != SAMPLE and store.normalised_source(changed) != store.normalised_source(SAMPLE)


def _salt_of(package: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    code = "from bdlib import store; print(store.CODE_SALT, store.module_hash(__import__('bdlib.defenses.ft').defenses.ft.run))"
    out = subprocess.run([sys.executable, "-c", code], cwd=package.parent, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_store_keys_survive_comment_edits_of_computing_modules_and_store_edits(tmp_path):
    copy = tmp_path / "bdlib"
    shutil.copytree(REPO / "bdlib", copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = _salt_of(copy)
    for rel in ("train.py", "defenses/ft.py"):
        (copy / rel).write_text(_edits_of_form_only((copy / rel).read_text()))
    (copy / "store.py").write_text((copy / "store.py").read_text() + "\n\ndef unused():\n    return 1\n")
    assert _salt_of(copy) == before, "a comment edit or a store edit changed the store keys"
    (copy / "defenses/ft.py").write_text((copy / "defenses/ft.py").read_text() + "\nCHANGED = 1\n")
    core, ft = before.split()
    new_core, new_ft = _salt_of(copy).split()
    assert new_core == core and new_ft != ft, "a real change to FT must change exactly FT's results' keys"


def _fake_figures(tmp_path: Path, uses: dict[str, list[str]]) -> Path:
    """A figures directory as ``make figures`` writes it: each notebook one figure, recorded with
    the current code, each notebook's results depending on the method modules ``uses`` names."""
    figs = tmp_path / "figures"
    figs.mkdir()
    manifest, record = {}, {}
    for path in notebooks.notebooks():
        stem = path.stem
        (figs / f"{stem}.png").write_bytes(b"png")
        manifest[stem] = {
            "notebook": stem,
            "profile": "quick",
            "parameters": {"profile": "quick"},
            "files": [f"{stem}.png"],
        }
        mods = sorted(set(provenance.STUDY_MODULES) | set(store.CORE_MODULES) | set(uses.get(stem[:2], [])))
        results = {f"{i:064x}": ["defended_model", uses.get(stem[:2], [])] for i in range(3)}
        results[f"{9:064x}"] = ["poisoned_model", []]
        hashes = provenance.current(mods, stem)
        record[stem] = {"code": provenance.fingerprint(hashes), "modules": hashes, "results": results}
    (figs / "manifest.json").write_text(json.dumps(manifest))
    (figs / provenance.FILE).write_text(json.dumps(record))
    return figs


def test_status_names_exactly_the_figures_a_real_defense_change_makes_stale(tmp_path, monkeypatch):
    figs = _fake_figures(
        tmp_path, {"04": ["defenses/none.py"], "05": ["defenses/mcldef.py"], "06": ["defenses/none.py"]}
    )
    assert {r["state"] for r in provenance.check(figs)} == {"current"}
    real = store.code_hash

    def edited(rel):  # NONE's computation changed; nothing else did
        return "0" * 16 if rel == "defenses/none.py" else real(rel)

    monkeypatch.setattr(store, "code_hash", edited)
    rows = {r["notebook"][:2]: r for r in provenance.check(figs)}
    assert {k for k, r in rows.items() if r["state"] != "current"} == {"04", "06"}
    assert rows["04"]["why"] == "changed since: defenses/none.py" and rows["04"]["results"] == 3


def test_status_says_a_figure_made_with_other_parameters_or_older_code_is_stale(tmp_path):
    figs = _fake_figures(tmp_path, {})
    manifest = json.loads((figs / "manifest.json").read_text())
    manifest["01_poisoning"]["parameters"] = {"profile": "quick", "seeds": [0]}
    (figs / "manifest.json").write_text(json.dumps(manifest))
    record = json.loads((figs / provenance.FILE).read_text())
    del record["02_nt_stage"]
    (figs / provenance.FILE).write_text(json.dumps(record))
    rows = {r["notebook"][:2]: r for r in provenance.check(figs)}
    assert "parameters other than" in rows["01"]["why"] and "before provenance" in rows["02"]["why"]
    assert rows["03"]["state"] == "current"


def test_the_committed_quick_figures_are_what_the_current_code_makes():
    stale = [
        f"{r['notebook']}: {r['state']} ({r['why']})"
        for r in provenance.check(REPO / "figures")
        if r["state"] != "current"
    ]
    assert not stale, "committed figures the current code would not reproduce (make figures):\n" + "\n".join(stale)


# A parameterised quick run of notebook 01, as small as quick allows: one attack, one seed, a few images.
SMALL = {
    "attacks": '["badnets"]',
    "seeds": "[0]",
    "overrides": '{"n_train": 300, "n_test": 100, "train.epochs": 1, "embedding_points": 60}',
}


@pytest.fixture
def project(tmp_path):
    """A user's project directory with committed figures in it."""
    (tmp_path / "pyproject.toml").write_text("")
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "manifest.json").write_text('{"01_feature_tsne": {"notebook": "01_poisoning"}}')
    (figs / "01_feature_tsne.png").write_bytes(b"committed")
    return tmp_path


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_parameterised_quick_run_never_writes_the_committed_figures(project):
    before = _tree(project / "figures")
    env = {**os.environ, "BDLIB_CACHE": str(project / "cache")}
    env.pop("BDLIB_FIGURES", None)
    given = {k: json.loads(v) for k, v in SMALL.items()}
    manifest = project / "build" / "figures" / "quick" / "manifest.json"
    params = [x for k, v in SMALL.items() for x in ("-p", k, v)]
    runner = [sys.executable, "-m", "bdlib", "run", "01", "--profile", "quick", *params, "--out", str(project / "x")]
    proc = subprocess.run(runner, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree(project / "figures") == before, "a parameterised run of the runner wrote into figures/"
    ran = [e["parameters"] for e in json.loads(manifest.read_text()).values()]
    assert ran and all(p == {"profile": "quick", **given} for p in ran), ran
    nb = str(REPO / "notebooks" / "01_poisoning.ipynb")
    papermill = [
        sys.executable,
        "-m",
        "papermill",
        nb,
        str(project / "out.ipynb"),
        "-k",
        "python3",
        "-y",
        json.dumps(given),
    ]
    proc = subprocess.run(papermill, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree(project / "figures") == before, "a parameterised papermill run wrote into figures/"
    ran = [e["parameters"] for e in json.loads(manifest.read_text()).values()]
    # What the kernel ran with: the parameters cell's defaults with papermill's values applied.
    defaults = notebooks.parameters(REPO / "notebooks" / "01_poisoning.ipynb")
    assert ran and all(p == {**defaults, **given} for p in ran), ran
    assert all(e["notebook"] == "01_poisoning" for e in json.loads(manifest.read_text()).values())
