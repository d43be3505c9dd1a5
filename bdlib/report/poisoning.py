"""Notebook 01 (poisoning): the Narcissus control's rows and the attacks whose features it draws."""

from __future__ import annotations

from typing import Mapping, Sequence


def narcissus_rows(rows: Sequence[Mapping]) -> list[dict]:
    """``bdlib.study.measure.narcissus_control`` rows as the notebook shows them: each budget
    named with its poisoning rate (``profile budget (8.00%)``, ``paper budget (0.05%)``) and the
    clean model under the same trigger, then the seed and the metrics."""

    def setting(r: Mapping) -> str:
        if r["budget"] == "clean model":
            return "clean model, same trigger"
        return f"{r['budget']} budget ({r['poison_rate']:.2%})"

    return [{"setting": setting(r), **{k: v for k, v in r.items() if k not in ("budget", "poison_rate")}} for r in rows]


def tsne_attacks(names: Sequence[str], prefer: Sequence[str] = ("badnets", "sig", "narcissus")) -> list[str]:
    """The attacks whose poisoned models' features the notebook draws: the first two of ``prefer``
    that were run, else the first attack."""
    return [n for n in prefer if n in names][:2] or list(names[:1])


__all__ = ["narcissus_rows", "tsne_attacks"]
