"""WaNet (Nguyen, Tran 2021, "WaNet – Imperceptible Warping-based Backdoor Attack", ICLR 2021,
arXiv 2102.10369).

The trigger is a smooth, fixed warp of the image: random offsets on a k×k control grid,
upsampled bicubically to a dense sampling field, applied with ``grid_sample``. Poisoned
samples are warped and relabelled to the target; "noise-mode" samples get the warp plus a
random per-sample perturbation and keep their labels, so the network learns the exact warp
rather than any warp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bdlib.attacks.base import Attack, Poisoned, Trigger, TriggerContext, check_rate, choose, poison_count


@dataclass(frozen=True)
class Params:
    poison_rate: float = 0.10  # of the training set (docs/methods.md; WaNet's p_a = 0.1)
    k: int = 4  # control grid size (WaNet, docs/methods.md)
    strength: float = 0.5  # s, warp strength (WaNet, docs/methods.md)
    cross_ratio: float = 2.0  # noise-mode samples per poisoned sample (WaNet's cross_ratio, docs/methods.md)
    grid_seed: int = 0  # the warp is fixed: one trigger for every run seed, as Blended's noise
    rate_of: Literal["train"] = "train"

    def validate(self) -> None:
        check_rate(self.poison_rate)
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (a control grid), got {self.k}")
        if self.strength <= 0:
            raise ValueError(f"strength must be > 0, got {self.strength}")
        if self.cross_ratio < 0:
            raise ValueError(f"cross_ratio must be >= 0, got {self.cross_ratio}")


def make_trigger(ctx: TriggerContext) -> Trigger:
    p: Params = ctx.params
    _, h, w = ctx.shape
    gen = torch.Generator().manual_seed(p.grid_seed)
    offsets = torch.rand(1, 2, p.k, p.k, generator=gen) * 2 - 1
    offsets = offsets / offsets.abs().mean()
    field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
    # grid_sample's last axis is (x, y): scale each by its own image extent.
    field = field * p.strength / torch.tensor([w, h], dtype=torch.float32)
    return {"grid": (identity_grid(h, w) + field).clamp(-1, 1)}


def identity_grid(h: int, w: int) -> torch.Tensor:
    """The H×W×2 sampling grid (x, y in [-1, 1]) that ``grid_sample`` maps to the image itself."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack((xs, ys), dim=-1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample a uint8 batch along ``grid`` (H×W×2, or N×H×W×2 for one grid per image)."""
    grid = grid.to(x.device)
    if grid.dim() == 3:
        grid = grid.expand(len(x), *grid.shape)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def apply(x: torch.Tensor, trigger: Trigger, params: Params, test: bool) -> torch.Tensor:
    return warp(x, trigger["grid"])


def poison(
    attack: Attack, x: torch.Tensor, y: torch.Tensor, params: Params, trigger: Trigger, target: int, seed: int
) -> Poisoned:
    """Warp and relabel a seeded choice of non-target samples; warp ``cross_ratio`` times as many
    other samples with an extra random perturbation of the grid, keeping their labels."""
    n = poison_count(params, y, target)
    idx = choose(torch.nonzero(y != target).flatten(), n, seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[idx] = True
    rest = torch.nonzero(~mask).flatten()
    n_noise = min(int(round(params.cross_ratio * n)), len(rest))
    # A different seed stream from the poison choice, so the two index sets are independent.
    noise_idx = choose(rest, n_noise, seed + 1)
    noise_mask = torch.zeros(len(y), dtype=torch.bool)
    noise_mask[noise_idx] = True

    h, w = x.shape[-2:]
    gen = torch.Generator().manual_seed(seed + 2)
    # WaNet's noise: uniform in ±1/size per sampling point and axis (about half a pixel).
    jitter = (torch.rand(n_noise, h, w, 2, generator=gen) * 2 - 1) / torch.tensor([w, h], dtype=torch.float32)
    xp, yp = x.clone(), y.clone()
    if n:
        xp[idx] = attack.apply(x[idx], trigger, params, False)
        yp[idx] = target
    if n_noise:
        xp[noise_idx] = warp(x[noise_idx], (trigger["grid"] + jitter).clamp(-1, 1))
    return Poisoned(xp, yp, mask, extra={"noise_idx": noise_mask})


# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "quick": {
        # WaNet at s = 0.5, 10% (+ 2x noise mode) costs ~3 BA points on the 28x28 SmallCNN
        # (ASR ~90); a stronger warp at half the rate keeps BA within 2 (seeds 0-2: ΔBA -1.6, ASR 90).
        "wanet": {
            "strength": (
                1.0,
                "setting",
                "WaNet at s = 0.5 costs ~3 BA points on 28x28 images; a stronger warp at half the rate keeps BA",
            ),
            "poison_rate": (0.05, "setting", "WaNet's stronger warp at half the rate (see strength)"),
        },
    },
}

ATTACK = Attack(
    "wanet",
    Params,
    clean_label=False,
    make_trigger=make_trigger,
    apply=apply,
    cite="Nguyen & Tran, WaNet, arXiv 2102.10369 (ICLR 2021)",
    poison=poison,
)
