"""NAD: Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li, Ma, ICLR 2021).

Reference: NAD's official code (github.com/bboylyg/NAD): ``main.py`` with ``config.py``,
``at.py`` and ``utils/util.py``; its README says the teacher is ``main.py`` run with every β = 0
(plain fine-tuning) for 5-10 epochs. Both trainings: SGD (momentum 0.9, weight decay 1e-4),
batches of 64, lr 0.1 for the first 2 of 20 epochs then 0.01 (``adjust_learning_rate``); the
student adds β_i·AT_i on three stages, AT = the mean squared difference of the attention maps
(|a|^p summed over channels, divided by their L2 norm + 1e-6), β = 500, 1000, 1000.

The budgets are optimisation steps (``teacher_steps``, ``steps``; 40 batches of 64 an epoch on
2,500 images): with a clean subset of another size the run keeps the reference's number of
steps, and the lr drops after the same fraction of them (2 of 20 epochs). The teacher depends
on the victim and its own settings only, so it is cached per victim (``ctx.memo``): a β sweep
trains one teacher.
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
from bdlib.defenses.ft import epochs_for
from bdlib.train import fit

DISTANCES = ("mse", "l2")


@dataclass(frozen=True)
class Params:
    teacher_steps: int = 400  # NAD README: main.py with beta = 0 for "5~10 epochs"; 10 x 40 batches of 64
    teacher_lr: float = 0.1  # NAD config.py lr (the teacher is main.py with beta = 0)
    steps: int = 800  # NAD config.py: 20 epochs x 40 batches of 64 (2,500 images)
    lr: float = 0.1  # NAD config.py lr; utils/util.py adjust_learning_rate: 0.01 from epoch 2
    lr_drop_at: float = 0.1  # NAD utils/util.py adjust_learning_rate: lr / 10 after 2 of 20 epochs
    batch_size: int = 64  # NAD config.py
    weight_decay: float = 1e-4  # NAD config.py (momentum 0.9: the profile's, as NAD's)
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)  # NAD config.py beta1, beta2, beta3 (one per stage)
    p: float = 2.0  # NAD config.py p
    # NAD at.py: mean squared difference of the normalised maps. "l2" is the L2 distance the NAD
    # paper writes (Eq. 2), kept as an option: its gradient does not vanish at a match, so β
    # needs other values (bdlib's former default).
    distance: Literal["mse", "l2"] = "mse"

    def validate(self) -> None:
        for name in ("teacher_steps", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("teacher_lr", "lr", "p"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.lr_drop_at <= 1:
            raise ValueError(f"lr_drop_at must be in [0, 1], got {self.lr_drop_at}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance {self.distance!r} is unknown; choose one of: {', '.join(DISTANCES)}")
        if not self.betas or any(b < 0 for b in self.betas):
            raise ValueError(f"betas must be a non-empty tuple of values >= 0 (one per stage), got {self.betas}")


def attention_map(act: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Σ_c |a|^p per position, divided by its L2 norm over the positions + 1e-6: [N, C, H, W] -> [N, H·W]."""
    am = act.abs().pow(p).sum(1).flatten(1)
    return am / (am.norm(dim=1, keepdim=True) + 1e-6)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, distance: str = "mse") -> torch.Tensor:
    """Distance of the two activations' attention maps, averaged over samples.

    "mse" (NAD's at.py): the squared difference averaged over samples and positions. "l2" (the
    NAD paper's formula): the L2 distance per sample, averaged over samples.
    """
    diff = attention_map(student, p) - attention_map(teacher, p)
    return diff.pow(2).mean() if distance == "mse" else diff.norm(dim=1).mean()


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
    teacher: nn.Module, student_stages: Sequence[nn.Module], betas: Sequence[float], p: float, distance: str = "mse"
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


def step_drop(epochs: int, drop_at: float):
    """NAD's schedule as an epoch -> lr factor: 1 for the first ``drop_at`` of the run, then 0.1."""
    first = round(drop_at * epochs)
    return lambda e: 1.0 if e < first else 0.1


def teacher_spec(p: Params) -> dict:
    """What the teacher depends on beside the victim: the stage cache's key."""
    return {
        "teacher_steps": p.teacher_steps,
        "teacher_lr": p.teacher_lr,
        "lr_drop_at": p.lr_drop_at,
        "batch_size": p.batch_size,
        "weight_decay": p.weight_decay,
    }


def train_teacher(model: nn.Module, ctx: DefenseContext) -> tuple[nn.Module, list[dict]]:
    """A fine-tuned copy of ``model`` (NAD's main.py with β = 0) and its epoch losses."""
    p: Params = ctx.params
    teacher = copy.deepcopy(model)
    epochs = epochs_for(p.teacher_steps, len(ctx.x_clean), p.batch_size)
    hist = fit(
        teacher,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        schedule=step_drop(epochs, p.lr_drop_at),
        progress=ctx.progress,
        desc="NAD teacher",
        epochs=epochs,
        batch_size=p.batch_size,
        weight_decay=p.weight_decay,
        lr=p.teacher_lr,
    )
    return teacher, hist


@dataclass(frozen=True)
class Record:
    teacher: dict[str, float]  # BA / ASR / RA of the fine-tuned teacher
    teacher_epochs: list[dict]  # per teacher epoch: epoch, loss
    epochs: list[dict]  # per distillation epoch: epoch, loss


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """Fine-tune a teacher copy (cached per victim), then distil its attention into ``model`` (in place).

    The history holds epoch losses only (as FT's); the teacher is evaluated once, at the end.
    """
    p: Params = ctx.params
    stages = list(model.stages)
    if len(p.betas) != len(stages):
        raise ValueError(f"betas has {len(p.betas)} values but the model has {len(stages)} stages; give one per stage")

    def stage():
        teacher, hist = train_teacher(model, ctx)
        return {"teacher": teacher}, {"epochs": hist}

    found, meta = stage() if ctx.memo is None else ctx.memo("teacher", teacher_spec(p), stage)
    device = next(model.parameters()).device
    teacher = found["teacher"].to(device).eval().requires_grad_(False)
    epochs = epochs_for(p.steps, len(ctx.x_clean), p.batch_size)
    history = fit(
        model,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        loss_fn=make_loss(teacher, stages, p.betas, p.p, p.distance),
        schedule=step_drop(epochs, p.lr_drop_at),
        progress=ctx.progress,
        desc="NAD",
        epochs=epochs,
        batch_size=p.batch_size,
        weight_decay=p.weight_decay,
        lr=p.lr,
    )
    return Defended(model=model.eval(), record=Record(ctx.evaluate(teacher), meta["epochs"], history))


# Tuning grid (bdlib.study.tune): the teacher's strength (its lr: 0.01 leaves a small model's backdoor
# in the teacher, NAD's 0.1 removes more of it) x the student's lr (NAD's 0.1, or BackdoorBench's
# defense/nad.py 0.01, which costs fewer BA points) x the attention weights β (NAD's 500 / 1000 /
# 1000 and a fifth of them; on quick NAD's β at lr 0.1 already costs ~6 BA points on BadNets, so
# no stronger β is tried). (0.1, 0.1, NAD's β) is the reference recipe; each teacher is trained
# once per victim, whatever the student's settings.
TUNING = {
    "teacher_lr": (0.01, 0.1),
    "lr": (0.01, 0.1),
    "betas": ((100.0, 200.0, 200.0), (500.0, 1000.0, 1000.0)),
}

# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "smoke": {
        # Smoke: the reference recipe at a CI-sized budget (steps, not settings, shrink).
        "nad": {
            "teacher_steps": (
                4,
                "ci",
                "CI-sized: every notebook's code path in about two minutes; results mean nothing",
            ),
            "steps": (8, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
        },
    },
    "quick": {
        # The reference recipe (the Params defaults) at a smaller budget, to fit a cold `make figures`
        # on a 2-core CPU (docs/methods.md, "Baselines"); the strength knobs: the comparison
        # protocol's choice (docs/methods.md, "The comparison protocol").
        "nad": {
            "batch_size": (32, "budget", "the reference's 400 + 800 steps in batches of 32 (reference: 64)"),
            # betas and teacher_lr: the rule chose the reference recipe's (500, 1000, 1000) and 0.1.
            "lr": (
                0.01,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended), one thread per result: "
                "the cold make figures of 2026-12-07 at commit 036acc5 (docs/methods.md, The comparison protocol)",
            ),
        },
    },
}

DEFENSE = Defense(
    "nad",
    Params,
    run,
    uses=("clean",),
    cite="Li et al., Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks, ICLR 2021",
    tuning=TUNING,
    Record=Record,
)
