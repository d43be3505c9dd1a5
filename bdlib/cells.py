"""One way to run a cell: an (attack, seed, defense[, setting, clean budget]) cell, its
computation, and its row.

A :class:`Cell` names everything that sets one result apart from the profile's: the attack,
the seed, the defense (or one of the rows every defense is read against, :data:`BASELINES`),
the defender's clean budget and the defense's ``Params`` fields changed from the profile's. The
grid, the comparison protocol, NT-ML's readings sweep and the notebooks' tables all build cells
and read their rows through :func:`run`, so every row has the same fields:

* always ``attack``, ``defense``, ``seed``, ``BA``, ``ASR``, ``RA``, ``DER``, ``seconds``, and
  ``diverged`` (the message) when the defense's training diverged;
* ``clean_fraction`` when the cell names its clean budget (the grid's cells);
* ``setting`` (its label), ``BA_before``, ``ASR_before`` and ``cost`` (BA points lost) when the
  cell names a setting (the protocol's and the readings sweep's cells).

:func:`run` first has the missing results computed on this machine's worker processes
(:mod:`bdlib.pool`), then reads every row from the store in order; :func:`runs` does the same
and returns the stored runs themselves, for the notebooks that draw a defense's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from bdlib import experiment, pool
from bdlib.config import Config, override

UNDEFENDED = "undefended"
# The clean model (never poisoned) under the attack's test trigger: each attack's ASR floor.
CLEAN = "clean model"
BASELINES = (UNDEFENDED, CLEAN)  # the rows every defense is read against; neither depends on the budget


@dataclass(frozen=True)
class Cell:
    attack: str
    defense: str  # a registered defense, or one of BASELINES
    seed: int
    clean_fraction: float | None = None  # the defender's clean data; None: the profile's
    # The defense's Params fields that differ from the profile's, as (field, value) pairs.
    setting: tuple[tuple[str, Any], ...] | None = None
    name: str | None = None  # the setting's label in the row; None: :func:`label` of ``setting``

    @property
    def label(self) -> str | None:
        """The setting's name in the row (None for a cell without a setting)."""
        if self.setting is None:
            return None
        return self.name or label(dict(self.setting))


def tuning_cell(defense: str, attack: str, seed: int, setting: Mapping[str, Any], name: str | None = None) -> Cell:
    """A cell of the protocol or of the readings sweep: ``defense`` at ``setting`` (Params fields)."""
    return Cell(attack, defense, seed, setting=tuple(setting.items()), name=name)


def label(setting: Mapping[str, Any]) -> str:
    """A short name of a setting: ``rho=0.5``, ``betas=100``, ``reading=suppress, ml_data=clean``."""

    def fmt(v: Any) -> str:
        if isinstance(v, tuple) and len(set(v)) == 1:
            v = v[0]
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in setting.items())


def config(cfg: Config, cell: Cell) -> Config:
    """``cfg`` for one cell: its attack, seed, clean budget and setting."""
    c = experiment.with_run(cfg, attack=cell.attack, seed=cell.seed)
    changes: dict[str, Any] = {}
    if cell.clean_fraction is not None:
        changes["clean_fraction"] = cell.clean_fraction
    if cell.setting:
        changes |= {f"defenses.{cell.defense}.{k}": v for k, v in cell.setting}
    return override(c, changes)


def job(cfg: Config, cell: Cell) -> pool.Job:
    """The stored computation behind one cell (for :func:`bdlib.pool.results`)."""
    c = config(cfg, cell)
    if cell.defense == UNDEFENDED:
        return (experiment.poisoned_model, (c,))
    if cell.defense == CLEAN:
        return (experiment.trigger_floor, (c,))
    return (experiment.defend, (c, cell.defense))


def diverged_field(run: Any) -> dict[str, str]:
    """``{"diverged": message}`` for a run whose training diverged (its metrics are NaN), else {}:
    the row of a diverged cell says so, and every table, figure and verdict reads it."""
    return {"diverged": run.diverged["message"]} if getattr(run, "diverged", None) else {}


def row(cell: Cell, run: Any) -> dict[str, Any]:
    """The row of ``cell`` computed as ``run`` (see the module's docstring for its fields)."""
    out: dict[str, Any] = {"attack": cell.attack, "defense": cell.defense, "seed": cell.seed}
    if cell.clean_fraction is not None:
        out["clean_fraction"] = cell.clean_fraction
    if cell.defense in BASELINES:
        return {**out, **run.metrics, "DER": 0.5, "seconds": run.seconds}
    if cell.setting is not None:
        out |= {"setting": cell.label, "BA_before": run.before["BA"], "ASR_before": run.before["ASR"]}
        out |= {**run.metrics, "cost": run.before["BA"] - run.metrics["BA"]}
    else:
        out |= run.metrics
    return {**out, "seconds": run.seconds, **diverged_field(run)}


def run_cell(cfg: Config, cell: Cell) -> dict[str, Any]:
    """One cell's row; computed once, then read from the store."""
    fn, args = job(cfg, cell)
    return row(cell, fn(*args))


def run(cfg: Config, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Every cell's row, in order: what the store lacks is computed on this machine's worker
    processes first (:func:`bdlib.pool.results`; one per core, unless ``BDLIB_WORKERS`` says otherwise)."""
    got = runs(cfg, cells)
    return [row(cell, got[cell]) for cell in cells]


def runs(cfg: Config, cells: Sequence[Cell]) -> dict[Cell, Any]:
    """The stored run of every cell (a :class:`bdlib.experiment.DefenseRun` for a defense), for
    the notebooks that draw a defense's record; what the store lacks computed as :func:`run` says."""
    jobs = {cell: job(cfg, cell) for cell in cells}
    return dict(zip(jobs, pool.results(list(jobs.values()))))


def defended(
    cfg: Config, defense: str, attacks: Sequence[str], seeds: Sequence[int], setting: Mapping[str, Any] | None = None
) -> dict[tuple[str, int], Any]:
    """``defense`` (at ``setting``, Params fields) on every attack and seed: ``{(attack, seed): run}``."""
    made = {
        (a, s): Cell(a, defense, s, setting=None if setting is None else tuple(setting.items()))
        for a in attacks
        for s in seeds
    }
    got = runs(cfg, list(made.values()))
    return {k: got[c] for k, c in made.items()}


__all__ = [
    "UNDEFENDED",
    "CLEAN",
    "BASELINES",
    "Cell",
    "tuning_cell",
    "label",
    "config",
    "job",
    "diverged_field",
    "row",
    "run_cell",
    "run",
    "runs",
    "defended",
]
