"""bdlib.report's notebook helpers on hand-made runs and rows (no training)."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from bdlib import grid, plots, report  # noqa: E402

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
    summary = report.per_attack(rows)
    assert list(summary) == ["b", "a"]
    assert summary["b"]["x"]["BA"] == [2.0, 1.41] and summary["a"]["x"]["ASR"] == [4.0, 0.0]
    table = report.per_attack_table(summary)
    assert list(table.index) == ["b · x", "a · x"] and table.loc["b · x", "BA"] == "2.0 ± 1.4"
    assert report.means(rows, "b", "x") == {"BA": 2.0, "ASR": 2.0, "RA": 3.0}


@pytest.mark.parametrize("teacher", ["kd", "poisoned"])
def test_nt_stage_rows_leave_out_a_teacher_that_is_m0(teacher):
    rec = SimpleNamespace(poisoned={"BA": 1.0}, nt_teacher_metrics={"BA": 2.0}, nt_student_metrics={"BA": 3.0})
    rows = report.nt_stage_rows({("badnets", 0): _run(rec, _ntml_cfg(teacher))})
    expected = ["poisoned", "nt teacher", "nt student"] if teacher == "kd" else ["poisoned", "nt student"]
    assert [r["model"] for r in rows] == expected
    assert rows[-1] == {"attack": "badnets", "seed": 0, "model": "nt student", "BA": 3.0}


def test_ml_epoch_rows_put_the_nt_stage_at_epoch_zero():
    def run(shift):
        ml = [{"epoch": 1, "loss": 0.5, "student": {"BA": 1.0 + shift}, "teacher": {"BA": 2.0 + shift}}]
        return _run(SimpleNamespace(nt_student_metrics={"BA": shift}, nt_teacher_metrics={"BA": -shift}, ml_history=ml))

    rows = report.ml_epoch_rows([run(0.0), run(10.0)])
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
    assert [r["epoch"] for r in report.ml_epoch_rows([flat])] == [0, 0]


def test_round_and_epoch_rows_are_long_rows_of_one_series():
    rec = SimpleNamespace(rounds=[{"round": 1, "flagged": 3, **M}])
    rows = report.round_rows({("badnets", 0): _run(rec, before={"BA": 90.0, "ASR": 99.0, "RA": 1.0})})
    assert rows == [
        {"round": 0, "BA": 90.0, "ASR": 99.0, "RA": 1.0, "attack": "badnets", "series": "NONE"},
        {"round": 1, "flagged": 3, **M, "attack": "badnets", "series": "NONE"},
    ]
    epochs = [{"epoch": 0, "loss": None, **M}, {"epoch": 1, "loss": 0.3, **M}]
    rows = report.mcldef_epoch_rows([_run(SimpleNamespace(epochs=epochs))])
    assert [(r["epoch"], r["series"]) for r in rows] == [(0, "MCLDef"), (1, "MCLDef")]


def test_detection_rows_score_the_flags_against_the_poison_index(monkeypatch):
    truth = torch.tensor([True, True, False, False])
    monkeypatch.setattr(
        report, "poisoned_model", lambda cfg: SimpleNamespace(poisoned=SimpleNamespace(poison_idx=truth))
    )
    flagged = torch.tensor([True, False, True, False])
    rows = report.detection_rows({("badnets", 1): _run(SimpleNamespace(flagged=flagged), cfg="c")})
    assert rows == [{"attack": "badnets", "seed": 1, "precision": 50.0, "recall": 50.0, "flagged": 2, "poisoned": 2}]
    table = report.detection_table(rows + [{**rows[0], "seed": 2, "precision": 100.0}])
    assert table.loc["badnets", "precision"] == 75.0


def _mcldef_run(target: int, anomaly: float, purified: bool, note: str = "") -> SimpleNamespace:
    """A detecting-MCLDef run as report reads it (a hand-made record, true target 0)."""
    rec = SimpleNamespace(
        target=target, anomaly_index=anomaly, detection_confident=purified, purified=purified, note=note
    )
    return SimpleNamespace(record=rec, cfg=_ntml_cfg(target=0), diverged=False)


def test_target_detection_reads_the_mcldef_record():
    rows = report.target_detection({("blended", 0): _mcldef_run(3, 2.5, True)})
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
    rows = report.published_triggers({("sig", 2): SimpleNamespace(record=rec, diverged=False)})
    assert rows == [{"attack": "sig", "seed": 2, "target": 0, "pixels": 16.0, "success": 97.5, "accepted": True}]


def test_no_outlier_notes_name_each_unpurified_run():
    runs = {
        ("badnets", 0): _mcldef_run(0, 2.6, True, "class 0 is an outlier"),
        ("sig", 1): _mcldef_run(4, 1.2, False, "no class is an outlier"),
    }
    assert report.no_outlier_notes(runs) == "sig, seed 1: no class is an outlier"
    assert "every run" in report.no_outlier_notes({("badnets", 0): runs[("badnets", 0)]})


def test_mcldef_forms_rows_label_both_forms_and_keep_one_undefended_row():
    und = {"attack": "sig", "seed": 0, "model": "undefended", "BA": 90.0}
    published = [und, {**und, "model": "mcldef", "BA": 80.0}]
    detecting = [und, {**und, "model": "mcldef_detect", "BA": 90.0}]
    rows = report.mcldef_forms_rows(published, detecting)
    assert [(r["model"], r["BA"]) for r in rows] == [("undefended", 90.0), ("as published", 80.0), ("detecting", 90.0)]


def test_inversion_rows_take_one_seed(monkeypatch):
    x = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    y = torch.tensor([0, 1, 1])
    monkeypatch.setattr(report, "run_data", lambda cfg: SimpleNamespace(x_test=x, y_test=y))
    monkeypatch.setattr(report, "poisoned_model", lambda cfg: SimpleNamespace(test_trigger=lambda b: b + 5))
    rec = SimpleNamespace(
        mask=torch.ones(1, 2, 2), pattern=torch.ones(1, 2, 2), mask_norms=torch.tensor([4.0, 1.0]), target=1
    )
    runs = {(a, s): _run(rec, _ntml_cfg(target=0)) for a in ("badnets", "sig") for s in (0, 1)}
    rows = report.inversion_rows(runs, 1)
    assert [r["attack"] for r in rows] == ["badnets", "sig"]
    assert rows[0]["norms"] == [4.0, 1.0] and rows[0]["detected"] == 1 and rows[0]["target"] == 0
    assert torch.equal(rows[0]["true_diff"], torch.full((1, 2, 2), 5.0))


def test_tau_budget_and_ablation_rows_defend_each_setting(monkeypatch):
    calls = []

    def defend(cfg, name):
        calls.append((name, dict(cfg)))
        rec = SimpleNamespace(nt_student_metrics={"BA": 1.0}, nt_teacher=None)
        return SimpleNamespace(metrics={"BA": 2.0, "DER": 0.5}, record=rec)

    monkeypatch.setattr(report, "defend", defend)
    monkeypatch.setattr(report, "override", lambda cfg, o: {**cfg, **o})
    monkeypatch.setattr(report, "with_run", lambda cfg, **k: {**cfg, **k})
    rows = report.tau_rows(_run(None, cfg={}), [1.0, 4.0])
    assert [(r["tau"], r["series"], r["BA"]) for r in rows] == [
        (1.0, "NT student", 1.0),
        (1.0, "after ML (final)", 2.0),
        (4.0, "NT student", 1.0),
        (4.0, "after ML (final)", 2.0),
    ]
    calls.clear()
    rows = report.budget_rows({}, "badnets", [0.01, 0.05], [0])
    assert [(r["clean %"], r["series"]) for r in rows] == [
        (1.0, "NT-ML"),
        (1.0, "fine-tuning"),
        (5.0, "NT-ML"),
        (5.0, "fine-tuning"),
    ]
    assert calls[0] == ("ntml", {"attack": "badnets", "seed": 0, "clean_fraction": 0.01})
    cfg = SimpleNamespace(defenses={"ntml": SimpleNamespace(teacher="kd")})
    monkeypatch.setattr(report, "with_run", lambda cfg, **k: dict(k))
    rows = report.ntml_ablation(cfg, "badnets", 0)
    assert [r["variant"] for r in rows] == ["default", "teacher = M0", "τ = 2", "λ = 0", "λ = 2", "fine-tuning"]


def test_ml_paired_differences_per_seed_and_sign_agreement():
    def row(a, s, lam, asr, der):
        return {"attack": a, "seed": s, "lam": lam, "ASR": asr, "DER": der}

    rows = [row("badnets", s, 1.0, asr, der) for s, asr, der in ((0, 10.0, 0.9), (1, 30.0, 0.8), (2, 5.0, 0.9))]
    rows += [row("badnets", s, 0.0, asr, der) for s, asr, der in ((0, 20.0, 0.85), (1, 25.0, 0.8), (2, 9.0, 0.85))]
    rows += [row("sig", 0, 1.0, 50.0, 0.6), row("sig", 0, 0.0, 50.0, 0.6), row("sig", 1, 1.0, 1.0, 0.9)]
    bad, sig = report.ml_paired(rows)
    assert bad["attack"] == "badnets" and bad["seeds"] == [0, 1, 2]
    assert bad["dASR"] == [-10.0, 5.0, -4.0] and bad["dASR_mean"] == pytest.approx(-3.0)
    assert bad["dASR_agree"] == 2  # seeds 0 and 2 lower the ASR, seed 1 raises it
    assert bad["dDER"] == pytest.approx([0.05, 0.0, 0.05]) and bad["dDER_agree"] == 2  # a zero agrees with nothing
    assert sig["seeds"] == [0] and sig["dASR"] == [0.0] and sig["dASR_agree"] == 0  # seed 1 has no λ = 0 pair
    lines = report.ml_paired_lines(rows)
    assert lines[0].startswith("badnets: ML (λ minus λ=0) ΔASR -3.0 (per seed -10.0, +5.0, -4.0; same sign on 2 of 3)")


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
    curve = report.budget_curve_rows(rows, "badnets", ["ft", "nad"], [0])
    assert [(r["series"], r["clean %"], r["ASR"]) for r in curve] == [
        ("ft", 1.0, 1.0),
        ("ft", 5.0, 3.0),
        ("nad", 5.0, 9.0),
    ]
    summary = report.defense_summary(rows, ["badnets"], ["ft"])
    assert summary["badnets"]["ft"]["ASR"] == pytest.approx((3.0, 2.0))
    cfg = SimpleNamespace(clean_fraction=0.05)
    spec = {"clean": [0.01, 0.05], "attacks": ["badnets", "narcissus"], "seeds": [0, 3]}
    sweep = report.budget_sweep(spec, ["badnets", "blended"], ["none", "ft"])
    assert sweep == report.BudgetSweep((0.01, 0.05), ("badnets",), (0, 3), ("ft",))
    cells = report.budget_cells(cfg, sweep, reported=[0, 1])
    assert [(c.seed, c.clean_fraction) for c in cells] == [(0, 0.01), (3, 0.01), (3, 0.05)]
    for bad in ({"clean": [0.01], "attacks": ["badnets"]}, {**spec, "clean": [0.0]}, {**spec, "seeds": [-1]}):
        with pytest.raises(ValueError, match="budgets|seeds"):
            report.budget_sweep(bad, ["badnets"], ["ft"])
    with pytest.raises(ValueError, match="choose one of"):
        report.budget_sweep({**spec, "attacks": ["badnet"]}, ["badnets"], ["ft"])
    extra = [grid.Cell("badnets", "ft", 3, 0.05), grid.Cell("badnets", grid.UNDEFENDED, 3, 0.05)]
    assert report.extra_seeds_note(extra, [3]).endswith("run on seeds [3] too: ['badnets × ft']")
    assert report.extra_seeds_note([], [3]).endswith("too: none")
    assert report.attacks_among(["narcissus", "badnets"], ["badnets", "blended"]) == ["badnets"]
    assert report.clean_data_defenses(["none", "ntml", "ft"]) == ["ntml", "ft"]


def test_curves_draw_one_line_per_series_in_order_of_appearance():
    rows = [{"x": x, "series": s, "BA": 50.0 + x, "ASR": 10.0} for s in ("b", "a") for x in (1, 2)]
    fig = plots.curves(rows, x="x", metrics=("BA", "ASR"), reference={"ref": {"BA": 40.0}})
    ba = fig.axes[0]
    assert [line.get_label() for line in ba.lines] == ["b", "a", "ref"]
    assert list(ba.lines[0].get_ydata()) == [51.0, 52.0]
    import matplotlib.pyplot as plt

    plt.close(fig)
