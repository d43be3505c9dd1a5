"""Notebook 02 (NT-ML's NT stage): the stage's models per run, the τ sweep, the target's scores."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from bdlib.report.common import finished


def nt_stage_rows(runs: Mapping[tuple[str, int], Any]) -> list[dict]:
    """BA / ASR / RA of M0, the NT teacher (unless it is M0) and the NT student, per NT-ML run."""
    rows = []
    for (a, s), run in finished(runs).items():
        rec = run.record
        models = {"poisoned": rec.poisoned, "nt teacher": rec.nt_teacher_metrics, "nt student": rec.nt_student_metrics}
        if run.cfg.defenses["ntml"].teacher == "poisoned":  # the NT teacher is M0 itself
            del models["nt teacher"]
        rows += [{"attack": a, "seed": s, "model": m, **v} for m, v in models.items()]
    return rows


def tau_rows(runs: Mapping[float, Any]) -> list[dict]:
    """Per τ, the NT student's and the final student's BA / ASR / RA (``series`` rows), from
    ``bdlib.study.measure.tau_runs`` (``{tau: NT-ML run}``)."""
    rows = []
    for tau, run in runs.items():
        rows.append({"tau": tau, "series": "NT student", **run.record.nt_student_metrics})
        rows.append({"tau": tau, "series": "after ML (final)", **run.metrics})
    return rows


def target_table(rows: Sequence[Mapping]):
    """``bdlib.study.measure.target_scores`` rows as a table: per attack and model, the target
    probability and logit margin on clean and triggered images (means over seeds)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    t = df.groupby(["attack", "model", "images"], sort=False)[["p_target", "margin"]].mean().round(2)
    return t.unstack("images")


__all__ = ["nt_stage_rows", "tau_rows", "target_table"]
