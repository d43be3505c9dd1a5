"""Notebook 03 (NT-ML's mutual learning): ML per epoch, the clean budget, the ablation, the
readings sweep and what mutual learning adds."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from bdlib.config import Config

# The series names of the clean-budget curve, per defense.
BUDGET_SERIES = {"ntml": "NT-ML", "ft": "fine-tuning"}


def ml_epoch_rows(runs: Sequence[Any]) -> list[dict]:
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


def budget_rows(runs: Mapping[tuple[float, int, str], Any]) -> list[dict]:
    """NT-ML and fine-tuning at each clean-data budget and seed, as ``clean %`` rows, from
    ``bdlib.study.measure.budget_runs`` (``{(fraction, seed, defense): run}``)."""
    return [
        {"clean %": 100 * b, "seed": s, "series": BUDGET_SERIES[d], **run.metrics} for (b, s, d), run in runs.items()
    ]


def ablation_rows(runs: Mapping[str, Any]) -> list[dict]:
    """BA / ASR / RA (and DER) per variant of ``bdlib.study.measure.ablation_runs``."""
    return [{"variant": k, **run.metrics} for k, run in runs.items()]


def variant_choice(current: str, variant: Mapping[str, Any] | None) -> str:
    """One line: the NT-ML variant the protocol's rule chooses (``variant``, from
    ``readings.select_variant``), and the one the profile runs (``current``, ``readings.current``)."""
    if variant is None:
        return f"no readings sweep: NT-ML is outside this run's tuning.defenses; the profile runs {current}"
    return (
        f"the rule chooses {variant['setting']} (within the BA bar: {variant['qualified']}); the profile runs {current}"
    )


def variant_table(rows: Sequence[Mapping]):
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


def variant_verdicts(cfg: Config, rows: Sequence[Mapping], claim: Any):
    """Per attack: the NT-ML variants whose mean ASR is at most ``claim``'s bar (its ``asr_max``:
    the six-attacks claim's) at a mean BA cost of at most ``cfg.tuning.max_cost`` on the tuning
    seeds ("no variant": no reading tried defends that attack). None without rows (no readings sweep)."""
    import pandas as pd

    if not rows:
        return None
    asr_max, cost_max = claim.asr_max, cfg.tuning.max_cost
    df = pd.DataFrame(rows).groupby(["attack", "setting"], sort=False)[["ASR", "cost"]].mean().reset_index()
    out = []
    for a, g in df.groupby("attack", sort=False):
        ok = g[(g["ASR"] <= asr_max) & (g["cost"] <= cost_max)]["setting"].tolist()
        best = g.loc[g["ASR"].idxmin()]
        out.append(
            {
                "attack": a,
                f"variants with ASR ≤ {asr_max:g} at cost ≤ {cost_max:g}": ", ".join(ok) or "no variant",
                "lowest ASR (its BA cost)": f"{best['ASR']:.1f} ({best['cost']:.1f}), {best['setting']}",
            }
        )
    return pd.DataFrame(out).set_index("attack")


def seed_table(summary: Sequence[Mapping]):
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


def _spread(values: Sequence[float]) -> float:
    """Largest minus smallest value: how far seeds disagree (as ``tune.spread``)."""
    return max(values) - min(values)


def ml_effect(rows: Sequence[Mapping]):
    """What mutual learning adds, per attack: mean λ = 1 minus mean λ = 0 of ASR and BA, beside
    the larger ASR spread over seeds of the two (an effect smaller than the spread is noise)."""
    import pandas as pd

    out = []
    for a in dict.fromkeys(r["attack"] for r in rows):
        on = [r for r in rows if r["attack"] == a and r["lam"] > 0]
        off = [r for r in rows if r["attack"] == a and r["lam"] == 0]

        def mean(rs, k):
            return sum(r[k] for r in rs) / len(rs)

        spread = max(_spread([r["ASR"] for r in on]), _spread([r["ASR"] for r in off]))
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


def ml_paired(rows: Sequence[Mapping]) -> list[dict]:
    """What mutual learning adds, paired per seed: per attack, λ minus λ = 0 of ASR and DER on each
    seed both ran (``readings.ml_contribution`` rows), their means, and on how many of those seeds
    the difference has the sign of its mean ("agree"; a zero difference agrees with nothing)."""

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


def ml_paired_lines(rows: Sequence[Mapping]) -> list[str]:
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


def verdict_lines(names: Sequence[str], verdicts: Any, rows: Sequence[Mapping]) -> list[str]:
    """Two lines per attack of ``names``: the NT-ML variants that defend it on the tuning seeds
    (the first column of :func:`variant_verdicts`' table; None: no readings sweep) and
    :func:`ml_paired_lines`' sentence on ``rows`` (``readings.ml_contribution``)."""
    defended = verdicts.iloc[:, 0] if verdicts is not None else {}
    paired = dict(zip(dict.fromkeys(r["attack"] for r in rows), ml_paired_lines(rows)))
    out = []
    for a in names:
        out += [f"{a}: defended on the tuning seeds by: {defended.get(a, 'no readings sweep')}", f"  {paired[a]}"]
    return out


__all__ = [
    "BUDGET_SERIES",
    "ml_epoch_rows",
    "budget_rows",
    "ablation_rows",
    "variant_choice",
    "variant_table",
    "variant_verdicts",
    "seed_table",
    "ml_effect",
    "ml_paired",
    "ml_paired_lines",
    "verdict_lines",
]
