"""BadNets (Gu, Dolan-Gavitt, Garg 2017, arXiv 1708.06733).

A small patch (white, or a black/white checkerboard) stamped at the bottom-right corner of a
fraction of the training images, whose labels are flipped to the target class. The same
patch at test time sends any image to the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bdlib.attacks.base import Attack, Trigger, TriggerContext, blend, check_rate


@dataclass(frozen=True)
class Params:
    poison_rate: float = 0.10  # of the training set (BadNets, as in NT-ML's and NONE's setups)
    patch_size: int = 3  # 3×3 (docs/methods.md)
    margin: int = 1  # pixels between the patch and the image border
    pattern: Literal["white", "checkerboard"] = "white"
    rate_of: Literal["train"] = "train"

    def validate(self) -> None:
        check_rate(self.poison_rate)
        if self.patch_size < 1 or self.margin < 0:
            raise ValueError(f"patch_size must be >= 1 and margin >= 0, got {self.patch_size}, {self.margin}")


def make_trigger(ctx: TriggerContext) -> Trigger:
    p: Params = ctx.params
    c, h, w = ctx.shape
    if p.patch_size + p.margin > min(h, w):
        raise ValueError(f"a {p.patch_size}px patch with margin {p.margin} does not fit a {h}×{w} image")
    mask = torch.zeros(1, h, w)
    pattern = torch.zeros(c, h, w)
    r0, c0 = h - p.margin - p.patch_size, w - p.margin - p.patch_size
    mask[:, r0 : r0 + p.patch_size, c0 : c0 + p.patch_size] = 1.0
    patch = torch.ones(p.patch_size, p.patch_size)
    if p.pattern == "checkerboard":
        ij = torch.arange(p.patch_size)
        patch = ((ij[:, None] + ij[None, :]) % 2 == 0).float()
    pattern[:, r0 : r0 + p.patch_size, c0 : c0 + p.patch_size] = patch
    return {"mask": mask, "pattern": pattern}


def apply(x: torch.Tensor, trigger: Trigger, params: Params, test: bool) -> torch.Tensor:
    return blend(x, trigger["pattern"], trigger["mask"])


ATTACK = Attack(
    "badnets",
    Params,
    clean_label=False,
    make_trigger=make_trigger,
    apply=apply,
    cite="Gu et al., BadNets, arXiv 1708.06733 (2017)",
)
