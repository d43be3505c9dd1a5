"""What every defense shares: its context (what the defender is given) and its result.

A defense is one function ``run(model, ctx) -> Defended``. ``ctx`` holds exactly what the
threat model grants it (the poisoned training set, the small clean subset) and the standard
training settings; never the run's Config, so neither the target class nor the attack's
parameters are within reach. The one exception is declared: a defense with
``Defense.needs_target`` (MCLDef as published) is given the target class in ``ctx.target``.
The test set and trigger are only reachable through ``ctx.evaluate``, which a defense calls to
*record* per-epoch metrics for the notebooks, never to make a decision.

What a defense reports beyond its model is one small dataclass of its own (its ``Record``,
declared on its :class:`Defense`): flagged samples, channel scores, inverted triggers, stage
models, per-epoch rows. :func:`record_to_store` and :func:`record_from_store` turn any such
record into safetensors-ready tensors plus JSON and back, by the fields' declared types, so a
new defense needs no storage code of its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from bdlib.config import TrainConfig
from bdlib.models import cpu_state
from bdlib.store import tensors_under


@dataclass(frozen=True)
class DefenseContext:
    params: Any  # the defense's Params
    train: TrainConfig  # the profile's standard training (epochs, batch sizes, optimiser)
    x_train: torch.Tensor  # the poisoned training set (uint8) as the victim trained on it
    y_train: torch.Tensor
    x_clean: torch.Tensor  # the defender's clean subset (uint8)
    y_clean: torch.Tensor
    num_classes: int
    seed: int
    new_model: Callable[[int], nn.Module]  # a freshly initialised model of the run's architecture, by seed
    evaluate: Callable[[nn.Module], dict[str, float]]  # BA / ASR / RA for the record only
    # memo(name, spec, compute) caches an intermediate stage in the store, keyed by the victim,
    # ``name`` and ``spec``: compute() -> ({role: model or tensor}, json_meta); returns the same,
    # loaded (tensors on the CPU).
    memo: (
        Callable[[str, dict, Callable[[], tuple[dict[str, nn.Module], dict]]], tuple[dict[str, nn.Module], dict]] | None
    ) = None
    progress: bool = False
    # The attack's target class: given only to a defense that declares ``Defense.needs_target``
    # (MCLDef as published, whose code is told ``--target_label``); None for every other defense.
    target: int | None = None


@dataclass
class Defended:
    model: nn.Module
    record: Any = None  # an instance of the defense's ``Record`` dataclass


@dataclass(frozen=True)
class Defense:
    name: str
    Params: type
    run: Callable[[nn.Module, DefenseContext], Defended]
    uses: tuple[Literal["train", "clean"], ...]  # which data the defender is given
    cite: str
    # The comparison protocol's grid (bdlib.study.tune): Params field -> the values tried, spanning
    # "does nothing" to "too strong"; every combination is one setting.
    tuning: Mapping[str, tuple] = field(default_factory=dict)
    # The dataclass ``run`` returns in ``Defended.record``. Its fields may be a tensor, a dict of
    # tensors, a model (stored as its weights), or JSON-ready values (numbers, strings, lists and
    # dicts of them, e.g. per-epoch rows); see :func:`record_to_store`.
    Record: type | None = None
    # The one grant beyond the threat model: the defense is told the attack's target class
    # (``DefenseContext.target``). Only a method whose published code is told it declares this.
    needs_target: bool = False
    # A labelled variant of another registry entry (e.g. "none_published" of "none": the method
    # as its authors ran it). It runs in the notebooks beside the method, is never tuned by the
    # protocol (it declares no grid) and never counts as one more defense in a claim.
    variant_of: str | None = None


def _kind(hint: Any) -> str:
    """How a Record field of type ``hint`` is stored: tensor, tensors (a dict), model, or json."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]  # X | None
    if hint is torch.Tensor:
        return "tensor"
    if typing.get_origin(hint) is dict and typing.get_args(hint)[1:] == (torch.Tensor,):
        return "tensors"
    if isinstance(hint, type) and issubclass(hint, nn.Module):
        return "model"
    return "json"


def record_kinds(Record: type) -> dict[str, str]:
    """Each field of the dataclass ``Record`` and how it is stored (:func:`_kind`)."""
    hints = typing.get_type_hints(Record)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(Record)}


def record_to_store(record: Any) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A defense's record as (CPU tensors, JSON): tensor fields under their name, dicts of tensors
    and models' weights under ``name.key``; everything else (JSON-ready) in the JSON, which also
    lists each dict's keys in order and which tensor or model fields are None."""
    if record is None:  # a defense without a Record
        return {}, None
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"json": {}, "keys": {}, "none": []}
    for name, kind in record_kinds(type(record)).items():
        value = getattr(record, name)
        if kind != "json" and value is None:
            meta["none"].append(name)
        elif kind == "tensor":
            tensors[name] = value.detach().cpu().contiguous()
        elif kind == "tensors":
            meta["keys"][name] = list(value)
            tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in value.items()})
        elif kind == "model":
            tensors.update({f"{name}.{k}": v for k, v in cpu_state(value).items()})
        else:
            meta["json"][name] = value
    return tensors, meta


def record_from_store(
    Record: type | None, tensors: Mapping[str, torch.Tensor], meta: dict | None, load_model: Callable[[dict], nn.Module]
) -> Any:
    """The inverse of :func:`record_to_store`; ``load_model(state_dict)`` rebuilds a model field."""
    if Record is None or meta is None:
        return None
    values: dict[str, Any] = {}
    for name, kind in record_kinds(Record).items():
        if name in meta["none"]:
            values[name] = None
        elif kind == "tensor":
            values[name] = tensors[name]
        elif kind == "tensors":
            under = tensors_under(tensors, name)
            values[name] = {k: under[k] for k in meta["keys"][name]}
        elif kind == "model":
            values[name] = load_model(tensors_under(tensors, name))
        else:
            values[name] = meta["json"][name]
    return Record(**values)
