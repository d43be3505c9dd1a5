"""The run configuration as frozen dataclasses, and strict overrides. A leaf: no bdlib imports.

:class:`Config` holds everything that determines a run; :func:`override` derives a new one from
dotted names (``{"train.epochs": 3, "defenses.ntml.tau": 2.0}``), each name, type and value
checked, or raises a :class:`ConfigError` that names the bad key or value and lists what would
have been valid. The profiles (smoke / quick / paper) and :func:`bdlib.profiles.resolve`, which
need the attack and defense registries, live in :mod:`bdlib.profiles`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

PROFILES = ("smoke", "quick", "paper")  # bdlib.profiles defines each; named here for the runner (no torch)
DEVICES = ("auto", "cpu", "cuda")
# The datasets a run trains on (bdlib.data also loads cifar100, Narcissus' surrogate data) and the
# model architectures (bdlib.models.MODELS); a test checks both against those registries.
Dataset = Literal["fmnist", "cifar10"]
Model = Literal["smallcnn", "resnet18", "preact_resnet18"]


class ConfigError(ValueError):
    """A parameter name or value is not valid; the message lists the valid choices."""


@dataclass(frozen=True)
class TrainConfig:
    """Standard (victim) training: SGD with momentum, cosine-annealed learning rate."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_pad: int = 2  # random crop with this much zero padding; 0 turns it off
    flip: bool = True  # random horizontal flip
    # 256 keeps a small CNN's activations in the CPU cache (2-4x the images/s of 1024 there);
    # paper (GPU) uses 1024.
    eval_batch_size: int = 256


@dataclass(frozen=True)
class TuningConfig:
    """The comparison protocol's scope (bdlib.study.tune): where every defense's grid runs, and the bar."""

    seeds: tuple[int, ...] = (100, 101)  # tuning seeds: never among the reported seeds
    attacks: tuple[str, ...] = ("badnets", "blended")  # every defense's strength knob is tuned on these
    variant_attacks: tuple[str, ...] | None = None  # NT-ML's readings are chosen on these (None: all)
    # The readings sweep runs the attacks outside ``attacks`` on the first N tuning seeds only
    # (None: all): each is a retraining of NT-ML's student, and the tuning pair keeps both seeds.
    other_attack_seeds: int | None = 1
    max_cost: float = 3.0  # BA points a chosen setting may cost on each tuning attack
    # Spend where the answer is open (bdlib.study.tune.far_settings; None switches a part off):
    # a setting is not run on the later seeds if, on the first tuning seed, its BA cost exceeds
    # prune_factor x max_cost on any attack (or it diverged), or its mean ASR is more than
    # prune_margin points above the best setting within the bar. On the 2026-12-07 full sweep of
    # quick (184 + 80 cells), 1.5 and 20 choose what every setting on every seed chooses, for
    # every defense and NT-ML's reading (docs/methods.md, "The comparison protocol").
    prune_factor: float | None = 1.5
    prune_margin: float | None = 20.0
    # At most this many values of each knob's grid, spread from weakest to strongest (both ends
    # kept; bdlib.study.tune.thin); None: the whole grid. For CI-sized runs of the protocol's code path.
    grid_points: int | None = None
    # The defenses the protocol tunes (None: every one a notebook runs); NT-ML's readings sweep
    # (notebook 03) runs where ntml is among them. The others keep the profile's values: on a GPU
    # budget, or in the paper-path test, which takes the protocol's code path on FT alone.
    defenses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Config:
    """Everything that determines a run. Frozen: derive a new one with :func:`override`."""

    profile: str
    dataset: Dataset
    model: Model
    n_train: int | None  # stratified training subset size; None = the full training set
    n_test: int | None  # stratified test subset size; None = the full test set
    train: TrainConfig
    target: int  # the attacks' target class (all-to-one)
    clean_fraction: float  # the defender's clean data, as a fraction of the training set
    seeds: tuple[int, ...]  # seeds over which notebooks report mean ± std
    attacks: Mapping[str, Any]  # attack name -> that attack's Params (profile values applied)
    defenses: Mapping[str, Any]  # defense name -> that defense's Params
    attack: str = "badnets"
    seed: int = 0
    device: str = "auto"
    progress: bool = False  # tqdm progress bars
    tuning: TuningConfig = TuningConfig()
    # The claims ledger's rule (notebook 06): an attack x defense cell whose seeds disagree by more
    # than claims.SPREAD ASR points also runs on these seeds, the same for every defense.
    extra_seeds: tuple[int, ...] = (3, 4)
    # Clean training samples in a t-SNE figure (notebooks 01 and 05), plus a tenth as many poisoned.
    embedding_points: int = 1500
    # How kernels run (bdlib.train.configure); results' store keys never include these.
    deterministic: bool = True  # deterministic kernels; False: cudnn.benchmark (faster on a GPU, not bit-reproducible)
    compile: bool = False  # torch.compile the model of each training step (opt-in; worth it on a GPU)

    @property
    def attack_params(self) -> Any:
        return self.attacks[self.attack]


def override(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return ``cfg`` with dotted-name overrides applied, each name and type checked."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a dict of dotted names to values, got {type(overrides).__name__}")
    for dotted, value in overrides.items():
        cfg = _set_path(cfg, str(dotted).split("."), value, "")
    check_consistency(cfg)
    return cfg


def _set_path(obj: Any, path: list[str], value: Any, prefix: str) -> Any:
    head, rest = path[0], path[1:]
    where = f"{prefix}{head}"
    if isinstance(obj, Mapping):
        if head not in obj:
            raise ConfigError(_unknown(where, head, tuple(obj)))
        if not rest:
            raise ConfigError(
                f"'{where}' is a group; set one of its fields: "
                f"{', '.join(f'{where}.{f.name}' for f in dataclasses.fields(obj[head]))}"
            )
        new = dict(obj)
        new[head] = _set_path(obj[head], rest, value, where + ".")
        return types.MappingProxyType(new)
    names = {f.name: f for f in dataclasses.fields(obj)}
    if head not in names:
        raise ConfigError(_unknown(where, head, tuple(names)))
    if rest:
        return dataclasses.replace(obj, **{head: _set_path(getattr(obj, head), rest, value, where + ".")})
    return replace_fields(obj, {head: value}, prefix.rstrip("."))


def replace_fields(obj: Any, changes: Mapping[str, Any], where: str) -> Any:
    """``dataclasses.replace(obj, **changes)`` with each name, type and the result's ``validate()``
    checked; errors name the field as ``where.name``."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in changes.items():
        full = f"{where}.{name}" if where else name
        if name not in names:
            raise ConfigError(_unknown(full, name, tuple(sorted(names))))
        _check_type(full, value, hints[name])
    new = dataclasses.replace(obj, **{k: _coerce(v, hints[k]) for k, v in changes.items()})
    validate = getattr(new, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    return new


def _coerce(value: Any, hint: Any) -> Any:
    # JSON has no tuples and writes 3.0 as 3: accept a list for a tuple (also in an Optional), an int
    # for a float.
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if isinstance(value, list) and any(typing.get_origin(h) is tuple for h in typing.get_args(hint)):
            return tuple(value)
        return value
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise ConfigError(f"'{name}' must be {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of: " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _unknown(where: str, name: str, valid: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return f"'{where}' is unknown{hint}; valid names here: {', '.join(valid)}"


def check_choice(what: str, value: Any, valid: tuple[str, ...]) -> None:
    """Raise a ConfigError naming ``value``, the closest valid name and every valid one."""
    if value not in valid:
        near = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"{what} {value!r} is unknown{hint}; choose one of: {', '.join(valid)}")


def check_consistency(cfg: Config) -> None:
    """Cross-field checks of a whole Config (names, ranges, tuning seeds never reported)."""
    check_choice("dataset", cfg.dataset, typing.get_args(Dataset))
    check_choice("model", cfg.model, typing.get_args(Model))
    for name in ("n_train", "n_test"):
        n = getattr(cfg, name)
        if n is not None and n < 10:
            raise ConfigError(f"'{name}' must be at least 10 (one image of each class) or None (all), got {n}")
    if isinstance(cfg.embedding_points, bool) or not isinstance(cfg.embedding_points, int) or cfg.embedding_points < 10:
        raise ConfigError(f"'embedding_points' must be an integer >= 10, got {cfg.embedding_points!r}")
    if not 0 < cfg.clean_fraction <= 1:
        raise ConfigError(f"'clean_fraction' must be in (0, 1], got {cfg.clean_fraction}")
    if not 0 <= cfg.target < 10:
        raise ConfigError(f"'target' must be a class index 0..9, got {cfg.target}")
    t = cfg.train
    for name, ok, need in (
        ("epochs", t.epochs >= 1, "an integer >= 1"),
        ("batch_size", t.batch_size >= 1, "an integer >= 1"),
        ("eval_batch_size", t.eval_batch_size >= 1, "an integer >= 1"),
        ("lr", t.lr > 0 and math.isfinite(t.lr), "a finite number > 0"),
        ("momentum", 0 <= t.momentum < 1, "in [0, 1)"),
        ("weight_decay", t.weight_decay >= 0, "a number >= 0"),
        ("crop_pad", t.crop_pad >= 0, "an integer >= 0"),
    ):
        if not ok:
            raise ConfigError(f"'train.{name}' must be {need}, got {getattr(t, name)!r}")
    for name, seeds in (("seeds", cfg.seeds), ("extra_seeds", cfg.extra_seeds)):
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds):
            raise ConfigError(f"'{name}' must be non-negative integers, got {list(seeds)}")
        shared = sorted(set(cfg.tuning.seeds) & set(seeds))
        if shared:
            raise ConfigError(f"'tuning.seeds' must never be reported: seed(s) {shared} are also in '{name}'")
    if not cfg.tuning.seeds or not cfg.tuning.attacks:
        raise ConfigError("'tuning.seeds' and 'tuning.attacks' must not be empty")
    if cfg.tuning.defenses is not None and not cfg.tuning.defenses:
        raise ConfigError("'tuning.defenses' must name at least one defense, or be None (every defense)")
    g = cfg.tuning.grid_points
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 2):
        raise ConfigError(f"'tuning.grid_points' must be an integer >= 2 or None (every value), got {g!r}")
    n = cfg.tuning.other_attack_seeds
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"'tuning.other_attack_seeds' must be an integer >= 1 or None (all tuning seeds), got {n!r}")


def as_dict(cfg: Any) -> Any:
    """A JSON-ready view of a Config (or any nested dataclass / mapping)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: as_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: as_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, tuple):
        return [as_dict(v) for v in cfg]
    return cfg


__all__ = [
    "Config",
    "TrainConfig",
    "TuningConfig",
    "ConfigError",
    "PROFILES",
    "DEVICES",
    "Dataset",
    "Model",
    "check_choice",
    "replace_fields",
    "check_consistency",
    "override",
    "as_dict",
]
