"""What notebooks show: tables, summaries and figure rows read from the cached results.

Nothing here computes or stores a result (that is ``bdlib.experiment``), so editing a table does
not invalidate the store. Defense results are read through each defense's typed ``Record``
(``run.record.flagged``, ``run.record.mask``, ...). Rows for :func:`bdlib.plots.curves` are
long: one row per x value and line, the line's legend label in ``"series"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from bdlib import attacks, claims, defenses, grid, metrics, pool, tune
from bdlib.config import Config, as_dict, override
from bdlib.experiment import (
    DefenseRun,
    clean_model,
    defend,
    feature_embedding,
    poisoned_model,
    run_data,
    trigger,
    with_run,
)
from bdlib.train import amp_dtype, logits


def describe(cfg: Config, methods: Sequence[str] = (), seeds: Sequence[int] | None = None) -> str:
    """The profile's values a notebook prints, so that nothing it ran with is silent.

    ``seeds`` are the seeds the notebook runs (:func:`seed_list` of its ``seeds`` parameter);
    None prints the profile's.
    """
    dtype = amp_dtype(torch.device(cfg.device))
    kernels = (
        f"{'bf16 autocast' if dtype is not None else 'float32'}, "
        f"{'deterministic kernels' if cfg.deterministic else 'cudnn.benchmark'}"
        f"{', torch.compile' if cfg.compile else ''}"
    )
    lines = [
        f"profile {cfg.profile}: {cfg.dataset}, {cfg.model}, "
        f"train n={cfg.n_train or 'all'}, test n={cfg.n_test or 'all'}, device {cfg.device} ({kernels})",
        f"training: {as_dict(cfg.train)}",
        f"target class {cfg.target}, clean data {cfg.clean_fraction:.1%} of the training set, "
        f"seeds {seed_list(cfg, seeds)}",
    ]
    for name in methods:
        group = cfg.attacks if name in cfg.attacks else cfg.defenses
        lines.append(f"{name}: {as_dict(group[name])}")
    return "\n".join(lines)


def _names(spec: str | Sequence[str], registry: dict, get) -> list[str]:
    if spec == "all":
        return list(registry)
    names = [spec] if isinstance(spec, str) else list(spec)
    for n in names:
        get(n)  # raises, naming the valid choices
    return names


def attack_names(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every registered attack; otherwise the names, each validated."""
    return _names(spec, attacks.REGISTRY, attacks.get)


def defense_names(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every registered defense; otherwise the names, each validated."""
    return _names(spec, defenses.REGISTRY, defenses.get)


def seed_list(cfg: Config, seeds: Sequence[int] | None) -> list[int]:
    """The notebook's ``seeds`` parameter, or the profile's seeds when it is None."""
    return _checked_seeds(cfg.seeds if seeds is None else seeds, "seeds", seeds)


def _checked_seeds(chosen: Sequence[int], name: str, given: object) -> list[int]:
    chosen = list(chosen)
    if not chosen or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in chosen):
        raise ValueError(f"{name} must be a non-empty list of non-negative integers, got {given!r}")
    return chosen


def trigger_examples(cfg: Config, names: Sequence[str], index: int | None = None) -> list[dict]:
    """One test image per attack, clean and with the test-time trigger (gallery rows).

    The image is the first non-target test image (or ``index``), the same for every attack.
    """
    d = run_data(cfg)
    i = index if index is not None else int(torch.nonzero(d.y_test != cfg.target)[0])
    rows = []
    for name in names:
        c = with_run(cfg, attack=name)
        _, trig = trigger(c)
        transform = attacks.get(name).test_transform(trig, c.attack_params)
        clean = d.x_test[i : i + 1]
        rows.append({"attack": name, "clean": clean[0], "poisoned": transform(clean)[0]})
    return rows


def poisoning_table(cfg: Config, names: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """BA / ASR / RA of the clean model and of each attack's poisoned model, per seed."""
    jobs = [(clean_model, (with_run(cfg, seed=s),)) for s in seeds]
    jobs += [(poisoned_model, (with_run(cfg, seed=s, attack=a),)) for s in seeds for a in names]
    pool.prefetch(jobs)
    rows = []
    for seed in seeds:
        c = with_run(cfg, seed=seed)
        clean = clean_model(c)
        rows.append({"model": "clean", "seed": seed, **clean.metrics, "seconds": clean.seconds})
        for name in names:
            run = poisoned_model(with_run(c, attack=name))
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


def summarize(
    rows: Sequence[dict], by: str = "model", keys: Sequence[str] = ("BA", "ASR", "RA")
) -> dict[str, dict[str, list[float]]]:
    """``{group: {metric: [mean, std]}}`` over the rows of each group (std over seeds)."""
    out: dict[str, dict[str, list[float]]] = {}
    for group in dict.fromkeys(r[by] for r in rows):
        ms = metrics.mean_std([r for r in rows if r[by] == group], keys)
        out[group] = {k: [round(m, 2), round(s, 2)] for k, (m, s) in ms.items()}
    return out


def summary_table(summary: dict[str, dict[str, list[float]]]):
    """A pandas table of ``mean ± std`` strings from :func:`summarize`, for display."""
    import pandas as pd

    return pd.DataFrame({g: {k: f"{m:.1f} ± {s:.1f}" for k, (m, s) in v.items()} for g, v in summary.items()}).T


def confidences(cfg: Config, named_models: dict[str, nn.Module], n: int = 1000) -> dict:
    """Each model's probability of the true class and of the target class on up to ``n`` clean
    and ``n`` poisoned samples of this run's poisoned training set."""
    p = poisoned_model(cfg).poisoned
    true_y = run_data(cfg).y_train
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


def defense_rows(
    cfg: Config, defense: str, names: Sequence[str], seeds: Sequence[int], overrides: dict | None = None
) -> tuple[list[dict], dict[tuple[str, int], DefenseRun]]:
    """Run ``defense`` on each attack and seed; rows of BA/ASR/RA undefended and defended."""
    rows, runs = [], {}
    cfgs = {(a, s): override(with_run(cfg, attack=a, seed=s), overrides or {}) for a in names for s in seeds}
    pool.prefetch(pool.defend_jobs([(c, defense) for c in cfgs.values()]))
    for name in names:
        for seed in seeds:
            c = cfgs[(name, seed)]
            r = defend(c, defense)
            runs[(name, seed)] = r
            rows.append({"attack": name, "seed": seed, "model": "undefended", **r.before})
            row = {"attack": name, "seed": seed, "model": defense, **r.metrics, "seconds": r.seconds}
            rows.append({**row, **grid.diverged_field(r)})
    return rows, runs


def finished(runs: dict[tuple[str, int], DefenseRun]) -> dict[tuple[str, int], DefenseRun]:
    """The runs whose training did not diverge (a diverged run has no model and no record)."""
    return {k: r for k, r in runs.items() if not getattr(r, "diverged", None)}


def flagged_examples(run: DefenseRun, n: int = 8) -> tuple[dict, dict, dict[str, int]]:
    """Poisoned training images a defense flagged ("caught") and did not ("missed").

    ``run``'s record has a ``flagged`` sample mask (NONE's). Returns up to ``n`` images per group
    for :func:`bdlib.plots.image_rows`, their true classes as captions, and the missed poisons
    counted by true class.
    """
    d = run_data(run.cfg)
    poisoned = poisoned_model(run.cfg).poisoned
    flagged = run.record.flagged
    groups = {"caught": poisoned.poison_idx & flagged, "missed": poisoned.poison_idx & ~flagged}
    rows, captions = {}, {}
    for label, mask in groups.items():
        idx = torch.nonzero(mask).flatten()[:n]
        rows[label] = poisoned.x[idx]
        captions[label] = [d.classes[int(c)] for c in d.y_train[idx]]
    missed = d.y_train[groups["missed"]]
    return rows, captions, {name: int((missed == c).sum()) for c, name in enumerate(d.classes)}


def narcissus_control(cfg: Config, seeds: Sequence[int], paper_rate: float = 0.0005) -> list[dict]:
    """Narcissus at the profile's budget and at the paper's, and a clean model under its trigger.

    Narcissus' test trigger (δ ×3) can fool a model that was never poisoned: the clean model's
    ASR under it is the control that separates backdoor from adversarial perturbation.
    """
    from bdlib.metrics import evaluate

    cfgs = {s: with_run(cfg, attack="narcissus", seed=s) for s in seeds}
    paper_cfgs = {s: override(c, {"attacks.narcissus.poison_rate": paper_rate}) for s, c in cfgs.items()}
    jobs = [(fn, (c,)) for s in seeds for fn, c in ((poisoned_model, cfgs[s]), (poisoned_model, paper_cfgs[s]))]
    pool.prefetch(jobs + [(clean_model, (c,)) for c in cfgs.values()])
    rows = []
    for seed in seeds:
        c = cfgs[seed]
        run = poisoned_model(c)
        paper = poisoned_model(paper_cfgs[seed])
        d = run_data(c)
        control = evaluate(
            clean_model(c).model, d.x_test, d.y_test, c.target, run.test_trigger, c.train.eval_batch_size
        )
        rate = c.attack_params.poison_rate
        rows += [
            {"setting": f"profile budget ({rate:.2%})", "seed": seed, **run.metrics},
            {"setting": f"paper budget ({paper_rate:.2%})", "seed": seed, **paper.metrics},
            {"setting": "clean model, same trigger", "seed": seed, **control},
        ]
    return rows


def target_scores(cfg: Config, named_models: dict[str, nn.Module]) -> list[dict]:
    """Each model's output for the target class on the non-target test images, clean and with
    the attack's test trigger: mean probability, mean logit, and the mean margin of the target
    logit over the largest other logit (positive: the target wins).

    NT-ML's diagnosis: the NT student never gets a gradient on the target column of a poisoned
    sample (its given label is masked), so nothing in the NT stage holds that output down.
    """
    run = poisoned_model(cfg)
    d = run_data(cfg)
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


def extra_seed_cells(rows: Sequence[dict], seeds: Sequence[int], clean_fraction: float) -> list:
    """Grid cells that add ``seeds`` to every attack × defense cell whose seeds disagree by more
    than ``claims.SPREAD`` ASR points (with the undefended model of those attacks and seeds),
    so such a cell's verdict rests on more seeds; the rule is the same for every defense."""
    spread = claims.spread_out_cells(rows)
    have = {(r["attack"], r["defense"], r["seed"]) for r in rows}
    out = []
    for attack, defense in spread:
        if defense in grid.BASELINES:  # the floor's own spread is the trigger's, not a defense's
            continue
        for d in dict.fromkeys([*grid.BASELINES, defense]):
            out += [grid.Cell(attack, d, s, clean_fraction) for s in seeds if (attack, d, s) not in have]
            have |= {(attack, d, s) for s in seeds}
    return out


def der_table(rows: Sequence[dict]):
    """DER ``mean ± std`` per attack (rows) and defense (columns), from grid rows."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r["defense"] not in grid.BASELINES])
    der = df.groupby(["attack", "defense"], sort=False)["DER"].agg(["mean", "std"]).fillna(0.0).round(3)
    return (der["mean"].astype(str) + " ± " + der["std"].astype(str)).unstack("defense")


def reference_rows(tuning: Sequence[dict], max_cost: float) -> list[dict]:
    """Per tuned defense, its reference recipe (``tune.reference``) on the tuning seeds: mean ASR,
    worst BA cost, and whether it is within the BA bar and meets the companion's ASR bar."""
    out = []
    for d in dict.fromkeys(r["defense"] for r in tuning):
        agg, ref = tune.aggregate(r for r in tuning if r["defense"] == d), tune.reference(d)
        if ref in agg:
            a = agg[ref]
            ok = a["cost"] <= max_cost and a["ASR"] <= claims.BAR_ASR
            out.append({"defense": d, "reference": ref, "ASR": a["ASR"], "cost": a["cost"], "defends": ok})
    return out


def reference_note(tuning: Sequence[dict], max_cost: float) -> str:
    """In words, which defenses fail the companion's bar even at their reference recipe."""
    rows = reference_rows(tuning, max_cost)
    failing = [r["defense"] for r in rows if not r["defends"]]
    bar = f"mean ASR ≤ {claims.BAR_ASR:g} % within {max_cost:g} BA points"
    lines = [
        f"{r['defense']} at its reference recipe ({r['reference']}): mean ASR {r['ASR']:.1f} %, worst BA cost {r['cost']:.1f}"
        for r in rows
    ]
    verdict = f"fail the companion's bar ({bar}) even at their reference recipe, on the tuning seeds: " + (
        ", ".join(failing) or "none"
    )
    return "\n".join([*lines, verdict])


# BackdoorBench's published BadNets ASR (%) after each baseline: CIFAR-10, PreAct-ResNet-18, 5 % clean
# data; BackdoorBench v1's README table, as quoted in this project's issue #31 (the current README
# links a leaderboard instead). A different setting from quick's: shown beside, never compared as equal.
BACKDOORBENCH_BADNETS_ASR = {"ft": 1.48, "nad": 2.14, "anp": 0.73}


def backdoorbench_table(tuning: Sequence[dict], max_cost: float, attack: str = "badnets"):
    """Each baseline at its reference recipe on ``attack`` (quick's tuning seeds) beside
    BackdoorBench's published number, as a pandas table; labelled as the different settings they are."""
    import pandas as pd

    mine = [r for r in tuning if r["attack"] == attack]
    rows = []
    for r in reference_rows(mine, max_cost):
        published = BACKDOORBENCH_BADNETS_ASR.get(r["defense"])
        rows.append(
            {
                "defense": r["defense"],
                "reference recipe": r["reference"],
                f"bdlib {attack} ASR (this profile, tuning seeds)": round(r["ASR"], 1),
                "bdlib BA cost": round(r["cost"], 1),
                f"BackdoorBench {attack} ASR (CIFAR-10, PreAct-ResNet-18)": published if published else "not quoted",
            }
        )
    return pd.DataFrame(rows).set_index("defense")


def protocol_table(chosen: dict, variant: dict | None = None):
    """The comparison protocol's choice per defense, as a pandas table."""
    import pandas as pd

    rows = [
        {
            "defense": d,
            "chosen setting": c["setting"],
            "mean ASR (tuning seeds)": round(c["ASR"], 1),
            "worst BA cost": round(c["cost"], 2),
            "within the BA bar": c["qualified"],
            "reference recipe": tune.reference(d) if d in defenses.REGISTRY else "",
        }
        for d, c in chosen.items()
    ]
    if variant is not None:
        rows.insert(
            0,
            {
                "defense": "ntml (variant)",
                "chosen setting": variant["setting"],
                "mean ASR (tuning seeds)": round(variant["ASR"], 1),
                "worst BA cost": round(variant["cost"], 2),
                "within the BA bar": variant["qualified"],
            },
        )
    return pd.DataFrame(rows).set_index("defense")


def variant_table(rows: Sequence[dict]):
    """NT-ML variants (rows) × attacks (columns): ``ASR (BA cost)`` means over seeds, plus each
    variant's mean DER and worst BA cost over the attacks."""
    import pandas as pd

    df = pd.DataFrame(rows)
    cell = df.groupby(["setting", "attack"], sort=False)[["ASR", "cost"]].mean()
    table = (cell["ASR"].round(1).astype(str) + " (" + cell["cost"].round(1).astype(str) + ")").unstack("attack")
    per_attack = df.groupby(["setting", "attack"], sort=False)[["cost", "DER"]].mean()
    table["mean DER"] = per_attack["DER"].groupby(level=0, sort=False).mean().round(3)
    table["worst BA cost"] = per_attack["cost"].groupby(level=0, sort=False).max().round(1)
    return table


def seed_table(summary: Sequence[dict]):
    """``tune.summarize`` rows as ``mean ± std`` strings, with the ASR spread over seeds."""
    import pandas as pd

    out = []
    for s in summary:
        keys = [
            k
            for k in s
            if k not in ("BA", "ASR", "RA", "DER", "cost", "ASR_spread", "n_seeds") and not k.endswith("_std")
        ]
        row = {k: s[k] for k in keys}
        row.update({m: f"{s[m]:.1f} ± {s[m + '_std']:.1f}" for m in ("BA", "ASR", "RA", "cost")})
        row.update({"ASR spread": round(s["ASR_spread"], 1), "seeds": s["n_seeds"]})
        out.append(row)
    return pd.DataFrame(out).rename(columns={"cost": "BA cost"})


def target_table(rows: Sequence[dict]):
    """:func:`target_scores` rows as a table: per attack and model, the target probability and
    logit margin on clean and triggered images (means over seeds)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    t = df.groupby(["attack", "model", "images"], sort=False)[["p_target", "margin"]].mean().round(2)
    return t.unstack("images")


def reading_diagnosis(cfg: Config, names: Sequence[str], seeds: Sequence[int], readings: Sequence[str]) -> list[dict]:
    """:func:`target_scores` of M0 and, per NT-ML reading, its NT student and final student
    (ML on the clean subset, the knob at its default as in ``tune.variant_sweep``, whose cells
    these are), on each attack and seed: where each reading leaves the target."""

    def variant(c: Config, reading: str) -> Config:
        setting = tune.variant_setting({"reading": reading, "ml_data": "clean"})
        return override(c, {f"defenses.ntml.{k}": v for k, v in setting.items()})

    cfgs = {(a, s): with_run(cfg, attack=a, seed=s) for a in names for s in seeds}
    pool.prefetch(pool.defend_jobs([(variant(c, r), "ntml") for c in cfgs.values() for r in readings]))
    rows = []
    for a in names:
        for s in seeds:
            c = cfgs[(a, s)]
            models = {"M0": poisoned_model(c).model}
            for r in readings:
                run = defend(variant(c, r), "ntml")
                models[f"NT student ({r})"] = run.record.nt_student
                models[f"final ({r})"] = run.model
            rows += target_scores(c, models)
    return rows


def variant_verdicts(cfg: Config, rows: Sequence[dict]):
    """Per attack: the NT-ML variants whose mean ASR is at most the six-attacks claim's bar at a
    mean BA cost of at most ``cfg.tuning.max_cost`` on the tuning seeds ("none": no reading tried
    defends that attack)."""
    import pandas as pd

    asr_max, cost_max = claims.get("ntml-six-attacks").asr_max, cfg.tuning.max_cost

    df = pd.DataFrame(rows).groupby(["attack", "setting"], sort=False)[["ASR", "cost"]].mean().reset_index()
    out = []
    for a, g in df.groupby("attack", sort=False):
        ok = g[(g["ASR"] <= asr_max) & (g["cost"] <= cost_max)]["setting"].tolist()
        best = g.loc[g["ASR"].idxmin()]
        out.append(
            {
                "attack": a,
                f"variants with ASR ≤ {asr_max:g} at cost ≤ {cost_max:g}": ", ".join(ok) or "none",
                "lowest ASR (its BA cost)": f"{best['ASR']:.1f} ({best['cost']:.1f}), {best['setting']}",
            }
        )
    return pd.DataFrame(out).set_index("attack")


def ml_effect(rows: Sequence[dict]):
    """What mutual learning adds, per attack: mean λ = 1 minus mean λ = 0 of ASR and BA, beside
    the larger ASR spread over seeds of the two (an effect smaller than the spread is noise)."""
    import pandas as pd

    out = []
    for a in dict.fromkeys(r["attack"] for r in rows):
        on = [r for r in rows if r["attack"] == a and r["lam"] > 0]
        off = [r for r in rows if r["attack"] == a and r["lam"] == 0]

        def mean(rs, k):
            return sum(r[k] for r in rs) / len(rs)

        spread = max(tune.spread([r["ASR"] for r in on]), tune.spread([r["ASR"] for r in off]))
        d_asr = mean(on, "ASR") - mean(off, "ASR")
        out.append(
            {
                "attack": a,
                "ΔASR (λ=1 − λ=0)": round(d_asr, 1),
                "ΔBA (λ=1 − λ=0)": round(mean(on, "BA") - mean(off, "BA"), 1),
                "ASR spread over seeds": round(spread, 1),
                "beyond the spread": abs(d_asr) > spread,
            }
        )
    return pd.DataFrame(out).set_index("attack")


def ml_paired(rows: Sequence[dict]) -> list[dict]:
    """What mutual learning adds, paired per seed: per attack, λ minus λ = 0 of ASR and DER on each
    seed both ran (``tune.ml_contribution`` rows), their means, and on how many of those seeds the
    difference has the sign of its mean ("agree"; a zero difference agrees with nothing)."""

    def sign(v: float) -> int:
        return (v > 0) - (v < 0)

    out = []
    for a in dict.fromkeys(r["attack"] for r in rows):
        on = {r["seed"]: r for r in rows if r["attack"] == a and r["lam"] > 0}
        off = {r["seed"]: r for r in rows if r["attack"] == a and r["lam"] == 0}
        seeds = [s for s in on if s in off]
        row: dict = {"attack": a, "seeds": seeds}
        for k in ("ASR", "DER"):
            diffs = [on[s][k] - off[s][k] for s in seeds]
            mean = sum(diffs) / len(diffs) if diffs else float("nan")
            row[f"d{k}"] = diffs
            row[f"d{k}_mean"] = mean
            row[f"d{k}_agree"] = sum(1 for d in diffs if sign(d) == sign(mean) != 0)
        out.append(row)
    return out


def ml_paired_lines(rows: Sequence[dict]) -> list[str]:
    """:func:`ml_paired` as one sentence per attack: the per-seed differences and the sign count."""
    lines = []
    for r in ml_paired(rows):
        n = len(r["seeds"])
        parts = [
            f"Δ{k} {r[f'd{k}_mean']:+.{p}f} (per seed {', '.join(f'{d:+.{p}f}' for d in r[f'd{k}'])};"
            f" same sign on {r[f'd{k}_agree']} of {n})"
            for k, p in (("ASR", 1), ("DER", 3))
        ]
        lines.append(f"{r['attack']}: ML (λ minus λ=0) " + "; ".join(parts))
    return lines


# --- helpers behind the notebooks' cells: each turns cached results into the rows a figure or
# --- a metrics file takes, so that a cell is a call, a plot and a save.


def class_names(cfg: Config) -> tuple[str, ...]:
    """The dataset's class names."""
    return run_data(cfg).classes


def attack_embeddings(cfg: Config, names: Sequence[str], prefer: Sequence[str] = ("badnets", "sig", "narcissus")):
    """t-SNE panels (:func:`bdlib.plots.embeddings`) of the poisoned models of the first two of
    ``prefer`` that were run (else of the first attack)."""
    shown = [n for n in prefer if n in names][:2] or list(names[:1])
    return [{"title": n, **feature_embedding(with_run(cfg, attack=n))} for n in shown]


def before_after_embeddings(run: DefenseRun, label: str) -> list[dict]:
    """t-SNE panels of the backdoored model and of ``run``'s defended model (titled ``label``)."""
    return [
        {"title": "backdoored", **feature_embedding(run.cfg)},
        {"title": label, **feature_embedding(run.cfg, model=run.model)},
    ]


def per_attack(rows: Sequence[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """:func:`summarize` of each attack's rows: ``{attack: {model: {metric: [mean, std]}}}``."""
    return {a: summarize([r for r in rows if r["attack"] == a]) for a in dict.fromkeys(r["attack"] for r in rows)}


def per_attack_table(summary: dict[str, dict[str, dict[str, list[float]]]]):
    """:func:`per_attack`'s summary as one :func:`summary_table`, rows ``attack · model``."""
    return summary_table({f"{a} · {m}": v for a, by_model in summary.items() for m, v in by_model.items()})


def means(rows: Sequence[dict], attack: str, model: str) -> dict[str, float]:
    """The mean BA / ASR / RA over seeds of one attack's ``model`` rows (rounded as :func:`summarize`)."""
    mine = [r for r in rows if r["attack"] == attack and r["model"] == model]
    return {k: v[0] for k, v in summarize(mine)[model].items()}


def ledger(cfg: Config, defense: str, names: Sequence[str], seeds: Sequence[int]) -> list:
    """The claims ledger of ``defense`` on the grid of ``names`` × ``seeds`` at the profile's budget."""
    cells = grid.cells(names, [*grid.BASELINES, defense], seeds, [cfg.clean_fraction])
    return claims.ledger(grid.run(cfg, cells), defense=defense)


def table(rows: Sequence[dict]):
    """Rows as a pandas table, for display."""
    import pandas as pd

    return pd.DataFrame(rows)


# --- NT-ML (notebooks 02 and 03)


def nt_stage_rows(runs: dict[tuple[str, int], DefenseRun]) -> list[dict]:
    """BA / ASR / RA of M0, the NT teacher (unless it is M0) and the NT student, per NT-ML run."""
    rows = []
    for (a, s), run in finished(runs).items():
        rec = run.record
        models = {"poisoned": rec.poisoned, "nt teacher": rec.nt_teacher_metrics, "nt student": rec.nt_student_metrics}
        if run.cfg.defenses["ntml"].teacher == "poisoned":  # the NT teacher is M0 itself
            del models["nt teacher"]
        rows += [{"attack": a, "seed": s, "model": m, **v} for m, v in models.items()]
    return rows


def nt_confidences(run: DefenseRun) -> dict:
    """:func:`confidences` of M0, the KD teacher and the NT student of an NT-ML run (the KD
    teacher from the same run with ``teacher="kd"`` when the run's teacher is M0)."""
    c = run.cfg
    kd = run if c.defenses["ntml"].teacher == "kd" else defend(override(c, {"defenses.ntml.teacher": "kd"}), "ntml")
    named = {
        "poisoned model M0": poisoned_model(c).model,
        "KD teacher": kd.record.nt_teacher,
        "NT student": run.record.nt_student,
    }
    return confidences(c, named)


def tau_rows(run: DefenseRun, taus: Sequence[float]) -> list[dict]:
    """Per τ, the NT student's and the final student's BA / ASR / RA (``series`` rows), on ``run``'s
    attack and seed."""
    cfgs = {tau: override(run.cfg, {"defenses.ntml.tau": tau}) for tau in taus}
    pool.prefetch(pool.defend_jobs([(c, "ntml") for c in cfgs.values()]))
    rows = []
    for tau in taus:
        rt = defend(cfgs[tau], "ntml")
        rows.append({"tau": tau, "series": "NT student", **rt.record.nt_student_metrics})
        rows.append({"tau": tau, "series": "after ML (final)", **rt.metrics})
    return rows


def ml_epoch_rows(runs: Sequence[DefenseRun]) -> list[dict]:
    """Student and teacher BA / ASR / RA per ML epoch of NT-ML runs made with ``ml_curve``; epoch 0
    is the NT stage's pair."""
    rows = []
    for run in runs:
        rec = run.record
        rows.append({"epoch": 0, "series": "student", **rec.nt_student_metrics})
        rows.append({"epoch": 0, "series": "teacher", **rec.nt_teacher_metrics})
    for run in runs:
        for h in run.record.ml_history:
            rows += [{"epoch": h["epoch"], "series": role, **h[role]} for role in ("student", "teacher") if role in h]
    return rows


def budget_rows(cfg: Config, attack: str, budgets: Sequence[float], seeds: Sequence[int]) -> list[dict]:
    """NT-ML and fine-tuning at each clean-data budget (fraction of the training set) and seed."""
    cfgs = {
        (b, s): override(with_run(cfg, attack=attack, seed=s), {"clean_fraction": b}) for b in budgets for s in seeds
    }
    pool.prefetch(pool.defend_jobs([(c, d) for c in cfgs.values() for d in ("ntml", "ft")]))
    rows = []
    for b in budgets:
        for s in seeds:
            cb = cfgs[(b, s)]
            nt, ft = defend(cb, "ntml"), defend(cb, "ft")
            rows.append({"clean %": 100 * b, "seed": s, "series": "NT-ML", **nt.metrics})
            rows.append({"clean %": 100 * b, "seed": s, "series": "fine-tuning", **ft.metrics})
    return rows


def ntml_ablation(cfg: Config, attack: str, seed: int) -> list[dict]:
    """NT-ML's free choices one at a time (the other teacher, τ = 2, λ = 0 and 2) beside its
    default and fine-tuning on the same clean data, on one attack and seed."""
    other = {"kd": ("teacher = M0", "poisoned"), "poisoned": ("teacher = KD", "kd")}[cfg.defenses["ntml"].teacher]
    variants = {
        "default": {},
        other[0]: {"defenses.ntml.teacher": other[1]},
        "τ = 2": {"defenses.ntml.tau": 2.0},
        "λ = 0": {"defenses.ntml.lam": 0.0},
        "λ = 2": {"defenses.ntml.lam": 2.0},
    }
    c0 = with_run(cfg, attack=attack, seed=seed)
    cfgs = {k: override(c0, v) for k, v in variants.items()}
    pool.prefetch(pool.defend_jobs([(c, "ntml") for c in cfgs.values()] + [(c0, "ft")]))
    rows = [{"variant": k, **defend(c, "ntml").metrics} for k, c in cfgs.items()]
    return rows + [{"variant": "fine-tuning", **defend(c0, "ft").metrics}]


def variant_choice(cfg: Config, variant: dict | None) -> str:
    """One line: the NT-ML variant the protocol's rule chooses, and the one the profile runs."""
    current = tune.label({k: getattr(cfg.defenses["ntml"], k) for k in tune.VARIANT_FIELDS})
    if variant is None:
        return f"no readings sweep: NT-ML is outside this run's tuning.defenses; the profile runs {current}"
    return (
        f"the rule chooses {variant['setting']} (within the BA bar: {variant['qualified']}); the profile runs {current}"
    )


# --- NONE (notebook 04)


def detection_rows(runs: dict[tuple[str, int], DefenseRun]) -> list[dict]:
    """Precision / recall of each run's flagged samples against the true poison index."""
    rows = []
    for (a, s), run in finished(runs).items():
        truth = poisoned_model(run.cfg).poisoned.poison_idx
        rows.append(
            {"attack": a, "seed": s, **metrics.detection(run.record.flagged, truth), "poisoned": int(truth.sum())}
        )
    return rows


def detection_table(rows: Sequence[dict]):
    """:func:`detection_rows` averaged per attack, as a pandas table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    return df.groupby("attack", sort=False)[["precision", "recall", "flagged", "poisoned"]].mean().round(1)


def round_rows(runs: dict[tuple[str, int], DefenseRun], label: str = "NONE") -> list[dict]:
    """Per NONE run, BA / ASR / RA after each round; round 0 is the undefended model."""
    rows = [{"round": 0, **run.before, "attack": a, "series": label} for (a, s), run in finished(runs).items()]
    return rows + [
        {**h, "attack": a, "series": label} for (a, s), run in finished(runs).items() for h in run.record.rounds
    ]


# --- MCLDef (notebook 05)


def inversion_rows(runs: dict[tuple[str, int], DefenseRun], seed: int) -> list[dict]:
    """Per attack (the runs of ``seed``): true trigger, inverted mask and pattern, mask norms per
    class, true and detected target (:func:`bdlib.plots.inversion_panels`)."""
    rows = []
    for (a, s), run in finished(runs).items():
        if s != seed:
            continue
        d, rec = run_data(run.cfg), run.record
        x0 = d.x_test[d.y_test != run.cfg.target][:1]
        diff = poisoned_model(run.cfg).test_trigger(x0)[0].float() - x0[0].float()
        rows.append(
            {
                "attack": a,
                "true_diff": diff,
                "mask": rec.mask,
                "pattern": rec.pattern,
                "norms": rec.mask_norms.tolist(),
                "target": run.cfg.target,
                "detected": rec.target,
            }
        )
    return rows


def mcldef_epoch_rows(runs: Sequence[DefenseRun], label: str = "MCLDef") -> list[dict]:
    """BA / ASR / RA per purification epoch of MCLDef runs made with ``curve`` (epoch 0: before)."""
    return [{**h, "series": label} for run in runs for h in run.record.epochs]


def target_detection(runs: dict[tuple[str, int], DefenseRun]) -> list[dict]:
    """Per detecting-MCLDef run: the smallest-mask class, the true target, its anomaly index, and
    whether it was an outlier (then purified against; else the model was left as it is)."""
    return [
        {
            "attack": a,
            "seed": s,
            "detected": r.record.target,
            "true": r.cfg.target,
            "anomaly index": r.record.anomaly_index,
            "confident": r.record.detection_confident,
            "purified": r.record.purified,
        }
        for (a, s), r in finished(runs).items()
    ]


def published_triggers(runs: dict[tuple[str, int], DefenseRun]) -> list[dict]:
    """Per MCLDef-as-published run: the given target, the inverted pattern's perturbed pixels, its
    success on the clean images not of the target, and whether a pass reached the 90 % bound."""
    return [
        {
            "attack": a,
            "seed": s,
            "target": r.record.target,
            "pixels": r.record.mask_norm,
            "success": float(r.record.trigger_success[0]),
            "accepted": r.record.trigger_accepted,
        }
        for (a, s), r in finished(runs).items()
    ]


def no_outlier_notes(runs: dict[tuple[str, int], DefenseRun]) -> str:
    """One line per detecting-MCLDef run that found no outlier class (its model left unpurified)."""
    lines = [f"{a}, seed {s}: {r.record.note}" for (a, s), r in finished(runs).items() if not r.record.purified]
    return "\n".join(lines) or "detection found an outlier class in every run: each was purified"


def mcldef_forms_rows(published: Sequence[dict], detecting: Sequence[dict]) -> list[dict]:
    """:func:`defense_rows` of MCLDef's two forms as one list, the undefended rows once and each
    form's rows labelled ``as published`` (told the target) or ``detecting`` (the target)."""
    label = {"mcldef": "as published", "mcldef_detect": "detecting"}
    both = [*published, *(r for r in detecting if r["model"] != "undefended")]
    return [{**r, "model": label.get(r["model"], r["model"])} for r in both]


# --- the comparison (notebook 06)


def tuning_intro(cfg: Config, seeds: Sequence[int]) -> str:
    """What the comparison protocol tunes on."""
    t = cfg.tuning
    scope = "every defense" if t.defenses is None else ", ".join(t.defenses) + " (the others keep the profile's values)"
    return (
        f"tuning seeds {list(t.seeds)} (reported: {list(seeds)}), attacks {list(t.attacks)}, "
        f"BA-cost bar {t.max_cost:g} points; tuned: {scope}"
    )


def protocol_note(cfg: Config, chosen: dict) -> str:
    """Where the profile's settings differ from the protocol's choices (or that they agree)."""
    return (
        "\n".join(tune.profile_mismatches(cfg, chosen)) or f"profile {cfg.profile} holds every choice of the protocol"
    )


def extra_seeds_note(extra: Sequence, seeds: Sequence[int]) -> str:
    """Which attack × defense cells :func:`extra_seed_cells` added ``seeds`` to."""
    spread = sorted({f"{x.attack} × {x.defense}" for x in extra if x.defense not in grid.BASELINES}) or "none"
    return f"cells whose seeds disagree by more than {claims.SPREAD:g} ASR points, run on seeds {seeds} too: {spread}"


def attacks_among(spec: str | Sequence[str], names: Sequence[str]) -> list[str]:
    """The attacks of ``spec`` (validated) that are among ``names``."""
    return [a for a in attack_names(spec) if a in names]


def clean_data_defenses(names: Sequence[str]) -> list[str]:
    """The defenses of ``names`` that are given the clean subset (their results depend on its size)."""
    return [d for d in names if "clean" in defenses.get(d).uses]


@dataclass(frozen=True)
class BudgetSweep:
    """Notebook 06's clean-budget comparison: these budgets (fractions of the training set), on
    these attacks and seeds, for the defenses that are given the clean subset."""

    fractions: tuple[float, ...]
    attacks: tuple[str, ...]
    seeds: tuple[int, ...]
    defenses: tuple[str, ...]


def budget_sweep(spec: dict, names: Sequence[str], dnames: Sequence[str]) -> BudgetSweep:
    """06's ``budgets`` parameter, ``{"clean": [fractions of the training set], "attacks": [...],
    "seeds": [...]}``, checked: its attacks narrowed to ``names``, the clean-data defenses of
    ``dnames``."""
    fields = ("clean", "attacks", "seeds")
    if not isinstance(spec, dict) or set(spec) != set(fields):
        raise ValueError(f"budgets must be a dict with exactly the keys {', '.join(fields)}; got {spec!r}")
    if not spec["clean"] or not all(isinstance(b, (int, float)) and 0 < b <= 1 for b in spec["clean"]):
        raise ValueError(f"budgets['clean'] must be fractions of the training set in (0, 1], got {spec['clean']!r}")
    seeds = _checked_seeds(spec["seeds"], "budgets['seeds']", spec["seeds"])
    among = attacks_among(spec["attacks"], names)
    return BudgetSweep(tuple(spec["clean"]), tuple(among), tuple(seeds), tuple(clean_data_defenses(dnames)))


def budget_cells(cfg: Config, sweep: BudgetSweep, reported: Sequence[int]) -> list:
    """Grid cells of the clean-budget comparison that the main grid (the profile's budget, the
    ``reported`` seeds) does not already hold."""
    cells = grid.cells(sweep.attacks, sweep.defenses, sweep.seeds, sweep.fractions)
    return [x for x in cells if x.clean_fraction != cfg.clean_fraction or x.seed not in reported]


def budget_curve_rows(rows: Sequence[dict], attack: str, dnames: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """Grid rows of one attack, the ``dnames`` defenses and ``seeds`` as :func:`bdlib.plots.curves`
    rows against ``clean %``, one line per defense (in the order of ``dnames``)."""
    return [
        {"clean %": 100 * r["clean_fraction"], "series": d, **{k: r[k] for k in ("BA", "ASR", "RA")}}
        for d in dnames
        for r in rows
        if r["attack"] == attack and r["defense"] == d and r["seed"] in seeds
    ]


def defense_summary(rows: Sequence[dict], names: Sequence[str], dnames: Sequence[str]) -> dict:
    """``{attack: {defense: {metric: (mean, std)}}}`` of BA / ASR / RA / DER over grid rows."""
    keys = ("BA", "ASR", "RA", "DER")
    return {
        a: {d: metrics.mean_std([r for r in rows if r["attack"] == a and r["defense"] == d], keys) for d in dnames}
        for a in names
    }
