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

from bdlib import cells as C
from bdlib import defenses, metrics
from bdlib.cells import Cell, label, tuning_cell
from bdlib.config import Config, TuningConfig

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
        tuning_cell(d, a, s, setting)
        for d in tuned(cfg, names)
        for setting in settings(d, cfg.tuning.grid_points)
        for a in cfg.tuning.attacks
        for s in cfg.tuning.seeds
    ]
    return spend(cfg, cells)


def far_settings(
    rows: Iterable[Mapping], max_cost: float, factor: float | None, margin: float | None = None
) -> set[tuple[str, str]]:
    """The (defense, setting) pairs of ``rows`` (one tuning seed's) far from being chosen:

    - far from the bar: BA cost above ``factor`` x ``max_cost`` on some attack, or diverged. Such
      a setting's mean cost can only come within ``max_cost`` if a later seed costs less than
      ``(2 - factor) x max_cost``;
    - far from the best: mean ASR more than ``margin`` points above the lowest mean ASR among
      the defense's settings within the bar on this seed. Such a setting can only be chosen if
      the later seeds turn the order round by more than ``margin`` points.

    The same rule for every defense (and for NT-ML's readings); None switches a part off.
    """
    rows = list(rows)
    far = (
        set()
        if factor is None
        else {(r["defense"], r["setting"]) for r in rows if r.get("diverged") or r["cost"] > factor * max_cost}
    )
    if margin is not None:
        for d in dict.fromkeys(r["defense"] for r in rows):
            agg = aggregate(r for r in rows if r["defense"] == d)
            within = [v["ASR"] for v in agg.values() if v["cost"] <= max_cost]
            if within:
                far |= {(d, s) for s, v in agg.items() if v["ASR"] > min(within) + margin}
    return far


def spend(cfg: Config, cells: Sequence[Cell]) -> list[dict]:
    """The rows of the tuning ``cells``: every cell on the first tuning seed, then the later
    seeds' cells of the settings not far from being chosen there (:func:`far_settings`, the same
    rule for every defense), in the order of ``cells``."""
    first = [i for i, c in enumerate(cells) if c.seed == cfg.tuning.seeds[0]]
    rows = dict(zip(first, C.run(cfg, [cells[i] for i in first])))
    t = cfg.tuning
    far = far_settings(rows.values(), t.max_cost, t.prune_factor, t.prune_margin)
    later = [i for i, c in enumerate(cells) if i not in rows and (c.defense, c.label) not in far]
    rows.update(zip(later, C.run(cfg, [cells[i] for i in later])))
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
    "spend",
    "tuned",
    "far_settings",
    "select",
    "aggregate",
    "reference",
    "profile_mismatches",
    "parse",
    "spread",
    "summarize",
]
