"""What the notebooks call: the data of a run, clean and poisoned models, defended models.

Every expensive result goes through the store under a key built from everything that
determines it (config fields, upstream keys, data fingerprint, code salt), so a second run —
or a later notebook — finds it instead of recomputing it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bdlib import attacks, data, defenses, figures, kernel, metrics, models, progress
from bdlib.attacks.base import Poisoned, Trigger, TriggerContext
from bdlib.config import Config, as_dict, resolve
from bdlib.defenses.base import DefenseContext
from bdlib.store import Store, source_hash
from bdlib.train import configure, fit, seed_everything, select_device

DATA_SEED = 0  # the train / test subsets are the same for every run seed: seeds vary the attack and training


def setup(
    profile: str = "quick",
    attack: str = "badnets",
    seed: int = 0,
    device: str = "auto",
    overrides: dict | None = None,
    progress: bool | None = None,
    attack_names: str | Sequence[str] = "all",
) -> Config:
    """Validate a notebook's parameters, check its data, seed everything, and pick the device.

    Returns the frozen Config every later call takes. ``device='auto'`` is resolved here. Every
    dataset the profile will need for ``attack_names`` (default: all attacks) is loaded now, so a
    missing one fails here, before any training, in one message (:func:`check_data`). On the
    CPU, a profile that would take hours there says so (:func:`cpu_estimate`).
    """
    kernel.prepare()  # in a notebook: refuse unknown papermill parameters, report cells to the runner
    if progress is None:
        progress = os.environ.get("BDLIB_PROGRESS", "1") != "0"
    cfg = resolve(profile, attack=attack, seed=seed, device=device, overrides=overrides, progress=progress)
    dev = select_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=dev.type)
    configure(cfg.deterministic, cfg.compile)
    seed_everything(cfg.seed)
    check_data(cfg, attack_names)
    note = cpu_estimate(cfg)
    if note:
        warnings.warn(note, stacklevel=2)
    figures.start_clock()
    return cfg


def required_datasets(cfg: Config, attack_names: str | Sequence[str] = "all") -> list[str]:
    """The datasets a run of these attacks on this config loads: the profile's own, and CIFAR-100
    where Narcissus' surrogate trains on it (``pood = "cifar100"``, the paper profile)."""
    if attack_names == "all":
        names = list(cfg.attacks)
    else:
        names = [attack_names] if isinstance(attack_names, str) else list(attack_names)
        for name in names:
            attacks.get(name)  # raises, naming the valid attacks
    needed = [cfg.dataset]
    if any(getattr(cfg.attacks[n], "pood", None) == "cifar100" for n in names):
        needed.append("cifar100")
    return needed


def check_data(cfg: Config, attack_names: str | Sequence[str] = "all") -> None:
    """Load every dataset :func:`required_datasets` names; raise one ``DataNotFound`` naming each
    missing one, its files, where to put them and ``$BDLIB_DATA``."""
    missing = []
    for name in required_datasets(cfg, attack_names):
        try:
            data.load(name)
        except data.DataNotFound as err:
            missing.append(f"- {err}")
    if missing:
        raise data.DataNotFound(
            f"profile {cfg.profile!r} needs data that is not here (checked before any training; "
            f"BDLIB_DATA={data.data_root()}):\n" + "\n".join(missing)
        )


# ResNet-18 training images per second on a 2-core x86-64 CPU: 9-10 measured on one (loaded) thread
# with benchmarks/train_throughput.py --model resnet18 --device cpu (issue #16); 20 for both cores.
CPU_TRAIN_RATE = {"resnet18": 20.0, "preact_resnet18": 20.0}


def cpu_estimate(cfg: Config) -> str | None:
    """A warning for the CPU when one standard training of this config would take over an hour."""
    if cfg.device != "cpu" or cfg.model not in CPU_TRAIN_RATE:
        return None
    n = cfg.n_train or len(data.load(cfg.dataset).y_train)
    hours = cfg.train.epochs * n / CPU_TRAIN_RATE[cfg.model] / 3600
    if hours < 1:
        return None
    return (
        f"profile {cfg.profile!r} on the CPU: one standard training ({cfg.model}, {cfg.train.epochs} epochs "
        f"x {n:,} images) takes about {hours:,.0f} h at ~{CPU_TRAIN_RATE[cfg.model]:.0f} images/s "
        f"(a 2-core CPU), and each notebook trains several such models: days in all. Run it on a GPU "
        f"(device='cuda'), or use profile 'quick'."
    )


def with_run(cfg: Config, **changes: Any) -> Config:
    """The same config for another attack and/or seed (validated)."""
    if "attack" in changes:
        attacks.get(changes["attack"])
    return dataclasses.replace(cfg, **changes)


@functools.lru_cache(maxsize=1)
def store() -> Store:
    return Store()


@dataclass(frozen=True)
class RunData:
    """The images a run uses: the training subset, the test subset, attacker-held extra data."""

    dataset: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_aux: torch.Tensor  # training images outside the subset (never seen by the victim)
    y_aux: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@functools.lru_cache(maxsize=4)
def _run_data(dataset: str, n_train: int | None, n_test: int | None) -> RunData:
    ds = data.load(dataset)
    tr = data.subset(ds.x_train, ds.y_train, n_train, DATA_SEED)
    te = data.subset(ds.x_test, ds.y_test, n_test, DATA_SEED)
    rest = torch.ones(len(ds.y_train), dtype=torch.bool)
    rest[tr] = False
    aux = torch.nonzero(rest).flatten()
    fp = f"{ds.fingerprint()}:{n_train}:{n_test}:{DATA_SEED}"
    return RunData(
        dataset,
        ds.x_train[tr].contiguous(),
        ds.y_train[tr].contiguous(),
        ds.x_test[te].contiguous(),
        ds.y_test[te].contiguous(),
        ds.x_train[aux].contiguous(),
        ds.y_train[aux].contiguous(),
        ds.classes,
        fp,
    )


def run_data(cfg: Config) -> RunData:
    return _run_data(cfg.dataset, cfg.n_train, cfg.n_test)


def new_model(cfg: Config, seed: int) -> nn.Module:
    """A freshly initialised model for this config, seeded, on the config's device.

    The weights are drawn from the CPU generator seeded with ``seed`` inside ``fork_rng``, so
    building (or loading) a model leaves the global random state as it was.
    """
    d = run_data(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = models.build(cfg.model, d.shape[0], d.num_classes, cfg.dataset)
    dev = torch.device(cfg.device if cfg.device != "auto" else select_device("auto"))
    # channels_last on every device: 1.4x the CPU training and ~2x the CPU inference speed of
    # the small CNN (benchmarks/README.md), and the layout CUDA's bf16 kernels want.
    return m.to(dev).to(memory_format=torch.channels_last)


def _train_spec(cfg: Config) -> dict:
    return {
        "dataset": cfg.dataset,
        "n_train": cfg.n_train,
        "n_test": cfg.n_test,
        "model": cfg.model,
        "train": as_dict(cfg.train),
        "data": run_data(cfg).fingerprint,
    }


def _load_model(cfg: Config, tensors: dict[str, torch.Tensor], seed: int = 0) -> nn.Module:
    m = new_model(cfg, seed)
    m.load_state_dict(tensors)
    return m.eval()


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored under ``prefix.`` (one store entry holds several), prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


@dataclass
class ModelRun:
    """A trained model with its metrics and store key."""

    key: str
    model: nn.Module
    metrics: dict[str, float]
    seconds: float
    meta: dict


def clean_model(cfg: Config, seed: int | None = None) -> ModelRun:
    """The model trained on the clean training subset with the profile's standard training."""
    seed = cfg.seed if seed is None else seed
    d = run_data(cfg)
    spec = {**_train_spec(cfg), "seed": seed}

    def compute():
        m = new_model(cfg, seed)
        hist = fit(
            m,
            d.x_train,
            d.y_train,
            cfg.train,
            seed=seed,
            progress=cfg.progress,
            desc=f"training the clean model, seed {seed}",
        )
        ev = metrics.evaluate(m, d.x_test, d.y_test, cfg.target, None, cfg.train.eval_batch_size)
        return _state(m), {"metrics": ev, "history": hist}

    e = store().get_or_compute("clean_model", spec, compute)
    return ModelRun(e.key, _load_model(cfg, e.tensors), e.meta["metrics"], e.meta["seconds"], e.meta)


def trigger(cfg: Config) -> tuple[str, Trigger]:
    """The attack's trigger tensors for this run (optimised ones are trained once and cached)."""
    atk, params = attacks.get(cfg.attack), cfg.attack_params
    d = run_data(cfg)
    # The poison rate decides how many samples carry the trigger, never the trigger itself, so
    # a budget sweep (e.g. Narcissus at the paper's 0.05%) reuses the optimised trigger.
    trigger_params = {k: v for k, v in as_dict(params).items() if k != "poison_rate"}
    spec = {
        "attack": cfg.attack,
        "params": trigger_params,
        "target": cfg.target,
        "seed": cfg.seed,
        "shape": list(d.shape),
        "data": d.fingerprint,
        "code": _module_hash(atk.make_trigger),
    }
    clean: Callable[[], nn.Module] | None = None
    if atk.needs_clean_model:
        clean_run = clean_model(cfg)
        spec["clean_model"] = clean_run.key
        clean = lambda: clean_run.model  # noqa: E731

    def compute():
        ctx = TriggerContext(
            params=params,
            target=cfg.target,
            seed=cfg.seed,
            shape=d.shape,
            num_classes=d.num_classes,
            x_train=d.x_train,
            y_train=d.y_train,
            x_aux=d.x_aux,
            y_aux=d.y_aux,
            clean_model=clean,
            train_model=functools.partial(_train_fresh, cfg),
            device=torch.device(cfg.device),
        )
        with progress.task(f"making the {cfg.attack} trigger, seed {cfg.seed}"):
            return atk.make_trigger(ctx), {}

    e = store().get_or_compute("trigger", spec, compute)
    return e.key, e.tensors


def _module_hash(fn: Callable) -> str:
    """The source hash of the bdlib module defining ``fn`` (an attack's or defense's own file)."""
    import inspect
    from pathlib import Path

    path = Path(inspect.getfile(fn)).resolve()
    return source_hash(path.relative_to(Path(__file__).resolve().parent).as_posix())


def _train_fresh(cfg: Config, x: torch.Tensor, y: torch.Tensor, seed: int, **changes) -> nn.Module:
    m = new_model(cfg, seed)
    fit(m, x, y, cfg.train, seed=seed, progress=cfg.progress, **changes)
    return m


@dataclass
class PoisonRun(ModelRun):
    """A model trained on a poisoned training set, with the poisoned data and the trigger."""

    poisoned: Poisoned
    trigger: Trigger
    test_trigger: Callable[[torch.Tensor], torch.Tensor]


def poisoned_data(cfg: Config) -> tuple[str, Poisoned, Trigger]:
    """The poisoned training set for this run (recomputed cheaply from the cached trigger)."""
    tkey, trig = trigger(cfg)
    d = run_data(cfg)
    p = attacks.get(cfg.attack).poison_dataset(d.x_train, d.y_train, cfg.attack_params, trig, cfg.target, cfg.seed)
    return tkey, p, trig


def poisoned_model(cfg: Config) -> PoisonRun:
    """Train (or load) the victim model on the poisoned set; BA, ASR and RA on the test subset."""
    tkey, p, trig = poisoned_data(cfg)
    atk = attacks.get(cfg.attack)
    d = run_data(cfg)
    test_trigger = atk.test_transform(trig, cfg.attack_params)
    spec = {
        **_train_spec(cfg),
        "seed": cfg.seed,
        "trigger": tkey,
        "attack": cfg.attack,
        "params": as_dict(cfg.attack_params),
        "target": cfg.target,
        "code": _module_hash(atk.apply),
    }

    def compute():
        m = new_model(cfg, cfg.seed)
        hist = fit(
            m,
            p.x,
            p.y,
            cfg.train,
            seed=cfg.seed,
            progress=cfg.progress,
            desc=f"training the {cfg.attack} victim, seed {cfg.seed}",
        )
        ev = metrics.evaluate(m, d.x_test, d.y_test, cfg.target, test_trigger, cfg.train.eval_batch_size)
        return _state(m), {"metrics": ev, "history": hist, "n_poisoned": int(p.poison_idx.sum())}

    e = store().get_or_compute("poisoned_model", spec, compute)
    return PoisonRun(
        e.key, _load_model(cfg, e.tensors), e.meta["metrics"], e.meta["seconds"], e.meta, p, trig, test_trigger
    )


def clean_subset(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The defender's clean data: a stratified ``clean_fraction`` of the unpoisoned training subset."""
    d = run_data(cfg)
    n = max(d.num_classes, int(round(cfg.clean_fraction * len(d.y_train))))
    idx = data.subset(d.x_train, d.y_train, n, cfg.seed + 1000)
    return d.x_train[idx], d.y_train[idx]


@dataclass
class DefenseRun(ModelRun):
    defense: str
    before: dict[str, float]
    history: list[dict]
    tensors: dict[str, torch.Tensor]
    info: dict


def defend(cfg: Config, defense: str) -> DefenseRun:
    """Apply a defense to this run's poisoned model (cached); metrics before and after, DER."""
    dfn = defenses.get(defense)
    params = cfg.defenses[defense]
    victim = poisoned_model(cfg)
    d = run_data(cfg)
    x_clean, y_clean = clean_subset(cfg)
    spec = {
        "defense": defense,
        "params": as_dict(params),
        "victim": victim.key,
        "seed": cfg.seed,
        "clean_fraction": cfg.clean_fraction,
        "code": _module_hash(dfn.run),
    }
    evaluate = functools.partial(
        metrics.evaluate,
        x=d.x_test,
        y=d.y_test,
        target=cfg.target,
        trigger=victim.test_trigger,
        batch_size=cfg.train.eval_batch_size,
    )

    def memo(name: str, stage_spec: dict, stage: Callable[[], tuple[dict[str, nn.Module], dict]]):
        full = {
            "defense": defense,
            "stage": name,
            "spec": stage_spec,
            "victim": victim.key,
            "seed": cfg.seed,
            "code": spec["code"],
        }

        def compute_stage():
            found, meta = stage()
            models = {role: m for role, m in found.items() if not isinstance(m, torch.Tensor)}
            arrays = {role: t.detach().cpu() for role, t in found.items() if isinstance(t, torch.Tensor)}
            tensors = {f"{role}.{k}": v for role, m in models.items() for k, v in _state(m).items()}
            tensors.update({f"tensor.{role}": t for role, t in arrays.items()})
            return tensors, {"meta": meta, "roles": sorted(models), "tensor_roles": sorted(arrays)}

        e = store().get_or_compute("defense_stage", full, compute_stage)
        loaded = {role: _load_model(cfg, _under(e.tensors, role)) for role in e.meta["roles"]}
        loaded.update({role: e.tensors[f"tensor.{role}"] for role in e.meta.get("tensor_roles", [])})
        return loaded, e.meta["meta"]

    def compute():
        seed_everything(cfg.seed)
        # The defender's data go to the device once; every loop of the defense reads them there.
        dev = torch.device(cfg.device)
        ctx = DefenseContext(
            params=params,
            cfg=cfg,
            x_train=victim.poisoned.x.to(dev),
            y_train=victim.poisoned.y.to(dev),
            x_clean=x_clean.to(dev),
            y_clean=y_clean.to(dev),
            num_classes=d.num_classes,
            seed=cfg.seed,
            new_model=functools.partial(new_model, cfg),
            evaluate=lambda m: evaluate(m),
            memo=memo,
            progress=cfg.progress,
        )
        start = time.perf_counter()
        with progress.task(f"{defense} on the {cfg.attack} victim, seed {cfg.seed}"):
            out = dfn.run(_load_model(cfg, _state(victim.model)), ctx)
        seconds = time.perf_counter() - start
        after = evaluate(out.model)
        meta = {
            "metrics": after,
            "before": victim.metrics,
            "DER": metrics.der(victim.metrics, after),
            "history": out.history,
            "info": out.info,
            "seconds": seconds,
            "record_keys": sorted(out.tensors),
        }
        tensors = {f"model.{k}": v for k, v in _state(out.model).items()}
        tensors.update({f"record.{k}": v.detach().cpu().contiguous() for k, v in out.tensors.items()})
        return tensors, meta

    e = store().get_or_compute("defended_model", spec, compute)
    model_state, record = _under(e.tensors, "model"), _under(e.tensors, "record")
    after = dict(e.meta["metrics"], DER=e.meta["DER"])
    return DefenseRun(
        e.key,
        _load_model(cfg, model_state),
        after,
        e.meta["seconds"],
        e.meta,
        defense,
        e.meta["before"],
        e.meta["history"],
        record,
        e.meta["info"],
    )


def record_model(cfg: Config, run: DefenseRun, role: str) -> nn.Module:
    """A model a defense kept in its record under ``role`` (e.g. NT-ML's ``nt_student``)."""
    state = _under(run.tensors, role)
    if not state:
        roles = sorted({k.split(".")[0] for k in run.tensors})
        raise ValueError(f"{run.defense} recorded no model {role!r}; it recorded: {', '.join(roles)}")
    return _load_model(cfg, state)
