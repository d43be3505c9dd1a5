"""The notebooks' helpers on hand-made runs and rows (no training): bdlib.report's pure functions,
and bdlib.study.measure's cells and reads with the store's stages replaced."""

import dataclasses
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from bdlib import cells, experiment, plots, pool  # noqa: E402
from bdlib.config import override  # noqa: E402
from bdlib.profiles import resolve  # noqa: E402
from bdlib.report import common, comparisons, mcldef, mutual_learning, none, nt_stage, poisoning  # noqa: E402
from bdlib.study import grid, measure  # noqa: E402

M = {"BA": 80.0, "ASR": 10.0, "RA": 70.0}


def _run(record, cfg=None, before=None, metrics=None):
    return SimpleNamespace(record=record, cfg=cfg, before=before or {}, metrics=metrics or {}, model=None)


def _ntml_cfg(teacher="kd", target=0):
    return SimpleNamespace(defenses={"ntml": SimpleNamespace(teacher=teacher)}, target=target)


def test_per_attack_summarises_each_attack_in_order_and_tables_them():
    rows = [
        {"attack": "b", "model": "x", "BA": 1.0, "ASR": 2.0, "RA": 3.0},
        {"attack": "a", "model": "x", "BA": 3.0, "ASR": 4.0, "RA": 5.0},
        {"attack": "b", "model": "x", "BA": 3.0, "ASR": 2.0, "RA": 3.0},
    ]
    summary = common.per_attack(rows)
    assert list(summary) == ["b", "a"]
    assert summary["b"]["x"]["BA"] == [2.0, 1.41] and summary["a"]["x"]["ASR"] == [4.0, 0.0]
    table = common.per_attack_table(summary)
    assert list(table.index) == ["b · x", "a · x"] and table.loc["b · x", "BA"] == "2.0 ± 1.4"
    assert common.means(rows, "b", "x") == {"BA": 2.0, "ASR": 2.0, "RA": 3.0}


def test_describe_prints_the_kernels_it_is_given_and_the_seeds_run():
    cfg = resolve("smoke")
    text = common.describe(cfg, "float32, deterministic kernels", ["none"], common.seed_list(cfg, [7, 3]))
    assert "(float32, deterministic kernels)" in text and "seeds [7, 3]" in text and "\nnone: {" in text
    assert f"seeds {list(cfg.seeds)}" in common.describe(cfg, "float32")
    assert measure.kernels(dataclasses.replace(cfg, device="cpu", compile=True)).startswith("float32, ")
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        common.seed_list(cfg, [-1])


@pytest.mark.parametrize("teacher", ["kd", "poisoned"])
def test_nt_stage_rows_leave_out_a_teacher_that_is_m0(teacher):
    rec = SimpleNamespace(poisoned={"BA": 1.0}, nt_teacher_metrics={"BA": 2.0}, nt_student_metrics={"BA": 3.0})
    rows = nt_stage.nt_stage_rows({("badnets", 0): _run(rec, _ntml_cfg(teacher))})
    expected = ["poisoned", "nt teacher", "nt student"] if teacher == "kd" else ["poisoned", "nt student"]
    assert [r["model"] for r in rows] == expected
    assert rows[-1] == {"attack": "badnets", "seed": 0, "model": "nt student", "BA": 3.0}


def test_ml_epoch_rows_put_the_nt_stage_at_epoch_zero():
    def run(shift):
        ml = [{"epoch": 1, "loss": 0.5, "student": {"BA": 1.0 + shift}, "teacher": {"BA": 2.0 + shift}}]
        return _run(SimpleNamespace(nt_student_metrics={"BA": shift}, nt_teacher_metrics={"BA": -shift}, ml_history=ml))

    rows = mutual_learning.ml_epoch_rows([run(0.0), run(10.0)])
    assert [(r["epoch"], r["series"], r["BA"]) for r in rows] == [
        (0, "student", 0.0),
        (0, "teacher", -0.0),
        (0, "student", 10.0),
        (0, "teacher", -10.0),
        (1, "student", 1.0),
        (1, "teacher", 2.0),
        (1, "student", 11.0),
        (1, "teacher", 12.0),
    ]
    # without the ML curve the ML epochs hold losses only: epoch 0 alone
    flat = _run(SimpleNamespace(nt_student_metrics=M, nt_teacher_metrics=M, ml_history=[{"epoch": 1, "loss": 0.1}]))
    assert [r["epoch"] for r in mutual_learning.ml_epoch_rows([flat])] == [0, 0]


def test_round_and_epoch_rows_are_long_rows_of_one_series():
    rec = SimpleNamespace(rounds=[{"round": 1, "flagged": 3, **M}])
    rows = none.round_rows({("badnets", 0): _run(rec, before={"BA": 90.0, "ASR": 99.0, "RA": 1.0})})
    assert rows == [
        {"round": 0, "BA": 90.0, "ASR": 99.0, "RA": 1.0, "attack": "badnets", "series": "NONE"},
        {"round": 1, "flagged": 3, **M, "attack": "badnets", "series": "NONE"},
    ]
    epochs = [{"epoch": 0, "loss": None, **M}, {"epoch": 1, "loss": 0.3, **M}]
    rows = mcldef.mcldef_epoch_rows([_run(SimpleNamespace(epochs=epochs))])
    assert [(r["epoch"], r["series"]) for r in rows] == [(0, "MCLDef"), (1, "MCLDef")]


def test_detection_rows_score_the_flags_against_the_poison_index(monkeypatch):
    truth = torch.tensor([True, True, False, False])
    monkeypatch.setattr(
        experiment, "poisoned_model", lambda cfg: SimpleNamespace(poisoned=SimpleNamespace(poison_idx=truth))
    )
    flagged = torch.tensor([True, False, True, False])
    runs = {("badnets", 1): _run(SimpleNamespace(flagged=flagged), cfg="c")}
    truths = measure.poison_indices(runs)
    assert truths == {("badnets", 1): truth}
    rows = none.detection_rows(runs, truths)
    assert rows == [{"attack": "badnets", "seed": 1, "precision": 50.0, "recall": 50.0, "flagged": 2, "poisoned": 2}]
    table = none.detection_table(rows + [{**rows[0], "seed": 2, "precision": 100.0}])
    assert table.loc["badnets", "precision"] == 75.0


def _mcldef_run(target: int, anomaly: float, purified: bool, note: str = "") -> SimpleNamespace:
    """A detecting-MCLDef run as report reads it (a hand-made record, true target 0)."""
    rec = SimpleNamespace(
        target=target, anomaly_index=anomaly, detection_confident=purified, purified=purified, note=note
    )
    return SimpleNamespace(record=rec, cfg=_ntml_cfg(target=0), diverged=False)


def test_target_detection_reads_the_mcldef_record():
    rows = mcldef.target_detection({("blended", 0): _mcldef_run(3, 2.5, True)})
    assert rows == [
        {
            "attack": "blended",
            "seed": 0,
            "detected": 3,
            "true": 0,
            "anomaly index": 2.5,
            "confident": True,
            "purified": True,
        }
    ]


def test_published_triggers_read_the_published_record():
    rec = SimpleNamespace(target=0, mask_norm=16.0, trigger_success=torch.tensor([97.5]), trigger_accepted=True)
    rows = mcldef.published_triggers({("sig", 2): SimpleNamespace(record=rec, diverged=False)})
    assert rows == [{"attack": "sig", "seed": 2, "target": 0, "pixels": 16.0, "success": 97.5, "accepted": True}]


def test_no_outlier_notes_name_each_unpurified_run():
    runs = {
        ("badnets", 0): _mcldef_run(0, 2.6, True, "class 0 is an outlier"),
        ("sig", 1): _mcldef_run(4, 1.2, False, "no class is an outlier"),
    }
    assert mcldef.no_outlier_notes(runs) == "sig, seed 1: no class is an outlier"
    assert "every run" in mcldef.no_outlier_notes({("badnets", 0): runs[("badnets", 0)]})


def test_mcldef_forms_rows_label_both_forms_and_keep_one_undefended_row():
    und = {"attack": "sig", "seed": 0, "model": "undefended", "BA": 90.0}
    published = [und, {**und, "model": "mcldef", "BA": 80.0}]
    detecting = [und, {**und, "model": "mcldef_detect", "BA": 90.0}]
    rows = mcldef.mcldef_forms_rows(published, detecting)
    assert [(r["model"], r["BA"]) for r in rows] == [("undefended", 90.0), ("as published", 80.0), ("detecting", 90.0)]


def test_inversion_rows_take_one_seed(monkeypatch):
    x = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    y = torch.tensor([0, 1, 1])
    monkeypatch.setattr(experiment, "run_data", lambda cfg: SimpleNamespace(x_test=x, y_test=y))
    monkeypatch.setattr(experiment, "poisoned_model", lambda cfg: SimpleNamespace(test_trigger=lambda b: b + 5))
    rec = SimpleNamespace(
        mask=torch.ones(1, 2, 2), pattern=torch.ones(1, 2, 2), mask_norms=torch.tensor([4.0, 1.0]), target=1
    )
    runs = {(a, s): _run(rec, _ntml_cfg(target=0)) for a in ("badnets", "sig") for s in (0, 1)}
    diffs = measure.true_triggers(runs, 1)
    assert list(diffs) == [("badnets", 1), ("sig", 1)]
    rows = mcldef.inversion_rows(runs, 1, diffs)
    assert [r["attack"] for r in rows] == ["badnets", "sig"]
    assert rows[0]["norms"] == [4.0, 1.0] and rows[0]["detected"] == 1 and rows[0]["target"] == 0
    assert torch.equal(rows[0]["true_diff"], torch.full((1, 2, 2), 5.0))


def _fake_cell_runs(monkeypatch):
    """bdlib.cells.runs replaced: the cells asked for, in order, and a run per cell."""
    asked = []

    def runs(cfg, cs):
        asked.extend(cs)
        rec = SimpleNamespace(nt_student_metrics={"BA": 1.0}, nt_teacher=None)
        return {c: SimpleNamespace(metrics={"BA": 2.0, "DER": 0.5, "cell": c}, record=rec) for c in cs}

    monkeypatch.setattr(cells, "runs", runs)
    return asked


def test_tau_budget_and_ablation_runs_are_the_cells_of_each_setting(monkeypatch):
    asked = _fake_cell_runs(monkeypatch)
    run = _run(None, cfg=SimpleNamespace(attack="sig", seed=3))
    rows = nt_stage.tau_rows(measure.tau_runs(run, [1.0, 4.0]))
    assert asked == [cells.Cell("sig", "ntml", 3, setting=(("tau", t),)) for t in (1.0, 4.0)]
    assert [(r["tau"], r["series"], r["BA"]) for r in rows] == [
        (1.0, "NT student", 1.0),
        (1.0, "after ML (final)", 2.0),
        (4.0, "NT student", 1.0),
        (4.0, "after ML (final)", 2.0),
    ]
    asked.clear()
    rows = mutual_learning.budget_rows(measure.budget_runs(None, "badnets", [0.01, 0.05], [0]))
    assert [(r["clean %"], r["series"]) for r in rows] == [
        (1.0, "NT-ML"),
        (1.0, "fine-tuning"),
        (5.0, "NT-ML"),
        (5.0, "fine-tuning"),
    ]
    assert asked[0] == cells.Cell("badnets", "ntml", 0, clean_fraction=0.01)
    assert asked[1] == cells.Cell("badnets", "ft", 0, clean_fraction=0.01)
    asked.clear()
    cfg = SimpleNamespace(defenses={"ntml": SimpleNamespace(teacher="kd")})
    rows = mutual_learning.ablation_rows(measure.ablation_runs(cfg, "badnets", 0))
    assert [r["variant"] for r in rows] == ["default", "teacher = M0", "τ = 2", "λ = 0", "λ = 2", "fine-tuning"]
    assert [c.setting for c in asked] == [
        None,
        (("teacher", "poisoned"),),
        (("tau", 2.0),),
        (("lam", 0.0),),
        (("lam", 2.0),),
        None,
    ]
    assert asked[-1].defense == "ft" and {c.defense for c in asked[:-1]} == {"ntml"}


def test_a_cells_config_is_the_config_each_notebook_computed_before():
    """The cells the measurements run name the same configs (so the same stored results) as the
    overrides the notebooks used: a setting's Params fields, the clean budget, the attack's rate."""
    cfg = resolve("smoke")
    old = experiment.with_run(cfg, attack="badnets", seed=1)

    def same(cell, overrides):
        assert cells.config(cfg, cell) == dataclasses.replace(override(old, overrides), progress=False)

    same(cells.Cell("badnets", "ntml", 1, setting=(("tau", 2.0),)), {"defenses.ntml.tau": 2.0})
    same(cells.Cell("badnets", "ntml", 1, setting=(("ml_curve", True),)), {"defenses.ntml.ml_curve": True})
    same(cells.Cell("badnets", "ft", 1, clean_fraction=0.01), {"clean_fraction": 0.01})
    same(cells.Cell("badnets", "ntml", 1), {})
    same(cells.Cell("badnets", cells.UNDEFENDED, 1), {})


def test_defense_rows_read_each_cell_before_and_after(monkeypatch):
    seen = []

    def defended(cfg, defense, attacks, seeds, setting=None):
        seen.append(setting)
        diverged = {"message": "nan at epoch 2"}
        return {
            (a, s): SimpleNamespace(
                before={"BA": 90.0}, metrics={"BA": 1.0}, seconds=2.0, diverged=diverged if s else None
            )
            for a in attacks
            for s in seeds
        }

    monkeypatch.setattr(cells, "defended", defended)
    rows, runs = measure.defense_rows(None, "ntml", ["sig"], [0, 1], setting={"ml_curve": True})
    assert seen == [{"ml_curve": True}] and list(runs) == [("sig", 0), ("sig", 1)]
    assert rows == [
        {"attack": "sig", "seed": 0, "model": "undefended", "BA": 90.0},
        {"attack": "sig", "seed": 0, "model": "ntml", "BA": 1.0, "seconds": 2.0},
        {"attack": "sig", "seed": 1, "model": "undefended", "BA": 90.0},
        {"attack": "sig", "seed": 1, "model": "ntml", "BA": 1.0, "seconds": 2.0, "diverged": "nan at epoch 2"},
    ]


def test_poisoning_and_narcissus_rows_read_each_stored_model_in_order(monkeypatch):
    cfg = resolve("smoke")
    seen = []

    def stage(kind):
        def read(c):
            seen.append((kind, c.attack, c.seed, c.attacks["narcissus"].poison_rate))
            return SimpleNamespace(metrics={"BA": float(len(seen))}, seconds=1.0, meta={"n_poisoned": 7})

        return read

    monkeypatch.setattr(pool, "prefetch", lambda jobs: 0)
    for kind in ("clean_model", "poisoned_model", "trigger_floor"):
        monkeypatch.setattr(experiment, kind, stage(kind))
    rows = measure.poisoning_rows(cfg, ["badnets", "sig"], [0, 1])
    assert [(r["model"], r["seed"]) for r in rows] == [(m, s) for s in (0, 1) for m in ("clean", "badnets", "sig")]
    assert "n_poisoned" not in rows[0] and rows[1]["n_poisoned"] == 7 and rows[1]["seconds"] == 1.0
    seen.clear()
    rows = measure.narcissus_control(cfg, [0, 1])
    assert [(r["budget"], r["seed"]) for r in rows] == [
        (b, s) for s in (0, 1) for b in ("profile", "paper", "clean model")
    ]
    rate = cfg.attacks["narcissus"].poison_rate
    assert [r["poison_rate"] for r in rows[:3]] == [rate, measure.PAPER_RATE, None]
    assert ("poisoned_model", "narcissus", 1, measure.PAPER_RATE) in seen  # the paper's budget, a victim of its own
    assert ("trigger_floor", "narcissus", 0, rate) in seen  # the clean model under the trigger: the CLEAN cell
    assert poisoning.narcissus_rows(rows)[1]["setting"] == "paper budget (0.05%)"


def test_narcissus_rows_name_each_budget_with_its_rate():
    rows = [
        {"budget": "profile", "poison_rate": 0.08, "seed": 0, **M},
        {"budget": "paper", "poison_rate": 0.0005, "seed": 0, **M},
        {"budget": "clean model", "poison_rate": None, "seed": 0, **M},
    ]
    assert poisoning.narcissus_rows(rows) == [
        {"setting": "profile budget (8.00%)", "seed": 0, **M},
        {"setting": "paper budget (0.05%)", "seed": 0, **M},
        {"setting": "clean model, same trigger", "seed": 0, **M},
    ]
    assert poisoning.tsne_attacks(["wanet", "sig", "badnets"]) == ["badnets", "sig"]
    assert poisoning.tsne_attacks(["wanet", "trojan"]) == ["wanet"]


def test_ml_paired_differences_per_seed_and_sign_agreement():
    def row(a, s, lam, asr, der):
        return {"attack": a, "seed": s, "lam": lam, "ASR": asr, "DER": der}

    rows = [row("badnets", s, 1.0, asr, der) for s, asr, der in ((0, 10.0, 0.9), (1, 30.0, 0.8), (2, 5.0, 0.9))]
    rows += [row("badnets", s, 0.0, asr, der) for s, asr, der in ((0, 20.0, 0.85), (1, 25.0, 0.8), (2, 9.0, 0.85))]
    rows += [row("sig", 0, 1.0, 50.0, 0.6), row("sig", 0, 0.0, 50.0, 0.6), row("sig", 1, 1.0, 1.0, 0.9)]
    bad, sig = mutual_learning.ml_paired(rows)
    assert bad["attack"] == "badnets" and bad["seeds"] == [0, 1, 2]
    assert bad["dASR"] == [-10.0, 5.0, -4.0] and bad["dASR_mean"] == pytest.approx(-3.0)
    assert bad["dASR_agree"] == 2  # seeds 0 and 2 lower the ASR, seed 1 raises it
    assert bad["dDER"] == pytest.approx([0.05, 0.0, 0.05]) and bad["dDER_agree"] == 2  # a zero agrees with nothing
    assert sig["seeds"] == [0] and sig["dASR"] == [0.0] and sig["dASR_agree"] == 0  # seed 1 has no λ = 0 pair
    lines = mutual_learning.ml_paired_lines(rows)
    assert lines[0].startswith("badnets: ML (λ minus λ=0) ΔASR -3.0 (per seed -10.0, +5.0, -4.0; same sign on 2 of 3)")
    out = mutual_learning.verdict_lines(["sig", "badnets"], None, rows)
    assert out[0] == "sig: defended on the tuning seeds by: no readings sweep" and out[1] == f"  {lines[1]}"
    assert out[3] == f"  {lines[0]}"


def test_variant_verdicts_name_the_variants_within_the_claims_bar():
    cfg = resolve("smoke")
    claim = SimpleNamespace(asr_max=5.0)
    rows = [
        {"attack": a, "setting": v, "seed": 100, "ASR": asr, "cost": cost}
        for a, v, asr, cost in (("badnets", "v1", 1.0, 0.5), ("badnets", "v2", 0.5, 99.0), ("sig", "v1", 50.0, 0.0))
    ]
    table = mutual_learning.variant_verdicts(cfg, rows, claim)
    first = table.iloc[:, 0]
    assert first["badnets"] == "v1" and first["sig"] == "no variant"
    assert mutual_learning.variant_verdicts(cfg, [], claim) is None
    lines = mutual_learning.verdict_lines(["badnets"], table, [{"attack": "badnets", "seed": 0, "lam": 1.0, **M}])
    assert lines[0] == "badnets: defended on the tuning seeds by: v1"
    assert mutual_learning.variant_choice("reading=suppress", None).endswith("the profile runs reading=suppress")


def test_comparison_helpers_on_grid_rows():
    def row(a, d, s, b, asr):
        return {
            "attack": a,
            "defense": d,
            "seed": s,
            "clean_fraction": b,
            "BA": 80.0,
            "ASR": asr,
            "RA": 5.0,
            "DER": 0.5,
        }

    rows = [row("badnets", "nad", 0, 0.05, 9.0), row("badnets", "ft", 0, 0.01, 1.0), row("badnets", "ft", 0, 0.05, 3.0)]
    rows += [row("badnets", "ft", 1, 0.05, 5.0), row("sig", "ft", 0, 0.05, 7.0)]
    curve = comparisons.budget_curve_rows(rows, "badnets", ["ft", "nad"], [0])
    assert [(r["series"], r["clean %"], r["ASR"]) for r in curve] == [
        ("ft", 1.0, 1.0),
        ("ft", 5.0, 3.0),
        ("nad", 5.0, 9.0),
    ]
    summary = comparisons.defense_summary(rows, ["badnets"], ["ft"])
    assert summary["badnets"]["ft"]["ASR"] == pytest.approx((3.0, 2.0))
    table = comparisons.der_table(rows + [row("badnets", grid.UNDEFENDED, 0, 0.05, 99.0)], grid.BASELINES)
    assert list(table.columns) == ["nad", "ft"]
    cfg = SimpleNamespace(clean_fraction=0.05)
    spec = {"clean": [0.01, 0.05], "attacks": ["badnets", "narcissus"], "seeds": [0, 3]}
    sweep = comparisons.budget_sweep(spec, ["badnets", "blended"], ["none", "ft"])
    assert sweep == comparisons.BudgetSweep((0.01, 0.05), ("badnets",), (0, 3), ("ft",))
    budget_cells = measure.budget_cells(cfg, sweep, reported=[0, 1])
    assert [(c.seed, c.clean_fraction) for c in budget_cells] == [(0, 0.01), (3, 0.01), (3, 0.05)]
    for bad in ({"clean": [0.01], "attacks": ["badnets"]}, {**spec, "clean": [0.0]}, {**spec, "seeds": [-1]}):
        with pytest.raises(ValueError, match="budgets|seeds"):
            comparisons.budget_sweep(bad, ["badnets"], ["ft"])
    with pytest.raises(ValueError, match="choose one of"):
        comparisons.budget_sweep({**spec, "attacks": ["badnet"]}, ["badnets"], ["ft"])
    extra = [grid.Cell("badnets", "ft", 3, 0.05), grid.Cell("badnets", grid.UNDEFENDED, 3, 0.05)]
    assert comparisons.extra_seeds_note(extra, [3], 20.0, grid.BASELINES).endswith(
        "run on seeds [3] too: ['badnets × ft']"
    )
    assert comparisons.extra_seeds_note([], [3], 20.0, grid.BASELINES).endswith("too: no cell")
    assert common.attacks_among(["narcissus", "badnets"], ["badnets", "blended"]) == ["badnets"]
    assert comparisons.clean_data_defenses(["none", "ntml", "ft"]) == ["ntml", "ft"]
    names, dnames, seeds = comparisons.parameters(resolve("smoke"), "all", ["ft"], [2])
    assert "badnets" in names and dnames == ["ft"] and seeds == [2]


def test_extra_seed_cells_add_seeds_to_spread_out_cells_with_their_baselines():
    def row(d, s, asr):
        return {"attack": "sig", "defense": d, "seed": s, "BA": 80.0, "ASR": asr, "RA": 5.0, "DER": 0.5}

    rows = [row("ft", 0, 0.0), row("ft", 1, 90.0), row(grid.UNDEFENDED, 0, 99.0), row(grid.UNDEFENDED, 1, 99.0)]
    extra = measure.extra_seed_cells(rows, [1, 2], 0.05)
    assert [(c.defense, c.seed) for c in extra] == [(grid.UNDEFENDED, 2), (grid.CLEAN, 1), (grid.CLEAN, 2), ("ft", 2)]
    assert all(c.clean_fraction == 0.05 for c in extra)


def test_the_protocols_notes_and_tables():
    cfg = resolve("smoke")
    assert comparisons.protocol_note(cfg, []) == "profile smoke holds every choice of the protocol"
    assert comparisons.protocol_note(cfg, ["ft: a", "nad: b"]) == "ft: a\nnad: b"
    refs = [
        {"defense": "ft", "reference": "lr=0.01", "ASR": 30.0, "cost": 1.0, "defends": False},
        {"defense": "nad", "reference": "beta=1", "ASR": 1.0, "cost": 1.0, "defends": True},
    ]
    note = comparisons.reference_note(refs, 3.0, 5.0)
    assert "(mean ASR ≤ 5 % within 3 BA points)" in note and note.endswith("on the tuning seeds: ft")
    assert comparisons.reference_note([], 3.0, 5.0).endswith(": no defense")
    table = comparisons.backdoorbench_table(refs)
    assert table.filter(like="BackdoorBench").iloc[:, 0].tolist() == [1.48, 2.14]
    chosen = {"ft": {"setting": "lr=0.1", "ASR": 2.0, "cost": 1.0, "qualified": True}}
    assert comparisons.protocol_table(chosen, {"ft": "lr=0.01"}).loc["ft", "reference recipe"] == "lr=0.01"
    assert "tuning seeds" in comparisons.tuning_intro(cfg, [0])


def test_curves_draw_one_line_per_series_in_order_of_appearance():
    rows = [{"x": x, "series": s, "BA": 50.0 + x, "ASR": 10.0} for s in ("b", "a") for x in (1, 2)]
    fig = plots.curves(rows, x="x", metrics=("BA", "ASR"), reference={"ref": {"BA": 40.0}})
    ba = fig.axes[0]
    assert [line.get_label() for line in ba.lines] == ["b", "a", "ref"]
    assert list(ba.lines[0].get_ydata()) == [51.0, 52.0]
    import matplotlib.pyplot as plt

    plt.close(fig)
