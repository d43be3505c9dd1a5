"""Notebook 06 (the comparison): the protocol's choices and notes, the grid's tables and curves,
the clean-budget parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from bdlib import defenses, metrics
from bdlib.config import Config
from bdlib.report.common import attack_names, attacks_among, checked_seeds, defense_names, seed_list


def parameters(
    cfg: Config, attack_spec: str | Sequence[str], defense_spec: str | Sequence[str], seeds: Sequence[int] | None
) -> tuple[list[str], list[str], list[int]]:
    """06's ``attacks``, ``defenses`` and ``seeds`` parameters, each checked: the attack names, the
    defense names and the seeds (:func:`~bdlib.report.common.seed_list`)."""
    return attack_names(attack_spec), defense_names(defense_spec), seed_list(cfg, seeds)


def tuning_intro(cfg: Config, seeds: Sequence[int]) -> str:
    """What the comparison protocol tunes on."""
    t = cfg.tuning
    scope = "every defense" if t.defenses is None else ", ".join(t.defenses) + " (the others keep the profile's values)"
    return (
        f"tuning seeds {list(t.seeds)} (reported: {list(seeds)}), attacks {list(t.attacks)}, "
        f"BA-cost bar {t.max_cost:g} points; tuned: {scope}"
    )


def protocol_note(cfg: Config, mismatches: Sequence[str]) -> str:
    """Where the profile's settings differ from the protocol's choices (``mismatches``, from
    ``tune.profile_mismatches``), or that they agree."""
    return "\n".join(mismatches) or f"profile {cfg.profile} holds every choice of the protocol"


def reference_note(rows: Sequence[Mapping], max_cost: float, bar_asr: float) -> str:
    """In words, which defenses fail the companion's bar (mean ASR at most ``bar_asr`` within
    ``max_cost`` BA points) even at their reference recipe (``bdlib.study.measure.reference_rows``)."""
    failing = [r["defense"] for r in rows if not r["defends"]]
    bar = f"mean ASR ≤ {bar_asr:g} % within {max_cost:g} BA points"
    lines = [
        f"{r['defense']} at its reference recipe ({r['reference']}): mean ASR {r['ASR']:.1f} %, worst BA cost {r['cost']:.1f}"
        for r in rows
    ]
    verdict = f"fail the companion's bar ({bar}) even at their reference recipe, on the tuning seeds: " + (
        ", ".join(failing) or "no defense"
    )
    return "\n".join([*lines, verdict])


# BackdoorBench's published BadNets ASR (%) after each baseline: CIFAR-10, PreAct-ResNet-18, 5 % clean
# data; BackdoorBench v1's README table, as quoted in this project's issue #31 (the current README
# links a leaderboard instead). A different setting from quick's: shown beside, never compared as equal.
BACKDOORBENCH_BADNETS_ASR = {"ft": 1.48, "nad": 2.14, "anp": 0.73}


def backdoorbench_table(rows: Sequence[Mapping], attack: str = "badnets"):
    """Each baseline at its reference recipe on ``attack`` (``bdlib.study.measure.reference_rows``
    of that attack's tuning rows) beside BackdoorBench's published number, as a pandas table;
    labelled as the different settings they are."""
    import pandas as pd

    out = []
    for r in rows:
        published = BACKDOORBENCH_BADNETS_ASR.get(r["defense"])
        out.append(
            {
                "defense": r["defense"],
                "reference recipe": r["reference"],
                f"bdlib {attack} ASR (this profile, tuning seeds)": round(r["ASR"], 1),
                "bdlib BA cost": round(r["cost"], 1),
                f"BackdoorBench {attack} ASR (CIFAR-10, PreAct-ResNet-18)": published if published else "not quoted",
            }
        )
    return pd.DataFrame(out).set_index("defense")


def protocol_table(chosen: Mapping[str, Mapping], references: Mapping[str, str], variant: Mapping | None = None):
    """The comparison protocol's choice per defense (``tune.select``) beside its reference recipe
    (``references``: defense -> setting label, ``tune.reference``), as a pandas table."""
    import pandas as pd

    rows = [
        {
            "defense": d,
            "chosen setting": c["setting"],
            "mean ASR (tuning seeds)": round(c["ASR"], 1),
            "worst BA cost": round(c["cost"], 2),
            "within the BA bar": c["qualified"],
            "reference recipe": references.get(d, ""),
        }
        for d, c in chosen.items()
    ]
    if variant is not None:
        rows.insert(
            0,
            {
                "defense": "ntml (variant)",
                "chosen setting": variant["setting"],
                "mean ASR (tuning seeds)": round(variant["ASR"], 1),
                "worst BA cost": round(variant["cost"], 2),
                "within the BA bar": variant["qualified"],
            },
        )
    return pd.DataFrame(rows).set_index("defense")


def extra_seeds_note(extra: Sequence[Any], seeds: Sequence[int], spread: float, baselines: Sequence[str]) -> str:
    """Which attack × defense cells got ``seeds`` too (``extra``: the cells
    ``bdlib.study.measure.extra_seed_cells`` added, those of the ``baselines`` rows left out)
    because their seeds disagreed by more than ``spread`` ASR points."""
    cells = sorted({f"{x.attack} × {x.defense}" for x in extra if x.defense not in baselines}) or "no cell"
    return f"cells whose seeds disagree by more than {spread:g} ASR points, run on seeds {seeds} too: {cells}"


def der_table(rows: Sequence[Mapping], baselines: Sequence[str]):
    """DER ``mean ± std`` per attack (rows) and defense (columns), from grid rows; the
    ``baselines`` rows (``grid.BASELINES``) left out."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r["defense"] not in baselines])
    der = df.groupby(["attack", "defense"], sort=False)["DER"].agg(["mean", "std"]).fillna(0.0).round(3)
    return (der["mean"].astype(str) + " ± " + der["std"].astype(str)).unstack("defense")


def clean_data_defenses(names: Sequence[str]) -> list[str]:
    """The defenses of ``names`` that are given the clean subset (their results depend on its size)."""
    return [d for d in names if "clean" in defenses.get(d).uses]


@dataclass(frozen=True)
class BudgetSweep:
    """Notebook 06's clean-budget comparison: these budgets (fractions of the training set), on
    these attacks and seeds, for the defenses that are given the clean subset."""

    fractions: tuple[float, ...]
    attacks: tuple[str, ...]
    seeds: tuple[int, ...]
    defenses: tuple[str, ...]


def budget_sweep(spec: Mapping, names: Sequence[str], dnames: Sequence[str]) -> BudgetSweep:
    """06's ``budgets`` parameter, ``{"clean": [fractions of the training set], "attacks": [...],
    "seeds": [...]}``, checked: its attacks narrowed to ``names``, the clean-data defenses of
    ``dnames``."""
    fields = ("clean", "attacks", "seeds")
    if not isinstance(spec, dict) or set(spec) != set(fields):
        raise ValueError(f"budgets must be a dict with exactly the keys {', '.join(fields)}; got {spec!r}")
    if not spec["clean"] or not all(isinstance(b, (int, float)) and 0 < b <= 1 for b in spec["clean"]):
        raise ValueError(f"budgets['clean'] must be fractions of the training set in (0, 1], got {spec['clean']!r}")
    seeds = checked_seeds(spec["seeds"], "budgets['seeds']", spec["seeds"])
    among = attacks_among(spec["attacks"], names)
    return BudgetSweep(tuple(spec["clean"]), tuple(among), tuple(seeds), tuple(clean_data_defenses(dnames)))


def budget_curve_rows(rows: Sequence[Mapping], attack: str, dnames: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """Grid rows of one attack, the ``dnames`` defenses and ``seeds`` as :func:`bdlib.plots.curves`
    rows against ``clean %``, one line per defense (in the order of ``dnames``)."""
    return [
        {"clean %": 100 * r["clean_fraction"], "series": d, **{k: r[k] for k in ("BA", "ASR", "RA")}}
        for d in dnames
        for r in rows
        if r["attack"] == attack and r["defense"] == d and r["seed"] in seeds
    ]


def defense_summary(rows: Sequence[Mapping], names: Sequence[str], dnames: Sequence[str]) -> dict:
    """``{attack: {defense: {metric: (mean, std)}}}`` of BA / ASR / RA / DER over grid rows."""
    keys = ("BA", "ASR", "RA", "DER")
    return {
        a: {d: metrics.mean_std([r for r in rows if r["attack"] == a and r["defense"] == d], keys) for d in dnames}
        for a in names
    }


__all__ = [
    "parameters",
    "tuning_intro",
    "protocol_note",
    "reference_note",
    "BACKDOORBENCH_BADNETS_ASR",
    "backdoorbench_table",
    "protocol_table",
    "extra_seeds_note",
    "der_table",
    "clean_data_defenses",
    "BudgetSweep",
    "budget_sweep",
    "budget_curve_rows",
    "defense_summary",
]
