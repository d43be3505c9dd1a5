"""NONE (Wang, Ding, Zhai, Ma, "Training with More Confidence: Mitigating Injected and Natural
Backdoors During Training", NeurIPS 2022, arXiv 2202.06382).

A backdoor lives in a few channels that fire far above their usual range on the samples the
model is most confident about. Each round scores every monitored conv channel by how far its
peak on confident samples of a class exceeds its range on non-members (mean + 3 std), resets
the top channels of each layer (and their readers), flags the training samples on which those
channels fire (optimal two-means split) and fine-tunes on the rest with BatchNorm frozen.

Reimplemented, never copied, from the official code, github.com/RU-System-Software-and-Security/NONE
(``run_none.py``, ``none/compromised_detection.py``, ``none/reset_neurons.py``, ``models/resnet.py``).
Two registry entries share this code: ``none``, whose ρ and lr the comparison protocol sets
(:data:`TUNING`), and ``none_published``, the official recipe (the :class:`Params` defaults).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from bdlib.defenses.base import Defended, Defense, DefenseContext
from bdlib.models import ResNet18, conv_layers
from bdlib.train import autocast, fit, to_float


# Every default is the published recipe: the official code (github.com/RU-System-Software-and-Security/NONE, "NONE repo"
# below) as its README runs it on CIFAR-10 / ResNet-18 against BadNets (``run_none.py --none_lr 1e-4
# --max_reset_fraction 0.03 --epoch_num_2 20``). A profile departs from it only where it says why.
@dataclass(frozen=True)
class Params:
    rho: float = 0.03  # share of each monitored layer's channels reset per round (NONE repo: README command)
    rounds: int = 1  # detect → reset → fine-tune rounds (NONE repo: run_none.py --round_num default 1)
    none_lr: float = 1e-4  # fine-tuning learning rate (NONE repo: README command, run_none.py default)
    epochs2: int = 20  # fine-tuning epochs per round (NONE repo: README command, run_none.py --epoch_num_2)
    strong: float = 0.9  # p_ik above this: sample i in class k's strong set (NONE repo: run_none.py --lamda_h)
    weak: float = 0.1  # p_ik below this: sample i in class k's weak set (NONE repo: run_none.py --lamda_l)
    std_k: float = 3.0  # a channel's normal range: mean + std_k·std (NONE repo: none/compromised_detection.py)
    # Sample detection sums, per monitored layer, the activations of its detect_top highest-scoring
    # channels (NONE repo: none/compromised_detection.py, num_for_detect_biased -1 → the top-1 channel).
    detect_top: int = 1
    # The fine-tuning lr: constant (NONE repo: run_none.py, whose step decay every 80 epochs never fires
    # within 20); "cosine" anneals it per step to zero as bdlib's standard training.
    schedule: Literal["cosine", "constant"] = "constant"
    # A ResNet downsample (1x1 conv) is read through its BatchNorm (NONE repo: models/resnet.py hooks the
    # whole downsample Sequential); False reads the raw conv output as for every other conv.
    downsample_after_bn: bool = True

    def validate(self) -> None:
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not self.none_lr > 0:
            raise ValueError(f"none_lr must be > 0, got {self.none_lr}")
        if self.epochs2 < 0:
            raise ValueError(f"epochs2 must be >= 0 (0 resets without fine-tuning), got {self.epochs2}")
        if not 0 < self.weak < self.strong < 1:
            raise ValueError(f"need 0 < weak < strong < 1, got weak={self.weak}, strong={self.strong}")
        if self.std_k < 0:
            raise ValueError(f"std_k must be >= 0, got {self.std_k}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r} is unknown; choose one of: cosine, constant")
        if self.detect_top < 1:
            raise ValueError(
                f"detect_top must be >= 1 (channels per layer summed for detection), got {self.detect_top}"
            )


def channel_scores(
    acts: torch.Tensor, probs: torch.Tensor, strong: float, weak: float, std_k: float, chunk: int = 1024
) -> torch.Tensor:
    """score_j = max_k [max_{i∈S_k} a_ij − (mean_{i∈W_k} a_ij + std_k·std_{i∈W_k} a_ij)].

    ``acts`` is [N, C], ``probs`` [N, K]; S_k = {i: p_ik > strong}, W_k = {i: p_ik < weak}.
    A class whose strong or weak set is empty contributes −inf; std is the population std.
    The strong-set max scatters each (sample, class) membership's activations into a [K, C]
    running max; the weak-set moments are mask-weighted sums (matmuls). Float32 suffices once
    every channel is shifted by its overall mean, so the moments do not cancel: the scores match
    a float64 loop to ~1e-6 of the activations' scale (benchmarks/none_scoring.py). Samples go
    ``chunk`` at a time so the shifted block stays in cache (2-3x faster than one N×C block).
    """
    n, c = acts.shape
    k = probs.shape[1]
    strong_set, weak_set = probs > strong, (probs < weak).float()
    shift = acts.float().mean(0)
    peak = torch.full((k, c), -math.inf)
    s1, s2 = torch.zeros(k, c), torch.zeros(k, c)
    for start in range(0, n, chunk):
        a = acts[start : start + chunk].float() - shift
        rows, cls = strong_set[start : start + chunk].nonzero(as_tuple=True)
        peak.scatter_reduce_(0, cls[:, None].expand(-1, c), a[rows], "amax")
        w = weak_set[start : start + chunk].T
        s1.addmm_(w, a)
        s2.addmm_(w, a.square_())
    count = weak_set.sum(0)[:, None]
    mean = s1 / count
    std = (s2 / count - mean.square()).clamp_min(0).sqrt()
    d = peak - (mean + std_k * std)  # the shift cancels between peak and mean
    d = torch.where((count > 0) & torch.isfinite(peak), d, -math.inf)
    return d.amax(0)


def two_means_split(values: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The exact optimal split of 1-D values into two groups (least within-group squared error).

    Returns ``(threshold, high)`` with ``high = values > threshold``. Cuts are only tried between
    distinct values: an optimum never separates equal values. With fewer than two distinct
    values nothing is flagged.
    """
    v = values.detach().double().flatten()
    s, _ = v.sort()
    n = len(s)
    if n < 2 or s[0] == s[-1]:
        return float(s[-1]) if n else 0.0, torch.zeros(n, dtype=torch.bool)
    c1, c2 = s.cumsum(0), s.square().cumsum(0)
    left = torch.arange(1, n, dtype=torch.float64)  # size of the low group for cut after index left-1
    right = n - left
    sse_low = c2[:-1] - c1[:-1].square() / left
    sse_high = (c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]).square() / right
    sse = torch.where(s[:-1] < s[1:], sse_low + sse_high, math.inf)
    cut = int(sse.argmin())
    threshold = float(s[cut])
    return threshold, v > threshold


def detection_statistic(acts: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], top: int) -> torch.Tensor:
    """Per sample, the summed activations of each layer's ``top`` highest-scoring channels.

    ``acts[layer]`` is [N, C], ``scores[layer]`` [C]; a layer with fewer than ``top`` channels
    contributes all of them. NONE splits this statistic in two (:func:`two_means_split`).
    """
    return sum(a[:, scores[name].topk(min(top, len(scores[name]))).indices].sum(1) for name, a in acts.items())


@dataclass(frozen=True)
class Consumers:
    """What reads a conv's output channels: BN layers, then convs / a linear layer.

    For a conv whose output joins a residual sum, ``convs`` / ``linear`` are the readers past
    the sum that NONE's code resets: the next block's first conv, or the fc layer after the last
    block (``past_sum``). The projection shortcut that also reads the sum, and the identity path,
    are left alone, as NONE's code leaves them.
    """

    norms: tuple[str, ...]  # BatchNorm modules on the path before any sum (γ, β reset)
    convs: tuple[str, ...]  # convs whose input channels are the conv's output channels
    linear: str | None  # the fc layer reading the flattened channels
    residual: bool  # the output joins a residual sum
    past_sum: bool = False  # ``convs`` / ``linear`` read the channel through that sum


# Ops that keep the channel axis and the per-channel independence: a reset channel stays zero.
_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
_PASS_FUNCTIONS = (F.relu, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d)
_RESIDUAL = (operator.add, operator.iadd, torch.add)


def _walk(start: fx.Node, modules: dict[str, nn.Module], name: str, past_sum: bool):
    """From ``start``'s users to the next convs / linear layer, through BN, ReLU, pooling and
    flatten. Returns (BN modules met, convs, linear, residual sums met); a sum ends the walk."""
    norms, convs, linear, sums = [], [], None, []
    frontier, seen = list(start.users), set()
    while frontier:
        user = frontier.pop()
        if user in seen:
            continue
        seen.add(user)
        mod = modules.get(user.target) if user.op == "call_module" else None
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            norms.append(user.target)
        elif isinstance(mod, nn.Conv2d):
            convs.append(user)
            continue
        elif isinstance(mod, nn.Linear):
            linear = user.target
            continue
        elif user.op == "call_function" and user.target in _RESIDUAL:
            sums.append(user)
            continue
        elif not (
            isinstance(mod, _PASS_MODULES)
            or user.target in _PASS_FUNCTIONS
            or (user.op == "call_method" and user.target == "flatten")
        ):
            where = "past the residual sum of " if past_sum else ""
            raise ValueError(
                f"cannot follow conv {name!r} {where}through {user.op} {user.target!r}; "
                "known: BatchNorm, ReLU, pooling, flatten, conv, linear, residual add"
            )
        frontier.extend(user.users)
    return norms, convs, linear, sums


def consumers(model: nn.Module) -> dict[str, Consumers]:
    """For every conv of ``model``, the layers that read its output channels (found by fx tracing).

    From each conv the graph is followed through BatchNorm, ReLU, pooling and flatten up to the
    next conv / linear layer (their input weights for the channel are reset). A conv that feeds a
    residual sum (a ResNet block's last conv) is read, as in NONE's ``reset_neurons.py``, by the
    next block's first conv or, after the last block, by the fc layer: the walk goes on past the
    sum (through the next block's BN, not reset, in a PreAct block) to those readers. It skips a
    projection shortcut (a conv that feeds a sum directly and reads the same input as another
    conv: NONE's code leaves the downsample's input weights alone) and stops at the next sum (the
    identity path). A projection shortcut's own readers are not reset (NONE's code: its filters
    and BN only). An op the walk does not know raises, so a new architecture cannot be reset
    halfway without notice.
    """
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    direct = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            direct[node] = _walk(node, modules, node.target, past_sum=False)

    def projection(node: fx.Node) -> bool:
        _, convs, _, sums = direct[node]
        siblings = [u for u in node.args[0].users if u is not node and isinstance(modules.get(u.target), nn.Conv2d)]
        return bool(sums) and not convs and bool(siblings)

    out = {}
    for node, (norms, convs, linear, sums) in direct.items():
        readers, past = [c.target for c in convs], False
        if sums and not convs and linear is None and not projection(node):
            past = True
            for s in sums:
                _, after, fc, _ = _walk(s, modules, node.target, past_sum=True)
                readers += [c.target for c in after if not projection(c)]
                linear = linear or fc
        out[node.target] = Consumers(tuple(norms), tuple(dict.fromkeys(readers)), linear, bool(sums), past)
    return out


@torch.no_grad()
def reset_channels(model: nn.Module, selection: dict[str, torch.Tensor]) -> dict[str, Consumers]:
    """Zero the selected output channels of each named conv and their readers, as NONE's code.

    ``selection`` maps a conv's qualified name to channel indices. Zeroed: the conv's filters
    (and bias), γ and β of the BatchNorm layers between it and any residual sum, and the input
    weights of its readers for those channels (:func:`consumers`): the next conv, the next
    block's first conv for a conv feeding a residual sum, the fc columns of those channels after
    the last conv (each channel owns ``in_features / channels`` consecutive columns after
    flatten). BN running statistics are kept. Returns the consumers used, per conv.
    """
    modules = dict(model.named_modules())
    graph = consumers(model)
    used = {}
    for name, idx in selection.items():
        idx = torch.as_tensor(idx, dtype=torch.long, device=modules[name].weight.device)
        conv, who = modules[name], graph[name]
        conv.weight[idx] = 0
        if conv.bias is not None:
            conv.bias[idx] = 0
        for bn in who.norms:
            modules[bn].weight[idx] = 0
            modules[bn].bias[idx] = 0
        for nxt in who.convs:
            modules[nxt].weight[:, idx] = 0
        if who.linear is not None:
            fc = modules[who.linear]
            per, rem = divmod(fc.in_features, conv.out_channels)
            if rem:
                raise ValueError(
                    f"{who.linear} has {fc.in_features} inputs, not a multiple of {name}'s {conv.out_channels} channels"
                )
            cols = (idx[:, None] * per + torch.arange(per, device=idx.device)).flatten()
            fc.weight[:, cols] = 0
        used[name] = who
    return used


def monitored_convs(model: nn.Module) -> list[str]:
    """ResNet-18: every conv of layer2–layer4 (downsample convs too); other models: all but the stem."""
    names = [n for n, _ in conv_layers(model)]
    if isinstance(model, ResNet18):
        return [n for n in names if n.split(".")[0] in ("layer2", "layer3", "layer4")]
    return names[1:]


def read_points(model: nn.Module, layers: list[str], downsample_after_bn: bool) -> dict[str, str]:
    """Which module's output stands for each monitored conv: the conv itself, or (NONE's code, for
    ResNet downsample convs) the BatchNorm right after it in its ``shortcut``."""
    modules = dict(model.named_modules())
    out = {}
    for name in layers:
        after = name[:-1] + "1" if name.endswith("shortcut.0") else None
        use_bn = (
            downsample_after_bn
            and after is not None
            and isinstance(modules.get(after), nn.modules.batchnorm._BatchNorm)
        )
        out[name] = after if use_bn else name
    return out


@torch.inference_mode()
def activations(
    model: nn.Module, x: torch.Tensor, layers: list[str], batch_size: int, read_at: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One eval pass: per layer the spatial max of each raw conv output [N, C], and softmax [N, K].

    ``read_at`` maps a layer to the module whose output is read instead (:func:`read_points`).
    """
    model.eval()
    read_at = read_at or {}
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [
        modules[read_at.get(n, n)].register_forward_hook(
            lambda _m, _i, o, n=n: acts[n].append(o.float().amax((2, 3)).cpu())
        )
        for n in layers
    ]
    probs = []
    try:
        for start in range(0, len(x), batch_size):
            xb = to_float(x[start : start + batch_size].to(device))
            with autocast(device):
                probs.append(model(xb).float().softmax(1).cpu())
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(a) for n, a in acts.items()}, torch.cat(probs)


@dataclass(frozen=True)
class Record:
    """What NONE reports besides the repaired model."""

    flagged: torch.Tensor  # bool [N]: training samples flagged in any round (left out of fine-tuning)
    scores: dict[str, torch.Tensor]  # per monitored conv, the last round's channel scores [C]
    selected: dict[str, torch.Tensor]  # per monitored conv, the channels the last round reset
    monitored: list[str]  # the monitored convs, in model order
    # Convs feeding a residual sum: reset with their readers past the sum (the next block's first
    # conv, or the fc), as NONE's reset_neurons.py; the identity path and projection are left alone.
    residual_outputs: list[str]
    # Per round: round, flagged (so far), flagged_this_round, and BA / ASR / RA after it.
    rounds: list[dict]


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    p: Params = ctx.params
    layers = monitored_convs(model)
    history, scores_out, selected_out, flagged_out = [], {}, {}, None
    residual = []
    # Flagged samples stay out of the training set in later rounds (NONE drops them for good).
    removed = torch.zeros(len(ctx.x_train), dtype=torch.bool)
    for rnd in range(p.rounds):
        acts, probs = activations(
            model, ctx.x_train, layers, ctx.train.eval_batch_size, read_points(model, layers, p.downsample_after_bn)
        )
        scores = {name: channel_scores(acts[name], probs, p.strong, p.weak, p.std_k) for name in layers}
        selection = {}
        for name, score in scores.items():
            n_reset = math.ceil(round(p.rho * len(score), 9))  # 0.1·30 is 3.0000000000000004 in floats
            selection[name] = score.topk(n_reset).indices
            scores_out[name] = score.float()
            selected_out[name] = selection[name]
        _, flagged = two_means_split(detection_statistic(acts, scores, p.detect_top))
        used = reset_channels(model, selection)
        residual = sorted(n for n, who in used.items() if who.residual)
        removed |= flagged
        keep = ~removed
        fit(
            model,
            ctx.x_train[keep],
            ctx.y_train[keep],
            ctx.train,
            seed=ctx.seed + rnd,
            lr=p.none_lr,
            epochs=p.epochs2,
            bn_eval=True,
            progress=ctx.progress,
            schedule=p.schedule,
            desc=f"NONE round {rnd + 1}",
        )
        flagged_out = removed.clone()
        history.append(
            {
                "round": rnd + 1,
                "flagged": int(removed.sum()),
                "flagged_this_round": int(flagged.sum()),
                **ctx.evaluate(model),
            }
        )
    return Defended(model, Record(flagged_out, scores_out, selected_out, layers, residual, history))


# Tuning grid (bdlib.study.tune): ρ, the share of each layer's channels reset, and the fine-tuning lr,
# both from the published recipe (ρ 0.03, lr 1e-4: the grid's first point, which on the small
# CNN resets one or two channels and barely moves the weights) to half of every layer reset and
# fine-tuned at 100x the published lr (lr 0.02 with cosine annealing diverged on WaNet, seed 1).
TUNING = {"rho": (0.03, 0.1, 0.25, 0.5), "none_lr": (1e-4, 1e-3, 1e-2)}

# What each profile changes from Params' defaults (bdlib.profiles reads it; the store's code hash skips it):
# profile -> registry name -> field -> (value, why: rule / budget / setting / ci, the reason).
# Paper sets nothing: the Params defaults are the official code's README recipe (ρ 0.03, 20 epochs
# at a constant lr 1e-4, top-1 detection, downsample convs read after their BN); nothing departs
# from it. NONE as published ("none_published"): the Params defaults, 20 epochs, on quick too.
PROFILES = {
    "smoke": {
        # CI-sized, 2 fine-tuning epochs (published: 20) for both forms; ρ and lr the grid's strong end.
        "none": {
            "rho": (0.5, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
            "none_lr": (0.01, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
            "epochs2": (2, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing"),
        },
        "none_published": {
            "epochs2": (2, "ci", "CI-sized: every notebook's code path in about two minutes; results mean nothing")
        },
    },
    "quick": {
        # NONE as tuned: 5 fine-tuning epochs (published: 20; budget: a 20-epoch cell takes ~63 s on one
        # busy core, the 48-cell NONE sweep ~50 min). ρ and none_lr: bdlib.study.tune's rule on tuning seeds
        # 100-101 (BadNets, Blended), `python -m bdlib tune --profile quick none`, 2026-12-07, this 2-core
        # VM: mean ASR 65.4, worst BA cost 2.6 (Blended; docs/methods.md, NONE).
        "none": {
            "rho": (
                0.25,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended): python -m bdlib tune --profile quick "
                "none, 2026-12-07 (mean ASR 65.4, worst BA cost 2.6)",
            ),
            "none_lr": (
                1e-3,
                "rule",
                "bdlib.study.tune's rule on the tuning seeds 100-101 (BadNets, Blended): python -m bdlib tune --profile quick "
                "none, 2026-12-07 (mean ASR 65.4, worst BA cost 2.6)",
            ),
            "epochs2": (5, "budget", "5 fine-tuning epochs (published: 20): the NONE sweep fits the CPU"),
        },
    },
}

CITE = "Wang et al., Training with More Confidence (NONE), NeurIPS 2022, arXiv 2202.06382"

# NONE as the comparison protocol sets it: ρ and the lr chosen by bdlib.study.tune on the tuning seeds.
DEFENSE = Defense("none", Params, run, uses=("train",), cite=CITE, tuning=TUNING, Record=Record)

# NONE as published: the Params defaults (the official recipe) on every profile that does not
# say otherwise; no tuning grid, so the protocol never sets it.
PUBLISHED = dataclasses.replace(DEFENSE, name="none_published", tuning={}, variant_of="none")
