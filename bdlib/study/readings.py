"""NT-ML's readings sweep: how its NT stage reads the abstract and what its ML stage learns on,
chosen by the comparison protocol's rule before its strength knob (:mod:`bdlib.study.tune`).

The abstract leaves open what "non-target label training" trains and what mutual learning
learns from; each reading is a value of an NT-ML ``Params`` field (``reading``, ``ml_data``,
``init``, the ML stage's length and lr; their docstrings in :mod:`bdlib.defenses.ntml` give the
abstract's words each rests on). The sweep runs them one factor at a time on the tuning seeds,
over all six attacks, and :func:`select_variant` keeps the best mean DER among the variants
within the BA bar on every attack, the same bar as every defense's.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from bdlib import cells as C
from bdlib import defenses
from bdlib.cells import label, tuning_cell
from bdlib.config import Config
from bdlib.defenses import ntml
from bdlib.study import tune

VARIANT_FIELDS = ("reading", "ml_data", "init", "ml_epochs", "ml_lr")

# The values the readings sweep tries of each VARIANT_FIELDS field (the Params default among
# them). Readings "predicted" and "estimated" are left out for the budget (each NT reading is a
# full retraining of the student on 8 attack-seed cells): neither was chosen in any earlier sweep
# (2026-11-23's full cross chose "suppress"), and estimated is suppress narrowed to one class.
# ml_epochs and ml_lr, a few values around the defaults, cost an ML stage each (seconds): they
# were set on a reported seed before (issue #30) and are now chosen by the rule here.
VARIANT_VALUES: dict[str, tuple[Any, ...]] = {
    "reading": ("nontarget", "suppress", "complementary"),
    "ml_data": ("clean", "clean+train", "clean+agree"),
    "init": ("scratch", "poisoned"),
    "ml_epochs": (5, 10, 20),
    "ml_lr": (0.005, 0.01, 0.05),
}


def variants() -> list[dict[str, Any]]:
    """NT-ML's variants, one factor at a time around the Params defaults, as Params fields (every
    :data:`VARIANT_FIELDS` field in each): the defaults first, then each value of
    :data:`VARIANT_VALUES` other than the default, one field at a time.

    One factor at a time, not the full cross: each NT reading (and ``init``) is a full retraining
    of the student on the poisoned set, each ML variant a few seconds, so the cross would add a
    second ML variant to every reading for little (in the full cross run on quick's tuning seeds on
    2026-11-23, ML on clean+train lowered every reading's mean DER, by 0.01 to 0.02)."""
    base = {k: getattr(ntml.Params(), k) for k in VARIANT_FIELDS}
    out = [base]
    for field in VARIANT_FIELDS:
        out += [{**base, field: v} for v in VARIANT_VALUES[field] if v != base[field]]
    return out


def variant_setting(variant: Mapping[str, Any]) -> dict[str, Any]:
    """The NT-ML fields a variant runs with: the variant, and NT-ML's tuned knob(s) at their
    Params defaults. The reading is chosen first, the knob after (:func:`sweep`), so the choice
    of the knob never feeds back into the choice of the reading."""
    d = defenses.get("ntml")
    return {**{k: getattr(d.Params(), k) for k in d.tuning}, **variant}


def variant_seeds(cfg: Config, attack: str) -> tuple[int, ...]:
    """The tuning seeds the readings sweep runs ``attack`` on: all of them for the tuning attacks,
    the first ``cfg.tuning.other_attack_seeds`` for the others (None: all)."""
    t = cfg.tuning
    return t.seeds if attack in t.attacks or t.other_attack_seeds is None else t.seeds[: t.other_attack_seeds]


def variant_sweep(cfg: Config, attacks: Sequence[str]) -> list[dict]:
    """NT-ML under every variant on ``attacks`` (narrowed to ``cfg.tuning.variant_attacks`` where
    the profile names them) and their tuning seeds (:func:`variant_seeds`), NT-ML's knob at its
    default (:func:`variant_setting`); one cached NT stage per reading. None where NT-ML is
    outside the protocol's scope (``cfg.tuning.defenses``)."""
    if not tune.tuned(cfg, ["ntml"]):
        return []
    chosen = cfg.tuning.variant_attacks
    attacks = [a for a in attacks if chosen is None or a in chosen]
    cells = [
        tuning_cell("ntml", a, s, variant_setting(v), label(v))
        for a in attacks
        for s in variant_seeds(cfg, a)
        for v in variants()
    ]
    return tune.spend(cfg, cells)


def ml_contribution(cfg: Config, attacks: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """The profile's NT-ML and the same with λ = 0 (the ML stage reduced to fine-tuning the NT
    student on the clean data), per attack and seed: what mutual learning adds."""
    cells = [
        tuning_cell("ntml", a, s, {"lam": lam})
        for lam in (cfg.defenses["ntml"].lam, 0.0)
        for a in attacks
        for s in seeds
    ]
    return [{**r, "lam": dict(c.setting)["lam"]} for c, r in zip(cells, C.run(cfg, cells))]


def select_variant(rows: Iterable[Mapping], max_cost: float = tune.MAX_BA_COST) -> dict[str, Any] | None:
    """The NT-ML variant with the best mean DER over the attacks among those whose mean BA cost
    is at most ``max_cost`` on every attack; if none qualifies, the best mean DER overall (None
    without rows: the readings sweep did not run)."""
    agg = tune.aggregate(rows)
    if not agg:
        return None
    ok = [s for s, v in agg.items() if v["cost"] <= max_cost]
    best = max(ok or agg, key=lambda s: agg[s]["DER"])
    return {"setting": best, **{k: agg[best][k] for k in ("ASR", "DER", "cost")}, "qualified": bool(ok)}


def current(cfg: Config) -> str:
    """The label of the NT-ML variant ``cfg``'s profile runs (the :data:`VARIANT_FIELDS`)."""
    return label({k: getattr(cfg.defenses["ntml"], k) for k in VARIANT_FIELDS})


__all__ = [
    "VARIANT_FIELDS",
    "VARIANT_VALUES",
    "variants",
    "variant_setting",
    "variant_seeds",
    "variant_sweep",
    "ml_contribution",
    "select_variant",
    "current",
]
