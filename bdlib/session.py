"""A notebook's set-up inside its kernel: parameters validated, data checked, device picked,
everything seeded.

:func:`setup` is ``bdlib.setup``, the first call of every notebook (and of a Dask worker's cell):
it returns the frozen Config every later call takes. First it does what only a Jupyter kernel
allows (:func:`prepare`), whoever started the kernel:

* **Refuse unknown papermill parameters.** papermill only warns about a name the notebook does
  not have (``papermill nb.ipynb out.ipynb -p atack badnets``) and runs everything. Its
  injected cell (tagged ``injected-parameters``, first line ``# Parameters``) runs right after
  the notebook's own ``parameters`` cell, so the kernel's input history holds both: a name the
  injected cell sets that the parameters cell does not is refused here, before any work.
* **Report cells** to the runner's side channel (``bdlib.progress``).
* **Quiet known noise**: Dask's nanny warning that a worker "is still alive … killing" when a
  ``LocalCluster`` closes; bdlib's own warnings are left alone.

Outside a kernel (a script, the tests) those kernel functions do nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import warnings
from typing import Any, Sequence

from bdlib import attacks, data, figures, progress
from bdlib.config import Config, ConfigError
from bdlib.profiles import resolve
from bdlib.store import check_root
from bdlib.train import configure, seed_everything, select_device

INJECTED_HEADER = "# Parameters"  # papermill's first line of the cell it injects


def assigned_names(source: str) -> list[str]:
    """The names a cell assigns at top level, in order (``a = 1`` and ``a: int = 1``)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return []
    names = []
    for node in body:
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def check_injected_parameters(history: Sequence[str]) -> None:
    """Raise ConfigError if papermill's injected cell (the last in ``history``, the kernel's
    cell sources in execution order) sets a name the cell run before it does not define."""
    for i in range(len(history) - 1, 0, -1):
        if history[i].lstrip().startswith(INJECTED_HEADER):
            injected, defaults = assigned_names(history[i]), assigned_names(history[i - 1])
            break
    else:
        return
    if not defaults:  # no parameters cell ran before it: nothing to compare with
        return
    unknown = [n for n in injected if n not in defaults]
    if unknown:
        raise ConfigError(
            f"papermill set {', '.join(repr(n) for n in unknown)}, which this notebook does not take "
            f"(papermill only warns); its parameters are: {', '.join(defaults)}"
        )


def _literals(source: str) -> dict[str, Any] | None:
    """``{name: value}`` of a cell made only of literal assignments (a parameters cell, papermill's
    injected cell); None for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    out: dict[str, Any] = {}
    for node in body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            return None
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            return None
    return out or None


def ran_parameters(history: Sequence[str]) -> dict[str, Any] | None:
    """The parameter values the notebook runs with, from the kernel's cell sources in execution
    order (the current cell last): the last earlier cell made only of literal assignments (the
    parameters cell, as it ran: edited or not), updated with papermill's injected cell where one
    ran right after it. None where no such cell ran."""
    earlier = list(history[:-1])
    for i in range(len(earlier) - 1, -1, -1):
        values = _literals(earlier[i])
        if values is None:
            continue
        if earlier[i].lstrip().startswith(INJECTED_HEADER) and i > 0:
            base = _literals(earlier[i - 1])
            return {**base, **values} if base is not None else values
        return values
    return None


def parameters_of_kernel() -> dict[str, Any] | None:
    """:func:`ran_parameters` of the running kernel; None outside a kernel."""
    shell = progress.kernel_shell()
    if shell is None:
        return None
    return ran_parameters([h for h in (shell.user_ns.get("In") or []) if h])


class _DropNannyKill(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "still alive" not in record.getMessage()


def quiet_dask() -> None:
    """Drop the nanny's shutdown warning of a closing LocalCluster (a worker killed on purpose)."""
    log = logging.getLogger("distributed.nanny")
    if not any(isinstance(f, _DropNannyKill) for f in log.filters):
        log.addFilter(_DropNannyKill())


def _cell_number(shell: Any) -> int:
    # IPython counts the running cell before running it: during (and just before) cell N,
    # ``execution_count`` is already N + 1.
    return shell.execution_count - 1


def _cell_started(info: Any = None) -> None:
    shell = progress.kernel_shell()
    progress.set_cell(_cell_number(shell) if shell is not None else None)


def prepare() -> None:
    """Called by :func:`setup`: the three things above (refuse unknown papermill parameters,
    report cells, quiet known noise), when running in a kernel."""
    shell = progress.kernel_shell()
    if shell is None:
        return
    check_injected_parameters(shell.user_ns.get("In") or [])
    callbacks = shell.events.callbacks["pre_run_cell"]
    if _cell_started not in callbacks:
        shell.events.register("pre_run_cell", _cell_started)
    progress.set_cell(_cell_number(shell))
    quiet_dask()


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
    prepare()  # in a notebook: refuse unknown papermill parameters, report cells to the runner
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
    figures.start_clock(parameters_of_kernel())
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
