"""NT-ML: non-target label training, then mutual learning (Huo & Wolter, arXiv 2508.05404, 2025).

NT: a fresh student is distilled from the poisoned model M0 on the poisoned training set, but
only over the classes other than each sample's given label, so a poisoned sample's target
label is never taught; a teacher is distilled from M0 on all classes (or is M0 itself).
ML: on the small clean subset the two learn from each other by deep mutual learning (each
side: CE + λ·τ²·KL towards its detached partner); the purified model is the student.
Only the abstract is public: this is docs/methods.md's reconstruction, every gap a Params field.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defense, DefenseContext, Defended
from bdlib.train import fit

TEACHERS = ("kd", "poisoned")
INITS = ("scratch", "poisoned")
READINGS = ("nontarget",)


@dataclass(frozen=True)
class Params:
    tau: float = 4.0  # distillation temperature, NT and ML (docs/methods.md choice; 2 and 8 did worse on quick)
    teacher: Literal["kd", "poisoned"] = "kd"  # NT teacher: self-distilled from M0, or M0 (docs/methods.md choice)
    lam: float = 1.0  # weight of the mutual KL term in ML (docs/methods.md choice)
    nt_epochs: int | None = None  # None: the profile's standard epochs (docs/methods.md choice)
    nt_lr: float | None = None  # None: the profile's standard learning rate (docs/methods.md choice)
    ml_epochs: int = 10  # "few epochs" (docs/methods.md); 5-20 tried on quick BadNets seed 0, little effect
    ml_lr: float = 0.01  # "a low learning rate" (docs/methods.md); 0.005-0.05 tried on quick BadNets seed 0
    init: Literal["scratch", "poisoned"] = "scratch"  # NT models start fresh (docs/methods.md) or from M0
    reading: Literal["nontarget"] = "nontarget"  # mask the given label (docs/methods.md's main reading)

    def validate(self) -> None:
        for name, choices in (("teacher", TEACHERS), ("init", INITS), ("reading", READINGS)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name} {value!r} is unknown; choose one of: {', '.join(choices)}")
        for name in ("tau", "ml_lr"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if self.nt_lr is not None and not self.nt_lr > 0:
            raise ValueError(f"nt_lr must be > 0 or None (the profile's lr), got {self.nt_lr}")
        if self.nt_epochs is not None and self.nt_epochs < 1:
            raise ValueError(f"nt_epochs must be >= 1 or None (the profile's epochs), got {self.nt_epochs}")
        if self.ml_epochs < 1:
            raise ValueError(f"ml_epochs must be >= 1, got {self.ml_epochs}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)), averaged over the batch (Hinton et al.'s scaling)."""
    return tau ** 2 * F.kl_div(F.log_softmax(student_logits / tau, 1), F.log_softmax(teacher_logits / tau, 1),
                               log_target=True, reduction="batchmean")


def nontarget_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                      tau: float) -> torch.Tensor:
    """:func:`kd_loss` over the classes other than each sample's given label ``y``.

    The label's column is removed (not set to −∞) from both logit matrices, so the remaining
    K−1 classes are renormalised and the given label gets no gradient at all.
    """
    n, k = student_logits.shape
    keep = F.one_hot(y, k) == 0
    return kd_loss(student_logits[keep].view(n, k - 1), teacher_logits[keep].view(n, k - 1), tau)


def mutual_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                  tau: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep mutual learning: each side's CE plus λ·τ²·KL towards its partner, the partner detached."""
    student = F.cross_entropy(student_logits, y) + lam * kd_loss(student_logits, teacher_logits.detach(), tau)
    teacher = F.cross_entropy(teacher_logits, y) + lam * kd_loss(teacher_logits, student_logits.detach(), tau)
    return student, teacher


def _start(model: nn.Module, ctx: DefenseContext, seed: int) -> nn.Module:
    if ctx.params.init == "poisoned":
        return copy.deepcopy(model)
    return ctx.new_model(seed)


def _record(pair: nn.ModuleDict, ctx: DefenseContext) -> dict[str, float]:
    return {f"{role}_{k}": v for role, m in pair.items() for k, v in ctx.evaluate(m).items()}


def nt_stage(model: nn.Module, ctx: DefenseContext) -> tuple[nn.ModuleDict, list[dict]]:
    """Train the NT student (and the KD teacher) from the poisoned ``model`` on the poisoned set.

    M0's logits are computed on the fly on each augmented batch rather than looked up by
    ``idx``: ``fit`` flips the batch, and M0's output on the unflipped image is not the target
    for the flipped one (a corner patch changes sides). The cost is one forward pass per step.
    """
    p: Params = ctx.params
    m0 = model.eval()
    pair = nn.ModuleDict({"student": _start(model, ctx, ctx.seed)})
    if p.teacher == "kd":
        pair["teacher"] = _start(model, ctx, ctx.seed + 1)

    def loss_fn(pair: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z0 = m0(x)
        loss = nontarget_kd_loss(pair["student"](x), z0, y, p.tau)
        if "teacher" in pair:
            loss = loss + kd_loss(pair["teacher"](x), z0, p.tau)
        return loss

    changes = {k: v for k, v in (("epochs", p.nt_epochs), ("lr", p.nt_lr)) if v is not None}
    # Epoch losses only: the NT models are evaluated once, after the stage (``run``'s info).
    history = fit(pair, ctx.x_train, ctx.y_train, ctx.cfg.train, seed=ctx.seed, loss_fn=loss_fn,
                  progress=ctx.progress, desc="NT", **changes)
    if p.teacher == "poisoned":
        pair["teacher"] = copy.deepcopy(m0)
    return pair, [{"stage": "nt", **r} for r in history]


def ml_stage(pair: nn.ModuleDict, ctx: DefenseContext) -> list[dict]:
    """Deep mutual learning of ``pair["student"]`` and ``pair["teacher"]`` on the clean subset, in place.

    One ``fit`` over both models: the summed loss has separate gradients (partners detached),
    and SGD is per parameter, so this is exactly two simultaneous updates at the same lr.
    """
    p: Params = ctx.params

    def loss_fn(pair: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        student, teacher = mutual_losses(pair["student"](x), pair["teacher"](x), y, p.tau, p.lam)
        return student + teacher

    history = fit(pair, ctx.x_clean, ctx.y_clean, ctx.cfg.train, seed=ctx.seed, loss_fn=loss_fn,
                  on_epoch=lambda e, m: _record(m, ctx), progress=ctx.progress, desc="ML",
                  epochs=p.ml_epochs, lr=p.ml_lr)
    return [{"stage": "ml", **r} for r in history]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """NT on the poisoned training set, then ML on the clean subset; returns the student.

    The NT stage does not see the clean data, so it is cached on its own (``ctx.memo``): a
    clean-budget sweep or an ML ablation retrains only the ML stage. The NT-stage models are
    returned in the record (``nt_student.*``, ``nt_teacher.*``) for the notebooks' histograms.
    """
    p: Params = ctx.params
    nt_spec = {"tau": p.tau, "teacher": p.teacher, "nt_epochs": p.nt_epochs, "nt_lr": p.nt_lr,
               "init": p.init, "reading": p.reading}

    def stage():
        pair, history = nt_stage(model, ctx)
        return dict(pair.items()), {"history": history}

    if ctx.memo is None:
        models, meta = stage()
    else:
        models, meta = ctx.memo("nt", nt_spec, stage)
    record = {f"nt_{role}.{k}": v.detach().cpu().clone() for role, m in models.items()
              for k, v in m.state_dict().items()}
    pair = nn.ModuleDict(models)
    info = {"poisoned": ctx.evaluate(model), "nt_student": ctx.evaluate(pair["student"]),
            "nt_teacher": ctx.evaluate(pair["teacher"])}
    ml_history = ml_stage(pair, ctx)
    info["ml_teacher"] = ctx.evaluate(pair["teacher"])
    return Defended(model=pair["student"].eval(), history=meta["history"] + ml_history,
                    tensors=record, info=info)


DEFENSE = Defense("ntml", Params, run, uses=("train", "clean"),
                  cite="Huo & Wolter, NT-ML: Backdoor Defense via Non-target Label Training and "
                       "Mutual Learning, arXiv 2508.05404 (2025)")
