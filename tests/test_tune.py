"""The comparison protocol: declared grids, the selection rules on hand-made rows, tuning seeds."""

from __future__ import annotations

import pytest

from bdlib import cells, defenses
from bdlib.config import PROFILES, ConfigError, override
from bdlib.profiles import profile, resolve
from bdlib.study import readings, tune


def row(defense, setting, attack, seed, cost, asr, der=0.5):
    return {
        "defense": defense,
        "setting": setting,
        "attack": attack,
        "seed": seed,
        "cost": cost,
        "ASR": asr,
        "BA": 90.0 - cost,
        "DER": der,
    }


def test_every_defense_declares_a_grid_of_at_least_three_settings():
    for name, d in defenses.REGISTRY.items():
        if not d.tuning:  # only a method's form as its authors ran it goes untuned
            assert d.variant_of or d.needs_target, f"{name} declares no tuning grid"
            assert tune.tuned(profile("quick"), [name]) == []
            continue
        for knob, values in d.tuning.items():
            assert 2 <= len(values) <= 10, (
                name,
                knob,
            )  # two where crossed with another knob; ten where the sweep trains nothing (ANP)
            assert len(set(values)) == len(values), (name, knob)
            d.Params(**{knob: values[0]}).validate()  # each value is a valid setting of a real field
        assert len(tune.settings(name)) >= 3


def test_tuning_seeds_are_never_reported():
    for p in PROFILES:
        cfg = profile(p)
        assert cfg.tuning.seeds and not set(cfg.tuning.seeds) & set(cfg.seeds), p
    with pytest.raises(ConfigError, match=r"'tuning.seeds' must never be reported: seed\(s\) \[100\]"):
        resolve("quick", overrides={"seeds": [0, 100]})
    with pytest.raises(ConfigError, match=r"seed\(s\) \[101\] are also in 'extra_seeds'"):
        resolve("quick", overrides={"extra_seeds": [3, 101]})


def test_the_protocols_scope_narrows_the_sweeps_and_names_bad_defenses(monkeypatch):
    ran = []

    def fake(cfg, cs):
        ran.extend(c.defense for c in cs)
        return [
            {"defense": c.defense, "setting": c.label, "attack": c.attack, "cost": 0.0, "ASR": 50.0, "DER": 0.5}
            for c in cs
        ]

    monkeypatch.setattr(cells, "run", fake)
    cfg = resolve("smoke", overrides={"tuning.defenses": ["ft", "nad"]})
    assert tune.tuned(cfg, ["ntml", "nad", "ft"]) == ["nad", "ft"]
    tune.sweep(cfg, ["ntml", "nad", "ft", "anp"])
    assert set(ran) == {"nad", "ft"} and len(ran) == len(tune.settings("nad", 2)) + len(tune.settings("ft", 2))
    assert readings.variant_sweep(cfg, ["badnets"]) == [] and readings.select_variant([]) is None
    ran.clear()
    readings.variant_sweep(resolve("smoke"), ["badnets"])
    assert ran and set(ran) == {"ntml"}
    with pytest.raises(ConfigError, match="tuning.defenses: defense 'ftt' is unknown.*choose one of"):
        resolve("smoke", overrides={"tuning.defenses": ["ftt"]})
    with pytest.raises(ConfigError, match="at least one defense"):
        resolve("smoke", overrides={"tuning.defenses": []})


def test_select_lowest_asr_within_the_cost_bar_on_every_attack():
    rows = []
    for attack in ("badnets", "blended"):
        for seed in (100, 101):
            rows += [
                row("d", "weak", attack, seed, 0.5, 80.0),
                row("d", "good", attack, seed, 2.5, 10.0),
                row("d", "strong", attack, seed, 6.0, 1.0),
            ]
    # "edge" has the lowest ASR and a mean cost of 2.9 over both attacks, but 4.0 on blended.
    rows += [row("d", "edge", "badnets", s, 1.8, 2.0) for s in (100, 101)]
    rows += [row("d", "edge", "blended", s, 4.0, 2.0) for s in (100, 101)]
    chosen = tune.select(rows)["d"]
    assert chosen["setting"] == "good" and chosen["qualified"]
    assert chosen["cost"] == pytest.approx(2.5) and chosen["ASR"] == pytest.approx(10.0)


def test_select_falls_back_to_the_smallest_cost():
    rows = [row("d", s, "badnets", 100, cost, asr) for s, cost, asr in (("a", 9.0, 1.0), ("b", 4.0, 50.0))]
    chosen = tune.select(rows)["d"]
    assert chosen == {"setting": "b", "ASR": 50.0, "cost": 4.0, "qualified": False}


def test_select_variant_best_der_within_the_bar():
    rows = [row("ntml", "v1", a, 100, 1.0, 10.0, der=0.90) for a in ("badnets", "sig")]
    rows += [row("ntml", "v2", "badnets", 100, 1.0, 1.0, der=0.99), row("ntml", "v2", "sig", 100, 3.5, 1.0, der=0.97)]
    chosen = readings.select_variant(rows)
    assert chosen["setting"] == "v1" and chosen["qualified"]
    assert readings.select_variant([r for r in rows if r["setting"] == "v2"])["qualified"] is False


def test_labels_and_profile_mismatches():
    assert tune.label({"betas": (100.0, 100.0, 100.0)}) == "betas=100"
    assert tune.label({"reading": "suppress", "ml_data": "clean"}) == "reading=suppress, ml_data=clean"
    assert tune.parse("reading=suppress, ml_data=clean") == {"reading": "suppress", "ml_data": "clean"}
    cfg = profile("quick")
    current = tune.label({k: getattr(cfg.defenses["none"], k) for k in defenses.get("none").tuning})
    assert tune.profile_mismatches(cfg, {"none": {"setting": current}}) == []
    assert tune.profile_mismatches(cfg, {"none": {"setting": "rho=0.001, none_lr=1"}}) == [
        f"none: the profile has {current}, the protocol chooses rho=0.001, none_lr=1"
    ]
    with pytest.raises(ValueError, match="unknown"):
        tune.settings("nope")


def test_tuning_scope_overrides_from_json_lists():
    cfg = resolve("paper", overrides={"tuning.seeds": [100], "tuning.variant_attacks": ["badnets"]})
    assert cfg.tuning.seeds == (100,) and cfg.tuning.variant_attacks == ("badnets",)
    assert resolve("quick", overrides={"tuning.variant_attacks": None}).tuning.variant_attacks is None


def test_variants_vary_one_factor_at_a_time_around_the_defaults():
    from bdlib.defenses import ntml

    base = ntml.Params()
    vs = readings.variants()
    assert len({tune.label(v) for v in vs}) == len(vs)  # no variant twice
    assert vs[0] == {k: getattr(base, k) for k in readings.VARIANT_FIELDS}  # the defaults first
    for field, values in readings.VARIANT_VALUES.items():  # every value tried, the default among them
        assert getattr(base, field) in values and {v[field] for v in vs} == set(values), field
    # issue #30 (4): the three new readings are in the sweep
    assert {"complementary", "clean+agree", "poisoned"} <= {x for v in vs for x in v.values()}
    for v in vs:  # each differs from the defaults in at most one field
        assert list(v) == list(readings.VARIANT_FIELDS)
        assert sum(v[k] != getattr(base, k) for k in readings.VARIANT_FIELDS) <= 1, v
        ntml.Params(**v).validate()


def test_variant_seeds_keep_both_for_the_tuning_attacks_only():
    cfg = profile("quick")
    assert cfg.tuning.seeds == (100, 101) and cfg.tuning.other_attack_seeds == 1
    assert readings.variant_seeds(cfg, "badnets") == (100, 101)
    assert readings.variant_seeds(cfg, "narcissus") == (100,)
    every = resolve("quick", overrides={"tuning.other_attack_seeds": None})
    assert readings.variant_seeds(every, "narcissus") == (100, 101)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=r"'tuning.other_attack_seeds' must be an integer >= 1 or None"):
            resolve("quick", overrides={"tuning.other_attack_seeds": bad})
    for bad in (1.5, True, "1"):
        with pytest.raises(ConfigError, match=r"'tuning.other_attack_seeds' must be"):
            resolve("quick", overrides={"tuning.other_attack_seeds": bad})


def test_every_attack_weighs_the_same_however_many_seeds_it_ran_on():
    # v1: great on badnets (two seeds), bad on sig (one seed); v2 the reverse. A mean over rows
    # would give v1 (2 x 0.9 + 0.1) / 3 = 0.63 against v2's 0.57; per attack both are 0.5.
    rows = [row("ntml", "v1", "badnets", s, 1.0, 5.0, der=0.9) for s in (100, 101)]
    rows += [row("ntml", "v1", "sig", 100, 1.0, 90.0, der=0.1)]
    rows += [row("ntml", "v2", "badnets", s, 1.0, 90.0, der=0.1) for s in (100, 101)]
    rows += [row("ntml", "v2", "sig", 100, 1.0, 5.0, der=0.95)]
    chosen = readings.select_variant(rows)
    assert chosen["setting"] == "v2" and chosen["DER"] == pytest.approx((0.1 + 0.95) / 2)
    assert chosen["ASR"] == pytest.approx((90.0 + 5.0) / 2)


def test_grid_points_keep_both_ends_and_spread_between_them():
    assert tune.thin([1, 2, 3, 4, 5], 2) == [1, 5]
    assert tune.thin([1, 2, 3, 4, 5], 3) == [1, 3, 5]
    assert tune.thin([1, 2, 3, 4], 3) == [1, 3, 4]
    assert tune.thin([1, 2, 3], None) == [1, 2, 3] and tune.thin([1, 2, 3], 7) == [1, 2, 3]
    with pytest.raises(ValueError, match="at least 2"):
        tune.thin([1, 2, 3], 1)
    grid = defenses.get("none").tuning["rho"]
    thinned = tune.settings("none", 2)  # each knob thinned to its two ends, then crossed
    assert sorted({s["rho"] for s in thinned}) == [grid[0], grid[-1]] and len(thinned) == 4
    assert profile("smoke").tuning.grid_points == 2 and profile("quick").tuning.grid_points is None
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ConfigError, match="tuning.grid_points"):
            resolve("smoke", overrides={"tuning.grid_points": bad})


def test_every_grid_contains_its_reference_recipe_as_a_point():
    for name, d in defenses.REGISTRY.items():
        if d.tuning:
            assert tune.reference(name) in [tune.label(s) for s in tune.settings(name)], name


def test_reference_rows_say_which_defenses_fail_even_at_their_reference_recipe():
    from bdlib.report import comparisons
    from bdlib.study import claims, measure

    ref = tune.reference("ft")
    rows = [
        {"defense": "ft", "setting": ref, "attack": a, "seed": s, "ASR": asr, "DER": 0.6, "cost": 1.0}
        for a, asr in (("badnets", 40.0), ("blended", 20.0))
        for s in (100, 101)
    ] + [{"defense": "ft", "setting": "other", "attack": "badnets", "seed": 100, "ASR": 0.0, "DER": 1.0, "cost": 0.0}]
    (row,) = measure.reference_rows(rows, 3.0)
    assert row["reference"] == ref and row["ASR"] == 30.0 and row["cost"] == 1.0 and not row["defends"]
    note = comparisons.reference_note(measure.reference_rows(rows, 3.0), 3.0, claims.BAR_ASR)
    assert note.endswith("even at their reference recipe, on the tuning seeds: ft")


def test_backdoorbench_table_sets_each_reference_recipe_beside_the_published_number():
    from bdlib.report import comparisons
    from bdlib.study import measure

    rows = [
        {"defense": d, "setting": tune.reference(d), "attack": a, "seed": 100, "ASR": asr, "DER": 0.6, "cost": 1.0}
        for d, asr in (("ft", 40.0), ("ibau", 60.0))
        for a in ("badnets", "blended")
    ]
    table = comparisons.backdoorbench_table(measure.reference_rows(rows, 3.0, attack="badnets"))
    published = table.filter(like="BackdoorBench").iloc[:, 0]
    assert published["ft"] == 1.48 and published["ibau"] == "not quoted"
    assert table.filter(like="bdlib badnets ASR").iloc[:, 0]["ft"] == 40.0


def test_far_settings_are_those_over_factor_times_the_bar_or_diverged():
    rows = [
        {"defense": "ft", "setting": "lr=0.01", "cost": 6.0},  # at the edge: kept
        {"defense": "ft", "setting": "lr=0.1", "cost": 6.5},
        {"defense": "nad", "setting": "lr=0.1", "cost": float("nan"), "diverged": "nan at epoch 2"},
        {"defense": "nad", "setting": "lr=0.01", "cost": -1.0},
    ]
    assert tune.far_settings(rows, 3.0, 2.0) == {("ft", "lr=0.1"), ("nad", "lr=0.1")}
    assert tune.far_settings(rows, 3.0, None) == set()
    assert tune.far_settings(rows, 3.0, 1.5) == {("ft", "lr=0.01"), ("ft", "lr=0.1"), ("nad", "lr=0.1")}


def test_far_from_the_best_is_a_mean_asr_more_than_the_margin_above_the_best_within_the_bar():
    def r(defense, setting, attack, asr, cost):
        return {"defense": defense, "setting": setting, "attack": attack, "ASR": asr, "DER": 0.5, "cost": cost}

    rows = [
        r("ft", "a", "badnets", 10.0, 1.0),
        r("ft", "a", "blended", 30.0, 2.0),  # within the bar: best, mean 20
        r("ft", "b", "badnets", 40.0, 0.0),
        r("ft", "b", "blended", 40.0, 0.0),  # 40: exactly 20 above, kept
        r("ft", "c", "badnets", 41.0, 0.0),
        r("ft", "c", "blended", 41.0, 0.0),  # 41: far from the best
        r("ft", "d", "badnets", 0.0, 9.0),
        r("ft", "d", "blended", 0.0, 0.0),  # over the bar: not the best
        r("nad", "x", "badnets", 90.0, 5.0),
        r("nad", "y", "badnets", 99.0, 7.0),  # none within the bar
    ]
    assert tune.far_settings(rows, 3.0, None, 20.0) == {("ft", "c")}  # per defense; nad: nothing to beat
    assert tune.far_settings(rows, 3.0, None, None) == set()
    assert tune.far_settings(rows, 3.0, 2.0, 20.0) == {("ft", "c"), ("ft", "d"), ("nad", "y")}


def test_a_setting_far_from_the_bar_on_the_first_tuning_seed_is_not_run_on_the_next(monkeypatch):
    costs = {"lr=0.001": 0.5, "lr=0.01": 5.0, "lr=0.1": 9.0}  # on the first seed; 2 x bar = 6
    ran = []

    def fake(cfg, cs):
        ran.extend((c.label, c.attack, c.seed) for c in cs)
        return [
            {"defense": c.defense, "setting": c.label, "attack": c.attack, "seed": c.seed, "cost": costs[c.label]}
            for c in cs
        ]

    monkeypatch.setattr(cells, "run", fake)
    monkeypatch.setattr(tune, "settings", lambda d, points=None: [{"lr": v} for v in (0.001, 0.01, 0.1)])
    cfg = resolve(
        "smoke",
        overrides={
            "tuning.defenses": ["ft"],
            "tuning.seeds": [100, 101],
            "tuning.prune_factor": 2.0,
            "tuning.prune_margin": None,
        },
    )
    rows = tune.sweep(cfg, ["ft"])
    later = {(s, a) for s, a, seed in ran if seed == 101}
    assert later == {(s, a) for s in ("lr=0.001", "lr=0.01") for a in cfg.tuning.attacks}
    assert len(ran) == len(rows) == 3 * len(cfg.tuning.attacks) + 2 * len(cfg.tuning.attacks)
    assert cfg.tuning.attacks == ("badnets",)  # smoke's tuning attack: the rows in the order of the grid
    assert [(r["setting"], r["seed"]) for r in rows] == [
        ("lr=0.001", 100),
        ("lr=0.001", 101),
        ("lr=0.01", 100),
        ("lr=0.01", 101),
        ("lr=0.1", 100),
    ]
    ran.clear()
    tune.sweep(override(cfg, {"tuning.prune_factor": None}), ["ft"])
    assert len(ran) == 3 * 2 * len(cfg.tuning.attacks)
