"""What the notebooks call: the data of a run, clean and poisoned models, defended models.

Every expensive result goes through the store under a key built from everything that
determines it (config fields, upstream keys, data fingerprint, code salt), so a second run —
or a later notebook — finds it instead of recomputing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from bdlib import attacks, data, defenses, metrics, models, progress
from bdlib.attacks.base import Poisoned, Trigger, TriggerContext
from bdlib.config import Config, as_dict
from bdlib.defenses.base import DefenseContext, record_from_store, record_to_store
from bdlib.store import Store, module_hash, tensors_digest, tensors_under
from bdlib.train import TrainingDiverged, features, fit, seed_everything, select_device

DATA_SEED = 0  # the train / test subsets are the same for every run seed: seeds vary the attack and training


def with_run(cfg: Config, **changes: Any) -> Config:
    """The same config for another attack and/or seed (validated)."""
    if "attack" in changes:
        attacks.get(changes["attack"])
    return dataclasses.replace(cfg, **changes)


@functools.lru_cache(maxsize=1)
def store() -> Store:
    return Store()


# The one-thread rule: every stored result computed on a CPU is computed by one thread (torch's
# intra-op pool, and the OpenMP and BLAS pools numpy and scikit-learn use), so a stored CPU result
# is the same on any number of cores and in any number of bdlib.pool's worker processes. Two
# threads sum in another order, and the last bits can move a defense on a knife-edge far
# (benchmarks/README.md, "Both cores"); the pool's two single-thread workers make up the speed.
CPU_THREADS = 1


@contextlib.contextmanager
def stored_threads(cfg: Config):
    """Inside: the thread count of a stored result's computation (:data:`CPU_THREADS` on the CPU;
    a GPU's kernels are untouched). Restored after."""
    if select_device(cfg.device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        with threadpool_limits(CPU_THREADS):
            yield
    finally:
        torch.set_num_threads(before)


def _stored(cfg: Config, kind: str, spec: dict, compute: Callable[[], Any]):
    """The store's entry for ``(kind, spec)``; a missing one computed under :func:`stored_threads`."""

    def under_rule():
        with stored_threads(cfg):
            return compute()

    return store().get_or_compute(kind, spec, under_rule)


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


@dataclass(frozen=True)
class ModelFactory:
    """Freshly initialised models of a run's architecture, by seed, on its device.

    What a defense is handed to build a new model: the architecture and nothing else of the run.
    The weights are drawn from the CPU generator seeded with ``seed`` inside ``fork_rng``, so
    building a model leaves the global random state as it was.
    """

    model: str
    dataset: str
    in_channels: int
    num_classes: int
    device: str

    def __call__(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = models.build(self.model, self.in_channels, self.num_classes, self.dataset)
        # channels_last on every device: 1.4x the CPU training and ~2x the CPU inference speed of
        # the small CNN (benchmarks/README.md), and the layout CUDA's bf16 kernels want.
        return m.to(torch.device(self.device)).to(memory_format=torch.channels_last)


def model_factory(cfg: Config) -> ModelFactory:
    d = run_data(cfg)
    device = cfg.device if cfg.device != "auto" else select_device("auto").type
    return ModelFactory(cfg.model, cfg.dataset, d.shape[0], d.num_classes, device)


def new_model(cfg: Config, seed: int) -> nn.Module:
    """A freshly initialised model for this config, seeded, on the config's device."""
    return model_factory(cfg)(seed)


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
        return models.cpu_state(m), {"metrics": ev, "history": hist}

    e = _stored(cfg, "clean_model", spec, compute)
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
        "code": module_hash(atk.make_trigger),
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

    e = _stored(cfg, "trigger", spec, compute)
    return e.key, e.tensors


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
        "code": module_hash(atk.apply),
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
        return models.cpu_state(m), {"metrics": ev, "history": hist, "n_poisoned": int(p.poison_idx.sum())}

    e = _stored(cfg, "poisoned_model", spec, compute)
    return PoisonRun(
        e.key, _load_model(cfg, e.tensors), e.meta["metrics"], e.meta["seconds"], e.meta, p, trig, test_trigger
    )


def trigger_floor(cfg: Config) -> ModelRun:
    """The clean model (never poisoned) of this run's seed under the attack's test trigger: the
    ASR no defense can be expected to go below, since a model that never saw a poison reaches it
    (Narcissus' amplified trigger fools a clean model too). Evaluation only; the model is cached."""
    run, victim = clean_model(cfg), poisoned_model(cfg)
    d = run_data(cfg)
    ev = metrics.evaluate(run.model, d.x_test, d.y_test, cfg.target, victim.test_trigger, cfg.train.eval_batch_size)
    return ModelRun(run.key, run.model, ev, run.seconds, run.meta)


def clean_subset(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The defender's clean data: a stratified ``clean_fraction`` of the unpoisoned training subset."""
    d = run_data(cfg)
    n = max(d.num_classes, int(round(cfg.clean_fraction * len(d.y_train))))
    idx = data.subset(d.x_train, d.y_train, n, cfg.seed + 1000)
    return d.x_train[idx], d.y_train[idx]


@dataclass
class DefenseRun(ModelRun):
    """A defended model (``metrics``: after the defense, with DER), the undefended model's
    metrics (``before``), the config it ran under, and the defense's own ``Record`` (flagged
    samples, inverted triggers, stage models, per-epoch rows: see each defense's module)."""

    defense: str
    before: dict[str, float]
    cfg: Config
    record: Any

    @property
    def diverged(self) -> dict[str, Any] | None:
        """Where the defense's training diverged (attack, seed, stage, epoch, lr, message); None if
        it finished. A diverged run has no model and no record; its metrics are NaN."""
        return self.meta.get("diverged")


_REPORTED: set[str] = set()  # diverged results already reported to the runner by this process


def lr_fields(defense: str) -> list[str]:
    """The dotted names of a defense's learning-rate fields (``lr`` or ``*_lr``)."""
    return [
        f"defenses.{defense}.{f.name}"
        for f in dataclasses.fields(defenses.get(defense).Params)
        if f.name == "lr" or f.name.endswith("_lr")
    ]


def divergence(cfg: Config, defense: str, err: TrainingDiverged) -> dict[str, Any]:
    """What a diverged defense cell records: where (attack, seed, stage, epoch), at which lr, and a
    message naming the defense's own lr field(s) to lower."""
    params = cfg.defenses[defense]
    fields = lr_fields(defense)
    at = [f for f in fields if getattr(params, f.rsplit(".", 1)[1]) == err.lr] or fields
    knob = " or ".join(f"{f} (now {getattr(params, f.rsplit('.', 1)[1]):g})" for f in at) or "its learning rate"
    message = (
        f"{defense} diverged on the {cfg.attack} victim, seed {cfg.seed}: {err.stage}, epoch {err.epoch}/{err.epochs}, "
        f"lr {err.lr:g}; recorded as a diverged cell (a failure of {defense}); to avoid it lower {knob}"
    )
    return {
        "attack": cfg.attack,
        "seed": cfg.seed,
        "stage": err.stage,
        "epoch": err.epoch,
        "lr": err.lr,
        "lr_fields": at,
        "message": message,
    }


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
        "code": module_hash(dfn.run),
    }

    def evaluate(model: nn.Module) -> dict[str, float]:
        return metrics.evaluate(model, d.x_test, d.y_test, cfg.target, victim.test_trigger, cfg.train.eval_batch_size)

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
            nets = {role: m for role, m in found.items() if not isinstance(m, torch.Tensor)}
            arrays = {role: t.detach().cpu() for role, t in found.items() if isinstance(t, torch.Tensor)}
            tensors = {f"{role}.{k}": v for role, m in nets.items() for k, v in models.cpu_state(m).items()}
            tensors.update({f"tensor.{role}": t for role, t in arrays.items()})
            return tensors, {"meta": meta, "roles": sorted(nets), "tensor_roles": sorted(arrays)}

        e = _stored(cfg, "defense_stage", full, compute_stage)
        loaded = {role: _load_model(cfg, tensors_under(e.tensors, role)) for role in e.meta["roles"]}
        loaded.update({role: e.tensors[f"tensor.{role}"] for role in e.meta.get("tensor_roles", [])})
        return loaded, e.meta["meta"]

    def compute():
        seed_everything(cfg.seed)
        # The defender's data go to the device once; every loop of the defense reads them there.
        dev = torch.device(cfg.device)
        ctx = DefenseContext(
            params=params,
            train=cfg.train,
            x_train=victim.poisoned.x.to(dev),
            y_train=victim.poisoned.y.to(dev),
            x_clean=x_clean.to(dev),
            y_clean=y_clean.to(dev),
            num_classes=d.num_classes,
            seed=cfg.seed,
            new_model=model_factory(cfg),
            evaluate=evaluate,
            memo=memo,
            progress=cfg.progress,
            target=cfg.target if dfn.needs_target else None,  # only a declared grant (Defense.needs_target)
        )
        start = time.perf_counter()
        try:
            with progress.task(f"{defense} on the {cfg.attack} victim, seed {cfg.seed}"):
                out = dfn.run(_load_model(cfg, models.cpu_state(victim.model)), ctx)
        except TrainingDiverged as err:
            # A result, not a crash: stored as diverged (a rerun does not train it again), drawn and
            # judged as a failure of the defense; the runner lists it.
            diverged = divergence(cfg, defense, err)
            seconds = time.perf_counter() - start
            return {}, {
                "metrics": None,
                "before": victim.metrics,
                "DER": None,
                "seconds": seconds,
                "diverged": diverged,
            }
        seconds = time.perf_counter() - start
        after = evaluate(out.model)
        record_tensors, record_meta = record_to_store(out.record)
        meta = {
            "metrics": after,
            "before": victim.metrics,
            "DER": metrics.der(victim.metrics, after),
            "seconds": seconds,
            "record": record_meta,
        }
        tensors = {f"model.{k}": v for k, v in models.cpu_state(out.model).items()}
        tensors.update({f"record.{k}": v for k, v in record_tensors.items()})
        return tensors, meta

    e = _stored(cfg, "defended_model", spec, compute)
    if e.meta.get("diverged"):
        if e.key not in _REPORTED:  # loaded from the store: the runner lists it all the same
            progress.diverged(e.meta["diverged"]["message"])
        _REPORTED.add(e.key)
        nan = float("nan")
        after = {"BA": nan, "ASR": nan, "RA": nan, "DER": nan}
        return DefenseRun(e.key, None, after, e.meta["seconds"], e.meta, defense, e.meta["before"], cfg, None)
    record = record_from_store(
        dfn.Record, tensors_under(e.tensors, "record"), e.meta["record"], functools.partial(_load_model, cfg)
    )
    after = dict(e.meta["metrics"], DER=e.meta["DER"])
    return DefenseRun(
        e.key,
        _load_model(cfg, tensors_under(e.tensors, "model")),
        after,
        e.meta["seconds"],
        e.meta,
        defense,
        e.meta["before"],
        cfg,
        record,
    )


def feature_embedding(
    cfg: Config, n: int | None = None, poisoned_n: int | None = None, model: nn.Module | None = None
) -> dict:
    """A 2-D t-SNE of penultimate features of training samples, poisoned ones included.

    Takes ``n`` clean samples (default ``cfg.embedding_points``) and up to ``poisoned_n`` poisoned
    ones (default a tenth of ``n``) of this run's poisoned set, embedded with the poisoned model
    (or ``model``, e.g. a defended one).
    """
    from sklearn.manifold import TSNE

    n = cfg.embedding_points if n is None else n
    poisoned_n = n // 10 if poisoned_n is None else poisoned_n

    run = poisoned_model(cfg)
    p = run.poisoned
    gen = torch.Generator().manual_seed(cfg.seed)
    clean_idx = torch.nonzero(~p.poison_idx).flatten()
    pois_idx = torch.nonzero(p.poison_idx).flatten()
    clean_idx = clean_idx[torch.randperm(len(clean_idx), generator=gen)[:n]]
    pois_idx = pois_idx[torch.randperm(len(pois_idx), generator=gen)[:poisoned_n]]
    idx = torch.cat([clean_idx, pois_idx])
    model = model or run.model
    spec = {
        "poisoned_run": run.key,
        "weights": tensors_digest(models.cpu_state(model)),
        "n": n,
        "poisoned_n": poisoned_n,
        "seed": cfg.seed,
        "code": module_hash(feature_embedding),
    }

    def compute():
        feats = features(model, p.x[idx], cfg.train.eval_batch_size).numpy()
        # perplexity 30, or less where there are too few points for it (it must stay below n)
        perplexity = min(30.0, max(1.0, (len(feats) - 1) / 3))
        points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=cfg.seed).fit_transform(feats)
        return {"points": torch.from_numpy(points)}, {}

    points = _stored(cfg, "tsne", spec, compute).tensors["points"].numpy()
    labels = run_data(cfg).y_train[idx].numpy()  # true classes, so poisoned points show where they came from
    poisoned = p.poison_idx[idx].numpy()
    return {"points": points, "labels": labels, "poisoned": poisoned}
