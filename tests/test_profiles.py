"""Every value a profile sets has a recorded provenance, and no defense knob comes from a reported seed."""

import re

from bdlib import defenses
from bdlib.profiles import _PROFILE_METHODS, PROVENANCE, WHY_KINDS, profile

REPORTED_SEED = re.compile(r"\bseeds? [0-2]\b|\bseeds? 0[-–]2\b|reported seed")


def _set_values() -> set[str]:
    return {
        f"{p}.{kind}.{method}.{field}"
        for p, kinds in _PROFILE_METHODS.items()
        for kind, methods in kinds.items()
        for method, fields in methods.items()
        for field in fields
    }


def test_every_profile_value_has_a_provenance_and_every_provenance_a_value():
    values = _set_values()
    assert values - set(PROVENANCE) == set(), "profile values without a recorded provenance"
    assert set(PROVENANCE) - values == set(), "provenance of values no profile sets"
    for path, why in PROVENANCE.items():
        assert why.kind in WHY_KINDS and why.reason.strip(), path
        assert (why.kind == "ci") == path.startswith("smoke."), path  # CI values only on smoke, and only CI there


def test_no_defense_value_comes_from_a_reported_seed_and_tuned_knobs_come_from_the_rule():
    reported = set(profile("quick").seeds) | set(profile("paper").seeds)
    assert reported == {0, 1, 2}  # what REPORTED_SEED looks for
    for path, why in PROVENANCE.items():
        p, kind, method, field = path.split(".")
        if kind != "defenses":
            continue
        assert not REPORTED_SEED.search(why.reason), f"{path}: {why.reason}"
        if why.kind == "rule":
            assert "tuning seeds" in why.reason and "bdlib.tune" in why.reason, path
        if p != "smoke" and field in defenses.get(method).tuning:
            # A strength knob the protocol sweeps may differ from the reference only by its rule.
            assert why.kind == "rule", f"{path} is a tuned knob set by {why.kind}, not by the protocol's rule"
