"""What the defenses' unit tests share: a tiny SmallCNN and a smoke-profile DefenseContext."""

from __future__ import annotations

import torch

from bdlib.defenses.base import DefenseContext
from bdlib.models import SmallCNN
from bdlib.profiles import resolve

FAKE_METRICS = {"BA": 1.0, "ASR": 2.0, "RA": 3.0}


def tiny_cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(in_channels=1, num_classes=10, width=4)


def context(params, x: torch.Tensor, y: torch.Tensor, calls: list | None = None, memo=None) -> DefenseContext:
    """``x, y`` as both the training set and the clean subset; each ``ctx.evaluate`` call appends
    to ``calls`` (where given) and returns :data:`FAKE_METRICS`."""
    return DefenseContext(
        params=params,
        train=resolve("smoke", overrides={"train.batch_size": 10}).train,
        x_train=x,
        y_train=y,
        x_clean=x,
        y_clean=y,
        num_classes=10,
        seed=0,
        new_model=tiny_cnn,
        evaluate=lambda m: (calls.append(1) if calls is not None else None) or dict(FAKE_METRICS),
        memo=memo,
    )
