"""Every notebook, end to end, through the real runner on profile smoke, into a temp dir."""

import json
import re
from pathlib import Path

import pytest
from runner import run_notebooks as _run

from bdlib.runner.notebooks import notebooks

ALL = notebooks()


# 01 poisons with every attack (each trigger and victim is checked below); 02-06 defend a
# dirty-label and a clean-label attack, BadNets and Narcissus, which take every figure's code path
# (a defense's code does not depend on the attack beyond that). The sweeps inside a notebook (02's
# τ, the clean budgets of 03 and 06) run on two values each: a curve's code path, not its
# resolution. Every defense on every attack runs on quick (make figures) and, on ResNet-18, for
# BadNets in tests/test_paper_path.
DEFENDED = ["badnets", "narcissus"]
SWEEPS = {
    "02": {"taus": [2.0, 4.0]},
    "03": {"budgets": [0.01, 0.05]},
    "06": {"budgets": {"clean": [0.01, 0.05], "attacks": ["badnets"], "seeds": [0]}},
}


def _expected_parameters(nb: Path) -> dict:
    if nb.stem.startswith("01"):
        return {"profile": "smoke"}
    return {"profile": "smoke", "attacks": DEFENDED, **SWEEPS.get(nb.stem[:2], {})}


def _parameter_args(stems: list[str]) -> list[str]:
    """The runner's ``-p NAME JSON`` arguments for these notebooks' smoke-run parameters (the
    runner gives each notebook the ones it declares)."""
    given = {k: v for stem in stems for k, v in _expected_parameters(Path(stem)).items() if k != "profile"}
    return [x for k, v in given.items() for x in ("-p", k, json.dumps(v))]


# Runner calls, in order: 01 fills the store the others read; 02 and 03; 06, then 04 and 05, which
# find every result they show in the store (06 computed it). 03's and 06's ``budgets`` differ in
# shape, so they go to separate calls.
CALLS = [["01"], ["02", "03"], ["06", "04", "05"]]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    sources = {p: p.read_bytes() for p in ALL}
    out, err = "", ""
    for stems in CALLS:
        proc = _run(tmp, *stems, "--profile", "smoke", *_parameter_args(stems))
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
        assert any(re.search(r"training the \w+ victim, seed 0 · \d+ epochs? in \d+ s", s) for s in shown), shown


def test_runner_reports_start_end_and_store_counts_in_plain_lines_and_no_jupyter_noise(smoke_run):
    out, err = (smoke_run / "stdout").read_text(), (smoke_run / "stderr").read_text()
    for nb in ALL:
        assert f"{nb.stem}: started on smoke" in out
        assert re.search(rf"^{nb.stem}: [0-9.]+ s; \d+ results? computed.*, \d+ loaded from the store$", out, re.M), out
    assert "\r" not in out and "\033[" not in out, "a live line was drawn although stdout is not a terminal"
    assert "without encryption" not in err + out and "IPKernelApp" not in err, err[-2000:]
    assert not re.search(r"^01_poisoning: .*; 0 results computed", out, re.M), "a cold store computed nothing"


def test_a_notebook_whose_results_are_stored_computes_nothing_and_says_so(smoke_run):
    # 04 ran after 06, which computed NONE on every attack and seed 04 shows: 04 is a warm run.
    assert [p.stem[:2] for p in ALL] == ["01", "02", "03", "04", "05", "06"] and CALLS[2][:2] == ["06", "04"]
    nb = ALL[3]
    out = (smoke_run / "stdout").read_text()
    m = re.search(rf"^{nb.stem}: [0-9.]+ s; 0 results computed, (\d+) loaded from the store$", out, re.M)
    assert m and int(m.group(1)) > 0, out


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


def test_a_diverging_defense_cell_is_a_result_and_notebook_06_finishes(smoke_run):
    # FT at lr 1e20 diverges (NaN loss) on every cell of the grid; the notebook still finishes, the
    # cell is marked in its rows and in the ledger, and the runner's summary names it with FT's own
    # lr field, the attack and the seed. The victims and the tuning sweep are warm from smoke_run.
    out_dir = smoke_run / "diverging"
    proc = _run(
        out_dir,
        "06",
        "--profile",
        "smoke",
        *("-p", "attacks", '["badnets"]', "-p", "defenses", '["ft"]'),
        *("-p", "budgets", '{"clean": [0.05], "attacks": ["badnets"], "seeds": [0]}'),
        *("-p", "overrides", '{"defenses.ft.lr": 1e20}'),
        cache=smoke_run / "cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"06_comparisons: 1 defense cell\(s\) diverged:", proc.stdout), proc.stdout
    assert re.search(r"ft diverged on the badnets victim, seed 0: .*defenses\.ft\.lr \(now 1e\+20\)", proc.stdout)
    body = json.loads((out_dir / "figures" / "06_comparisons.json").read_text())["metrics"]
    ft = [r for r in body["grid"] if r["defense"] == "ft" and r["clean_fraction"] == 0.05]
    assert ft and all("defenses.ft.lr" in r["diverged"] for r in ft)
    bar = next(e for e in body["ledger"] if e["id"] == "bar-ft")
    # Judged on BadNets alone (the other attacks not run: inconclusive), where the diverged cell fails.
    assert bar["verdict"] == "inconclusive" and bar["diverged"] == ["badnets × ft"]
    assert "on the rest: 0/1 attacks meet it" in bar["evidence"] and "badnets diverged" in bar["evidence"]
