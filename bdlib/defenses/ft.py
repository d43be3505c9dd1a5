"""FT: plain fine-tuning of the poisoned model on the defender's small clean subset.

The simplest baseline (as used by Liu et al., "Fine-Pruning", RAID 2018, and in every later
comparison): a few epochs of standard training at a low learning rate, hoping that the clean
data overwrites the trigger's shortcut before it costs clean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import fit


@dataclass(frozen=True)
class Params:
    epochs: int = 10  # "~10 epochs" (docs/methods.md, NAD's fine-tuning baseline)
    lr: float = 0.01  # "low lr" (docs/methods.md); cosine-annealed by the shared loop
    bn_eval: bool = False  # freeze BatchNorm statistics; standard fine-tuning trains them (choice)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Record:
    epochs: list[dict]  # per epoch: epoch, loss


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """Fine-tune ``model`` in place on the clean subset with the profile's optimiser.

    The history holds the epoch losses only: no figure plots FT per epoch, and a test-set
    evaluation per epoch would cost more than the fine-tuning itself on the small profiles.
    """
    p: Params = ctx.params
    history = fit(
        model,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        bn_eval=p.bn_eval,
        progress=ctx.progress,
        desc="FT",
        epochs=p.epochs,
        lr=p.lr,
    )
    return Defended(model=model.eval(), record=Record(history))


# Tuning grid (bdlib.tune): the fine-tuning lr, from barely moving M0 (0.001) to the victim's own
# training lr (0.05) and above, where 400 clean images start to overwrite what 8k taught.
TUNING = {"lr": (0.001, 0.003, 0.01, 0.03, 0.1)}

DEFENSE = Defense(
    "ft",
    Params,
    run,
    uses=("clean",),
    cite="Fine-tuning baseline (Liu, Dolan-Gavitt & Garg, Fine-Pruning, RAID 2018)",
    tuning=TUNING,
    Record=Record,
)
