"""Trojan attack (Liu et al. 2018, "Trojaning Attack on Neural Networks", NDSS 2018; TrojanNN).

A square patch at the bottom-right corner whose pixels are optimised on a clean model so that
the penultimate-layer unit(s) with the largest outgoing weights fire strongly; such units
already drive the output, so a little poisoning ties them to the target. Poisoned samples
carry the patch and are relabelled to the target (dirty-label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bdlib.attacks.base import Attack, Trigger, TriggerContext, blend, check_rate, choose
from bdlib.train import to_float


@dataclass(frozen=True)
class Params:
    poison_rate: float = 0.10  # of the training set (docs/methods.md)
    patch_size: int = 5  # side of the square patch in pixels (choice: ~3% of a 28×28 image)
    margin: int = 1  # pixels between the patch and the image border, as BadNets
    n_units: int = 1  # penultimate units whose activation is maximised (TrojanNN selects one)
    steps: int = 300  # Adam steps on the patch pixels (choice)
    lr: float = 0.05  # Adam learning rate on [0, 1] pixels (choice)
    n_background: int = 256  # training images the patch is optimised on, stamped (choice)
    rate_of: Literal["train"] = "train"

    def validate(self) -> None:
        check_rate(self.poison_rate)
        if self.patch_size < 1 or self.margin < 0:
            raise ValueError(f"patch_size must be >= 1 and margin >= 0, got {self.patch_size}, {self.margin}")
        for name in ("n_units", "steps", "n_background"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def patch_mask(shape: tuple[int, int, int], size: int, margin: int) -> torch.Tensor:
    """1×H×W mask of the bottom-right ``size``-pixel square, ``margin`` pixels from the border."""
    _, h, w = shape
    if size + margin > min(h, w):
        raise ValueError(f"a {size}px patch with margin {margin} does not fit a {h}×{w} image")
    mask = torch.zeros(1, h, w)
    mask[:, h - margin - size : h - margin, w - margin - size : w - margin] = 1.0
    return mask


def make_trigger(ctx: TriggerContext) -> Trigger:
    p: Params = ctx.params
    if ctx.clean_model is None:
        raise ValueError("the trojan attack needs a clean model to optimise its patch against")
    model = ctx.clean_model()
    model.eval()
    device = next(model.parameters()).device
    # TrojanNN's unit choice: the units that matter most to the output, by total |outgoing weight|.
    units = model.fc.weight.detach().abs().sum(0).topk(p.n_units).indices

    mask = patch_mask(ctx.shape, p.patch_size, p.margin).to(device)
    gen = torch.Generator().manual_seed(ctx.seed)
    bg = ctx.x_train[choose(torch.arange(len(ctx.x_train)), min(p.n_background, len(ctx.x_train)), ctx.seed)]
    bg = to_float(bg.to(device))
    pattern = torch.rand(ctx.shape, generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([pattern], lr=p.lr)
    for _ in range(p.steps):
        stamped = (1 - mask) * bg + mask * pattern
        loss = -model.features(stamped)[:, units].mean()
        # Gradient w.r.t. the patch only: the clean model is shared and stays untouched.
        (pattern.grad,) = torch.autograd.grad(loss, [pattern])
        opt.step()
        with torch.no_grad():
            pattern.clamp_(0, 1)
    return {"mask": mask.cpu(), "pattern": (pattern.detach() * mask).cpu(), "units": units.cpu()}


def apply(x: torch.Tensor, trigger: Trigger, params: Params, test: bool) -> torch.Tensor:
    return blend(x, trigger["pattern"], trigger["mask"])


# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "smoke": {
        # Seconds per trigger: tiny budgets; attacks need not succeed at 2 epochs on 2k images.
        "trojan": {
            "steps": (30, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
            "n_background": (
                64,
                "ci",
                "CI-sized: every notebook's code path in about two minutes; results mean nothing",
            ),
        },
    },
}

ATTACK = Attack(
    "trojan",
    Params,
    clean_label=False,
    make_trigger=make_trigger,
    apply=apply,
    cite="Liu et al., Trojaning Attack on Neural Networks, NDSS 2018",
    needs_clean_model=True,
)
