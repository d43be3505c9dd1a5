"""BA, ASR, RA, DER and poison-detection precision / recall, all as in docs/methods.md.

BA is clean accuracy on every test image. ASR and RA are measured on the triggered test
images whose true class is not the target: ASR counts those predicted as the target, RA
those predicted as their true class. All in percent, except DER, which is in [0, 1].
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of predictions equal to the labels (BA when given the clean test set)."""
    _same_length(pred, y)
    return 100.0 * (pred == y).float().mean().item()


def attack_success_rate(pred: torch.Tensor, y: torch.Tensor, target: int) -> float:
    """Percent of triggered non-target-class images predicted as ``target``."""
    keep = _non_target(pred, y, target)
    return 100.0 * (pred[keep] == target).float().mean().item()


def robust_accuracy(pred: torch.Tensor, y: torch.Tensor, target: int) -> float:
    """Percent of triggered non-target-class images still predicted as their true class."""
    keep = _non_target(pred, y, target)
    return 100.0 * (pred[keep] == y[keep]).float().mean().item()


def der(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Defense effectiveness rating from BA / ASR in percent, before and after the defense.

    DER = (max(0, ΔASR) − max(0, ΔBA) + 1) / 2 with Δ = before − after on the [0, 1] scale.
    """
    d_asr = max(0.0, before["ASR"] - after["ASR"]) / 100.0
    d_ba = max(0.0, before["BA"] - after["BA"]) / 100.0
    return (d_asr - d_ba + 1.0) / 2.0


def detection(flagged: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    """Precision and recall (percent) of flagged training samples against the true poison index.

    Precision is 0 when nothing is flagged; recall is 0 when nothing was poisoned.
    """
    flagged, poisoned = flagged.bool(), poisoned.bool()
    _same_length(flagged, poisoned)
    hits = (flagged & poisoned).sum().item()
    n_flag, n_true = flagged.sum().item(), poisoned.sum().item()
    return {
        "precision": 100.0 * hits / n_flag if n_flag else 0.0,
        "recall": 100.0 * hits / n_true if n_true else 0.0,
        "flagged": int(n_flag),
    }


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: int,
    trigger: Callable[[torch.Tensor], torch.Tensor] | None,
    batch_size: int = 256,
) -> dict[str, float]:
    """BA on ``(x, y)``; with a trigger also ASR and RA on the triggered non-target images."""
    from bdlib.train import predict

    out = {"BA": accuracy(predict(model, x, batch_size), y)}
    if trigger is not None:
        keep = y != target
        pred = predict(model, x[keep], batch_size, transform=trigger)
        out["ASR"] = attack_success_rate(pred, y[keep], target)
        out["RA"] = robust_accuracy(pred, y[keep], target)
    return out


def mean_std(
    records: Iterable[Mapping[str, float]], keys: Iterable[str] = ("BA", "ASR", "RA")
) -> dict[str, tuple[float, float]]:
    """Mean and (sample) standard deviation of each key over records, e.g. over seeds."""
    records = list(records)
    out = {}
    for k in keys:
        vals = torch.tensor([float(r[k]) for r in records if k in r], dtype=torch.float64)
        if len(vals):
            std = vals.std().item() if len(vals) > 1 else 0.0
            out[k] = (vals.mean().item(), std)
    return out


def _non_target(pred: torch.Tensor, y: torch.Tensor, target: int) -> torch.Tensor:
    _same_length(pred, y)
    keep = y != target
    if not keep.any():
        raise ValueError(f"no test image has a true class other than the target {target}")
    return keep


def _same_length(a: torch.Tensor, b: torch.Tensor) -> None:
    if len(a) != len(b):
        raise ValueError(f"predictions and labels differ in length: {len(a)} vs {len(b)}")
