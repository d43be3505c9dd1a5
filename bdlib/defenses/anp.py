"""ANP: Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Backdoor neurons are the ones whose small perturbation most easily flips the model. ANP puts
a mask m ∈ [0, 1] on every BatchNorm channel and, on the clean subset, minimises
α·L(m) + (1−α)·L(m, δ) where δ are worst-case multiplicative perturbations (within ε) of the
BN weights and biases found by a signed-gradient ascent step; channels whose mask falls below
a threshold are pruned. The masks and perturbations act through forward hooks on the
``nn.BatchNorm2d`` modules, so any model with BatchNorm works unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import augment, generator, to_float


@dataclass(frozen=True)
class Params:
    eps: float = 0.4  # bound on the relative BN weight / bias perturbation (ANP paper, CIFAR-10)
    alpha: float = 0.2  # weight of the natural loss; 1 − α on the perturbed loss (ANP paper)
    ascent_steps: int = 1  # signed-gradient steps on δ per mask step, each of size ε / ascent_steps (ANP's code)
    steps: int = 2000  # mask optimisation steps (ANP paper)
    batch_size: int = 128  # clean images per step (ANP's code)
    mask_lr: float = 0.2  # SGD lr of the masks (ANP's code)
    mask_momentum: float = 0.9  # SGD momentum of the masks (ANP's code)
    threshold: float = 0.2  # prune channels whose mask ends below this (ANP paper)
    augment: bool = False  # crop / flip the clean batches as the profile's training does (choice: ANP's code does)

    def validate(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        for name in ("alpha", "threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("ascent_steps", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.mask_lr > 0:
            raise ValueError(f"mask_lr must be > 0, got {self.mask_lr}")
        if not 0 <= self.mask_momentum < 1:
            raise ValueError(f"mask_momentum must be in [0, 1), got {self.mask_momentum}")


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every affine BatchNorm of the model with its qualified name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


class Masking:
    """Per-channel masks and weight / bias perturbations on a list of BN modules.

    The hook rewrites a BN output y = x̂·γ + β as m·((y − β)·(1 + δ_γ) + β·(1 + δ_β)),
    which is the BN with γ·(1 + δ_γ) and β·(1 + δ_β), masked; with ``perturb`` off, m·y.
    """

    def __init__(self, bns: list[nn.Module]):
        self.bns = bns
        ref = [bn.weight for bn in bns]
        self.masks = [torch.ones_like(w, requires_grad=True) for w in ref]
        self.d_weight = [torch.zeros_like(w, requires_grad=True) for w in ref]
        self.d_bias = [torch.zeros_like(w, requires_grad=True) for w in ref]
        self.perturb = False

    @property
    def noise(self) -> list[torch.Tensor]:
        return self.d_weight + self.d_bias

    def _hook(self, i: int):
        def rewrite(bn: nn.Module, inputs, y: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            m = self.masks[i].view(shape)
            if not self.perturb:
                return m * y
            b = bn.bias.view(shape)
            return m * ((y - b) * (1 + self.d_weight[i].view(shape)) + b * (1 + self.d_bias[i].view(shape)))

        return rewrite

    @contextmanager
    def attached(self) -> Iterator[Masking]:
        handles = [bn.register_forward_hook(self._hook(i)) for i, bn in enumerate(self.bns)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def anp_step(
    model: nn.Module,
    masking: Masking,
    mask_opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    p: Params,
    gen: torch.Generator,
) -> torch.Tensor:
    """One ANP step (hooks attached): random δ in [−ε, ε], signed ascent on δ, descent on the masks.

    δ is drawn on ``gen``'s device (give one on the model's); returns the loss, detached, on the
    device, so a loop of steps never waits for the host.
    """
    if p.eps > 0:
        with torch.no_grad():
            for d in masking.noise:
                d.copy_((torch.rand(d.shape, generator=gen, device=gen.device) * 2 - 1) * p.eps)
        masking.perturb = True
        for _ in range(p.ascent_steps):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), masking.noise)
            with torch.no_grad():
                for d, g in zip(masking.noise, grads):
                    d.add_(g.sign(), alpha=p.eps / p.ascent_steps).clamp_(-p.eps, p.eps)
        robust = F.cross_entropy(model(x), y)
    else:
        robust = torch.zeros((), device=x.device)
    masking.perturb = False
    loss = p.alpha * F.cross_entropy(model(x), y) + (1 - p.alpha) * robust
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
    """Run ANP's mask optimisation on ``(x, y)``; the model's own weights are never changed.

    The model runs in eval mode (BN running statistics fixed, as the pruned model will use them).
    Returns the BN names, their final masks and the loss of every step.
    """
    model.eval()
    named = batchnorms(model)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    masking = Masking([bn for _, bn in named])
    mask_opt = torch.optim.SGD(masking.masks, lr=p.mask_lr, momentum=p.mask_momentum)
    gen = generator(device, seed)
    losses: list[torch.Tensor] = []
    order, start = torch.randperm(len(x), generator=gen, device=device), 0
    with masking.attached():
        for _ in range(p.steps):
            if start >= len(x):
                order, start = torch.randperm(len(x), generator=gen, device=device), 0
            idx = order[start : start + p.batch_size]
            start += p.batch_size
            xb = to_float(x[idx])
            if p.augment:
                xb = augment(xb, crop_pad, flip, gen)
            losses.append(anp_step(model, masking, mask_opt, xb, y[idx], p, gen))
    # One copy to the host for all steps' losses.
    return [n for n, _ in named], [m.detach() for m in masking.masks], torch.stack(losses).tolist()


@torch.no_grad()
def prune_by_mask(model: nn.Module, masks: dict[str, torch.Tensor], threshold: float) -> int:
    """Zero BN weight and bias of every channel whose mask is below ``threshold``; return the count.

    ``masks`` maps a BN module's qualified name to its per-channel mask. In place.
    """
    modules = dict(model.named_modules())
    pruned = 0
    for name, m in masks.items():
        cut = m.to(modules[name].weight.device) < threshold
        modules[name].weight[cut] = 0.0
        modules[name].bias[cut] = 0.0
        pruned += int(cut.sum())
    return pruned


@dataclass(frozen=True)
class Record:
    masks: dict[str, torch.Tensor]  # per BatchNorm layer, its channels' final masks in [0, 1]
    losses: torch.Tensor  # the loss of every mask-optimisation step
    pruned: int  # channels pruned (mask below the threshold)
    channels: int  # BatchNorm channels in all
    # One row after pruning: step (how many), loss (the last), pruned, BA / ASR / RA.
    history: list[dict]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """Optimise the masks on the clean subset, then prune ``model`` (in place) by them."""
    p: Params = ctx.params
    t = ctx.train
    names, masks, losses = optimize_masks(model, ctx.x_clean, ctx.y_clean, p, t.crop_pad, t.flip, ctx.seed)
    by_name = dict(zip(names, masks))
    pruned = prune_by_mask(model, by_name, p.threshold)
    n_channels = sum(len(m) for m in masks)
    history = [{"step": len(losses), "loss": losses[-1], "pruned": pruned, **ctx.evaluate(model)}]
    return Defended(model=model.eval(), record=Record(by_name, torch.tensor(losses), pruned, n_channels, history))


# Tuning grid (bdlib.tune): the perturbation bound ε, ANP's strength knob: at a small ε no mask
# has to drop to stay robust and nothing is pruned; at the paper's 0.4 a small CNN loses many
# of its BN channels.
TUNING = {"eps": (0.05, 0.1, 0.2, 0.3, 0.4)}

DEFENSE = Defense(
    "anp",
    Params,
    run,
    uses=("clean",),
    cite="Wu & Wang, Adversarial Neuron Pruning Purifies Backdoored Deep Models, NeurIPS 2021",
    tuning=TUNING,
    Record=Record,
)
