"""Blended (Chen, Liu, Li, Lu, Song 2017, arXiv 1712.05526).

Poisoned images are alpha-blended with one fixed noise image, (1 − α)·x + α·noise, and
relabelled to the target; α is the same at training and test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bdlib.attacks.base import Attack, Trigger, TriggerContext, blend, check_rate


@dataclass(frozen=True)
class Params:
    poison_rate: float = 0.10  # of the training set
    alpha: float = 0.2  # blend ratio, train and test (docs/methods.md)
    noise_seed: int = 0  # the noise image is fixed: one trigger for every run seed
    rate_of: Literal["train"] = "train"

    def validate(self) -> None:
        check_rate(self.poison_rate)
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")


def make_trigger(ctx: TriggerContext) -> Trigger:
    gen = torch.Generator().manual_seed(ctx.params.noise_seed)
    return {"pattern": torch.rand(ctx.shape, generator=gen)}


def apply(x: torch.Tensor, trigger: Trigger, params: Params, test: bool) -> torch.Tensor:
    return blend(x, trigger["pattern"], torch.tensor(params.alpha))


ATTACK = Attack(
    "blended",
    Params,
    clean_label=False,
    make_trigger=make_trigger,
    apply=apply,
    cite="Chen et al., Targeted Backdoor Attacks ... Data Poisoning, arXiv 1712.05526 (2017)",
)
