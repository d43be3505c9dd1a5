"""Notebook 04 (NONE): its flagged samples against the truth, the poisons it caught and missed,
and its rounds."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from bdlib import metrics
from bdlib.report.common import finished


def detection_rows(runs: Mapping[tuple[str, int], Any], truths: Mapping[tuple[str, int], torch.Tensor]) -> list[dict]:
    """Precision / recall of each run's flagged samples against the true poison index of its
    training set (``truths``, ``bdlib.study.measure.poison_indices``)."""
    rows = []
    for (a, s), run in finished(runs).items():
        truth = truths[(a, s)]
        rows.append(
            {"attack": a, "seed": s, **metrics.detection(run.record.flagged, truth), "poisoned": int(truth.sum())}
        )
    return rows


def detection_table(rows: Sequence[Mapping]):
    """:func:`detection_rows` averaged per attack, as a pandas table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    return df.groupby("attack", sort=False)[["precision", "recall", "flagged", "poisoned"]].mean().round(1)


def round_rows(runs: Mapping[tuple[str, int], Any], label: str = "NONE") -> list[dict]:
    """Per NONE run, BA / ASR / RA after each round; round 0 is the undefended model."""
    rows = [{"round": 0, **run.before, "attack": a, "series": label} for (a, s), run in finished(runs).items()]
    return rows + [
        {**h, "attack": a, "series": label} for (a, s), run in finished(runs).items() for h in run.record.rounds
    ]


def flagged_examples(run: Any, training: Mapping[str, Any], n: int = 8) -> tuple[dict, dict, dict[str, int]]:
    """Poisoned training images a defense flagged ("caught") and did not ("missed").

    ``run``'s record has a ``flagged`` sample mask (NONE's); ``training`` is its poisoned training
    set (``bdlib.study.measure.training_set``: images ``x``, ``poison_idx``, true labels ``y``,
    ``classes``). Returns up to ``n`` images per group for :func:`bdlib.plots.image_rows`, their
    true classes as captions, and the missed poisons counted by true class.
    """
    flagged, poison_idx, y, classes = run.record.flagged, training["poison_idx"], training["y"], training["classes"]
    groups = {"caught": poison_idx & flagged, "missed": poison_idx & ~flagged}
    rows, captions = {}, {}
    for label, mask in groups.items():
        idx = torch.nonzero(mask).flatten()[:n]
        rows[label] = training["x"][idx]
        captions[label] = [classes[int(c)] for c in y[idx]]
    missed = y[groups["missed"]]
    return rows, captions, {name: int((missed == c).sum()) for c, name in enumerate(classes)}


__all__ = ["detection_rows", "detection_table", "round_rows", "flagged_examples"]
