"""MCLDef (Yue, Xia et al., "Model-Contrastive Learning for Backdoor Defense", arXiv 2205.04411;
ACM MM 2023 as "...for Backdoor Elimination").

First a Neural-Cleanse-style inversion recovers a trigger (mask and pattern) from the small
clean subset, for every class at once, and the class whose mask is anomalously small is taken
as the attack's target. Then the model is fine-tuned so that its penultimate features of
triggered images move towards the frozen backdoored model's features of the same clean images
(positive) and away from that model's features of the triggered images (negative), which
breaks the link between the trigger and the target class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import fit, generator, to_float

MAD_SCALE = 1.4826  # makes the median absolute deviation a consistent estimate of a normal's std


@dataclass(frozen=True)
class Params:
    target: int | Literal["detect"] = (
        "detect"  # detect by anomaly index (Neural Cleanse); int = oracle label as MCLDef's code (choice)
    )
    lam: float = 0.01  # weight of the mask L1 norm (docs/methods.md)
    inv_lr: float = 0.1  # Adam learning rate of the inversion (docs/methods.md: 0.005–0.1; Neural Cleanse 0.1)
    inv_steps: int = 600  # cap on Adam steps of the inversion (choice)
    inv_patience: int = 5  # passes over the clean subset without a per-class loss improvement before stopping (choice)
    inv_batch_size: int = 32  # clean images per step, replicated once per class (choice)
    anomaly_threshold: float = 2.0  # Neural Cleanse flags an anomaly index above 2
    tau: float = 0.5  # contrastive temperature (docs/methods.md)
    epochs: int = 20  # purification epochs (docs/methods.md)
    lr: float = 0.01  # SGD learning rate before the decay (docs/methods.md)
    first_epoch_lr: float | None = None  # MCLDef's code uses 0.1 in the first epoch; None keeps lr (choice)
    lr_decay_epochs: tuple[int, ...] = (10,)  # epochs (0-based) from which the lr is multiplied by lr_decay (choice)
    lr_decay: float = 0.1  # 0.01 -> 0.001 (docs/methods.md)
    momentum: float = 0.9  # (docs/methods.md)
    weight_decay: float = 1e-4  # (docs/methods.md)
    batch_size: int = 64  # purification batch size (choice)
    ce_weight: float = 0.0  # weight of CE on clean images; MCLDef's code has none (choice)
    bn_eval: bool = False  # freeze BatchNorm statistics during purification; MCLDef's code trains them (choice)
    # Record BA / ASR / RA after every purification epoch (notebook 05's curve). Instrumentation
    # only, the purified model is the same; off where nothing plots it (grid, tuning): on quick
    # the 20 evaluations cost more than the purification.
    curve: bool = False

    def validate(self) -> None:
        if not (
            self.target == "detect"
            or (isinstance(self.target, int) and not isinstance(self.target, bool) and self.target >= 0)
        ):
            raise ValueError(f"target must be 'detect' or a class index >= 0, got {self.target!r}")
        positive = {
            "lam": self.lam,
            "inv_lr": self.inv_lr,
            "inv_steps": self.inv_steps,
            "inv_patience": self.inv_patience,
            "inv_batch_size": self.inv_batch_size,
            "tau": self.tau,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "anomaly_threshold": self.anomaly_threshold,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.first_epoch_lr is not None and not self.first_epoch_lr > 0:
            raise ValueError(f"first_epoch_lr must be > 0 or None, got {self.first_epoch_lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if any(e < 0 for e in self.lr_decay_epochs) or list(self.lr_decay_epochs) != sorted(self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs must be ascending epoch indices >= 0, got {self.lr_decay_epochs}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.ce_weight < 0:
            raise ValueError(f"weight_decay and ce_weight must be >= 0, got {self.weight_decay}, {self.ce_weight}")


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 − m)⊙x + m⊙t for float images; mask and pattern broadcast over the batch."""
    return (1.0 - mask) * x + mask * pattern


def contrastive_loss(z: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over samples of −log(e^{cos(z,z⁺)/τ} / (e^{cos(z,z⁺)/τ} + e^{cos(z,z⁻)/τ}))."""
    sims = torch.stack([F.cosine_similarity(z, z_pos, dim=1), F.cosine_similarity(z, z_neg, dim=1)], 1) / tau
    # Written as a 2-way cross-entropy with the positive as the "class": numerically stable.
    return F.cross_entropy(sims, torch.zeros(len(z), dtype=torch.long, device=z.device))


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """|norm − median| / (1.4826·MAD) per class (Neural Cleanse); MAD = median |norm − median|.

    Medians average the two middle values (as NumPy's, which Neural Cleanse uses), unlike
    ``torch.median``, which returns the lower one.
    """
    med = norms.quantile(0.5)
    mad = (norms - med).abs().quantile(0.5)
    return (norms - med).abs() / (MAD_SCALE * mad).clamp_min(torch.finfo(norms.dtype).tiny)


def detect_target(norms: torch.Tensor, threshold: float) -> tuple[int, bool]:
    """The smallest-norm class, and whether it is an outlier (anomaly index > threshold, low side)."""
    k = int(norms.argmin())
    confident = bool(anomaly_index(norms)[k] > threshold and norms[k] < norms.quantile(0.5))
    return k, confident


def invert(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    classes: torch.Tensor | list[int],
    params: Params,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neural-Cleanse trigger inversion for every class of ``classes`` in one batched optimisation.

    Each step stamps one image batch with all K candidate triggers ([K·B] images) and sums the
    per-class losses CE(f(x̃), k) + λ‖m_k‖₁, so K classes cost about one inversion. With
    labels ``y``, images already of class k do not count towards class k's CE. Every pass over
    ``x`` the per-class mean loss is checked; a class's mask and pattern are kept from its best
    pass, and the loop stops after ``inv_patience`` passes without any class improving.
    Returns masks [K,1,H,W], patterns [K,C,H,W] (both in [0, 1]) and mask L1 norms [K].
    """
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    device = next(frozen.parameters()).device
    classes = torch.as_tensor(classes, dtype=torch.long, device=device)
    k, (c, h, w) = len(classes), x.shape[1:]
    # The clean images (and the random draws) on the model's device once: no copy per step.
    x = x.to(device)
    y = None if y is None else y.to(device)
    gen = generator(device, seed)
    # Parametrised through tanh so mask and pattern stay in [0, 1]; random start as Neural Cleanse.
    mask_p = (torch.rand(k, 1, h, w, generator=gen, device=device) * 2 - 1).requires_grad_()
    pattern_p = (torch.rand(k, c, h, w, generator=gen, device=device) * 2 - 1).requires_grad_()
    opt = torch.optim.Adam([mask_p, pattern_p], lr=params.inv_lr, betas=(0.5, 0.9))
    squash = lambda p: (torch.tanh(p) + 1) / 2  # noqa: E731

    n = len(x)
    best = torch.full((k,), float("inf"), device=device)
    best_mask, best_pattern = squash(mask_p).detach().clone(), squash(pattern_p).detach().clone()
    pass_loss, pass_count, stale, step, start = torch.zeros(k, device=device), 0, 0, 0, 0
    order = torch.randperm(n, generator=gen, device=device)
    while step < params.inv_steps and stale < params.inv_patience:
        idx = order[start : start + params.inv_batch_size]
        start += params.inv_batch_size
        xb = to_float(x[idx])
        mask, pattern = squash(mask_p), squash(pattern_p)
        xs = stamp(xb[None], mask[:, None], pattern[:, None]).flatten(0, 1)  # [K·B, C, H, W]
        ce = F.cross_entropy(frozen(xs), classes.repeat_interleave(len(idx)), reduction="none").view(k, -1)
        weight = torch.ones_like(ce) if y is None else (y[idx][None] != classes[:, None]).float()
        loss_k = (ce * weight).sum(1) / weight.sum(1).clamp_min(1) + params.lam * mask.flatten(1).sum(1)
        opt.zero_grad(set_to_none=True)
        loss_k.sum().backward()
        opt.step()
        step += 1
        pass_loss += loss_k.detach()
        pass_count += 1
        if start >= n:  # end of a pass over the clean subset
            mean = pass_loss / pass_count
            improved = mean < best
            best = torch.where(improved, mean, best)
            mask, pattern = squash(mask_p).detach(), squash(pattern_p).detach()
            best_mask = torch.where(improved[:, None, None, None], mask, best_mask)
            best_pattern = torch.where(improved[:, None, None, None], pattern, best_pattern)
            stale = 0 if improved.any() else stale + 1  # the one host sync: once per pass
            pass_loss, pass_count, start = torch.zeros_like(pass_loss), 0, 0
            order = torch.randperm(n, generator=gen, device=device)
    return best_mask, best_pattern, best_mask.flatten(1).sum(1)


@torch.no_grad()
def trigger_success(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor,
    patterns: torch.Tensor,
) -> torch.Tensor:
    """Per class k, percent of images not of class k that the k-th inverted trigger sends to k."""
    model.eval()
    device = next(model.parameters()).device
    xb, y = to_float(x.to(device)), y.to(device)
    classes = classes.to(device)
    pred = torch.stack([model(stamp(xb, m, t)).argmax(1) for m, t in zip(masks, patterns)])  # K small
    keep = y[None] != classes[:, None]
    hit = (pred == classes[:, None]) & keep
    return 100.0 * hit.sum(1) / keep.sum(1).clamp_min(1)


# Params fields the trigger inversion reads (``invert``); the rest shape the purification only.
INVERSION_FIELDS = ("target", "lam", "inv_lr", "inv_steps", "inv_patience", "inv_batch_size")


def inversion_spec(p: Params, ctx: DefenseContext) -> dict:
    """What keys the cached inversion: its Params fields and the size of the clean subset (which,
    for a given victim and seed, fixes the subset itself)."""
    return {**{name: getattr(p, name) for name in INVERSION_FIELDS}, "clean_images": len(ctx.y_clean)}


def make_loss(frozen: nn.Module, mask: torch.Tensor, pattern: torch.Tensor, tau: float, ce_weight: float):
    """fit's ``loss_fn``: contrastive loss on the stamped augmented batch (+ optional clean CE)."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        xs = stamp(x, mask, pattern)
        with torch.no_grad():
            z_pos, z_neg = frozen.features(x), frozen.features(xs)
        loss = contrastive_loss(model.features(xs), z_pos, z_neg, tau)
        if ce_weight > 0:
            loss = loss + ce_weight * F.cross_entropy(model(x), y)
        return loss

    return loss_fn


@dataclass(frozen=True)
class Record:
    """What MCLDef reports besides the purified model."""

    mask: torch.Tensor  # the chosen class's inverted mask [1, H, W]
    pattern: torch.Tensor  # and pattern [C, H, W], both in [0, 1]
    mask_norms: torch.Tensor  # mask L1 norm per inverted class [K]
    anomaly: torch.Tensor  # anomaly index per inverted class (NaN with an oracle target)
    trigger_success: torch.Tensor  # percent of clean images each inverted trigger sends to its class
    target: int  # the class purified against: detected, or the oracle's
    target_mode: Literal["detect", "oracle"]
    detection_confident: bool  # the detected class is a low-side outlier (anomaly index > threshold)
    anomaly_index: float | None  # the chosen class's anomaly index (None with an oracle target)
    mask_norm: float  # the chosen class's mask L1 norm
    classes: list[int]  # the classes inverted
    true_target_known_to_defense: bool
    # Per purification epoch: epoch, loss and (with ``curve``) BA / ASR / RA; epoch 0 (loss None)
    # is the backdoored model.
    epochs: list[dict]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    p: Params = ctx.params
    device = next(model.parameters()).device
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    if p.target == "detect":
        classes = torch.arange(ctx.num_classes)
    elif p.target < ctx.num_classes:
        classes = torch.tensor([p.target])
    else:
        raise ValueError(f"target {p.target} is not a class index 0..{ctx.num_classes - 1}")

    def inversion():
        masks, patterns, norms = invert(frozen, ctx.x_clean, ctx.y_clean, classes, p, ctx.seed)
        success = trigger_success(frozen, ctx.x_clean, ctx.y_clean, classes, masks, patterns)
        return {"masks": masks, "patterns": patterns, "norms": norms, "success": success}, {}

    # The inversion reads neither the purification's settings nor the curve flag: cached on its
    # own (``ctx.memo``), so an lr sweep or notebook 05's curve reuses one inversion per victim.
    found, _ = inversion() if ctx.memo is None else ctx.memo("inversion", inversion_spec(p, ctx), inversion)
    masks, patterns, norms, success = (found[k].cpu() for k in ("masks", "patterns", "norms", "success"))
    if p.target == "detect":
        pick, confident = detect_target(norms, p.anomaly_threshold)
        anomaly = anomaly_index(norms)
    else:
        pick, confident, anomaly = 0, False, torch.full_like(norms, float("nan"))
    target = int(classes[pick])
    mask, pattern = masks[pick], patterns[pick]

    before = ctx.evaluate(model) if p.curve else {}
    schedule = lambda epoch: _lr_factor(p, epoch)  # noqa: E731
    history = fit(
        model,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        loss_fn=make_loss(frozen, mask.to(device), pattern.to(device), p.tau, p.ce_weight),
        schedule=schedule,
        on_epoch=(lambda e, m: ctx.evaluate(m)) if p.curve else None,
        progress=ctx.progress,
        desc="mcldef",
        epochs=p.epochs,
        lr=p.lr,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
        batch_size=p.batch_size,
        bn_eval=p.bn_eval,
    )
    if p.curve:
        history = [{"epoch": 0, "loss": None, **before}] + history
    record = Record(
        mask=mask,
        pattern=pattern,
        mask_norms=norms,
        anomaly=anomaly,
        trigger_success=success,
        target=target,
        target_mode="detect" if p.target == "detect" else "oracle",
        detection_confident=confident,
        anomaly_index=float(anomaly[pick]) if p.target == "detect" else None,
        mask_norm=float(norms[pick]),
        classes=classes.tolist(),
        true_target_known_to_defense=p.target != "detect",
        epochs=history,
    )
    return Defended(model, record)


def _lr_factor(p: Params, epoch: int) -> float:
    if epoch == 0 and p.first_epoch_lr is not None:
        return p.first_epoch_lr / p.lr
    return p.lr_decay ** sum(epoch >= e for e in p.lr_decay_epochs)


# Tuning grid (bdlib.tune): the purification lr, from a step too small to move the features
# (0.001) to one that forgets the clean task on 400 images (0.03).
TUNING = {"lr": (0.001, 0.003, 0.01, 0.03)}

DEFENSE = Defense(
    "mcldef",
    Params,
    run,
    uses=("clean",),
    cite="Yue, Xia et al., Model-Contrastive Learning for Backdoor Defense, arXiv 2205.04411 (ACM MM 2023)",
    tuning=TUNING,
    Record=Record,
)
