"""Notebook 05 (MCLDef): its inverted triggers, the target it detects, its two forms and its
purification epochs."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from bdlib.report.common import finished


def inversion_rows(
    runs: Mapping[tuple[str, int], Any], seed: int, true_diffs: Mapping[tuple[str, int], torch.Tensor]
) -> list[dict]:
    """Per attack (the runs of ``seed``): true trigger (``true_diffs``, the triggered minus the
    clean image, ``bdlib.study.measure.true_triggers``), inverted mask and pattern, mask norms per
    class, true and detected target (:func:`bdlib.plots.inversion_panels`)."""
    rows = []
    for (a, s), run in finished(runs).items():
        if s != seed:
            continue
        rec = run.record
        rows.append(
            {
                "attack": a,
                "true_diff": true_diffs[(a, s)],
                "mask": rec.mask,
                "pattern": rec.pattern,
                "norms": rec.mask_norms.tolist(),
                "target": run.cfg.target,
                "detected": rec.target,
            }
        )
    return rows


def mcldef_epoch_rows(runs: Iterable[Any], label: str = "MCLDef") -> list[dict]:
    """BA / ASR / RA per purification epoch of MCLDef runs made with ``curve`` (epoch 0: before)."""
    return [{**h, "series": label} for run in runs for h in run.record.epochs]


def target_detection(runs: Mapping[tuple[str, int], Any]) -> list[dict]:
    """Per detecting-MCLDef run: the smallest-mask class, the true target, its anomaly index, and
    whether it was an outlier (then purified against; else the model was left as it is)."""
    return [
        {
            "attack": a,
            "seed": s,
            "detected": r.record.target,
            "true": r.cfg.target,
            "anomaly index": r.record.anomaly_index,
            "confident": r.record.detection_confident,
            "purified": r.record.purified,
        }
        for (a, s), r in finished(runs).items()
    ]


def published_triggers(runs: Mapping[tuple[str, int], Any]) -> list[dict]:
    """Per MCLDef-as-published run: the given target, the inverted pattern's perturbed pixels, its
    success on the clean images not of the target, and whether a pass reached the 90 % bound."""
    return [
        {
            "attack": a,
            "seed": s,
            "target": r.record.target,
            "pixels": r.record.mask_norm,
            "success": float(r.record.trigger_success[0]),
            "accepted": r.record.trigger_accepted,
        }
        for (a, s), r in finished(runs).items()
    ]


def no_outlier_notes(runs: Mapping[tuple[str, int], Any]) -> str:
    """One line per detecting-MCLDef run that found no outlier class (its model left unpurified)."""
    lines = [f"{a}, seed {s}: {r.record.note}" for (a, s), r in finished(runs).items() if not r.record.purified]
    return "\n".join(lines) or "detection found an outlier class in every run: each was purified"


def mcldef_forms_rows(published: Sequence[Mapping], detecting: Sequence[Mapping]) -> list[dict]:
    """``bdlib.study.measure.defense_rows`` of MCLDef's two forms as one list, the undefended rows
    once and each form's rows labelled ``as published`` (told the target) or ``detecting``."""
    label = {"mcldef": "as published", "mcldef_detect": "detecting"}
    both = [*published, *(r for r in detecting if r["model"] != "undefended")]
    return [{**r, "model": label.get(r["model"], r["model"])} for r in both]


__all__ = [
    "inversion_rows",
    "mcldef_epoch_rows",
    "target_detection",
    "published_triggers",
    "no_outlier_notes",
    "mcldef_forms_rows",
]
