"""FT: plain fine-tuning of the poisoned model on the defender's small clean subset.

Reference: BackdoorBench (github.com/SCLBD/BackdoorBench), ``defense/ft.py`` with
``config/defense/ft/config.yaml``: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batches of
256, 100 epochs over 5 % of CIFAR-10 (2,500 images: 10 batches an epoch, 1,000 steps), random
crop and flip, and ``CosineAnnealingLR(T_max=100)`` stepped once per epoch. The baseline itself
is Liu, Dolan-Gavitt & Garg's (Fine-Pruning, RAID 2018).

bdlib states the budget in optimisation steps (``steps``): with a clean subset of another size,
the run keeps the reference's number of steps, not its epochs. The cosine is still stepped once
per epoch, over the run's epochs (the reference's T_max equals its epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import fit


@dataclass(frozen=True)
class Params:
    steps: int = 1000  # BackdoorBench config/defense/ft/config.yaml: 100 epochs x 10 batches of 256 (2,500 images)
    batch_size: int = 256  # BackdoorBench config/defense/ft/config.yaml
    lr: float = 0.01  # BackdoorBench config/defense/ft/config.yaml (cosine per epoch, T_max = the epochs)
    # The share of ``steps`` run: the tuning grid's budget knob, relative so that a profile's
    # smaller ``steps`` shrinks every grid point alike (1: the reference's steps).
    budget: float = 1.0
    bn_eval: bool = False  # freeze BatchNorm statistics; BackdoorBench defense/ft.py trains them (model.train())

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "budget"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def epochs_for(steps: int, n: int, batch_size: int) -> int:
    """Whole epochs over ``n`` images in batches of ``batch_size`` nearest to ``steps`` steps (>= 1)."""
    per_epoch = max(1, math.ceil(n / batch_size))
    return max(1, round(steps / per_epoch))


def epoch_cosine(epochs: int):
    """The lr factor of epoch ``e`` (0-based): ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch."""
    return lambda e: 0.5 * (1.0 + math.cos(math.pi * e / epochs))


@dataclass(frozen=True)
class Record:
    epochs: list[dict]  # per epoch: epoch, loss


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """Fine-tune ``model`` in place on the clean subset (the profile's momentum, weight decay and
    augmentation; BackdoorBench's are 0.9, 5e-4, crop and flip, as ``paper``'s).

    The history holds the epoch losses only: no figure plots FT per epoch, and a test-set
    evaluation per epoch would cost more than the fine-tuning itself on the small profiles.
    """
    p: Params = ctx.params
    epochs = epochs_for(round(p.budget * p.steps), len(ctx.x_clean), p.batch_size)
    history = fit(
        model,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        schedule=epoch_cosine(epochs),
        bn_eval=p.bn_eval,
        progress=ctx.progress,
        desc="FT",
        epochs=epochs,
        batch_size=p.batch_size,
        lr=p.lr,
    )
    return Defended(model=model.eval(), record=Record(history))


# Tuning grid (bdlib.study.tune): the number of steps (a quarter of ``steps``, and all of them) x the lr
# (the reference's 0.01, and 0.03; 0.003 barely moved a quick victim: BadNets ASR 88-92 %).
# (1, 0.01) at the default ``steps`` is the reference recipe.
TUNING = {"budget": (0.25, 1.0), "lr": (0.01, 0.03)}

# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "smoke": {
        # Smoke: the reference recipe at a CI-sized budget (steps, not settings, shrink).
        "ft": {"steps": (8, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing")},
    },
    "quick": {
        # The reference recipe (the Params defaults) at a smaller budget, to fit a cold `make figures`
        # on a 2-core CPU (docs/methods.md, "Baselines"); the strength knobs: the comparison
        # protocol's choice (docs/methods.md, "The comparison protocol").
        "ft": {
            "batch_size": (32, "budget", "the reference's 1,000 steps in batches of 32 (reference: 256)"),
            "budget": (
                0.25,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended): python -m bdlib tune ft nad anp ibau "
                "mcldef_detect --profile quick, 2026-12-07 (docs/methods.md, The comparison protocol)",
            ),
            "lr": (
                0.03,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended): python -m bdlib tune ft nad anp ibau "
                "mcldef_detect --profile quick, 2026-12-07 (docs/methods.md, The comparison protocol)",
            ),
        },
    },
}

DEFENSE = Defense(
    "ft",
    Params,
    run,
    uses=("clean",),
    cite="Fine-tuning baseline (Liu, Dolan-Gavitt & Garg, Fine-Pruning, RAID 2018; BackdoorBench defense/ft.py)",
    tuning=TUNING,
    Record=Record,
)
