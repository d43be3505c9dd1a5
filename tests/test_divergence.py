"""A diverging defense is a result: recorded, stored, drawn and judged as a failure, never a crash."""

import math

import matplotlib
import pytest
import torch
from defense_context import tiny_cnn

matplotlib.use("Agg")

from bdlib import plots  # noqa: E402
from bdlib.config import TrainConfig  # noqa: E402
from bdlib.study import claims, tune  # noqa: E402
from bdlib.train import TrainingDiverged, fit  # noqa: E402


def test_fit_names_the_stage_epoch_and_lr_where_the_loss_became_nan():
    x = torch.rand(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    with pytest.raises(TrainingDiverged) as err:
        fit(tiny_cnn(), x, y, TrainConfig(epochs=2, batch_size=16, lr=1e12, crop_pad=0), seed=0, desc="my stage")
    assert (err.value.stage, err.value.epochs, err.value.lr) == ("my stage", 2, 1e12) and err.value.epoch in (1, 2)


def _row(attack, defense, seed, ba, asr, diverged=None):
    row = {"attack": attack, "defense": defense, "seed": seed, "BA": ba, "ASR": asr, "RA": 0.0, "DER": 0.5}
    return {**row, "diverged": diverged} if diverged else row


def test_a_diverged_seed_fails_the_claim_and_is_never_averaged_away():
    nan = math.nan
    rows = [_row("badnets", "undefended", s, 90.0, 100.0) for s in (0, 1, 2)]
    # Two seeds defend perfectly; the third diverged: the cell fails, in every view of the seeds.
    rows += [_row("badnets", "ft", 0, 89.0, 1.0), _row("badnets", "ft", 1, 89.0, 1.0)]
    rows += [_row("badnets", "ft", 2, nan, nan, "ft diverged on the badnets victim, seed 2")]
    c = claims.Claim("x", "companion", "ft defends", "defends", "ft", attacks=("badnets",), asr_max=5.0, cost_max=3.0)
    entry = claims.evaluate(c, claims.cells(rows))
    assert entry["verdict"] == "fails" and entry["diverged"] == ["badnets × ft"]
    assert "badnets diverged" in entry["evidence"]
    # Without the diverged seed the same cell holds: the divergence alone decides it.
    assert claims.evaluate(c, claims.cells(rows[:-1]))["verdict"] == "holds"


def test_the_protocol_never_chooses_a_setting_that_diverged_on_any_cell():
    rows = [
        {"defense": "ft", "setting": "lr=0.1", "attack": "badnets", "seed": 100, "ASR": 0.0, "DER": 1.0, "cost": 1.0},
        {
            "defense": "ft",
            "setting": "lr=0.1",
            "attack": "badnets",
            "seed": 101,
            "ASR": math.nan,
            "DER": math.nan,
            "cost": math.nan,
            "diverged": "ft diverged",
        },
        {"defense": "ft", "setting": "lr=0.01", "attack": "badnets", "seed": 100, "ASR": 50.0, "DER": 0.7, "cost": 1.0},
        {"defense": "ft", "setting": "lr=0.01", "attack": "badnets", "seed": 101, "ASR": 50.0, "DER": 0.7, "cost": 1.0},
    ]
    assert tune.select(rows)["ft"]["setting"] == "lr=0.01"
    assert tune.select(rows[:1] + rows[2:])["ft"]["setting"] == "lr=0.1"  # it would win had it not diverged


def test_figures_draw_a_diverged_cell_as_such():
    nan = math.nan
    rows = [_row("badnets", "ft", 0, 89.0, 1.0), _row("badnets", "ft", 1, nan, nan, "diverged")]
    rows += [_row("badnets", "nad", s, 88.0, 4.0) for s in (0, 1)]
    fig = plots.heatmaps(rows, values=("BA", "ASR"))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("div.") == 2 and "89" not in texts  # never the mean of the seeds that finished
    fig = plots.metric_panels(rows, by="defense", facet="attack", metrics=("BA", "ASR"))
    assert [t.get_text() for t in fig.axes[0].texts] == ["diverged"]


def test_defend_stores_a_diverged_cell_naming_the_defense_lr_field_attack_and_seed(tmp_path, monkeypatch):
    from bdlib import experiment
    from bdlib.config import override
    from bdlib.profiles import resolve
    from bdlib.study import grid

    monkeypatch.setenv("BDLIB_CACHE", str(tmp_path))
    experiment.store.cache_clear()
    cfg = override(resolve("smoke", attack="badnets", seed=0, device="cpu"), {"n_train": 200, "n_test": 50})
    cfg = override(cfg, {"defenses.ft.lr": 1e20})
    try:
        run = experiment.defend(cfg, "ft")
        assert run.model is None and run.record is None and math.isnan(run.metrics["ASR"])
        msg = run.diverged["message"]
        assert "ft diverged on the badnets victim, seed 0" in msg and "defenses.ft.lr (now 1e+20)" in msg
        again = experiment.defend(cfg, "ft")  # stored: read back, not trained again
        assert again.key == run.key and again.diverged == run.diverged
        row = grid.run_cell(cfg, grid.Cell("badnets", "ft", 0, cfg.clean_fraction))
        assert row["diverged"] == msg
    finally:
        experiment.store.cache_clear()


def test_heatmap_rows_of_settings_name_only_what_sets_them_apart():
    labels = ["a=1, b=1, c=1", "a=2, b=1, c=1", "a=1, b=2, c=1", "a=1, b=1, c=2"]
    assert plots.distinct_labels(labels) == ["the shared settings", "a=2", "b=2", "c=2"]
    assert plots.distinct_labels(["badnets", "sig", "wanet"]) == ["badnets", "sig", "wanet"]
    rows = [{"setting": s, "attack": "badnets", "BA": 80.0, "ASR": 1.0} for s in labels]
    fig = plots.heatmaps(rows, values=("BA",), index="setting", columns="attack")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == plots.distinct_labels(labels)
