"""What several notebooks use: their parameters checked, the profile described, rows summarised
and tabled."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from bdlib import attacks, defenses, metrics
from bdlib.config import Config, as_dict


def describe(cfg: Config, kernels: str, methods: Sequence[str] = (), seeds: Sequence[int] | None = None) -> str:
    """The profile's values a notebook prints, so that nothing it ran with is silent.

    ``kernels`` names how the run's training computes on its device (``bdlib.study.measure.kernels``:
    autocast, deterministic kernels or cudnn.benchmark, torch.compile). ``seeds`` are the seeds the
    notebook runs (:func:`seed_list` of its ``seeds`` parameter); None prints the profile's.
    """
    lines = [
        f"profile {cfg.profile}: {cfg.dataset}, {cfg.model}, "
        f"train n={cfg.n_train or 'all'}, test n={cfg.n_test or 'all'}, device {cfg.device} ({kernels})",
        f"training: {as_dict(cfg.train)}",
        f"target class {cfg.target}, clean data {cfg.clean_fraction:.1%} of the training set, "
        f"seeds {seed_list(cfg, seeds)}",
    ]
    for name in methods:
        group = cfg.attacks if name in cfg.attacks else cfg.defenses
        lines.append(f"{name}: {as_dict(group[name])}")
    return "\n".join(lines)


def _names(spec: str | Sequence[str], registry: Mapping[str, Any], get: Callable[[str], Any]) -> list[str]:
    if spec == "all":
        return list(registry)
    names = [spec] if isinstance(spec, str) else list(spec)
    for n in names:
        get(n)  # raises, naming the valid choices
    return names


def attack_names(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every registered attack; otherwise the names, each validated."""
    return _names(spec, attacks.REGISTRY, attacks.get)


def defense_names(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every registered defense; otherwise the names, each validated."""
    return _names(spec, defenses.REGISTRY, defenses.get)


def attacks_among(spec: str | Sequence[str], names: Sequence[str]) -> list[str]:
    """The attacks of ``spec`` (validated) that are among ``names``."""
    return [a for a in attack_names(spec) if a in names]


def seed_list(cfg: Config, seeds: Sequence[int] | None) -> list[int]:
    """The notebook's ``seeds`` parameter, or the profile's seeds when it is None."""
    return checked_seeds(cfg.seeds if seeds is None else seeds, "seeds", seeds)


def checked_seeds(chosen: Sequence[int], name: str, given: object) -> list[int]:
    """``chosen`` as a list, refused (naming the parameter ``name`` and the ``given`` value) unless
    it is a non-empty list of non-negative integers."""
    chosen = list(chosen)
    if not chosen or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in chosen):
        raise ValueError(f"{name} must be a non-empty list of non-negative integers, got {given!r}")
    return chosen


def finished(runs: Mapping[tuple[str, int], Any]) -> dict[tuple[str, int], Any]:
    """The runs whose training did not diverge (a diverged run has no model and no record)."""
    return {k: r for k, r in runs.items() if not getattr(r, "diverged", None)}


def summarize(
    rows: Sequence[Mapping], by: str = "model", keys: Sequence[str] = ("BA", "ASR", "RA")
) -> dict[str, dict[str, list[float]]]:
    """``{group: {metric: [mean, std]}}`` over the rows of each group (std over seeds)."""
    out: dict[str, dict[str, list[float]]] = {}
    for group in dict.fromkeys(r[by] for r in rows):
        ms = metrics.mean_std([r for r in rows if r[by] == group], keys)
        out[group] = {k: [round(m, 2), round(s, 2)] for k, (m, s) in ms.items()}
    return out


def summary_table(summary: Mapping[str, Mapping[str, Sequence[float]]]):
    """A pandas table of ``mean ± std`` strings from :func:`summarize`, for display."""
    import pandas as pd

    return pd.DataFrame({g: {k: f"{m:.1f} ± {s:.1f}" for k, (m, s) in v.items()} for g, v in summary.items()}).T


def per_attack(rows: Sequence[Mapping]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """:func:`summarize` of each attack's rows: ``{attack: {model: {metric: [mean, std]}}}``."""
    return {a: summarize([r for r in rows if r["attack"] == a]) for a in dict.fromkeys(r["attack"] for r in rows)}


def per_attack_table(summary: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]):
    """:func:`per_attack`'s summary as one :func:`summary_table`, rows ``attack · model``."""
    return summary_table({f"{a} · {m}": v for a, by_model in summary.items() for m, v in by_model.items()})


def means(rows: Sequence[Mapping], attack: str, model: str) -> dict[str, float]:
    """The mean BA / ASR / RA over seeds of one attack's ``model`` rows (rounded as :func:`summarize`)."""
    mine = [r for r in rows if r["attack"] == attack and r["model"] == model]
    return {k: v[0] for k, v in summarize(mine)[model].items()}


def table(rows: Sequence[Mapping]):
    """Rows as a pandas table, for display."""
    import pandas as pd

    return pd.DataFrame(rows)


__all__ = [
    "describe",
    "attack_names",
    "defense_names",
    "attacks_among",
    "seed_list",
    "checked_seeds",
    "finished",
    "summarize",
    "summary_table",
    "per_attack",
    "per_attack_table",
    "means",
    "table",
]
