"""The claims ledger on hand-made results: every verdict, including inconclusive on a spread-out cell."""

from __future__ import annotations

import pytest

from bdlib import defenses
from bdlib.study import claims
from bdlib.study.claims import Claim

SEEDS = (0, 1, 2)


def rows(
    cells: dict[tuple[str, str], list[tuple[float, float]]],
    base_ba: float = 90.0,
    base_asr: float = 100.0,
    attacks=claims.ATTACKS,
) -> list[dict]:
    """Grid rows: every attack's undefended model at (base_ba, base_asr) for each seed, plus
    ``cells[(attack, defense)] = [(BA, ASR) per seed]``; DER from the definition."""
    out = [
        {"attack": a, "defense": "undefended", "seed": s, "BA": base_ba, "ASR": base_asr, "DER": 0.5}
        for a in attacks
        for s in SEEDS
    ]
    for (a, d), per_seed in cells.items():
        for s, (ba, asr) in zip(SEEDS, per_seed):
            der = (max(0.0, base_asr - asr) - max(0.0, base_ba - ba) + 100) / 200
            out.append({"attack": a, "defense": d, "seed": s, "BA": ba, "ASR": asr, "DER": der})
    return out


def same(ba: float, asr: float) -> list[tuple[float, float]]:
    return [(ba, asr)] * len(SEEDS)


def defends(asr_max=5.0, cost_max=3.0, attacks=("badnets", "blended")) -> Claim:
    return Claim("t", "test", "defends", "defends", "x", attacks=attacks, asr_max=asr_max, cost_max=cost_max)


def verdict(claim: Claim, r: list[dict]) -> str:
    return claims.evaluate(claim, claims.cells(r))["verdict"]


def test_defends_holds_partly_fails():
    c = defends()
    assert verdict(c, rows({("badnets", "x"): same(88, 2), ("blended", "x"): same(88.5, 4)})) == "holds"
    assert verdict(c, rows({("badnets", "x"): same(88, 2), ("blended", "x"): same(88, 40)})) == "partly"
    # Low ASR but 4 BA points lost on both: the cost bar fails it.
    assert verdict(c, rows({("badnets", "x"): same(86, 1), ("blended", "x"): same(86, 1)})) == "fails"


def test_inconclusive_when_a_spread_out_cell_straddles_the_bar():
    c = defends()
    # blended's seeds: 1 %, 2 %, 45 % -> mean 16 (fails), best seed passes, worst fails, spread 44 > 20.
    r = rows({("badnets", "x"): same(89, 1), ("blended", "x"): [(89, 1), (89, 2), (89, 45)]})
    e = claims.evaluate(c, claims.cells(r))
    assert e["verdict"] == "inconclusive"
    assert e["spread_out"] == ["blended × x (44 points over 3 seeds)"]
    assert e["range"] == "partly … holds"
    # The same spread far from the bar decides nothing: both ends fail the 5 % bar.
    r = rows({("badnets", "x"): same(89, 60), ("blended", "x"): [(89, 30), (89, 40), (89, 75)]})
    assert verdict(c, r) == "fails"


def test_outperforms_compares_der_against_the_best_rival():
    c = Claim("t", "test", "beats", "outperforms", "x", attacks=("badnets", "blended"), rivals=("a", "b"))
    base = {
        ("badnets", "a"): same(89, 30),
        ("badnets", "b"): same(80, 5),
        ("blended", "a"): same(89, 30),
        ("blended", "b"): same(89, 50),
    }
    assert verdict(c, rows({**base, ("badnets", "x"): same(89, 2), ("blended", "x"): same(89, 3)})) == "holds"
    assert verdict(c, rows({**base, ("badnets", "x"): same(89, 2), ("blended", "x"): same(89, 90)})) == "partly"
    assert verdict(c, rows({**base, ("badnets", "x"): same(60, 2), ("blended", "x"): same(89, 90)})) == "fails"


def test_asr_ratio():
    c = Claim("t", "test", "54x", "asr_ratio", "x", attacks=("badnets",), ratio=54.83, partly={"ratio": 10.0})
    assert verdict(c, rows({("badnets", "x"): same(89, 1.0)})) == "holds"  # 100 / 1 = 100x
    assert verdict(c, rows({("badnets", "x"): same(89, 5.0)})) == "partly"  # 20x
    assert verdict(c, rows({("badnets", "x"): same(89, 20.0)})) == "fails"  # 5x
    e = claims.evaluate(c, claims.cells(rows({("badnets", "x"): same(89, 0.0)})))
    assert e["verdict"] == "holds" and "2000.0×" in e["evidence"]  # bounded by one image's share


def test_best_reduction():
    c = Claim(
        "t",
        "test",
        "95%",
        "best_reduction",
        "x",
        attacks=("badnets", "blended"),
        reduction=95.79,
        cost_max=2.0,
        partly={"reduction": 80.0, "cost_max": 3.0},
    )
    assert verdict(c, rows({("badnets", "x"): same(89, 3), ("blended", "x"): same(70, 50)})) == "holds"
    assert verdict(c, rows({("badnets", "x"): same(87.5, 3), ("blended", "x"): same(70, 50)})) == "partly"
    assert verdict(c, rows({("badnets", "x"): same(89, 15), ("blended", "x"): same(89, 50)})) == "partly"
    assert verdict(c, rows({("badnets", "x"): same(80, 3), ("blended", "x"): same(89, 50)})) == "fails"


def test_missing_cells_are_named():
    with pytest.raises(ValueError, match="no cell for t: it needs x on sig"):
        claims.evaluate(defends(attacks=("sig",)), claims.cells(rows({("badnets", "x"): same(89, 1)})))
    # Run on fewer attacks than the claim spans: judged on the rest, never better than inconclusive.
    e = claims.evaluate(defends(attacks=("badnets", "sig")), claims.cells(rows({("badnets", "x"): same(89, 1)})))
    assert e["verdict"] == "inconclusive" and e["evidence"].startswith("not run on sig; on the rest: 1/1 attacks")
    bad = [r for r in rows({("badnets", "x"): same(89, 1)}) if not (r["defense"] == "undefended" and r["seed"] == 2)]
    with pytest.raises(ValueError, match="no undefended row for badnets, seed"):
        claims.cells(bad)


def test_every_paper_claim_is_in_the_ledger_with_a_check():
    sources = {c.source for c in claims.CLAIMS}
    assert {"NT-ML", "NONE", "MCLDef", "companion"} <= sources
    assert all(c.kind in claims.CHECKS for c in claims.CLAIMS)
    assert len({c.id for c in claims.CLAIMS}) == len(claims.CLAIMS)
    # A ledger over a full hand-made grid evaluates every claim to one of the four verdicts.
    defs = tuple(defenses.REGISTRY)
    full = rows({(a, d): same(88, 3) for a in claims.ATTACKS for d in defs})
    entries = claims.ledger(full)
    assert [e["id"] for e in entries] == [c.id for c in claims.CLAIMS]
    assert {e["verdict"] for e in entries} <= set(claims.VERDICTS)
    assert [e["id"] for e in claims.ledger(full, defense="none_published")] == ["none-54x", "bar-none_published"]
    assert [e["id"] for e in claims.ledger(full, defense="none")] == ["bar-none"]
    assert [e["id"] for e in claims.ledger(full, defense="ntml")] == ["ntml-six-attacks", "bar-ntml"]


def test_the_claims_name_only_registered_defenses_and_bar_every_one():
    named = {c.defense for c in claims.CLAIMS} | {r for c in claims.CLAIMS for r in c.rivals}
    assert named <= set(defenses.REGISTRY), named - set(defenses.REGISTRY)
    assert {c.defense for c in claims.CLAIMS if c.source == "companion"} == set(defenses.REGISTRY)
    # The five rivals are forms a defender can run: none told the target, none a published variant.
    assert len(claims.RIVALS) == 5 and not any(defenses.get(r).needs_target for r in claims.RIVALS)


def test_an_asr_bar_below_the_clean_model_floor_is_read_against_the_floor():
    # Narcissus' trigger fools a clean model 30 % of the time: a defense at 28 % is at the floor.
    grid_rows = rows({("narcissus", "x"): same(89, 28), ("badnets", "x"): same(89, 28)})
    floor = [
        {"attack": a, "defense": claims.CLEAN, "seed": s, "BA": 90.0, "ASR": f, "DER": 0.5}
        for a, f in (("narcissus", 30.0), ("badnets", 1.0))
        for s in (0, 1, 2)
    ]
    c = defends(attacks=("narcissus",))
    assert claims.evaluate(c, claims.cells(grid_rows))["verdict"] == "fails"  # no floor measured
    e = claims.evaluate(c, claims.cells(grid_rows + floor))
    assert e["verdict"] == "holds" and e["below_floor"] == ["narcissus (floor 30.0 %)"]
    assert "clean-model floor 30.0 % is above the bar: judged at the floor" in e["evidence"]
    e = claims.evaluate(defends(attacks=("badnets",)), claims.cells(grid_rows + floor))
    assert e["verdict"] == "fails" and e["below_floor"] == [] and "floor 1.0 %" in e["evidence"]


def test_a_run_on_fewer_defenses_leaves_the_other_claims_not_run():
    entries = {e["id"]: e for e in claims.ledger(rows({(a, "ft"): same(88, 3) for a in claims.ATTACKS}))}
    assert entries["bar-ft"]["verdict"] in ("holds", "partly", "fails")
    assert entries["ntml-six-attacks"]["verdict"] == "inconclusive"
    assert entries["ntml-six-attacks"]["evidence"].startswith("not run: this run holds no cells of ntml")
