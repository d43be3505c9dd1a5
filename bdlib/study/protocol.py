"""The whole comparison protocol, and ``python -m bdlib tune``: NT-ML's reading first
(:mod:`bdlib.study.readings`), then every defense's grid (:mod:`bdlib.study.tune`), by the same
rule; the choices, and where the profile departs from them."""

from __future__ import annotations

from typing import Any, Sequence

from bdlib import attacks, defenses
from bdlib.config import Config
from bdlib.session import setup
from bdlib.study import readings, tune


def protocol(cfg: Config, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole protocol on ``cfg``'s profile: NT-ML's variant over every attack, then every
    defense's grid; the choices and where the profile departs from them."""
    names = list(names or defenses.REGISTRY)
    vrows = readings.variant_sweep(cfg, list(attacks.REGISTRY)) if "ntml" in names else []
    variant = readings.select_variant(vrows, cfg.tuning.max_cost) if vrows else None
    rows = tune.sweep(cfg, names)
    chosen = tune.select(rows, cfg.tuning.max_cost)
    mismatches = tune.profile_mismatches(cfg, chosen)
    if variant is not None:
        current = readings.current(cfg)
        if current != variant["setting"]:
            mismatches.insert(0, f"ntml: the profile has {current}, the protocol chooses {variant['setting']}")
    return {"variant_rows": vrows, "variant": variant, "rows": rows, "chosen": chosen, "mismatches": mismatches}


def main(profile_name: str, names: Sequence[str] = (), out: str | None = None) -> int:
    """``python -m bdlib tune``: run the protocol, print the choices, write them as JSON."""
    import json
    import sys
    from pathlib import Path

    try:
        # Progress bars on a terminal only: piped to a log, a bar per training is thousands of lines.
        cfg = setup(profile_name, progress=sys.stderr.isatty())
        for name in names:
            defenses.get(name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    t = cfg.tuning
    print(
        f"tuning profile {profile_name}: seeds {list(t.seeds)} (never reported), attacks "
        f"{', '.join(t.attacks)}; rule: lowest mean ASR with BA cost <= {t.max_cost:g} on each attack",
        flush=True,
    )
    result = protocol(cfg, list(names) or None)
    if result["variant"]:
        v = result["variant"]
        print(
            f"ntml variant: {v['setting']} (mean DER {v['DER']:.3f} over every attack, worst BA cost "
            f"{v['cost']:.1f}{'' if v['qualified'] else '; no variant meets the BA bar'})"
        )
    for d, c in result["chosen"].items():
        note = "" if c["qualified"] else "  (no setting within the BA bar: smallest cost)"
        print(f"{d:>7}: {c['setting']:<28} mean ASR {c['ASR']:5.1f}  worst BA cost {c['cost']:5.1f}{note}")
    print("\n".join(result["mismatches"]) or f"profile {profile_name} holds the protocol's choices")
    path = Path(out or f"build/tune-{profile_name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"rows and choices: {path}")
    return 0


__all__ = ["protocol", "main"]
