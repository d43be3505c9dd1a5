"""The claims ledger: each claim of the three abstracts, and this companion's own bar, as data;
the verdicts computed from stored results, never typed.

A claim names what is measured (``kind``), on which cells (defense × attacks) and the threshold.
:func:`ledger` evaluates every claim on grid rows (``bdlib.study.grid``: one row per attack ×
defense × seed, undefended rows included) and returns, per claim, a verdict — ``holds``,
``partly``, ``fails`` or ``inconclusive`` — and the numbers behind it.

Seeds: a cell whose seeds disagree by more than :data:`SPREAD` ASR points is *spread out*. The
verdict is computed three times: on the seed means, with every spread-out cell at its seed
most favourable to the claim, and at its least favourable; if the last two differ, the claim
is ``inconclusive`` (the seeds decide it, not the method), else the verdict on the means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from bdlib import attacks, defenses
from bdlib.cells import CLEAN, UNDEFENDED

ATTACKS = tuple(attacks.REGISTRY)  # every claim is judged on every registered attack unless it says otherwise
SPREAD = 20.0  # ASR points between a cell's seeds beyond which the cell is spread out
VERDICTS = ("holds", "partly", "fails", "inconclusive")


@dataclass(frozen=True)
class Claim:
    id: str
    source: str  # "NT-ML", "NONE", "MCLDef" (an abstract) or "companion" (this project's bar)
    claim: str  # the claim in its own words
    kind: str  # which check: "defends", "outperforms", "asr_ratio", "best_reduction"
    defense: str
    attacks: tuple[str, ...] = ATTACKS
    asr_max: float | None = None  # "defends": mean ASR at most this (percent)
    cost_max: float | None = None  # mean BA cost at most this (points)
    rivals: tuple[str, ...] = ()  # "outperforms": the defenses it must beat on DER
    ratio: float | None = None  # "asr_ratio": undefended ASR / defended ASR at least this
    reduction: float | None = None  # "best_reduction": relative ASR reduction at least this (percent)
    partly: Mapping[str, float] = field(default_factory=dict)  # the weaker bar that gives "partly"

    def threshold(self) -> str:
        """The bar, in words."""
        if self.kind == "defends":
            return f"mean ASR ≤ {self.asr_max:g} % and BA cost ≤ {self.cost_max:g} on each attack"
        if self.kind == "outperforms":
            return f"highest mean DER on each attack, against {', '.join(self.rivals)}"
        if self.kind == "asr_ratio":
            return f"mean ASR undefended / defended ≥ {self.ratio:g}× (partly: ≥ {self.partly['ratio']:g}×)"
        return (
            f"relative ASR reduction ≥ {self.reduction:g} % with BA cost < {self.cost_max:g} on some "
            f"attack (partly: ≥ {self.partly['reduction']:g} % at cost < {self.cost_max:g}, or the "
            f"reduction at cost ≤ {self.partly['cost_max']:g})"
        )


# The plain fine-tuning baseline: every defense is read against it (notebooks 03 and 06), it is not
# one of the "state-of-the-art backdoor defenses" NT-ML's abstract compares itself with.
BASELINE_DEFENSES = ("ft",)


def rivals(registry: Mapping[str, defenses.Defense]) -> tuple[str, ...]:
    """NT-ML's rivals as a defender runs them, from the registry: every defense the comparison
    protocol sets (it declares a grid), that is not told the target (``needs_target``: MCLDef as
    published carries MCLDef's own claim; its detecting form is the rival), not a labelled
    variant of another (``variant_of``), not NT-ML and not a plain baseline."""
    return tuple(
        n
        for n, d in registry.items()
        if n != "ntml" and d.tuning and not d.needs_target and d.variant_of is None and n not in BASELINE_DEFENSES
    )


RIVALS = rivals(defenses.REGISTRY)
BAR_ASR, BAR_COST = 5.0, 3.0  # the companion's bar for "defended": ASR ≤ 5 % at ≤ 3 BA points

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "ntml-six-attacks",
        "NT-ML",
        "defends six attacks, Narcissus among them, with a small number of clean samples",
        "defends",
        "ntml",
        asr_max=10.0,
        cost_max=3.0,
    ),
    Claim(
        "ntml-beats-five",
        "NT-ML",
        "outperforms five state-of-the-art backdoor defenses",
        "outperforms",
        "ntml",
        rivals=RIVALS,
    ),
    Claim(
        "none-54x",
        "NONE",
        "ASR 54.83× lower than undefended under standard poisoning",
        "asr_ratio",
        "none_published",  # the abstract's claim is about NONE as its authors ran it
        attacks=("badnets", "blended", "trojan"),
        ratio=54.83,
        partly={"ratio": 10.0},
    ),
    Claim(
        "mcldef-95",
        "MCLDef",
        "with 5 % clean data, up to 95.79 % ASR reduction, BA loss mostly under 2 %",
        "best_reduction",
        "mcldef",
        reduction=95.79,
        cost_max=2.0,
        partly={"reduction": 80.0, "cost_max": 3.0},
    ),
    *(
        Claim(
            f"bar-{d}",
            "companion",
            f"{d} defends every attack: ASR ≤ {BAR_ASR:g} % at ≤ {BAR_COST:g} BA points",
            "defends",
            d,
            asr_max=BAR_ASR,
            cost_max=BAR_COST,
        )
        for d in defenses.REGISTRY
    ),
)


@dataclass(frozen=True)
class Cell:
    """One attack × defense over its seeds (BA cost paired with the undefended model per seed)."""

    attack: str
    defense: str
    seeds: tuple[int, ...]
    ASR: tuple[float, ...]
    BA: tuple[float, ...]
    cost: tuple[float, ...]
    DER: tuple[float, ...]
    diverged: tuple[bool, ...] = ()  # per seed: the defense's training diverged (a failure)

    @property
    def failed(self) -> bool:
        """A seed's training diverged: the cell counts as a failure of its defense in every view."""
        return any(self.diverged)

    @property
    def spread(self) -> float:
        finite = [a for a, d in zip(self.ASR, self.diverged or (False,) * len(self.ASR)) if not d]
        return max(finite) - min(finite) if finite else 0.0

    @property
    def spread_out(self) -> bool:
        return self.spread > SPREAD

    def view(self, mode: str, favour: str) -> dict[str, float]:
        """Means (``mode="mean"``), or one seed: the one best (``"best"``) or worst (``"worst"``)
        for the claim, where ``favour`` says what the claim wants: "low" ASR or "high" ASR."""
        n = len(self.seeds)
        if self.failed:
            # What a failed defense scores on every check: all triggered images hit, every clean
            # point lost, no effectiveness; ``diverged`` makes the evidence say why.
            worst_cost = max(c for c, d in zip(self.cost, self.diverged) if d)
            return {"ASR": 100.0, "BA": 0.0, "cost": worst_cost, "DER": 0.0, "diverged": 1.0}
        if mode == "mean" or not self.spread_out or self.defense == CLEAN:  # the floor is always the mean
            return {k: sum(getattr(self, k)) / n for k in ("ASR", "BA", "cost", "DER")}
        want_low = (mode == "best") == (favour == "low")
        i = min(range(n), key=lambda j: self.ASR[j] if want_low else -self.ASR[j])
        return {k: getattr(self, k)[i] for k in ("ASR", "BA", "cost", "DER")}


def cells(rows: Iterable[Mapping]) -> dict[tuple[str, str], Cell]:
    """Grid rows -> cells, each defended row paired with the undefended row of its attack and seed."""
    rows = list(rows)
    base = {(r["attack"], r["seed"]): r for r in rows if r["defense"] == UNDEFENDED}
    out: dict[tuple[str, str], Cell] = {}
    for a, d in dict.fromkeys((r["attack"], r["defense"]) for r in rows):
        mine = sorted((r for r in rows if r["attack"] == a and r["defense"] == d), key=lambda r: r["seed"])
        missing = [r["seed"] for r in mine if (a, r["seed"]) not in base]
        if missing:
            raise ValueError(f"no undefended row for {a}, seed(s) {missing}: the BA cost needs one per seed")
        failed = tuple(bool(r.get("diverged")) for r in mine)
        # A diverged seed's model is lost: it costs the whole undefended BA.
        cost = tuple(base[(a, r["seed"])]["BA"] - (0.0 if f else r["BA"]) for r, f in zip(mine, failed))
        der = tuple(r.get("DER", 0.5) for r in mine)
        out[(a, d)] = Cell(
            a,
            d,
            tuple(r["seed"] for r in mine),
            tuple(r["ASR"] for r in mine),
            tuple(r["BA"] for r in mine),
            cost,
            der,
            failed,
        )
    return out


def _get(table: Mapping[tuple[str, str], Cell], attack: str, defense: str) -> Cell:
    if (attack, defense) not in table:
        raise ValueError(f"the results hold no cell {attack} × {defense}; a claim on it needs one")
    return table[(attack, defense)]


# Each check: (claim, view(attack, defense, favour) -> stats) -> (verdict, evidence text).
View = Callable[[str, str, str], Mapping[str, float]]


def floor(view: View, attack: str) -> float | None:
    """The mean ASR the attack's trigger reaches on a clean model (None where not measured)."""
    try:
        return view(attack, CLEAN, "low")["ASR"]
    except ValueError:
        return None


def _bar(c: Claim, view: View, attack: str) -> tuple[float, str]:
    """The ASR bar of ``c`` on ``attack`` read against the trigger's floor: a bar below what a
    clean model already reaches is judged at the floor instead (no defense can do better), and the
    evidence says so."""
    f = floor(view, attack)
    if f is None:
        return c.asr_max, ""
    if f > c.asr_max:
        return f, f"; clean-model floor {f:.1f} % is above the bar: judged at the floor"
    return c.asr_max, f"; floor {f:.1f} %"


def _defends(c: Claim, view: View) -> tuple[str, str]:
    ok, parts = [], []
    for a in c.attacks:
        v = view(a, c.defense, "low")
        bar, note = _bar(c, view, a)
        ok.append(v["ASR"] <= bar and v["cost"] <= c.cost_max)
        parts.append(f"{a} diverged" if v.get("diverged") else f"{a} {v['ASR']:.1f} % ({v['cost']:+.1f}{note})")
    verdict = "holds" if all(ok) else "partly" if any(ok) else "fails"
    return verdict, f"{sum(ok)}/{len(ok)} attacks meet it; ASR (BA cost): " + ", ".join(parts)


def _outperforms(c: Claim, view: View) -> tuple[str, str]:
    wins, parts = [], []
    for a in c.attacks:
        own = view(a, c.defense, "low")
        mine = own["DER"]
        rivals = {r: view(a, r, "high")["DER"] for r in c.rivals}
        best = max(rivals, key=rivals.get)
        wins.append(mine > rivals[best])
        parts.append(f"{a} {'diverged' if own.get('diverged') else f'{mine:.2f}'} vs {best} {rivals[best]:.2f}")
    verdict = "holds" if all(wins) else "partly" if any(wins) else "fails"
    return verdict, f"best DER on {sum(wins)}/{len(wins)} attacks; DER vs the best rival: " + ", ".join(parts)


def _asr_ratio(c: Claim, view: View) -> tuple[str, str]:
    before = sum(view(a, UNDEFENDED, "high")["ASR"] for a in c.attacks) / len(c.attacks)
    after = sum(view(a, c.defense, "low")["ASR"] for a in c.attacks) / len(c.attacks)
    # ASR is a share of ~2,000 images: below one image's share the ratio is bounded by it.
    ratio = before / max(after, 0.05)
    verdict = "holds" if ratio >= c.ratio else "partly" if ratio >= c.partly["ratio"] else "fails"
    floors = [f for f in (floor(view, a) for a in c.attacks) if f is not None]
    best = f"; a clean model's mean ASR {sum(floors) / len(floors):.2f} %" if len(floors) == len(c.attacks) else ""
    return verdict, f"mean ASR {before:.1f} % → {after:.2f} % ({ratio:.1f}× lower) on {', '.join(c.attacks)}{best}"


def _best_reduction(c: Claim, view: View) -> tuple[str, str]:
    verdict, parts = "fails", []
    for a in c.attacks:
        before, v = view(a, UNDEFENDED, "high")["ASR"], view(a, c.defense, "low")
        red = 100.0 * (before - v["ASR"]) / before if before > 0 else 0.0
        parts.append(f"{a} diverged" if v.get("diverged") else f"{a} {red:.1f} % ({v['cost']:+.1f})")
        if red >= c.reduction and v["cost"] < c.cost_max:
            verdict = "holds"
        elif verdict == "fails" and (
            (red >= c.partly["reduction"] and v["cost"] < c.cost_max)
            or (red >= c.reduction and v["cost"] <= c.partly["cost_max"])
        ):
            verdict = "partly"
    return verdict, "relative ASR reduction (BA cost): " + ", ".join(parts)


CHECKS: dict[str, Callable[[Claim, View], tuple[str, str]]] = {
    "defends": _defends,
    "outperforms": _outperforms,
    "asr_ratio": _asr_ratio,
    "best_reduction": _best_reduction,
}


def _involved(c: Claim) -> set[str]:
    extra = {UNDEFENDED} if c.kind in ("asr_ratio", "best_reduction") else set()
    return {c.defense, *c.rivals, *extra}


def below_floor(claim: Claim, table: Mapping[tuple[str, str], Cell]) -> list[str]:
    """The attacks on which the claim's ASR bar lies below the clean-model floor (mean over seeds)."""
    if claim.asr_max is None:
        return []
    return [
        f"{a} (floor {table[(a, CLEAN)].view('mean', 'low')['ASR']:.1f} %)"
        for a in claim.attacks
        if (a, CLEAN) in table and table[(a, CLEAN)].view("mean", "low")["ASR"] > claim.asr_max
    ]


def evaluate(claim: Claim, table: Mapping[tuple[str, str], Cell]) -> dict:
    """One claim's verdict and evidence on ``table`` (from :func:`cells`).

    Attacks whose cells were not run (a notebook run on fewer attacks) are named in the
    evidence; the claim is then judged on the rest and can be no better than ``inconclusive``.
    """
    missing = [a for a in claim.attacks if any((a, d) not in table for d in _involved(claim))]
    present = tuple(a for a in claim.attacks if a not in missing)
    if missing:
        if not present:
            raise ValueError(
                f"the results hold no cell for {claim.id}: it needs "
                f"{', '.join(sorted(_involved(claim)))} on {', '.join(claim.attacks)}"
            )
        entry = evaluate(dataclasses.replace(claim, attacks=present), table)
        return {
            **entry,
            "verdict": "inconclusive",
            "range": "inconclusive",
            "evidence": f"not run on {', '.join(missing)}; on the rest: {entry['evidence']}",
        }
    check = CHECKS[claim.kind]

    def view(mode: str) -> View:
        return lambda a, d, favour: _get(table, a, d).view(mode, favour)

    verdict, evidence = check(claim, view("mean"))
    best, _ = check(claim, view("best"))
    worst, _ = check(claim, view("worst"))
    spread = sorted(
        f"{a} × {d} ({table[(a, d)].spread:.0f} points over {len(table[(a, d)].seeds)} seeds)"
        for a in claim.attacks
        for d in _involved(claim)
        if (a, d) in table and table[(a, d)].spread_out
    )
    if best != worst:
        verdict = "inconclusive"
    diverged = sorted(
        f"{a} × {d}" for a in claim.attacks for d in _involved(claim) if (a, d) in table and table[(a, d)].failed
    )
    seeds = sorted({s for a in claim.attacks for d in _involved(claim) for s in _get(table, a, d).seeds})
    return {
        "id": claim.id,
        "source": claim.source,
        "claim": claim.claim,
        "threshold": claim.threshold(),
        "verdict": verdict,
        "evidence": evidence,
        "spread_out": spread,
        "diverged": diverged,
        "below_floor": below_floor(claim, table),
        "seeds": seeds,
        "range": f"{worst} … {best}" if best != worst else verdict,
    }


def ledger(rows: Iterable[Mapping], claims: Sequence[Claim] = CLAIMS, defense: str | None = None) -> list[dict]:
    """Every claim evaluated on grid ``rows``; with ``defense``, that defense's claims that need
    no other defense's cells (a notebook of one defense renders these; notebook 06 all)."""
    table = cells(rows)
    chosen = [c for c in claims if defense is None or (c.defense == defense and not c.rivals)]
    return [evaluate(c, table) if _runs(c, table) else _not_run(c) for c in chosen]


def _runs(claim: Claim, table: Mapping[tuple[str, str], Cell]) -> bool:
    """Whether the results hold a cell of every defense the claim involves on some attack of it."""
    return any(all((a, d) in table for d in _involved(claim)) for a in claim.attacks)


def _not_run(claim: Claim) -> dict:
    """The ledger entry of a claim whose defenses this run did not include (a run on fewer defenses)."""
    return {
        "id": claim.id,
        "source": claim.source,
        "claim": claim.claim,
        "threshold": claim.threshold(),
        "verdict": "inconclusive",
        "evidence": f"not run: this run holds no cells of {', '.join(sorted(_involved(claim)))}",
        "spread_out": [],
        "diverged": [],
        "below_floor": [],
        "seeds": [],
        "range": "inconclusive",
    }


def get(claim_id: str) -> Claim:
    """The claim with this id, or an error listing the ids."""
    for c in CLAIMS:
        if c.id == claim_id:
            return c
    raise ValueError(f"claim {claim_id!r} is unknown; choose one of: {', '.join(c.id for c in CLAIMS)}")


def spread_out_cells(rows: Iterable[Mapping]) -> list[tuple[str, str]]:
    """The (attack, defense) cells whose seeds disagree by more than :data:`SPREAD` ASR points."""
    return [k for k, cell in cells(rows).items() if cell.spread_out]


def table(entries: Sequence[Mapping]):
    """The ledger as a pandas table for a notebook (claim, bar, verdict, the numbers)."""
    import pandas as pd

    df = pd.DataFrame(
        [
            {
                "source": e["source"],
                "claim": e["claim"],
                "bar": e["threshold"],
                "verdict": e["verdict"],
                "measured": e["evidence"],
                "seeds spread > 20 ASR points": "; ".join(e["spread_out"]) or "no cell",
                "diverged (a failure)": "; ".join(e.get("diverged", ())) or "no cell",
                "bar below the clean-model floor": "; ".join(e.get("below_floor", ())) or "no cell",
            }
            for e in entries
        ]
    )
    return df.style.set_properties(**{"text-align": "left", "white-space": "pre-wrap"}).hide(axis="index")


__all__ = [
    "Claim",
    "CLAIMS",
    "Cell",
    "cells",
    "get",
    "evaluate",
    "ledger",
    "spread_out_cells",
    "table",
    "SPREAD",
    "VERDICTS",
    "ATTACKS",
    "RIVALS",
]
