"""A new defense is one module plus one registry line (issue #27).

The test copies the package, adds a toy defense module and its line in the registry, changes no
other file, and runs the toy through the grid, the comparison protocol, the claims ledger and
notebook 06's tables and figures, in a fresh interpreter (so the registry line is read at import,
as it would be in a user's copy).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TOY = '''"""Toy: scales the classifier's last layer down by ``strength`` (a test's defense, no training)."""

from dataclasses import dataclass

import torch
from torch import nn

from bdlib.defenses.base import Defended, Defense, DefenseContext


@dataclass(frozen=True)
class Params:
    strength: float = 0.0  # 0: leaves the model as it is

    def validate(self) -> None:
        if not 0 <= self.strength < 1:
            raise ValueError(f"strength must be in [0, 1), got {self.strength}")


def run(model: nn.Module, ctx: DefenseContext) -> Defended:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1.0 - ctx.params.strength)
    return Defended(model=model.eval())


TUNING = {"strength": (0.0, 0.5)}

DEFENSE = Defense("toy", Params, run, uses=("clean",), cite="a test's toy defense", tuning=TUNING)
'''

SCRIPT = """
import json
from bdlib import defenses, plots
from bdlib.profiles import resolve
from bdlib.report import comparisons as rp
from bdlib.study import claims, grid, protocol, tune

assert "toy" in defenses.REGISTRY
cfg = resolve("smoke", device="cpu", overrides={
    "n_train": 300, "n_test": 100, "train.epochs": 1, "tuning.defenses": ["toy"], "tuning.grid_points": None,
})
proto = protocol.protocol(cfg, ["toy"])
chosen = proto["chosen"]
names, dnames = ["badnets"], ["toy"]
main = grid.run(cfg, grid.cells(names, [*grid.BASELINES, *dnames], [0], [cfg.clean_fraction]))
entries = claims.ledger(main)
refs = {"toy": tune.reference("toy")}
rp.der_table(main, grid.BASELINES)
rp.protocol_table(chosen, refs)
summary = rp.defense_summary(main, names, [*grid.BASELINES, *dnames])
plots.heatmaps(main, values=("BA", "ASR", "DER"))
plots.tradeoff(proto["rows"], chosen, cfg.tuning.max_cost, refs)
print(json.dumps({
    "settings": sorted({r["setting"] for r in proto["rows"]}),
    "chosen": chosen["toy"]["setting"],
    "grid": sorted({r["defense"] for r in main}),
    "ledger": sorted(e["id"] for e in entries),
    "rivals": list(claims.RIVALS),
    "summary": sorted(summary["badnets"]),
}))
"""


def test_a_toy_defense_is_one_module_and_one_registry_line(tmp_path):
    pkg = tmp_path / "bdlib"
    shutil.copytree(REPO / "bdlib", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "defenses" / "toy.py").write_text(TOY)
    registry = pkg / "defenses" / "__init__.py"
    text = registry.read_text()
    # The registry's own style: the module among the imports, and its line.
    imports = "from bdlib.defenses import anp, ft, ibau, mcldef, nad, none, ntml\n"
    line = 'REGISTRY["ibau"] = ibau.DEFENSE\n'
    assert imports in text and line in text
    text = text.replace(imports, imports.replace("ntml", "ntml, toy")).replace(
        line, line + 'REGISTRY["toy"] = toy.DEFENSE\n'
    )
    registry.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "BDLIB_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["settings"] == ["strength=0", "strength=0.5"]
    assert out["chosen"] in out["settings"]
    assert out["grid"] == sorted(["undefended", "clean model", "toy"])
    assert "bar-toy" in out["ledger"] and "toy" in out["rivals"]
    assert "toy" in out["summary"]
