"""The comparison protocol: how every defense is set, by one rule declared in code.

Each defense declares a small grid over its strength knob(s) (``Defense.tuning``, with the
reason in its module). The grid runs on **tuning seeds that are never reported** against the
tuning attacks (both in the profile's ``cfg.tuning``), and :func:`select` picks, for every
defense alike, the lowest mean ASR among the settings whose mean BA cost is at most
``cfg.tuning.max_cost`` points on every tuning attack; if no setting qualifies, the smallest
such cost. The choice becomes the profile's setting (``bdlib.profiles``); :func:`profile_mismatches`
says where a fresh sweep would choose otherwise.

NT-ML's reading (how its NT stage reads the abstract) and ML variant are chosen first, by
:func:`select_variant` over all six attacks on the same tuning seeds (:func:`variants`; the four
attacks outside the tuning pair on the first tuning seed only, :func:`variant_seeds`).

Tuning with the attack in hand is knowledge a real defender does not have; every defense gets
the same amount of it, so the comparison is fair, not realistic.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

from bdlib import defenses, grid, metrics, pool
from bdlib.config import Config, TuningConfig, override

MAX_BA_COST = TuningConfig().max_cost  # the default bar, for callers without a Config


def thin(values: Sequence[Any], points: int | None) -> list[Any]:
    """At most ``points`` of ``values``, evenly spread from the first to the last (both kept);
    all of them when ``points`` is None or not smaller."""
    values = list(values)
    if points is None or points >= len(values):
        return values
    if points < 2:
        raise ValueError(f"points must be at least 2 (the weakest and the strongest value), got {points}")
    return [values[round(i * (len(values) - 1) / (points - 1))] for i in range(points)]


def settings(defense: str, points: int | None = None) -> list[dict[str, Any]]:
    """Every combination of the defense's declared grid, as ``{field: value}``; with ``points``,
    each knob thinned to that many values (:func:`thin`, ``cfg.tuning.grid_points``)."""
    grid = defenses.get(defense).tuning
    if not grid:
        raise ValueError(f"defense {defense!r} declares no tuning grid")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(thin(grid[n], points) for n in names))]


def label(setting: Mapping[str, Any]) -> str:
    """A short name of a setting: ``rho=0.5``, ``betas=100``, ``reading=suppress, ml_data=clean``."""

    def fmt(v: Any) -> str:
        if isinstance(v, tuple) and len(set(v)) == 1:
            v = v[0]
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in setting.items())


def _config(cfg: Config, defense: str, attack: str, seed: int, setting: Mapping[str, Any]) -> Config:
    from bdlib import experiment as ex

    return override(
        ex.with_run(cfg, attack=attack, seed=seed), {f"defenses.{defense}.{k}": v for k, v in setting.items()}
    )


def _prefetch(cfg: Config, cells: Sequence[tuple]) -> None:
    """Compute the (defense, attack, seed, setting, ...) cells the store lacks on worker processes."""
    pool.prefetch(pool.defend_jobs([(_config(cfg, *cell[:4]), cell[0]) for cell in cells]))


def _run(
    cfg: Config, defense: str, attack: str, seed: int, setting: Mapping[str, Any], name: str | None = None
) -> dict:
    from bdlib import experiment as ex

    r = ex.defend(_config(cfg, defense, attack, seed, setting), defense)
    return {
        "defense": defense,
        "setting": name or label(setting),
        "attack": attack,
        "seed": seed,
        "BA_before": r.before["BA"],
        "ASR_before": r.before["ASR"],
        **r.metrics,
        "cost": r.before["BA"] - r.metrics["BA"],
        "seconds": r.seconds,
        **grid.diverged_field(r),
    }


def reference(defense: str) -> str:
    """The label of a defense's reference recipe among its grid's knobs: its ``Params`` defaults,
    which every grid contains as a point (tests/test_tune.py)."""
    d = defenses.get(defense)
    return label({k: getattr(d.Params(), k) for k in d.tuning})


def tuned(cfg: Config, names: Sequence[str]) -> list[str]:
    """The defenses of ``names`` the protocol tunes: those that declare a grid (a method's form as
    its authors ran it, e.g. ``none_published``, declares none) and are in ``cfg.tuning.defenses``
    (None: all)."""
    scope = cfg.tuning.defenses
    return [d for d in names if defenses.get(d).tuning and (scope is None or d in scope)]


def sweep(cfg: Config, names: Sequence[str]) -> list[dict]:
    """One row per defense × setting × tuning attack × tuning seed, for the defenses of ``names``
    the protocol tunes (:func:`tuned`); cached: a rerun reads the store."""
    cells = [
        (d, a, s, setting)
        for d in tuned(cfg, names)
        for setting in settings(d, cfg.tuning.grid_points)
        for a in cfg.tuning.attacks
        for s in cfg.tuning.seeds
    ]
    return _spend(cfg, cells)


def _name(cell: tuple) -> str:
    return cell[4] if len(cell) > 4 else label(cell[3])


def far_settings(rows: Iterable[Mapping], max_cost: float, factor: float | None) -> set[tuple[str, str]]:
    """The (defense, setting) pairs of ``rows`` (one tuning seed's) far from the bar: BA cost above
    ``factor`` x ``max_cost`` on some attack, or diverged. Such a setting's mean cost can only come
    within ``max_cost`` if a later seed costs less than ``(2 - factor) x max_cost`` (nothing, at the
    default factor 2); none when ``factor`` is None."""
    if factor is None:
        return set()
    return {(r["defense"], r["setting"]) for r in rows if r.get("diverged") or r["cost"] > factor * max_cost}


def _spend(cfg: Config, cells: Sequence[tuple]) -> list[dict]:
    """The rows of (defense, attack, seed, setting[, name]) ``cells``: every cell on the first
    tuning seed, then the later seeds' cells of the settings not far from the bar there
    (:func:`far_settings`, the same rule for every defense), in the order of ``cells``."""
    first = [i for i, c in enumerate(cells) if c[2] == cfg.tuning.seeds[0]]
    _prefetch(cfg, [cells[i] for i in first])
    rows = {i: _run(cfg, *cells[i]) for i in first}
    far = far_settings(rows.values(), cfg.tuning.max_cost, cfg.tuning.prune_factor)
    later = [i for i, c in enumerate(cells) if i not in rows and (c[0], _name(c)) not in far]
    _prefetch(cfg, [cells[i] for i in later])
    rows.update({i: _run(cfg, *cells[i]) for i in later})
    return [rows[i] for i in sorted(rows)]


def aggregate(rows: Iterable[Mapping]) -> dict[str, dict[str, Any]]:
    """Per setting: ASR and DER averaged per attack over its seeds, then over the attacks (every
    attack weighs the same, however many seeds it ran on), and the worst attack's mean BA cost."""
    out: dict[str, dict[str, Any]] = {}
    rows = list(rows)
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        failed = sum(1 for r in mine if r.get("diverged"))
        if failed:  # a setting that diverged on any cell fails the bar, whatever its other cells did
            inf = math.inf
            attacks = dict.fromkeys(r["attack"] for r in mine)
            out[setting] = {"ASR": inf, "DER": -inf, "cost": inf, "cost_by_attack": dict.fromkeys(attacks, inf)}
            out[setting]["diverged"] = failed
            continue
        by_attack = {a: [r for r in mine if r["attack"] == a] for a in dict.fromkeys(r["attack"] for r in mine)}
        mean = {k: {a: sum(r[k] for r in rs) / len(rs) for a, rs in by_attack.items()} for k in ("ASR", "DER", "cost")}
        out[setting] = {
            "ASR": sum(mean["ASR"].values()) / len(by_attack),
            "DER": sum(mean["DER"].values()) / len(by_attack),
            "cost": max(mean["cost"].values()),
            "cost_by_attack": mean["cost"],
        }
    return out


def select(rows: Iterable[Mapping], max_cost: float = MAX_BA_COST) -> dict[str, dict[str, Any]]:
    """The protocol's choice per defense, from :func:`sweep` rows.

    Among the settings whose mean BA cost is at most ``max_cost`` on every attack, the lowest
    mean ASR (ties: the smaller cost, then grid order); if none qualifies, the smallest cost.
    Returns ``{defense: {"setting", "ASR", "cost", "qualified"}}``.
    """
    rows = list(rows)
    chosen = {}
    for d in dict.fromkeys(r["defense"] for r in rows):
        agg = aggregate(r for r in rows if r["defense"] == d)
        ok = [s for s, v in agg.items() if v["cost"] <= max_cost]
        if ok:
            best = min(ok, key=lambda s: (agg[s]["ASR"], agg[s]["cost"]))
        else:
            best = min(agg, key=lambda s: agg[s]["cost"])
        chosen[d] = {"setting": best, "ASR": agg[best]["ASR"], "cost": agg[best]["cost"], "qualified": bool(ok)}
    return chosen


def profile_mismatches(cfg: Config, chosen: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Where ``cfg``'s defense settings differ from the protocol's ``chosen`` ones (empty: none)."""
    out = []
    for d, choice in chosen.items():
        current = label({k: getattr(cfg.defenses[d], k) for k in defenses.get(d).tuning})
        if current != choice["setting"]:
            out.append(f"{d}: the profile has {current}, the protocol chooses {choice['setting']}")
    return out


# ---- NT-ML's reading and ML variant (chosen before its strength knob is tuned) -------------

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
    from bdlib.defenses import ntml

    base = {k: getattr(ntml.Params(), k) for k in VARIANT_FIELDS}
    out = [base]
    for field in VARIANT_FIELDS:
        out += [{**base, field: v} for v in VARIANT_VALUES[field] if v != base[field]]
    return out


def variant_setting(variant: Mapping[str, Any]) -> dict[str, Any]:
    """The NT-ML fields a variant runs with: the variant, and NT-ML's tuned knob(s) at their
    Params defaults. The reading is chosen first, the knob after (:func:`sweep`), so the choice
    of the knob never feeds back into the choice of the reading."""
    ntml = defenses.get("ntml")
    return {**{k: getattr(ntml.Params(), k) for k in ntml.tuning}, **variant}


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
    if not tuned(cfg, ["ntml"]):
        return []
    chosen = cfg.tuning.variant_attacks
    attacks = [a for a in attacks if chosen is None or a in chosen]
    cells = [
        ("ntml", a, s, variant_setting(v), label(v)) for a in attacks for s in variant_seeds(cfg, a) for v in variants()
    ]
    return _spend(cfg, cells)


def ml_contribution(cfg: Config, attacks: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """The profile's NT-ML and the same with λ = 0 (the ML stage reduced to fine-tuning the NT
    student on the clean data), per attack and seed: what mutual learning adds."""
    cells = [("ntml", a, s, {"lam": lam}) for lam in (cfg.defenses["ntml"].lam, 0.0) for a in attacks for s in seeds]
    _prefetch(cfg, cells)
    return [{**_run(cfg, *cell), "lam": cell[3]["lam"]} for cell in cells]


def select_variant(rows: Iterable[Mapping], max_cost: float = MAX_BA_COST) -> dict[str, Any] | None:
    """The NT-ML variant with the best mean DER over the attacks among those whose mean BA cost
    is at most ``max_cost`` on every attack; if none qualifies, the best mean DER overall (None
    without rows: the readings sweep did not run)."""
    agg = aggregate(rows)
    if not agg:
        return None
    ok = [s for s, v in agg.items() if v["cost"] <= max_cost]
    best = max(ok or agg, key=lambda s: agg[s]["DER"])
    return {"setting": best, **{k: agg[best][k] for k in ("ASR", "DER", "cost")}, "qualified": bool(ok)}


def parse(setting: str) -> dict[str, str]:
    """``"reading=suppress, ml_data=clean"`` -> ``{"reading": "suppress", "ml_data": "clean"}``."""
    return dict(part.split("=", 1) for part in setting.split(", "))


def spread(values: Sequence[float]) -> float:
    """Largest minus smallest value (0 for one value): how far a cell's seeds disagree."""
    return max(values) - min(values) if values else math.nan


def summarize(rows: Iterable[Mapping], by: Sequence[str]) -> list[dict]:
    """Mean ± std and spread of BA, ASR, RA, DER and BA cost over seeds, per ``by`` group."""
    rows = list(rows)
    out = []
    for key in dict.fromkeys(tuple(r[k] for k in by) for r in rows):
        mine = [r for r in rows if tuple(r[k] for k in by) == key]
        ms = metrics.mean_std(mine, ("BA", "ASR", "RA", "DER", "cost"))
        out.append(
            {
                **dict(zip(by, key)),
                **{k: m for k, (m, _) in ms.items()},
                **{f"{k}_std": s for k, (_, s) in ms.items()},
                "ASR_spread": spread([r["ASR"] for r in mine]),
                "n_seeds": len(mine),
            }
        )
    return out


__all__ = [
    "MAX_BA_COST",
    "thin",
    "settings",
    "label",
    "sweep",
    "far_settings",
    "select",
    "aggregate",
    "reference",
    "profile_mismatches",
    "variants",
    "variant_setting",
    "variant_seeds",
    "variant_sweep",
    "ml_contribution",
    "select_variant",
    "parse",
    "spread",
    "summarize",
]


def protocol(cfg: Config, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole protocol on ``cfg``'s profile: NT-ML's variant over every attack, then every
    defense's grid; the choices and where the profile departs from them."""
    from bdlib import attacks

    names = list(names or defenses.REGISTRY)
    vrows = variant_sweep(cfg, list(attacks.REGISTRY)) if "ntml" in names else []
    variant = select_variant(vrows, cfg.tuning.max_cost) if vrows else None
    rows = sweep(cfg, names)
    chosen = select(rows, cfg.tuning.max_cost)
    mismatches = profile_mismatches(cfg, chosen)
    if variant is not None:
        current = label({k: getattr(cfg.defenses["ntml"], k) for k in VARIANT_FIELDS})
        if current != variant["setting"]:
            mismatches.insert(0, f"ntml: the profile has {current}, the protocol chooses {variant['setting']}")
    return {"variant_rows": vrows, "variant": variant, "rows": rows, "chosen": chosen, "mismatches": mismatches}


def main(profile_name: str, names: Sequence[str] = (), out: str | None = None) -> int:
    """``python -m bdlib tune``: run the protocol, print the choices, write them as JSON."""
    import json
    import sys
    from pathlib import Path

    from bdlib.session import setup

    try:
        # Progress bars on a terminal only: piped to a log, a bar per training is thousands of lines.
        cfg = setup(profile_name, progress=sys.stderr.isatty())
        for name in names:
            defenses.get(name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    t = cfg.tuning
    print(
        f"tuning profile {profile_name}: seeds {list(t.seeds)} (never reported), attacks "
        f"{', '.join(t.attacks)}; rule: lowest mean ASR with BA cost <= {t.max_cost:g} on each attack",
        flush=True,
    )
    result = protocol(cfg, list(names) or None)
    if result["variant"]:
        v = result["variant"]
        print(
            f"ntml variant: {v['setting']} (mean DER {v['DER']:.3f} over every attack, worst BA cost "
            f"{v['cost']:.1f}{'' if v['qualified'] else '; no variant meets the BA bar'})"
        )
    for d, c in result["chosen"].items():
        note = "" if c["qualified"] else "  (no setting within the BA bar: smallest cost)"
        print(f"{d:>7}: {c['setting']:<28} mean ASR {c['ASR']:5.1f}  worst BA cost {c['cost']:5.1f}{note}")
    print("\n".join(result["mismatches"]) or f"profile {profile_name} holds the protocol's choices")
    path = Path(out or f"build/tune-{profile_name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"rows and choices: {path}")
    return 0
