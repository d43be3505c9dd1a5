"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng, Chen, Park, Mao, Jin, Jia, ICLR 2022).

Reference: I-BAU's official code (github.com/YiZeng623/I-BAU): ``defense.py`` with
``hypergrad.py`` (``GradientDescent``, ``fixed_point``); BackdoorBench's ``defense/i-bau.py``
runs the same loop. The model stays in eval mode throughout. Each round:

1. **Inner maximisation.** δ = 0, then one SGD step (lr 10) per clean batch, one pass, on
   −CE(f(x + δ), ŷ) + 0.001·‖δ‖², with ŷ the model's own predictions on the clean x. No
   projection (I-BAU's L2 ball of radius 10 is commented out).
2. **Outer minimisation.** One Adam step per clean batch, one pass, on the loss
   CE(f(x + δ⊙s), y) where δ is added to a random ``portion`` (1 %) of the batch only, with the
   implicit hypergradient: δ* is a fixed point of Φ(δ) = δ − 0.1·∇_δ[−CE(f(x₀ + δ), y₀) +
   0.001·‖δ‖²] on the first clean batch (x₀, y₀ with true labels), and (I − ∂Φ/∂δ)⁻¹ is
   approximated by K terms of its Neumann series (``fixed_point``, K = 5).

The budget per round is ``batches``: I-BAU's code passes once over 5,000 clean images in
batches of 100 (50 steps of each loop); bdlib cycles its clean subset to the same number of
batches, so a smaller subset keeps the reference's number of steps, not its epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import generator, to_float

LABELS = ("predicted", "true")


@dataclass(frozen=True)
class Params:
    rounds: int = 5  # I-BAU defense.py --n_rounds
    batches: int = 50  # I-BAU defense.py: one pass over 5,000 clean images in batches of 100, each loop
    batch_size: int = 100  # I-BAU defense.py --batch_size
    lr: float = 1e-3  # I-BAU defense.py --lr (Adam, --optim; BackdoorBench's config: 1e-4)
    portion: float = 0.01  # I-BAU defense.py loss_outer: δ is added to 1 % of each batch
    inner_lr: float = 10.0  # I-BAU defense.py: SGD lr 10 on δ
    inner_reg: float = 0.001  # I-BAU defense.py: + 0.001·‖δ‖² in the inner loss
    # I-BAU defense.py: the inner maximisation reads the model's predicted labels (ori_lab);
    # "true" uses the clean labels (bdlib's former form).
    inner_labels: Literal["predicted", "true"] = "predicted"
    fp_lr: float = 0.1  # I-BAU defense.py: hg.GradientDescent(loss_inner, 0.1), the fixed-point map's step
    fp_iters: int = 5  # I-BAU defense.py --K (Neumann terms of the inverse)
    # L2 radius δ is projected onto after the inner pass; 0: none (I-BAU defense.py: its
    # "pert = batch_pert * min(1, 10 / norm)" is commented out). bdlib's former knob.
    eps: float = 0.0

    def validate(self) -> None:
        for name in ("rounds", "batches", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fp_iters < 0:
            raise ValueError(f"fp_iters must be >= 0, got {self.fp_iters}")
        for name in ("inner_lr", "fp_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("inner_reg", "eps"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.portion <= 1:
            raise ValueError(f"portion must be in (0, 1], got {self.portion}")
        if self.inner_labels not in LABELS:
            raise ValueError(f"inner_labels {self.inner_labels!r} is unknown; choose one of: {', '.join(LABELS)}")


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """δ scaled back onto the L2 ball of radius ``eps`` when it lies outside."""
    return delta * (eps / delta.norm().clamp_min(eps))


def universal_perturbation(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], p: Params
) -> torch.Tensor:
    """Inner maximisation: from δ = 0, one SGD step (lr ``inner_lr``) per (x, y) batch on
    −CE(f(x + δ), labels) + ``inner_reg``·‖δ‖², labels the model's predictions or y; returns δ [1, C, H, W]."""
    delta = torch.zeros_like(batches[0][0][:1], requires_grad=True)
    for x, y in batches:
        if p.inner_labels == "predicted":
            with torch.no_grad():
                y = model(x).argmax(1)
        loss = -F.cross_entropy(model(x + delta), y) + p.inner_reg * delta.pow(2).sum()
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta.sub_(g, alpha=p.inner_lr)
    delta = delta.detach()
    return project_l2(delta, p.eps) if p.eps > 0 else delta


def implicit_hypergradient(
    outer: Callable[[torch.Tensor], torch.Tensor],
    fp_map: Callable[[torch.Tensor], torch.Tensor],
    delta: torch.Tensor,
    params: Sequence[torch.Tensor],
    iters: int,
) -> list[torch.Tensor]:
    """d outer(δ*(θ))/dθ for δ* a fixed point of ``fp_map``, both closures depending on ``params``.

    Direct term ∂outer/∂θ plus (∂Φ/∂θ)ᵀ v, with v = Σ_{k<iters} (∂Φ/∂δᵀ)^k ∂outer/∂δ: ``iters``
    terms of the Neumann series of (I − ∂Φ/∂δᵀ)⁻¹ ∂outer/∂δ, as I-BAU's hypergrad.fixed_point
    (v₀ = 0, v ← ∂Φ/∂δᵀ v + ∂outer/∂δ, K times); it converges when ∂Φ/∂δ is a contraction.
    """
    params = list(params)
    delta = delta.detach().requires_grad_(True)
    g_delta, *direct = torch.autograd.grad(outer(delta), [delta, *params], allow_unused=True)
    mapped = fp_map(delta)
    v = torch.zeros_like(g_delta)
    for _ in range(iters):
        (jv,) = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)
        v = g_delta + jv
    indirect = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    return [_sum(d, i, p) for d, i, p in zip(direct, indirect, params)]


def _sum(a: torch.Tensor | None, b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.zeros_like(like) if a is None else a) + (0 if b is None else b)


def patched(x: torch.Tensor, delta: torch.Tensor, portion: float, gen: torch.Generator) -> torch.Tensor:
    """``x`` with δ added to int(len(x)·portion) images drawn at random (I-BAU's loss_outer)."""
    k = int(len(x) * portion)
    pick = torch.randperm(len(x), generator=gen, device=gen.device)[:k].to(x.device)
    hit = torch.zeros(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
    hit[pick] = 1.0
    return x + hit * delta


def unlearn_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    first: tuple[torch.Tensor, torch.Tensor],
    p: Params,
    gen: torch.Generator,
) -> torch.Tensor:
    """One outer update: the model's grads set to the implicit hypergradient, then ``opt.step()``.

    The outer loss perturbs a ``portion`` of ``(x, y)``; the fixed-point map runs on ``first``,
    the first clean batch, with its true labels (I-BAU's loss_inner). Returns the outer loss at
    the θ the step started from, detached and on the device.
    """
    params = [q for q in model.parameters() if q.requires_grad]
    x_out = lambda d: patched(x, d, p.portion, gen)  # noqa: E731
    values: list[torch.Tensor] = []
    x0, y0 = first

    def outer(d: torch.Tensor) -> torch.Tensor:
        value = F.cross_entropy(model(x_out(d)), y)
        values.append(value.detach())
        return value

    def fp_map(d: torch.Tensor) -> torch.Tensor:
        inner = -F.cross_entropy(model(x0 + d), y0) + p.inner_reg * d.pow(2).sum()
        (g,) = torch.autograd.grad(inner, d, create_graph=True)
        return d - p.fp_lr * g

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
    """``rounds`` of (find δ on the clean subset, ``batches`` hypergradient steps), in place.

    BatchNorm stays in eval mode throughout, as I-BAU's code (model.eval()).
    """
    p: Params = ctx.params
    model.eval()
    device = next(model.parameters()).device
    x, y = to_float(ctx.x_clean.to(device)), ctx.y_clean.to(device)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr)
    gen = generator(device, ctx.seed)
    # The clean batches, fixed once as I-BAU's images_list, cycled to ``batches`` per loop.
    order = torch.randperm(len(x), generator=gen, device=device)
    loader = [(x[i], y[i]) for i in order.split(p.batch_size)]
    batches = [loader[k % len(loader)] for k in range(p.batches)]
    history, delta = [], torch.zeros_like(x[:1])
    for r in range(p.rounds):
        delta = universal_perturbation(model, batches, p)
        with torch.no_grad():
            clean_loss = float(F.cross_entropy(model(x), y))
            pert_loss = float(F.cross_entropy(model(x + delta), y))
        losses = [unlearn_step(model, opt, xb, yb, delta, loader[0], p, gen) for xb, yb in batches]
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


# Tuning grid (bdlib.study.tune): the share of each outer batch the perturbation is added to (I-BAU's
# 1 %, or all of it: bdlib's former form) x the outer Adam lr (BackdoorBench's 1e-4 and I-BAU's
# 1e-3). (0.01, 1e-3) is the reference recipe. Two values a knob: a quick I-BAU cell costs ~12 s.
TUNING = {"portion": (0.01, 1.0), "lr": (1e-4, 1e-3)}

# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "smoke": {
        # Smoke: the reference recipe at a CI-sized budget (steps, not settings, shrink).
        "ibau": {
            "rounds": (2, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
            "batches": (2, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
        },
    },
    "quick": {
        # The reference recipe (the Params defaults) at a smaller budget, to fit a cold `make figures`
        # on a 2-core CPU (docs/methods.md, "Baselines"); the strength knobs: the comparison
        # protocol's choice (docs/methods.md, "The comparison protocol").
        "ibau": {
            "batches": (4, "budget", "one pass over the 400 clean images a round (reference: 50 batches)"),
            "lr": (
                1e-4,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended): python -m bdlib tune ft nad anp ibau "
                "mcldef_detect --profile quick, 2026-12-07 (docs/methods.md, The comparison protocol)",
            ),
        },
    },
}

DEFENSE = Defense(
    "ibau",
    Params,
    run,
    uses=("clean",),
    cite="Zeng et al., Adversarial Unlearning of Backdoors via Implicit Hypergradient, ICLR 2022",
    tuning=TUNING,
    Record=Record,
)
