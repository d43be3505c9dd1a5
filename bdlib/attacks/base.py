"""What every attack shares: the Attack record, trigger context, and standard poisoning.

An attack is a pure function of (images, labels, params, seed). Its expensive part, the
trigger (an optimised patch, a synthesised perturbation), is computed once by
``make_trigger`` and returned as a dict of tensors so the store can keep it; ``apply``
stamps that trigger on a whole uint8 batch at once, on whatever device the batch is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

Trigger = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TriggerContext:
    """What an attack may use to build its trigger."""

    params: Any
    target: int
    seed: int
    shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    x_train: torch.Tensor  # the (unpoisoned) training images the attacker poisons, uint8
    y_train: torch.Tensor
    # Attacker-held data disjoint from x_train (Narcissus' surrogate data), uint8.
    x_aux: torch.Tensor | None = None
    y_aux: torch.Tensor | None = None
    # Returns a model trained on clean data (cached by the caller); Trojan optimises against it.
    clean_model: Callable[[], nn.Module] | None = None
    # Builds and trains a fresh model with the profile's standard training: (x, y, seed, **changes) -> model.
    train_model: Callable[..., nn.Module] | None = None
    device: torch.device = torch.device("cpu")


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set: images, labels, and which samples carry the trigger."""

    x: torch.Tensor  # uint8, N×C×H×W
    y: torch.Tensor  # int64
    poison_idx: torch.Tensor  # bool, N: samples stamped with the trigger
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. WaNet's noise-mode index


@dataclass(frozen=True)
class Attack:
    name: str
    Params: type
    clean_label: bool  # clean-label attacks stamp target-class images and never change a label
    make_trigger: Callable[[TriggerContext], Trigger]
    apply: Callable[[torch.Tensor, Trigger, Any, bool], torch.Tensor]  # (x, trigger, params, test) -> x
    cite: str
    # Poisoning of the training set; most attacks use :func:`poison_standard`.
    poison: Callable[[Attack, torch.Tensor, torch.Tensor, Any, Trigger, int, int], Poisoned] | None = None
    needs_clean_model: bool = False

    def poison_dataset(
        self, x: torch.Tensor, y: torch.Tensor, params: Any, trigger: Trigger, target: int, seed: int
    ) -> Poisoned:
        fn = self.poison or poison_standard
        return fn(self, x, y, params, trigger, target, seed)

    def test_transform(self, trigger: Trigger, params: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """The test-time trigger as a function of a uint8 batch."""
        return lambda x: self.apply(x, trigger, params, True)


def poison_count(params: Any, y: torch.Tensor, target: int) -> int:
    """How many samples to poison: ``poison_rate`` of the training set or of the target class."""
    base = len(y) if getattr(params, "rate_of", "train") == "train" else int((y == target).sum())
    return int(round(params.poison_rate * base))


def choose(pool: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices drawn without replacement from ``pool``, deterministic by seed."""
    if n > len(pool):
        raise ValueError(f"cannot poison {n} samples: only {len(pool)} are eligible")
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=gen)[:n]].sort().values


def poison_standard(
    attack: Attack, x: torch.Tensor, y: torch.Tensor, params: Any, trigger: Trigger, target: int, seed: int
) -> Poisoned:
    """Stamp the trigger on a seeded random choice of samples; dirty-label attacks relabel them.

    Dirty-label attacks choose among non-target-class samples (so every poisoned label really
    changes); clean-label attacks choose among target-class samples and keep every label.
    """
    n = poison_count(params, y, target)
    pool = torch.nonzero(y == target if attack.clean_label else y != target).flatten()
    idx = choose(pool, n, seed)
    xp, yp = x.clone(), y.clone()
    if n:
        xp[idx] = attack.apply(x[idx], trigger, params, False)
    if not attack.clean_label:
        yp[idx] = target
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[idx] = True
    return Poisoned(xp, yp, mask)


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(1 − α)·x + α·pattern on uint8 images; pattern in [0, 1], α broadcast over the batch."""
    pattern, alpha = pattern.to(x.device), alpha.to(x.device)
    out = (1.0 - alpha) * x.float() + alpha * (pattern * 255.0)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def add(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + δ on uint8 images, δ in [−1, 1] pixel units of the [0, 1] scale, clipped."""
    out = x.float() + delta.to(x.device) * 255.0
    return out.round_().clamp_(0, 255).to(torch.uint8)


def check_rate(rate: float, name: str = "poison_rate") -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate}")


RateOf = Literal["train", "target_class"]
