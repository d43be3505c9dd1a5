"""What every defense shares: its context (what the defender is given) and its result.

A defense is one function ``run(model, ctx) -> Defended``. ``ctx`` holds exactly what the
threat model grants it (the poisoned training set, the small clean subset) and the standard
training settings; never the run's Config, so neither the target class nor the attack's
parameters are within reach. The test set and trigger are only reachable through
``ctx.evaluate``, which a defense calls to *record* per-epoch metrics for the notebooks, never
to make a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from bdlib.config import TrainConfig


@dataclass(frozen=True)
class DefenseContext:
    params: Any  # the defense's Params
    train: TrainConfig  # the profile's standard training (epochs, batch sizes, optimiser)
    x_train: torch.Tensor  # the poisoned training set (uint8) as the victim trained on it
    y_train: torch.Tensor
    x_clean: torch.Tensor  # the defender's clean subset (uint8)
    y_clean: torch.Tensor
    num_classes: int
    seed: int
    new_model: Callable[[int], nn.Module]  # a freshly initialised model of the run's architecture, by seed
    evaluate: Callable[[nn.Module], dict[str, float]]  # BA / ASR / RA for the record only
    # memo(name, spec, compute) caches an intermediate stage in the store, keyed by the victim,
    # ``name`` and ``spec``: compute() -> ({role: model or tensor}, json_meta); returns the same,
    # loaded (tensors on the CPU).
    memo: (
        Callable[[str, dict, Callable[[], tuple[dict[str, nn.Module], dict]]], tuple[dict[str, nn.Module], dict]] | None
    ) = None
    progress: bool = False


@dataclass
class Defended:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # per epoch / round records (JSON-ready)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # flagged samples, masks, triggers
    info: dict[str, Any] = field(default_factory=dict)  # JSON-ready facts (detected target, ...)


@dataclass(frozen=True)
class Defense:
    name: str
    Params: type
    run: Callable[[nn.Module, DefenseContext], Defended]
    uses: tuple[Literal["train", "clean"], ...]  # which data the defender is given
    cite: str
    # The comparison protocol's grid (bdlib.tune): Params field -> the values tried, spanning
    # "does nothing" to "too strong"; every combination is one setting.
    tuning: Mapping[str, tuple] = field(default_factory=dict)
