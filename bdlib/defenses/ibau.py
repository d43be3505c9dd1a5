"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng, Chen, Park, Mao, Jin, Jia, ICLR 2022).

Unlearning as a minimax problem on the small clean subset: min_θ max_{‖δ‖₂≤ε} L(f_θ(x + δ), y)
with one universal perturbation δ standing in for the unknown trigger. Each round the inner
step finds δ by a few projected gradient-ascent steps; the outer step updates θ with the
implicit hypergradient of L(f_θ(x + δ*(θ)), y), which also accounts for how δ* moves with θ.

The hypergradient treats δ* as a fixed point of one inner ascent step Φ(δ) = δ + η·∇_δ L and
uses the implicit function theorem, dδ*/dθ = (I − ∂Φ/∂δ)⁻¹ ∂Φ/∂θ; the inverse is
approximated by a truncated Neumann series, v = Σ_{k≤K} (∂Φ/∂δᵀ)^k ∂L/∂δ, computed with K
vector-Jacobian products (the fixed-point method of I-BAU's code). The L2 projection is left
out of Φ, as in I-BAU, so the answer is exact only for an interior stationary δ*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import generator, to_float


@dataclass(frozen=True)
class Params:
    rounds: int = 5  # minimax rounds (I-BAU paper: a few; its code's default 5)
    eps: float = 3.0  # L2 radius of δ in [0, 1] pixel space (choice: I-BAU's 10 on normalised CIFAR is ~2.5 in pixels; a 3×3 white patch is 3)
    inner_steps: int = 5  # projected ascent steps on δ per round, each on the next clean batch (choice, "a few")
    inner_step_size: float = 1.0  # L2 length of each normalised ascent step on δ (choice)
    fp_lr: float = 0.1  # η of the fixed-point map Φ(δ) = δ + η·∇_δ L behind the hypergradient (choice)
    fp_iters: int = 5  # Neumann terms K of the inverse-Hessian approximation (I-BAU's code: K = 5)
    lr: float = 1e-3  # Adam lr of the outer (model) update (I-BAU paper)
    batch_size: int = 100  # clean images per step (I-BAU's code)

    def validate(self) -> None:
        for name in ("rounds", "inner_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fp_iters < 0:
            raise ValueError(f"fp_iters must be >= 0, got {self.fp_iters}")
        for name in ("eps", "inner_step_size", "fp_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """δ scaled back onto the L2 ball of radius ``eps`` when it lies outside."""
    return delta * (eps / delta.norm().clamp_min(eps))


def universal_perturbation(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], eps: float, step_size: float
) -> torch.Tensor:
    """Inner maximisation: projected, L2-normalised gradient ascent on one δ shared by all images.

    One step per (x, y) batch of float images, starting from δ = 0; returns δ [1, C, H, W].
    """
    x0 = batches[0][0]
    delta = torch.zeros_like(x0[:1], requires_grad=True)
    for x, y in batches:
        (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        with torch.no_grad():
            delta.add_(g / g.norm().clamp_min(1e-12), alpha=step_size)
            delta.copy_(project_l2(delta, eps))
    return delta.detach()


def implicit_hypergradient(
    outer: Callable[[torch.Tensor], torch.Tensor],
    fp_map: Callable[[torch.Tensor], torch.Tensor],
    delta: torch.Tensor,
    params: Sequence[torch.Tensor],
    iters: int,
) -> list[torch.Tensor]:
    """d outer(δ*(θ))/dθ for δ* a fixed point of ``fp_map``, both closures depending on ``params``.

    Direct term ∂outer/∂θ plus (∂Φ/∂θ)ᵀ v, with v = Σ_{k=0..iters} (∂Φ/∂δᵀ)^k ∂outer/∂δ, the
    truncated Neumann series of (I − ∂Φ/∂δᵀ)⁻¹ ∂outer/∂δ (converges when ∂Φ/∂δ is a contraction).
    """
    params = list(params)
    delta = delta.detach().requires_grad_(True)
    g_delta, *direct = torch.autograd.grad(outer(delta), [delta, *params], allow_unused=True)
    mapped = fp_map(delta)
    v = g_delta
    for _ in range(iters):
        (jv,) = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)
        v = g_delta + jv
    indirect = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    return [_sum(d, i, p) for d, i, p in zip(direct, indirect, params)]


def _sum(a: torch.Tensor | None, b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.zeros_like(like) if a is None else a) + (0 if b is None else b)


def unlearn_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, p: Params
) -> torch.Tensor:
    """One outer update: the model's grads set to the implicit hypergradient, then ``opt.step()``.

    Returns the outer loss L(f_θ(x + δ), y) at the θ the step started from (computed for the
    hypergradient anyway), detached and on the device: no extra forward pass, no host sync.
    """
    params = [q for q in model.parameters() if q.requires_grad]
    loss = lambda d: F.cross_entropy(model(x + d), y)  # noqa: E731
    values: list[torch.Tensor] = []

    def outer(d: torch.Tensor) -> torch.Tensor:
        value = loss(d)
        values.append(value.detach())
        return value

    def fp_map(d: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(loss(d), d, create_graph=True)
        return d + p.fp_lr * g

    grads = implicit_hypergradient(outer, fp_map, delta, params, p.fp_iters)
    for q, g in zip(params, grads):
        q.grad = g.detach()
    opt.step()
    return values[0]


@dataclass(frozen=True)
class Record:
    delta: torch.Tensor  # the last round's universal perturbation [1, C, H, W]
    # Per round: round, delta_norm, clean_loss, perturbed_loss, unlearn_loss, BA / ASR / RA.
    rounds: list[dict]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """``rounds`` of (find δ on the clean subset, one hypergradient pass over it), in place.

    BatchNorm stays in eval mode throughout (running statistics fixed, choice): the inner and
    outer problems then see the same function of θ.
    """
    p: Params = ctx.params
    model.eval()
    device = next(model.parameters()).device
    x, y = to_float(ctx.x_clean.to(device)), ctx.y_clean.to(device)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr)
    gen = generator(device, ctx.seed)
    history, delta = [], torch.zeros_like(x[:1])
    for r in range(p.rounds):
        order = torch.randperm(len(x), generator=gen, device=device)
        batches = [(x[i], y[i]) for i in order.split(p.batch_size)]
        inner = [batches[k % len(batches)] for k in range(p.inner_steps)]
        delta = universal_perturbation(model, inner, p.eps, p.inner_step_size)
        with torch.no_grad():
            clean_loss = float(F.cross_entropy(model(x), y))
            pert_loss = float(F.cross_entropy(model(x + delta), y))
        losses = [unlearn_step(model, opt, xb, yb, delta, p) for xb, yb in batches]
        # Read once per round: the outer losses (each before its step) stay on the device until here.
        history.append(
            {
                "round": r + 1,
                "delta_norm": float(delta.norm()),
                "clean_loss": clean_loss,
                "perturbed_loss": pert_loss,
                "unlearn_loss": float(torch.stack(losses).mean()),
                **ctx.evaluate(model),
            }
        )
    return Defended(model=model.eval(), record=Record(delta.cpu(), history))


# Tuning grid (bdlib.tune): the L2 radius of the universal perturbation, from one that cannot
# reach a trigger (0.3) to one that erases whole image regions (3.0, the default).
TUNING = {"eps": (0.3, 0.6, 1.0, 1.5, 3.0)}

DEFENSE = Defense(
    "ibau",
    Params,
    run,
    uses=("clean",),
    cite="Zeng et al., Adversarial Unlearning of Backdoors via Implicit Hypergradient, ICLR 2022",
    tuning=TUNING,
    Record=Record,
)
