"""NAD: Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li, Ma, ICLR 2021).

A copy of the poisoned model is fine-tuned on the small clean subset to become the teacher;
the poisoned model is then trained on the same data with cross-entropy plus β times an
attention-transfer loss that pulls the attention maps (normalised channel-mean of |a|^p) of
its stages towards the teacher's. Matching attention erases the trigger's features more
thoroughly than fine-tuning alone, because the teacher's maps ignore the trigger region.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import fit

DISTANCES = ("l2", "mse")


@dataclass(frozen=True)
class Params:
    teacher_epochs: int = 10  # teacher fine-tuning epochs (NAD paper: 10)
    teacher_lr: float = 0.01  # teacher fine-tuning lr (docs/methods.md FT's "low lr"; NAD's code: 0.1 on CIFAR)
    epochs: int = 20  # distillation epochs (NAD paper: 20)
    lr: float = 0.01  # distillation lr (choice, same low lr as the teacher; NAD's code: 0.1)
    betas: tuple[float, ...] = (
        5000.0,
        5000.0,
        5000.0,
    )  # AT weight per stage of model.stages (docs/methods.md; NAD's code: 500, 1000, 1000)
    p: float = 2.0  # attention power (NAD paper)
    distance: Literal["l2", "mse"] = (
        "l2"  # L2 distance of the maps (NAD paper, docs/methods.md) or NAD's code's mean squared difference
    )

    def validate(self) -> None:
        for name in ("teacher_epochs", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("teacher_lr", "lr", "p"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance {self.distance!r} is unknown; choose one of: {', '.join(DISTANCES)}")
        if not self.betas or any(b < 0 for b in self.betas):
            raise ValueError(f"betas must be a non-empty tuple of values >= 0 (one per stage), got {self.betas}")


def attention_map(act: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Channel-mean of |a|^p, flattened per sample and L2-normalised: [N, C, H, W] -> [N, H·W]."""
    return F.normalize(act.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, distance: str = "l2") -> torch.Tensor:
    """Distance of the two activations' attention maps, averaged over samples.

    "l2": the L2 distance per sample (NAD paper); "mse": the squared difference averaged over
    samples and positions (NAD's public code), i.e. the squared L2 distance divided by H·W,
    which is far smaller and has a vanishing gradient at a match, so β needs other values.
    """
    diff = attention_map(student, p) - attention_map(teacher, p)
    return diff.norm(dim=1).mean() if distance == "l2" else diff.pow(2).mean()


@contextmanager
def capture(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Within the block, ``outs[i]`` holds the latest forward output of ``modules[i]``."""
    outs: list[torch.Tensor | None] = [None] * len(modules)

    def hook(i: int):
        def store(module: nn.Module, inputs, output: torch.Tensor) -> None:
            outs[i] = output

        return store

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


def make_loss(
    teacher: nn.Module, student_stages: Sequence[nn.Module], betas: Sequence[float], p: float, distance: str = "l2"
):
    """CE + Σ_i β_i·AT(stage_i) for ``fit``; the teacher is frozen and runs in eval mode."""
    teacher_stages = list(teacher.stages)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), capture(teacher_stages) as t_outs:
            teacher(x)
        with capture(student_stages) as s_outs:
            loss = F.cross_entropy(model(x), y)
        return loss + sum(b * at_loss(s, t, p, distance) for b, s, t in zip(betas, s_outs, t_outs))

    return loss_fn


@dataclass(frozen=True)
class Record:
    teacher: dict[str, float]  # BA / ASR / RA of the fine-tuned teacher
    teacher_epochs: list[dict]  # per teacher epoch: epoch, loss
    epochs: list[dict]  # per distillation epoch: epoch, loss


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """Fine-tune a teacher copy, then distil its attention into ``model`` (in place).

    The history holds epoch losses only (as FT's); the teacher is evaluated once, at the end.
    """
    p: Params = ctx.params
    stages = list(model.stages)
    if len(p.betas) != len(stages):
        raise ValueError(f"betas has {len(p.betas)} values but the model has {len(stages)} stages; give one per stage")
    teacher = copy.deepcopy(model)
    t_hist = fit(
        teacher,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        progress=ctx.progress,
        desc="NAD teacher",
        epochs=p.teacher_epochs,
        lr=p.teacher_lr,
    )
    teacher.eval().requires_grad_(False)
    history = fit(
        model,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        loss_fn=make_loss(teacher, stages, p.betas, p.p, p.distance),
        progress=ctx.progress,
        desc="NAD",
        epochs=p.epochs,
        lr=p.lr,
    )
    return Defended(model=model.eval(), record=Record(ctx.evaluate(teacher), t_hist, history))


# Tuning grid (bdlib.tune): the attention-transfer weight β (all stages alike). With the L2
# distance the AT gradient has a constant size β, so β sets how hard the student is pulled
# towards the fine-tuned teacher's attention: 10 barely moves it, 1000 swamps CE.
TUNING = {"betas": ((10.0,) * 3, (30.0,) * 3, (100.0,) * 3, (300.0,) * 3, (1000.0,) * 3)}

DEFENSE = Defense(
    "nad",
    Params,
    run,
    uses=("clean",),
    cite="Li et al., Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks, ICLR 2021",
    tuning=TUNING,
    Record=Record,
)
