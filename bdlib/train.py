"""The one training / evaluation loop every attack and defense shares.

Data stays a uint8 tensor on the training device; each batch is converted to float in
[0, 1] and augmented (random crop with zero padding, horizontal flip) as whole-batch tensor
ops, so there is no DataLoader, no PIL and no per-sample Python. The augmentation's random
numbers are drawn on the data's device, and the epoch loss is summed there and read once per
epoch, so on CUDA nothing in a step waits for the host. Models and batches are channels_last
on every device. On GPUs with native bf16 (compute capability 8.0+) the forward passes run
under bf16 autocast; elsewhere in float32 (see :func:`amp_dtype`). A defense changes the
objective by passing ``loss_fn(model, x, y, idx)`` — ``idx`` indexes the training tensors, so
per-sample soft targets computed beforehand can be looked up.

Process-wide choices (:func:`configure`, called by ``bdlib.setup`` and by Dask workers):
deterministic kernels (the default: reruns give the same numbers) or cuDNN's autotuned
fastest kernels (``deterministic=False``: ``cudnn.benchmark``, faster on a GPU, not bit-
reproducible), and an opt-in ``torch.compile`` of the model each training step runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bdlib.config import ConfigError, TrainConfig

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# cuBLAS reads this when it creates its first handle: set on import, before any CUDA work, in
# every process that trains (a notebook's kernel, a Dask worker), so deterministic GEMMs work.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass
class Runtime:
    """How this process runs kernels; set by :func:`configure` (never part of a result's key)."""

    deterministic: bool = True
    compile: bool = False


RUNTIME = Runtime()


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was requested but torch sees no CUDA device on this machine; "
            "use device 'auto' (CUDA where there is one, else the CPU) or 'cpu'"
        )
    return torch.device(name)


def configure(deterministic: bool = True, compile: bool = False) -> None:
    """Choose this process's kernels: deterministic ones, or cuDNN's autotuned fastest.

    ``deterministic=True`` (the default): torch's deterministic algorithms (a warning where an
    op has none), ``cudnn.deterministic`` and no ``cudnn.benchmark``, so a rerun on the same
    device gives the same numbers (the store assumes it). ``False``: ``cudnn.benchmark`` picks the
    fastest convolution kernels per shape, faster on a GPU but not bit-reproducible; on the CPU
    both give the same results. ``compile=True`` runs each training step's model through
    ``torch.compile`` (opt-in: compiling costs ~a minute per model shape up front).
    """
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    RUNTIME.deterministic, RUNTIME.compile = deterministic, compile


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator on ``device``: random numbers are drawn where the data lives.

    On the CPU this is the CPU generator bdlib always used, so CPU results are unchanged.
    """
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float input is returned as is."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def augment(x: torch.Tensor, crop_pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding ``crop_pad``) and horizontal flip of a whole float batch.

    The offsets and flips are drawn on ``gen``'s device; give a generator on ``x``'s device
    (:func:`generator`) and no step copies anything from the host.
    """
    n, c, h, w = x.shape
    if crop_pad > 0:
        offsets = torch.randint(0, 2 * crop_pad + 1, (2, n), generator=gen, device=gen.device).to(x.device)
        padded = F.pad(x, (crop_pad,) * 4)
        rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


@functools.lru_cache(maxsize=8)
def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 on GPUs that run it natively, else None (float32).

    bf16 needs no loss scaling, so every loop (including the defenses' own autograd loops)
    can use it as is. GPUs before compute capability 8.0 (T4, V100: Colab's usual ones) only
    emulate bf16, slowly; fp16 there would need a gradient scaler in every loop and overflows
    in the temperature-scaled KD and contrastive losses, so bdlib runs them in float32 (choice:
    correct everywhere, ~2x slower than fp16 on those cards). The CPU runs float32 too.
    """
    if device.type != "cuda":
        return None
    if torch.cuda.get_device_capability(device) >= (8, 0) and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device):
    """Autocast to :func:`amp_dtype` (bf16 on recent GPUs); nothing on the CPU or older GPUs."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _step_model(model: nn.Module) -> nn.Module:
    """``model`` through ``torch.compile`` when :func:`configure` asked for it and it has a forward
    (a ``ModuleDict`` of several models, as NT-ML trains, is left as is)."""
    if RUNTIME.compile and type(model).forward is not nn.Module.forward:
        return torch.compile(model)
    return model


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


class TrainingDiverged(RuntimeError):
    """The loss of a training became NaN or infinite (checked once per epoch, no per-step sync);
    ``stage`` (the training's description), ``epoch`` of ``epochs`` and ``lr`` say where."""

    def __init__(self, message: str, stage: str = "", epoch: int = 0, epochs: int = 0, lr: float = math.nan) -> None:
        super().__init__(message)
        self.stage, self.epoch, self.epochs, self.lr = stage, epoch, epochs, lr


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train: TrainConfig,
    *,
    seed: int,
    loss_fn: LossFn = cross_entropy,
    params: Iterable[nn.Parameter] | None = None,
    schedule: str | Callable[[int], float] = "cosine",
    bn_eval: bool = False,
    on_epoch: Callable[[int, nn.Module], dict] | None = None,
    progress: bool = False,
    desc: str = "train",
    **changes,
) -> list[dict]:
    """Train ``model`` in place on ``(x, y)`` with SGD; return one record per epoch.

    ``changes`` override fields of ``train`` for this call (``epochs=2, lr=0.01``).
    ``schedule`` is "cosine" (per step, to zero), "constant", or epoch -> lr factor.
    ``bn_eval`` keeps BatchNorm layers in eval mode (their running statistics frozen).
    ``on_epoch(epoch, model)`` may return metrics that are added to that epoch's record.
    """
    train = dataclasses.replace(train, **changes)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    gen = generator(device, seed)
    step_model = _step_model(model)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    steps_per_epoch = max(1, -(-len(x) // train.batch_size))
    total = train.epochs * steps_per_epoch
    history: list[dict] = []
    bar = _progress(range(train.epochs), progress, desc)
    step = 0
    for epoch in bar:
        model.train()
        if bn_eval:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = torch.randperm(len(x), generator=gen, device=device)
        # Summed on the device in float64 (the same sums as Python floats) and read once per epoch.
        loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for start in range(0, len(x), train.batch_size):
            idx = order[start : start + train.batch_size]
            factor = _lr_factor(schedule, epoch, step, total)
            for group in opt.param_groups:
                group["lr"] = train.lr * factor
            xb = augment(to_float(x[idx]), train.crop_pad, train.flip, gen)
            with autocast(device):
                loss = loss_fn(step_model, xb, y[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
            seen += len(idx)
            step += 1
        record = {"epoch": epoch + 1, "loss": float(loss_sum) / max(seen, 1)}
        if not math.isfinite(record["loss"]):
            raise TrainingDiverged(
                f"training diverged ({desc}): the mean loss of epoch {epoch + 1}/{train.epochs} is "
                f"{record['loss']} at learning rate {train.lr:g}; nothing of this training was stored. "
                "Lower the learning rate (for the victims: -p overrides '{\"train.lr\": 0.01}'; "
                "for a defense: its own lr field, e.g. defenses.ft.lr).",
                stage=desc,
                epoch=epoch + 1,
                epochs=train.epochs,
                lr=train.lr,
            )
        if on_epoch is not None:
            record.update(on_epoch(epoch + 1, model))
        history.append(record)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    model.eval()
    return history


def _lr_factor(schedule: str | Callable[[int], float], epoch: int, step: int, total: int) -> float:
    if callable(schedule):
        return float(schedule(epoch))
    if schedule == "cosine":
        return 0.5 * (1.0 + float(np.cos(np.pi * step / total)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule {schedule!r} is unknown; choose 'cosine', 'constant' or a callable")


def _progress(it, enabled: bool, desc: str):
    # Always a bdlib bar: with nothing drawn it still feeds the runner's live line (bdlib.progress).
    from bdlib.progress import bar

    return bar(it, desc, show=enabled)


@torch.inference_mode()
def logits(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 256,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Model outputs (float32, on the CPU) for every image of ``x`` (uint8 or float), in eval mode.

    ``transform`` is applied to each uint8 batch first (e.g. an attack's trigger), so triggered
    copies of a whole test set are never materialised. The outputs stay on the device until
    the last batch, then come to the CPU in one copy.
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        if transform is not None:
            xb = transform(xb)
        with autocast(device):
            out.append(model(to_float(xb)).float())
    return torch.cat(out).cpu() if out else torch.empty(0)


@torch.inference_mode()
def features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features (``model.features``) for every image of ``x``, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [model.features(to_float(x[s : s + batch_size].to(device))).float() for s in range(0, len(x), batch_size)]
    return torch.cat(out).cpu()


def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 256,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Predicted class of every image of ``x``."""
    return logits(model, x, batch_size, transform).argmax(1)
