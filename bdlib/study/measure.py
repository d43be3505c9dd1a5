"""The notebooks' measurements beyond a cell's row: the runs and rows they show, computed once.

Every defense a notebook runs is a cell of :mod:`bdlib.cells` (a setting, a clean budget, the
NT-ML teacher or τ are the cell's); the undefended model of an attack and seed is its
``UNDEFENDED`` cell, the clean model under the attack's trigger its ``CLEAN`` cell. What is not a
cell (the clean model itself, Narcissus at the paper's budget, a trigger, the data) comes from
:mod:`bdlib.experiment`'s cached stages, and inference (confidences, target scores, features) runs
on the stored models. Each function computes what the store lacks first, on this machine's
worker processes where several are started (:mod:`bdlib.pool`), then reads every result in order.

The functions return runs (``{key: run}``, a run's ``record`` holding the defense's own results),
rows of metrics, or records of tensors; :mod:`bdlib.report` turns them into tables, figure rows and
notes. Also here, by the study's rules: which reference recipes meet the companion's bar, which
cells get extra seeds, and the cells of the clean-budget comparison.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from bdlib import attacks, cells, experiment, pool
from bdlib.cells import CLEAN, UNDEFENDED, Cell, tuning_cell
from bdlib.config import Config, override
from bdlib.study import claims, grid, tune
from bdlib.study.readings import VARIANT_VALUES, variant_setting, variants
from bdlib.train import amp_dtype, logits

PAPER_RATE = 0.0005  # Narcissus' poisoning rate in its paper (0.05 %), beside the profile's


def _setting(setting: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    return None if setting is None else tuple(setting.items())


def kernels(cfg: Config) -> str:
    """How this run's training computes on its device, in words: bf16 autocast or float32,
    deterministic kernels or cudnn.benchmark, torch.compile (for ``report.common.describe``)."""
    dtype = amp_dtype(torch.device(cfg.device))
    return (
        f"{'bf16 autocast' if dtype is not None else 'float32'}, "
        f"{'deterministic kernels' if cfg.deterministic else 'cudnn.benchmark'}"
        f"{', torch.compile' if cfg.compile else ''}"
    )


def class_names(cfg: Config) -> tuple[str, ...]:
    """The dataset's class names."""
    return experiment.run_data(cfg).classes


# --- notebook 01


def trigger_examples(cfg: Config, names: Sequence[str], index: int | None = None) -> list[dict]:
    """One test image per attack, clean and with the test-time trigger (gallery rows).

    The image is the first non-target test image (or ``index``), the same for every attack.
    """
    d = experiment.run_data(cfg)
    i = index if index is not None else int(torch.nonzero(d.y_test != cfg.target)[0])
    runs = [experiment.with_run(cfg, attack=name) for name in names]
    triggers = pool.results([(experiment.trigger, (c,)) for c in runs])  # an optimised one on the pool
    rows = []
    for name, c, (_, trig) in zip(names, runs, triggers):
        transform = attacks.get(name).test_transform(trig, c.attack_params)
        clean = d.x_test[i : i + 1]
        rows.append({"attack": name, "clean": clean[0], "poisoned": transform(clean)[0]})
    return rows


def poisoning_rows(cfg: Config, names: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """BA / ASR / RA of the clean model and of each attack's poisoned model (its ``UNDEFENDED``
    cell), per seed, with the seconds each trained and the poisoned samples' count."""
    clean = [(experiment.clean_model, (experiment.with_run(cfg, seed=s),)) for s in seeds]
    victims = [cells.job(cfg, Cell(a, UNDEFENDED, s)) for s in seeds for a in names]
    got = iter(pool.results(clean + victims))
    clean_runs = {s: next(got) for s in seeds}
    rows = []
    for seed in seeds:
        run = clean_runs[seed]
        rows.append({"model": "clean", "seed": seed, **run.metrics, "seconds": run.seconds})
        for name in names:
            run = next(got)
            rows.append(
                {
                    "model": name,
                    "seed": seed,
                    **run.metrics,
                    "seconds": run.seconds,
                    "n_poisoned": run.meta["n_poisoned"],
                }
            )
    return rows


def narcissus_control(cfg: Config, seeds: Sequence[int], paper_rate: float = PAPER_RATE) -> list[dict]:
    """Narcissus at the profile's poisoning rate and at the paper's, and a clean model under its
    trigger (the ``CLEAN`` cell), per seed: ``budget`` ("profile", "paper", "clean model"), the
    ``poison_rate`` (None for the clean model), the seed, BA / ASR / RA.

    Narcissus' test trigger (δ ×3) can fool a model that was never poisoned: the clean model's
    ASR under it is the control that separates backdoor from adversarial perturbation.
    """
    profile = {s: Cell("narcissus", UNDEFENDED, s) for s in seeds}
    paper = {s: override(cells.config(cfg, profile[s]), {"attacks.narcissus.poison_rate": paper_rate}) for s in seeds}
    jobs = [j for s in seeds for j in (cells.job(cfg, profile[s]), (experiment.poisoned_model, (paper[s],)))]
    jobs += [cells.job(cfg, Cell("narcissus", CLEAN, s)) for s in seeds]
    got = pool.results(jobs)
    rate, n = cfg.attacks["narcissus"].poison_rate, len(seeds)
    rows = []
    for i, seed in enumerate(seeds):
        run, at_paper, control = got[2 * i], got[2 * i + 1], got[2 * n + i]
        rows += [
            {"budget": "profile", "poison_rate": rate, "seed": seed, **run.metrics},
            {"budget": "paper", "poison_rate": paper_rate, "seed": seed, **at_paper.metrics},
            {"budget": "clean model", "poison_rate": None, "seed": seed, **control.metrics},
        ]
    return rows


def attack_embeddings(cfg: Config, names: Sequence[str]) -> list[dict]:
    """t-SNE panels (:func:`bdlib.plots.embeddings`) of the poisoned models of ``names``, each
    titled with its attack."""
    got = pool.results([(experiment.feature_embedding, (experiment.with_run(cfg, attack=n),)) for n in names])
    return [{"title": n, **e} for n, e in zip(names, got)]


# --- a defense on every attack and seed (notebooks 02 to 05)


def defense_rows(
    cfg: Config,
    defense: str,
    names: Sequence[str],
    seeds: Sequence[int],
    setting: Mapping[str, Any] | None = None,
) -> tuple[list[dict], dict[tuple[str, int], experiment.DefenseRun]]:
    """``defense`` (at ``setting``, its Params fields) on each attack and seed (its cells,
    :func:`bdlib.cells.defended`): rows of BA / ASR / RA undefended and defended, and the runs."""
    runs = cells.defended(cfg, defense, names, seeds, setting)
    rows = []
    for name in names:
        for seed in seeds:
            r = runs[(name, seed)]
            rows.append({"attack": name, "seed": seed, "model": UNDEFENDED, **r.before})
            row = {"attack": name, "seed": seed, "model": defense, **r.metrics, "seconds": r.seconds}
            rows.append({**row, **cells.diverged_field(r)})
    return rows, runs


def _cell_runs(cfg: Config, made: Mapping[Any, Cell]) -> dict[Any, Any]:
    """``{key: stored run}`` of the cells ``made`` (``{key: cell}``), computed as :func:`bdlib.cells.runs`."""
    got = cells.runs(cfg, list(made.values()))
    return {k: got[c] for k, c in made.items()}


def _same_run(run: experiment.DefenseRun, defense: str, setting: Mapping[str, Any] | None = None) -> Cell:
    """The cell of ``defense`` (at ``setting``) on ``run``'s attack and seed."""
    return Cell(run.cfg.attack, defense, run.cfg.seed, setting=_setting(setting))


# --- NT-ML (notebooks 02 and 03)


def confidences(cfg: Config, named_models: Mapping[str, nn.Module], n: int = 1000) -> dict:
    """Each model's probability of the true class and of the target class on up to ``n`` clean
    and ``n`` poisoned samples of this run's poisoned training set."""
    p = experiment.poisoned_model(cfg).poisoned
    true_y = experiment.run_data(cfg).y_train
    gen = torch.Generator().manual_seed(cfg.seed)
    groups = {}
    for name, mask in (("clean samples", ~p.poison_idx), ("poisoned samples", p.poison_idx)):
        idx = torch.nonzero(mask).flatten()
        groups[name] = idx[torch.randperm(len(idx), generator=gen)[:n]]
    out: dict = {}
    for model_name, model in named_models.items():
        out[model_name] = {}
        for g, idx in groups.items():
            prob = logits(model, p.x[idx], cfg.train.eval_batch_size).softmax(1)
            out[model_name][g] = {
                "true class": prob[torch.arange(len(idx)), true_y[idx]].numpy(),
                "target class": prob[:, cfg.target].numpy(),
            }
    return out


def nt_confidences(run: experiment.DefenseRun) -> dict:
    """:func:`confidences` of M0, the KD teacher and the NT student of an NT-ML run (the KD
    teacher from the same run's cell with ``teacher="kd"`` when the run's teacher is M0)."""
    c = run.cfg
    if c.defenses["ntml"].teacher == "kd":
        kd = run
    else:
        kd = _cell_runs(c, {"kd": _same_run(run, "ntml", {"teacher": "kd"})})["kd"]
    named = {
        "poisoned model M0": experiment.poisoned_model(c).model,
        "KD teacher": kd.record.nt_teacher,
        "NT student": run.record.nt_student,
    }
    return confidences(c, named)


def target_scores(cfg: Config, named_models: Mapping[str, nn.Module]) -> list[dict]:
    """Each model's output for the target class on the non-target test images, clean and with
    the attack's test trigger: mean probability, mean logit, and the mean margin of the target
    logit over the largest other logit (positive: the target wins).

    NT-ML's diagnosis: the NT student never gets a gradient on the target column of a poisoned
    sample (its given label is masked), so nothing in the NT stage holds that output down.
    """
    run = experiment.poisoned_model(cfg)
    d = experiment.run_data(cfg)
    keep = d.y_test != cfg.target
    rows = []
    for name, model in named_models.items():
        for images, transform in (("clean", None), ("triggered", run.test_trigger)):
            z = logits(model, d.x_test[keep], cfg.train.eval_batch_size, transform=transform)
            others = z.clone()
            others[:, cfg.target] = float("-inf")
            rows.append(
                {
                    "attack": cfg.attack,
                    "seed": cfg.seed,
                    "model": name,
                    "images": images,
                    "p_target": 100.0 * z.softmax(1)[:, cfg.target].mean().item(),
                    "logit_target": z[:, cfg.target].mean().item(),
                    "margin": (z[:, cfg.target] - others.max(1).values).mean().item(),
                }
            )
    return rows


def reading_diagnosis(
    cfg: Config, names: Sequence[str], seeds: Sequence[int], readings: Sequence[str] | None = None
) -> list[dict]:
    """:func:`target_scores` of M0 and, per NT-ML reading (None: every reading the readings sweep
    tries), its NT student and final student, on each attack and seed: where each reading leaves
    the target. The runs are the readings sweep's own cells (``readings.variant_sweep``: the
    Params defaults but the reading, the knob at its default), whatever the profile runs, on the
    attacks of ``names`` the sweep runs (``cfg.tuning.variant_attacks``; None: all of them)."""
    readings = list(VARIANT_VALUES["reading"] if readings is None else readings)
    swept = cfg.tuning.variant_attacks
    names = [a for a in names if swept is None or a in swept]
    defaults = variants()[0]

    def cell(a: str, s: int, reading: str) -> Cell:
        return tuning_cell("ntml", a, s, variant_setting({**defaults, "reading": reading}))

    runs = _cell_runs(cfg, {(a, s, r): cell(a, s, r) for a in names for s in seeds for r in readings})
    rows = []
    for a in names:
        for s in seeds:
            c = experiment.with_run(cfg, attack=a, seed=s)
            models = {"M0": experiment.poisoned_model(c).model}
            for r in readings:
                models[f"NT student ({r})"] = runs[(a, s, r)].record.nt_student
                models[f"final ({r})"] = runs[(a, s, r)].model
            rows += target_scores(c, models)
    return rows


def tau_runs(run: experiment.DefenseRun, taus: Sequence[float]) -> dict[float, experiment.DefenseRun]:
    """NT-ML at each τ on ``run``'s attack and seed (its cells): ``{tau: run}``."""
    return _cell_runs(run.cfg, {tau: _same_run(run, "ntml", {"tau": tau}) for tau in taus})


def budget_runs(
    cfg: Config, attack: str, budgets: Sequence[float], seeds: Sequence[int]
) -> dict[tuple[float, int, str], experiment.DefenseRun]:
    """NT-ML and fine-tuning at each clean-data budget (fraction of the training set) and seed:
    ``{(fraction, seed, defense): run}``."""
    made = {(b, s, d): Cell(attack, d, s, clean_fraction=b) for b in budgets for s in seeds for d in ("ntml", "ft")}
    return _cell_runs(cfg, made)


def ablation_runs(cfg: Config, attack: str, seed: int) -> dict[str, experiment.DefenseRun]:
    """NT-ML's free choices one at a time (the other teacher, τ = 2, λ = 0 and 2) beside its
    default and fine-tuning on the same clean data, on one attack and seed: ``{variant: run}``."""
    other = {"kd": ("teacher = M0", "poisoned"), "poisoned": ("teacher = KD", "kd")}[cfg.defenses["ntml"].teacher]
    variants: dict[str, dict[str, Any] | None] = {
        "default": None,
        other[0]: {"teacher": other[1]},
        "τ = 2": {"tau": 2.0},
        "λ = 0": {"lam": 0.0},
        "λ = 2": {"lam": 2.0},
    }
    made = {k: Cell(attack, "ntml", seed, setting=_setting(v)) for k, v in variants.items()}
    return _cell_runs(cfg, {**made, "fine-tuning": Cell(attack, "ft", seed)})


def ledger(cfg: Config, defense: str, names: Sequence[str], seeds: Sequence[int]) -> list:
    """The claims ledger of ``defense`` on the grid of ``names`` × ``seeds`` at the profile's budget."""
    made = grid.cells(names, [*grid.BASELINES, defense], seeds, [cfg.clean_fraction])
    return claims.ledger(grid.run(cfg, made), defense=defense)


# --- NONE (notebook 04) and MCLDef (notebook 05): what a defense's record is read against


def _for_each(runs: Mapping[tuple[str, int], Any], fn: Callable[[Config], Any]) -> dict[tuple[str, int], Any]:
    return {k: fn(run.cfg) for k, run in runs.items()}


def poison_indices(runs: Mapping[tuple[str, int], experiment.DefenseRun]) -> dict[tuple[str, int], torch.Tensor]:
    """The true poison index (a sample mask) of each run's poisoned training set."""
    return _for_each(runs, lambda c: experiment.poisoned_model(c).poisoned.poison_idx)


def training_set(cfg: Config) -> dict[str, Any]:
    """This run's poisoned training set: images ``x``, ``poison_idx``, true labels ``y`` and the
    dataset's ``classes`` (what a defense's flags are read against)."""
    d, poisoned = experiment.run_data(cfg), experiment.poisoned_model(cfg).poisoned
    return {"x": poisoned.x, "poison_idx": poisoned.poison_idx, "y": d.y_train, "classes": d.classes}


def true_triggers(
    runs: Mapping[tuple[str, int], experiment.DefenseRun], seed: int
) -> dict[tuple[str, int], torch.Tensor]:
    """Per run of ``seed``: the attack's test trigger as the triggered minus the clean image, on the
    first non-target test image."""

    def diff(c: Config) -> torch.Tensor:
        d = experiment.run_data(c)
        x0 = d.x_test[d.y_test != c.target][:1]
        return experiment.poisoned_model(c).test_trigger(x0)[0].float() - x0[0].float()

    return _for_each({k: r for k, r in runs.items() if k[1] == seed}, diff)


def before_after_embeddings(run: experiment.DefenseRun, label: str) -> list[dict]:
    """t-SNE panels of the backdoored model and of ``run``'s defended model (titled ``label``)."""
    return [
        {"title": "backdoored", **experiment.feature_embedding(run.cfg)},
        {"title": label, **experiment.feature_embedding(run.cfg, model=run.model)},
    ]


# --- the comparison (notebook 06)


def reference_rows(tuning: Sequence[Mapping], max_cost: float, attack: str | None = None) -> list[dict]:
    """Per tuned defense, its reference recipe (``tune.reference``) on the tuning seeds (of
    ``attack`` only, when given): mean ASR, worst BA cost, and whether it is within ``max_cost``
    and meets the companion's ASR bar (``claims.BAR_ASR``)."""
    if attack is not None:
        tuning = [r for r in tuning if r["attack"] == attack]
    out = []
    for d in dict.fromkeys(r["defense"] for r in tuning):
        agg, ref = tune.aggregate(r for r in tuning if r["defense"] == d), tune.reference(d)
        if ref in agg:
            a = agg[ref]
            ok = a["cost"] <= max_cost and a["ASR"] <= claims.BAR_ASR
            out.append({"defense": d, "reference": ref, "ASR": a["ASR"], "cost": a["cost"], "defends": ok})
    return out


def extra_seed_cells(rows: Sequence[Mapping], seeds: Sequence[int], clean_fraction: float) -> list[Cell]:
    """Grid cells that add ``seeds`` to every attack × defense cell whose seeds disagree by more
    than ``claims.SPREAD`` ASR points (with the undefended model and the floor of those attacks
    and seeds), so such a cell's verdict rests on more seeds; the rule is the same for every
    defense."""
    spread = claims.spread_out_cells(rows)
    have = {(r["attack"], r["defense"], r["seed"]) for r in rows}
    out = []
    for attack, defense in spread:
        if defense in grid.BASELINES:  # the floor's own spread is the trigger's, not a defense's
            continue
        for d in dict.fromkeys([*grid.BASELINES, defense]):
            out += [Cell(attack, d, s, clean_fraction) for s in seeds if (attack, d, s) not in have]
            have |= {(attack, d, s) for s in seeds}
    return out


def budget_cells(cfg: Config, sweep: Any, reported: Sequence[int]) -> list[Cell]:
    """Grid cells of the clean-budget comparison (``sweep``: ``report.comparisons.budget_sweep``)
    that the main grid (the profile's budget, the ``reported`` seeds) does not already hold."""
    made = grid.cells(sweep.attacks, sweep.defenses, sweep.seeds, sweep.fractions)
    return [x for x in made if x.clean_fraction != cfg.clean_fraction or x.seed not in reported]


__all__ = [
    "PAPER_RATE",
    "kernels",
    "class_names",
    "trigger_examples",
    "poisoning_rows",
    "narcissus_control",
    "attack_embeddings",
    "defense_rows",
    "confidences",
    "nt_confidences",
    "target_scores",
    "reading_diagnosis",
    "tau_runs",
    "budget_runs",
    "ablation_runs",
    "ledger",
    "poison_indices",
    "training_set",
    "true_triggers",
    "before_after_embeddings",
    "reference_rows",
    "extra_seed_cells",
    "budget_cells",
]
