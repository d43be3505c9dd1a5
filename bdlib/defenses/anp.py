"""ANP: Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Reference: ANP's official code (github.com/csdongxian/ANP_backdoor): ``models/anp_batchnorm.py``
(``NoisyBatchNorm2d``), ``optimize_mask_cifar.py`` and ``prune_neuron_cifar.py``; BackdoorBench's
``defense/anp.py`` and ``config/defense/anp/config.yaml`` run the same recipe.

Every BatchNorm channel gets a mask m ∈ [0, 1] and two perturbations, δ on its weight and ξ on
its bias: the perturbed BN computes γ·(m + δ)·x̂ + β·(1 + ξ), the unperturbed one γ·m·x̂ + β (the
bias is never masked). Each step on a clean batch (BN in train mode, batch statistics): draw
δ, ξ ~ U[−ε, ε], take ``ascent_steps`` signed-gradient ascent steps of ε / ascent_steps on the
loss (no clamp), then one SGD step on the masks of α·L(m) + (1 − α)·L(m, δ, ξ) and clip them to
[0, 1]. Pruning zeroes the BN **weight** of every channel whose mask is at most ``threshold``
(or of the ``n_pruned`` lowest masks). The masks and perturbations enter as the BN layers' affine
parameters for each forward pass (``torch.func.functional_call``), so any model with BatchNorm
works unchanged.

The masks depend on the victim and the optimisation's settings only, not on how the model is
pruned: they are computed once per victim and cached (``ctx.memo``), so a sweep over the
threshold or the number pruned trains nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import augment, generator, to_float

PRUNING = ("threshold", "number")


@dataclass(frozen=True)
class Params:
    eps: float = 0.4  # ANP optimize_mask_cifar.py --anp-eps (recipe.md: eps 0.4 for CIFAR-10)
    alpha: float = 0.2  # ANP optimize_mask_cifar.py --anp-alpha
    ascent_steps: int = 1  # ANP optimize_mask_cifar.py --anp-steps (each step of eps / anp-steps)
    steps: int = 2000  # ANP optimize_mask_cifar.py --nb-iter
    batch_size: int = 128  # ANP optimize_mask_cifar.py --batch-size
    mask_lr: float = 0.2  # ANP optimize_mask_cifar.py --lr
    mask_momentum: float = 0.9  # ANP optimize_mask_cifar.py (SGD momentum of the masks)
    augment: bool = True  # ANP optimize_mask_cifar.py transform_train: random crop and flip (the profile's)
    pruning_by: Literal["threshold", "number"] = "threshold"  # ANP prune_neuron_cifar.py --pruning-by
    threshold: float = 0.2  # prune masks <= this (ANP paper's fixed threshold; prune_neuron_cifar.py uses <=)
    n_pruned: int = 0  # with pruning_by "number": prune this many lowest masks (prune_neuron_cifar.py)

    def validate(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        for name in ("alpha", "threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("ascent_steps", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_pruned < 0:
            raise ValueError(f"n_pruned must be >= 0, got {self.n_pruned}")
        if self.pruning_by not in PRUNING:
            raise ValueError(f"pruning_by {self.pruning_by!r} is unknown; choose one of: {', '.join(PRUNING)}")
        if not self.mask_lr > 0:
            raise ValueError(f"mask_lr must be > 0, got {self.mask_lr}")
        if not 0 <= self.mask_momentum < 1:
            raise ValueError(f"mask_momentum must be in [0, 1), got {self.mask_momentum}")


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every affine BatchNorm of the model with its qualified name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


class Masking:
    """Per-channel masks and weight / bias perturbations on a model's BatchNorm layers.

    Calling it runs the model with each BN's affine parameters replaced for that call
    (``torch.func.functional_call``): weight γ·(m + δ) and bias β·(1 + ξ) when ``perturb`` is on
    (ANP's NoisyBatchNorm2d with noise included), else weight γ·m and bias β. The BN's own forward
    (batch statistics in train mode, its running statistics) runs unchanged; one fused BN kernel
    per layer instead of the BN and a rewrite of its output (``benchmarks/anp_masks.py``). The
    model's own parameters are never changed.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        named = batchnorms(model)
        self.names = [n for n, _ in named]
        self.bns = [bn for _, bn in named]
        ref = [bn.weight for bn in self.bns]
        self.masks = [torch.ones_like(w, requires_grad=True) for w in ref]
        self.d_weight = [torch.zeros_like(w, requires_grad=True) for w in ref]
        self.d_bias = [torch.zeros_like(w, requires_grad=True) for w in ref]
        self.perturb = False

    @property
    def noise(self) -> list[torch.Tensor]:
        return self.d_weight + self.d_bias

    def affine(self) -> dict[str, torch.Tensor]:
        """Each BN's weight (and, perturbed, bias) for this call, by parameter name."""
        out = {}
        for i, (name, bn) in enumerate(zip(self.names, self.bns)):
            pre = f"{name}." if name else ""
            weight, bias = bn.weight.detach(), bn.bias.detach()
            if self.perturb:
                out[pre + "weight"] = weight * (self.masks[i] + self.d_weight[i])
                out[pre + "bias"] = bias * (1 + self.d_bias[i])
            else:
                out[pre + "weight"] = weight * self.masks[i]  # the bias is never masked
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, self.affine(), (x,))


def anp_step(
    masking: Masking,
    mask_opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    p: Params,
    gen: torch.Generator,
) -> torch.Tensor:
    """One ANP step: δ, ξ ~ U[−ε, ε], signed ascent on them, descent on the masks.

    δ is drawn on ``gen``'s device (give one on the model's); returns the loss, detached, on the
    device, so a loop of steps never waits for the host.
    """
    if p.eps > 0:
        with torch.no_grad():
            for d in masking.noise:
                d.copy_((torch.rand(d.shape, generator=gen, device=gen.device) * 2 - 1) * p.eps)
        masking.perturb = True
        for _ in range(p.ascent_steps):
            grads = torch.autograd.grad(F.cross_entropy(masking(x), y), masking.noise)
            with torch.no_grad():
                for d, g in zip(masking.noise, grads):
                    d.add_(g.sign(), alpha=p.eps / p.ascent_steps)
        robust = F.cross_entropy(masking(x), y)
    else:
        robust = torch.zeros((), device=x.device)
    masking.perturb = False
    loss = p.alpha * F.cross_entropy(masking(x), y) + (1 - p.alpha) * robust
    mask_opt.zero_grad(set_to_none=True)
    loss.backward(inputs=masking.masks)
    mask_opt.step()
    with torch.no_grad():
        for m in masking.masks:
            m.clamp_(0, 1)
    return loss.detach()


def optimize_masks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: Params, crop_pad: int, flip: bool, seed: int
) -> tuple[list[str], list[torch.Tensor], list[float]]:
    """Run ANP's mask optimisation on ``(x, y)``; ``model`` itself is never changed.

    A copy runs in train mode (batch statistics, as ANP's mask_train), so the running statistics
    its forward passes update are the copy's. Returns the BN names, their final masks and the
    loss of every step.
    """
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    masking = Masking(model)
    mask_opt = torch.optim.SGD(masking.masks, lr=p.mask_lr, momentum=p.mask_momentum)
    gen = generator(device, seed)
    losses: list[torch.Tensor] = []
    order, start = torch.randperm(len(x), generator=gen, device=device), 0
    for _ in range(p.steps):
        if start >= len(x):
            order, start = torch.randperm(len(x), generator=gen, device=device), 0
        idx = order[start : start + p.batch_size]
        start += p.batch_size
        xb = to_float(x[idx])
        if p.augment:
            xb = augment(xb, crop_pad, flip, gen)
        losses.append(anp_step(masking, mask_opt, xb, y[idx], p, gen))
    # One copy to the host for all steps' losses.
    return masking.names, [m.detach() for m in masking.masks], torch.stack(losses).tolist()


def pruned_channels(masks: dict[str, torch.Tensor], p: Params) -> dict[str, torch.Tensor]:
    """Per BN name, the boolean channels to prune: masks <= ``threshold``, or the ``n_pruned`` lowest."""
    if p.pruning_by == "threshold":
        return {n: m <= p.threshold for n, m in masks.items()}
    flat = torch.cat([m.flatten().cpu() for m in masks.values()])
    cut = torch.zeros(len(flat), dtype=torch.bool)
    cut[torch.argsort(flat, stable=True)[: p.n_pruned]] = True
    out, start = {}, 0
    for n, m in masks.items():
        out[n] = cut[start : start + m.numel()].view_as(m)
        start += m.numel()
    return out


@torch.no_grad()
def prune(model: nn.Module, cut: dict[str, torch.Tensor]) -> int:
    """Zero the BN weight of every channel in ``cut`` (BN name -> boolean per channel), as ANP's
    prune_neuron_cifar.py; the bias stays. In place; returns the count."""
    modules = dict(model.named_modules())
    for name, c in cut.items():
        modules[name].weight[c.to(modules[name].weight.device)] = 0.0
    return int(sum(int(c.sum()) for c in cut.values()))


def mask_spec(p: Params, crop_pad: int, flip: bool) -> dict:
    """What the masks depend on beside the victim: the stage cache's key (not the pruning)."""
    keys = ("eps", "alpha", "ascent_steps", "steps", "batch_size", "mask_lr", "mask_momentum", "augment")
    return {**{k: getattr(p, k) for k in keys}, "crop_pad": crop_pad, "flip": flip}


@dataclass(frozen=True)
class Record:
    masks: dict[str, torch.Tensor]  # per BatchNorm layer, its channels' final masks in [0, 1]
    losses: torch.Tensor  # the loss of every mask-optimisation step
    pruned: int  # channels pruned
    channels: int  # BatchNorm channels in all
    # One row after pruning: step (how many), loss (the last), pruned, BA / ASR / RA.
    history: list[dict]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """Optimise the masks on the clean subset (cached per victim), then prune ``model`` (in place) by them."""
    p: Params = ctx.params
    t = ctx.train

    def stage():
        names, masks, losses = optimize_masks(model, ctx.x_clean, ctx.y_clean, p, t.crop_pad, t.flip, ctx.seed)
        return {**{f"mask.{n}": m for n, m in zip(names, masks)}, "losses": torch.tensor(losses)}, {"names": names}

    found, meta = stage() if ctx.memo is None else ctx.memo("masks", mask_spec(p, t.crop_pad, t.flip), stage)
    by_name = {n: found[f"mask.{n}"].cpu() for n in meta["names"]}
    losses = found["losses"].cpu()
    pruned = prune(model, pruned_channels(by_name, p))
    n_channels = sum(len(m) for m in by_name.values())
    history = [{"step": len(losses), "loss": float(losses[-1]), "pruned": pruned, **ctx.evaluate(model)}]
    return Defended(model=model.eval(), record=Record(by_name, losses, pruned, n_channels, history))


# Tuning grid (bdlib.study.tune): the pruning threshold, from pruning almost nothing (0.05) to most of
# the channels whose masks moved at all (0.9; ANP's prune_neuron_cifar.py sweeps 0 to 0.9 in
# steps of 0.05). The masks are computed once per victim: the sweep trains nothing. 0.2 is the
# reference recipe.
TUNING = {"threshold": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}

# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "smoke": {
        # Smoke: the reference recipe at a CI-sized budget (steps, not settings, shrink).
        "anp": {"steps": (15, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing")},
    },
    "quick": {
        # The reference recipe (the Params defaults) at a smaller budget, to fit a cold `make figures`
        # on a 2-core CPU (docs/methods.md, "Baselines"); the strength knobs: the comparison
        # protocol's choice (docs/methods.md, "The comparison protocol").
        "anp": {
            # The masks are computed once per victim (cached), whatever the threshold.
            "steps": (300, "budget", "300 mask steps (reference: 2,000)"),
            # A knife-edge choice: 0.3 at two threads, 0.2 at one thread with the BN-output hooks,
            # 0.3 again with the masks as BN parameters; the same algorithm, other rounding
            # (docs/methods.md, The comparison protocol).
            "threshold": (
                0.3,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended), one thread per result: "
                "notebook 06 cold at commit b094f49, 2026-12-07 (docs/methods.md, The comparison protocol)",
            ),
        },
    },
}

DEFENSE = Defense(
    "anp",
    Params,
    run,
    uses=("clean",),
    cite="Wu & Wang, Adversarial Neuron Pruning Purifies Backdoored Deep Models, NeurIPS 2021",
    tuning=TUNING,
    Record=Record,
)
