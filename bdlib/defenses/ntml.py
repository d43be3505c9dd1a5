"""NT-ML: non-target label training, then mutual learning (Huo & Wolter, arXiv 2508.05404, 2025).

NT: a fresh student is distilled from the poisoned model M0 on the poisoned training set, but
only over the classes other than each sample's given label, so a poisoned sample's target
label is never taught; a teacher is distilled from M0 on all classes (or is M0 itself).
ML: on the small clean subset the two learn from each other by deep mutual learning (each
side: CE + λ·τ²·KL towards its detached partner); the purified model is the student.
Only the abstract is public: this is a reconstruction (docs/methods.md, "NT-ML"), every gap a
Params field. ``reading`` picks how the NT stage reads "non-target label training" and
``ml_data`` what the ML stage learns on; each value's docstring below says which words of the
abstract it reads differently.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.train import fit, logits, to_float

TEACHERS = ("kd", "poisoned")
INITS = ("scratch", "poisoned")
READINGS = ("nontarget", "predicted", "suppress", "estimated", "complementary")
ML_DATA = ("clean", "clean+train", "clean+agree")
# Params fields that only the ML stage reads; every other field shapes the NT stage and keys
# its cached result (``nt_spec``), so a new NT field can never share a stale NT stage.
ML_FIELDS = frozenset({"lam", "ml_epochs", "ml_lr", "ml_data", "ml_curve"})


@dataclass(frozen=True)
class Params:
    # Distillation temperature, NT and ML: Hinton et al.'s common 4 (choice); quick's value is the
    # protocol's choice on the tuning seeds (``TUNING``, bdlib.study.tune).
    tau: float = 4.0
    # The teacher: distilled from M0 on all classes ("kd"), or M0 itself ("poisoned"). A
    # reconstruction choice (the abstract names a teacher, not how it is made); quick runs M0 for
    # cost (docs/methods.md, "NT-ML readings"), not because a reported seed preferred it.
    teacher: Literal["kd", "poisoned"] = "kd"
    lam: float = 1.0  # weight of the mutual KL term in ML: deep mutual learning's 1 (choice)
    nt_epochs: int | None = None  # None: the profile's standard epochs (choice: NT is a full training)
    nt_lr: float | None = None  # None: the profile's standard learning rate (choice, as nt_epochs)
    # The ML stage's length and lr: a choice reading "a few epochs" / fine-tuning at a tenth of
    # the training lr; both are factors of the readings sweep (bdlib.study.readings.variants), so a
    # profile's values are the protocol's rule's choice on the tuning seeds.
    ml_epochs: int = 10
    ml_lr: float = 0.01
    # NT models start fresh ("scratch", docs/methods.md) or from M0's weights ("poisoned": reading
    # (c), "restore, not retrain"; a factor of the readings sweep).
    init: Literal["scratch", "poisoned"] = "scratch"
    # How the NT student reads "non-target label training" (see ``nt_student_loss``):
    # "nontarget" masks the given label (docs/methods.md's main reading); "predicted" masks M0's
    # predicted label; "suppress" adds an unlearning term on the given label of the samples M0
    # is most confident in; "estimated" restricts that term to an estimated target class;
    # "complementary" keeps the student's full softmax against M0's renormalised non-target
    # distribution, the given label pushed down per sample by how atypically sure M0 is of it.
    reading: Literal["nontarget", "predicted", "suppress", "estimated", "complementary"] = "nontarget"
    # "suppress" / "estimated": the fraction of training samples with the highest M0 logit of
    # their given label that are isolated (ABL's "poisons are learned first and most surely").
    # A choice, not the rule's: first set from the true poison index on tuning seed 100 (knowledge
    # a defender lacks, issue #30) and not yet re-chosen by the rule (the readings sweep had no
    # budget for it on quick; docs/methods.md). It does nothing under the other readings.
    isolate: float = 0.05
    # β: the weight of the unlearning term −log(1 − p_S(given label)) ("suppress", "estimated")
    # and the largest per-sample weight of the complementary term ("complementary"); choice.
    suppress_weight: float = 1.0
    # What ML learns on: the clean subset ("clean", docs/methods.md), or also as many unlabelled
    # images of the poisoned training set per step, KL terms only ("clean+train"; choice), or the
    # same with each unlabelled image's KL terms kept only where the two models agree
    # ("clean+agree": reading (b), "ML routed by disagreement").
    ml_data: Literal["clean", "clean+train", "clean+agree"] = "clean"
    # Evaluate student and teacher after every ML epoch (notebook 03's curves). Instrumentation
    # only, the student is the same; off where nothing plots it (grid, tuning): on quick the
    # 20 evaluations cost several times the ML stage's training.
    ml_curve: bool = False

    def validate(self) -> None:
        for name, choices in (("teacher", TEACHERS), ("init", INITS), ("reading", READINGS), ("ml_data", ML_DATA)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name} {value!r} is unknown; choose one of: {', '.join(choices)}")
        for name in ("tau", "ml_lr"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if not 0 < self.isolate < 1:
            raise ValueError(f"isolate must be a fraction in (0, 1), got {self.isolate}")
        if not self.suppress_weight >= 0:
            raise ValueError(f"suppress_weight must be >= 0, got {self.suppress_weight}")
        if self.nt_lr is not None and not self.nt_lr > 0:
            raise ValueError(f"nt_lr must be > 0 or None (the profile's lr), got {self.nt_lr}")
        if self.nt_epochs is not None and self.nt_epochs < 1:
            raise ValueError(f"nt_epochs must be >= 1 or None (the profile's epochs), got {self.nt_epochs}")
        if self.ml_epochs < 1:
            raise ValueError(f"ml_epochs must be >= 1, got {self.ml_epochs}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)), averaged over the batch (Hinton et al.'s scaling)."""
    return tau**2 * F.kl_div(
        F.log_softmax(student_logits / tau, 1),
        F.log_softmax(teacher_logits / tau, 1),
        log_target=True,
        reduction="batchmean",
    )


def nontarget_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, tau: float
) -> torch.Tensor:
    """:func:`kd_loss` over the classes other than each sample's given label ``y``.

    The label's column is removed (not set to −∞) from both logit matrices, so the remaining
    K−1 classes are renormalised and the given label gets no gradient at all.
    """
    n, k = student_logits.shape
    keep = F.one_hot(y, k) == 0
    return kd_loss(student_logits[keep].view(n, k - 1), teacher_logits[keep].view(n, k - 1), tau)


def unlearn_loss(student_logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i · −log(1 − p_S(y_i)) / N: pushes the probability of each weighted sample's label down.

    Complementary-label ("negative") learning on the given label; ``weight`` is 0 for samples the
    term must not touch. log(1 − p_y) is computed as logsumexp of the other logits minus
    logsumexp of all, which stays finite when p_y rounds to 1.
    """
    n, k = student_logits.shape
    others = student_logits.masked_fill(F.one_hot(y, k).bool(), float("-inf"))
    log_not_y = torch.logsumexp(others, 1) - torch.logsumexp(student_logits, 1)
    return -(weight * log_not_y).sum() / n


def complementary_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, tau: float, weight: torch.Tensor
) -> torch.Tensor:
    """τ²·KL(q ‖ softmax(z_S/τ)) with ``q`` M0's output with the given label removed and the
    other K−1 classes renormalised, the given label's part weighted per sample by ``weight``.

    KL(q ‖ p) over the full softmax ``p`` splits exactly into KL(q ‖ p̃) over the renormalised
    non-target classes (:func:`nontarget_kd_loss`) plus −log(1 − p_y): the student is taught the
    non-target distribution *and* pushed off the given label. ``weight`` scales the second part per
    sample: 1 everywhere is the unweighted complementary loss, 0 everywhere is ``nontarget``.
    """
    n, k = student_logits.shape
    keep = F.one_hot(y, k) == 0
    zs, zt = student_logits[keep].view(n, k - 1), teacher_logits[keep].view(n, k - 1)
    masked = F.kl_div(F.log_softmax(zs / tau, 1), F.log_softmax(zt / tau, 1), log_target=True, reduction="none")
    soft = student_logits / tau
    log_not_y = torch.logsumexp(soft.masked_fill(~keep, float("-inf")), 1) - torch.logsumexp(soft, 1)
    return tau**2 * (masked.sum(1) - weight * log_not_y).mean()


def atypicality(m0_given_logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per training sample, in [0, 1]: how far M0's logit of its given label exceeds the median of
    that logit over the training samples with the same given label, over the largest such excess
    in the set; 0 for every sample at or below its class's median (a typical sample)."""
    excess = torch.zeros_like(m0_given_logit, dtype=torch.float32)
    for c in torch.unique(y):
        mine = y == c
        excess[mine] = (m0_given_logit[mine].float() - m0_given_logit[mine].float().median()).clamp(min=0)
    top = excess.max()
    return excess / top if top > 0 else excess


def agreement_kd_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two mutual KL terms on unlabelled images, each image counted only where the two models'
    predicted classes agree (a disagreeing image adds nothing, to either side), partners detached;
    averaged over the whole batch, so fewer agreeing images weigh less."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        per = F.kl_div(F.log_softmax(a / tau, 1), F.log_softmax(b.detach() / tau, 1), log_target=True, reduction="none")
        return tau**2 * (agree * per.sum(1)).mean()

    return kl(student_logits, teacher_logits), kl(teacher_logits, student_logits)


def isolate(
    m0_given_logit: torch.Tensor, y: torch.Tensor, fraction: float, estimated: bool
) -> tuple[torch.Tensor, int]:
    """The training samples whose given label M0 scores highest: a boolean index, and the
    estimated target class (the most frequent given label among them).

    With ``estimated``, only the isolated samples labelled with that class are kept.
    """
    k = max(1, int(round(fraction * len(y))))
    chosen = torch.zeros(len(y), dtype=torch.bool)
    chosen[m0_given_logit.argsort(descending=True)[:k]] = True
    target = int(torch.bincount(y[chosen]).argmax())
    if estimated:
        chosen &= y == target
    return chosen, target


def nt_student_loss(
    student_logits: torch.Tensor, m0_logits: torch.Tensor, y: torch.Tensor, isolated: torch.Tensor, p: Params
) -> torch.Tensor:
    """The NT student's loss on a batch under ``p.reading``.

    * ``nontarget`` — "non-target label": the sample's *given* label, masked out of M0's and the
      student's outputs (:func:`nontarget_kd_loss`); the given label is never taught.
    * ``predicted`` — "non-target": the label M0 *predicts*, masked instead; it differs from the
      given one only where M0 disagrees with its training label.
    * ``suppress`` — "a student with higher confidence in the correct class on poisoned data":
      the masked distillation plus β·:func:`unlearn_loss` on the isolated samples (``isolated``,
      the ones M0 is most sure of), so their given label is pushed down, not merely left out.
    * ``estimated`` — as ``suppress``, on the isolated samples labelled with the estimated target
      class only (:func:`isolate`), so fewer clean samples of other classes are pushed away.
    * ``complementary`` — "non-target label training" read as complementary-label learning:
      only M0's output loses the given label (its other classes renormalised, the KD target), the
      student keeps its full softmax, so the given label is pushed down
      (:func:`complementary_kd_loss`); per sample in proportion to ``isolated`` (here a weight in
      [0, 1], :func:`atypicality`) times β, so a sample M0 is no surer of than is typical of its
      class is not pushed off its label ("higher confidence in the correct class on poisoned
      data": a poisoned sample is one M0 is atypically sure of). Unweighted, the term unlearns
      every clean sample's true class (issue #30: on quick the NT student falls to about 10 % BA).
    """
    if p.reading == "complementary":
        return complementary_kd_loss(student_logits, m0_logits, y, p.tau, p.suppress_weight * isolated)
    if p.reading == "predicted":
        return nontarget_kd_loss(student_logits, m0_logits, m0_logits.argmax(1), p.tau)
    loss = nontarget_kd_loss(student_logits, m0_logits, y, p.tau)
    if p.reading in ("suppress", "estimated"):
        loss = loss + p.suppress_weight * unlearn_loss(student_logits, y, isolated.float())
    return loss


def mutual_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, tau: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep mutual learning: each side's CE plus λ·τ²·KL towards its partner, the partner detached."""
    student = F.cross_entropy(student_logits, y) + lam * kd_loss(student_logits, teacher_logits.detach(), tau)
    teacher = F.cross_entropy(teacher_logits, y) + lam * kd_loss(teacher_logits, student_logits.detach(), tau)
    return student, teacher


def _start(model: nn.Module, ctx: DefenseContext, seed: int) -> nn.Module:
    if ctx.params.init == "poisoned":
        return copy.deepcopy(model)
    return ctx.new_model(seed)


def _evaluate_pair(pair: nn.ModuleDict, ctx: DefenseContext) -> dict[str, dict[str, float]]:
    return {role: ctx.evaluate(m) for role, m in pair.items()}


def nt_stage(model: nn.Module, ctx: DefenseContext) -> tuple[nn.ModuleDict, list[dict], dict]:
    """Train the NT student (and the KD teacher) from the poisoned ``model`` on the poisoned set.

    Returns the models, the epoch records, and what the reading isolated (how many samples,
    the estimated target class) as JSON-ready facts.

    M0's logits are computed on the fly on each augmented batch rather than looked up by
    ``idx``: ``fit`` flips the batch, and M0's output on the unflipped image is not the target
    for the flipped one (a corner patch changes sides). The cost is one forward pass per step.
    """
    p: Params = ctx.params
    m0 = model.eval()
    z0_all = logits(m0, ctx.x_train, ctx.train.eval_batch_size)
    given = z0_all[torch.arange(len(ctx.y_train)), ctx.y_train.cpu()]
    isolated, estimated = isolate(given, ctx.y_train.cpu(), p.isolate, p.reading == "estimated")
    if p.reading == "complementary":  # a weight per sample, not an index (``nt_student_loss``)
        isolated = atypicality(given, ctx.y_train.cpu())
    isolated = isolated.to(ctx.y_train.device)
    pair = nn.ModuleDict({"student": _start(model, ctx, ctx.seed)})
    if p.teacher == "kd":
        pair["teacher"] = _start(model, ctx, ctx.seed + 1)

    def loss_fn(pair: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z0 = m0(x)
        loss = nt_student_loss(pair["student"](x), z0, y, isolated[idx], p)  # a weight (complementary)
        if "teacher" in pair:
            loss = loss + kd_loss(pair["teacher"](x), z0, p.tau)
        return loss

    changes = {k: v for k, v in (("epochs", p.nt_epochs), ("lr", p.nt_lr)) if v is not None}
    # Epoch losses only: the NT models are evaluated once, after the stage (``run``'s info).
    history = fit(
        pair,
        ctx.x_train,
        ctx.y_train,
        ctx.train,
        seed=ctx.seed,
        loss_fn=loss_fn,
        progress=ctx.progress,
        desc="NT",
        **changes,
    )
    if p.teacher == "poisoned":
        pair["teacher"] = copy.deepcopy(m0)
    info = {"isolated": int((isolated > 0).sum()), "estimated_target": estimated}
    return pair, history, info


def ml_stage(pair: nn.ModuleDict, ctx: DefenseContext) -> list[dict]:
    """Deep mutual learning of ``pair["student"]`` and ``pair["teacher"]`` on the clean subset, in place.

    * ``ml_data="clean"`` — "learn from each other" on the defender's small clean subset only.
    * ``ml_data="clean+train"`` — each step also draws as many unlabelled images of the poisoned
      training set and adds the two mutual KL terms on them (no labels, no CE), so that the
      teacher's clean accuracy can reach the student on far more images than the clean subset.
    * ``ml_data="clean+agree"`` — as ``clean+train``, but each unlabelled image's two KL terms count
      only where the student and the teacher predict the same class (:func:`agreement_kd_losses`):
      "learn from each other" routed by disagreement, so on a triggered training image, where a
      backdoored teacher says "target" and the student does not, the student is not pulled toward
      the teacher (nor the teacher toward the student).

    One ``fit`` over both models: the summed loss has separate gradients (partners detached),
    and SGD is per parameter, so this is exactly two simultaneous updates at the same lr.
    """
    p: Params = ctx.params
    gen = torch.Generator().manual_seed(ctx.seed + 2)

    def loss_fn(pair: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        student, teacher = mutual_losses(pair["student"](x), pair["teacher"](x), y, p.tau, p.lam)
        loss = student + teacher
        if p.ml_data in ("clean+train", "clean+agree"):
            # As many unlabelled training images as the clean batch: only the mutual KL terms.
            pick = torch.randint(0, len(ctx.x_train), (len(x),), generator=gen).to(ctx.x_train.device)
            xu = to_float(ctx.x_train[pick].to(x.device))
            zs, zt = pair["student"](xu), pair["teacher"](xu)
            if p.ml_data == "clean+agree":
                loss = loss + p.lam * sum(agreement_kd_losses(zs, zt, p.tau))
            else:
                loss = loss + p.lam * (kd_loss(zs, zt.detach(), p.tau) + kd_loss(zt, zs.detach(), p.tau))
        return loss

    history = fit(
        pair,
        ctx.x_clean,
        ctx.y_clean,
        ctx.train,
        seed=ctx.seed,
        loss_fn=loss_fn,
        on_epoch=(lambda e, m: _evaluate_pair(m, ctx)) if p.ml_curve else None,
        progress=ctx.progress,
        desc="ML",
        epochs=p.ml_epochs,
        lr=p.ml_lr,
    )
    return history


def nt_spec(p: Params) -> dict:
    """What keys the cached NT stage: every Params field but the ML stage's own."""
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name not in ML_FIELDS}


@dataclass(frozen=True)
class Record:
    """What NT-ML reports besides the purified student."""

    nt_student: nn.Module  # the NT stage's student and teacher, before mutual learning
    nt_teacher: nn.Module  # (teacher="poisoned": a copy of M0)
    poisoned: dict[str, float]  # BA / ASR / RA of M0
    nt_student_metrics: dict[str, float]  # ... of the NT student
    nt_teacher_metrics: dict[str, float]  # ... of the NT teacher (M0's when teacher="poisoned")
    ml_teacher_metrics: dict[str, float]  # ... of the teacher after mutual learning
    isolated: int | None  # how many training samples the reading isolated (complementary: weighted > 0)
    estimated_target: int | None  # the most frequent given label among them
    nt_history: list[dict]  # per NT epoch: epoch, loss
    # Per ML epoch: epoch, loss and (with ``ml_curve``) "student" / "teacher": their BA / ASR / RA.
    ml_history: list[dict]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    """NT on the poisoned training set, then ML on the clean subset; returns the student.

    The NT stage does not see the clean data, so it is cached on its own (``ctx.memo``): a
    clean-budget sweep or an ML ablation retrains only the ML stage. The NT-stage models are
    returned in the record (``nt_student``, ``nt_teacher``) for the notebooks' histograms.
    """
    p: Params = ctx.params

    def stage():
        pair, history, facts = nt_stage(model, ctx)
        return dict(pair.items()), {"history": history, **facts}

    if ctx.memo is None:
        models, meta = stage()
    else:
        models, meta = ctx.memo("nt", nt_spec(p), stage)
    # Copies: the ML stage trains the pair in place.
    nt_models = {role: copy.deepcopy(m) for role, m in models.items()}
    pair = nn.ModuleDict(models)
    poisoned = ctx.evaluate(model)
    nt_student = ctx.evaluate(pair["student"])
    nt_teacher = poisoned if p.teacher == "poisoned" else ctx.evaluate(pair["teacher"])
    ml_history = ml_stage(pair, ctx)
    record = Record(
        nt_student=nt_models["student"],
        nt_teacher=nt_models["teacher"],
        poisoned=poisoned,
        nt_student_metrics=nt_student,
        nt_teacher_metrics=nt_teacher,
        ml_teacher_metrics=ctx.evaluate(pair["teacher"]),
        isolated=meta.get("isolated"),
        estimated_target=meta.get("estimated_target"),
        nt_history=meta["history"],
        ml_history=ml_history,
    )
    return Defended(model=pair["student"].eval(), record=record)


# Tuning grid (bdlib.study.tune): the distillation temperature τ, which sets how much of M0's output
# the student copies: at τ = 1 little beyond M0's top non-target class, at τ = 8 nearly uniform
# targets (little of M0's knowledge, or of its backdoor).
TUNING = {"tau": (1.0, 2.0, 4.0, 8.0)}

# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
PROFILES = {
    "smoke": {
        # As quick.
        "ntml": {
            "teacher": (
                "poisoned",
                "ci",
                "CI-sized: every notebook's code path in about two minutes; results mean nothing",
            ),
            "init": (
                "poisoned",
                "ci",
                "CI-sized: every notebook's code path in about two minutes; results mean nothing",
            ),
        },
    },
    "quick": {
        # teacher = M0 is a choice for cost (no second full training in the NT stage), not the rule's.
        # init: the readings sweep (bdlib.study.readings.variant_sweep: 80 cells, tuning seeds 100-101, every
        # attack) makes the rule (bdlib.study.readings.select_variant) choose init = "poisoned" with the
        # Params defaults elsewhere (reading nontarget, ml_data clean, ml_epochs 10, ml_lr 0.01): the one
        # variant within the BA bar, because it leaves M0 nearly as it is (mean DER 0.55); every reading
        # that retrains the student from scratch costs 3.8-7.7 BA points there (docs/methods.md, "NT-ML
        # readings"). tau: the protocol's choice for that variant (python -m bdlib tune --profile quick
        # ntml, 2026-12-07, this 2-core VM: mean ASR 95.9 at a worst BA cost of 0.4 on BadNets and Blended).
        "ntml": {
            "teacher": ("poisoned", "budget", "M0 as the ML teacher halves the NT stage's cost (docs/methods.md)"),
            "init": (
                "poisoned",
                "rule",
                "bdlib.study.readings.select_variant on the tuning seeds 100-101, every attack: the one reading within the "
                "BA bar (docs/methods.md, NT-ML readings)",
            ),
            "tau": (
                8.0,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended) for the chosen reading: "
                "python -m bdlib tune --profile quick ntml, 2026-12-07 (mean ASR 95.9, worst BA cost 0.4)",
            ),
        },
    },
}

DEFENSE = Defense(
    "ntml",
    Params,
    run,
    uses=("train", "clean"),
    cite="Huo & Wolter, NT-ML: Backdoor Defense via Non-target Label Training and "
    "Mutual Learning, arXiv 2508.05404 (2025)",
    tuning=TUNING,
    Record=Record,
)
