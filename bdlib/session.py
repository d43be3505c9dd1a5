"""A notebook's set-up: parameters validated, data checked, device picked, everything seeded.

:func:`setup` is ``bdlib.setup``, the first call of every notebook (and of a Dask worker's cell):
it returns the frozen Config every later call takes.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

from bdlib import attacks, data, figures, kernel
from bdlib.config import Config
from bdlib.profiles import resolve
from bdlib.store import check_root
from bdlib.train import configure, seed_everything, select_device


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
    check_root()  # a store that is not a writable directory: refused before any training
    cfg = dataclasses.replace(cfg, device=dev.type)
    configure(cfg.deterministic, cfg.compile)
    seed_everything(cfg.seed)
    check_data(cfg, attack_names)
    note = cpu_estimate(cfg)
    if note:
        warnings.warn(note, stacklevel=2)
    figures.start_clock(kernel.parameters_of_kernel())
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
