"""bdlib.report computes nothing: none of its modules imports what computes, and every public
function of the package runs on hand-made rows and records with training, inference, the store's
stages and the cells made to raise.

A new public function of bdlib.report needs an entry in SAMPLES (its sample arguments), or
test_every_public_function_has_sample_arguments fails.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bdlib.report
from bdlib import cells, experiment, pool, train
from bdlib.profiles import resolve

# What the report package may not import: it computes nothing, so neither the store's stages, nor
# the pool, the cells, the study (which runs them), nor training (tests/test_architecture.py).
COMPUTES = ("bdlib.experiment", "bdlib.pool", "bdlib.cells", "bdlib.study", "bdlib.train")
PACKAGE = Path(bdlib.report.__file__).parent
MODULES = ["bdlib.report", *(f"bdlib.report.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)]))]


class Computed(AssertionError):
    """A report function trained, ran a model, read the store or ran a cell."""


def _imported(source: str, module: str) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, lazily imported ones included;
    ``from a import b`` counts as ``a`` and ``a.b``."""
    package = module if module == "bdlib.report" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return found


def _computes(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == c or n.startswith(c + ".") for c in COMPUTES))


def _path(module: str) -> Path:
    return PACKAGE / ("__init__.py" if module == "bdlib.report" else module.rsplit(".", 1)[1] + ".py")


def test_no_report_module_imports_what_computes():
    assert len(MODULES) == 8, MODULES  # the package, common and the six notebooks' modules
    found = {m: _computes(_imported(_path(m).read_text(), m)) for m in MODULES}
    assert not any(found.values()), {m: f for m, f in found.items() if f}


def test_the_import_check_catches_each_form():
    probe = (
        "import bdlib.experiment\nfrom bdlib import pool\nfrom bdlib.cells import run\n"
        "from ..study import measure\n\ndef f():\n    from bdlib.train import fit\n"
    )
    found = _computes(_imported(probe, "bdlib.report.common"))
    assert {"bdlib.experiment", "bdlib.pool", "bdlib.cells", "bdlib.study.measure", "bdlib.train"} <= set(found)
    assert not _computes(_imported("from bdlib import metrics\nfrom bdlib.report.common import table\n", "x.y"))


def _public() -> dict[str, object]:
    """``{"module.name": function}`` of every public function (and class) defined in bdlib.report."""
    out = {}
    for m in MODULES:
        mod = importlib.import_module(m)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != m:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                out[f"{m.rsplit('.', 1)[1]}.{name}"] = obj
    return out


# --- hand-made rows and records

CFG = resolve("smoke")
M = {"BA": 80.0, "ASR": 10.0, "RA": 70.0}
NTML_CFG = SimpleNamespace(defenses={"ntml": SimpleNamespace(teacher="kd")}, target=0)


def _run(record, cfg=NTML_CFG, **fields):
    """A DefenseRun as the report reads one: a record, the config, metrics before and after."""
    base = {"record": record, "cfg": cfg, "before": dict(M), "metrics": {**M, "DER": 0.9}, "seconds": 1.0}
    return SimpleNamespace(**{**base, "model": None, "diverged": None, **fields})


def _ntml_run():
    rec = SimpleNamespace(
        poisoned=dict(M),
        nt_teacher_metrics=dict(M),
        nt_student_metrics=dict(M),
        ml_history=[{"epoch": 1, "loss": 0.1, "student": dict(M), "teacher": dict(M)}],
    )
    return _run(rec)


def _none_runs():
    flagged = torch.tensor([True, False, True, False])
    rec = SimpleNamespace(flagged=flagged, rounds=[{"round": 1, **M}])
    return {("badnets", 0): _run(rec), ("sig", 0): _run(None, diverged={"message": "nan"})}


def _training():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    return {
        "x": x,
        "poison_idx": torch.tensor([True, True, False, False]),
        "y": torch.tensor([0, 1, 1, 0]),
        "classes": ("a", "b"),
    }


def _mcldef_runs():
    rec = SimpleNamespace(
        target=0,
        mask=torch.ones(1, 2, 2),
        pattern=torch.ones(1, 2, 2),
        mask_norms=torch.tensor([1.0, 4.0]),
        anomaly_index=2.5,
        detection_confident=True,
        purified=False,
        note="no class is an outlier",
        mask_norm=4.0,
        trigger_success=torch.tensor([95.0]),
        trigger_accepted=True,
        epochs=[{"epoch": 0, "loss": None, **M}],
    )
    return {("badnets", 0): _run(rec)}


def _defense_rows(defense="mcldef"):
    return [
        {"attack": a, "seed": s, "model": m, **M}
        for a in ("badnets", "sig")
        for s in (0, 1)
        for m in ("undefended", defense)
    ]


def _grid_rows():
    return [
        {"attack": "badnets", "defense": d, "seed": s, "clean_fraction": 0.05, **M, "DER": 0.5}
        for d in ("undefended", "clean model", "ft")
        for s in (0, 1)
    ]


def _ml_rows():
    return [
        {"attack": "badnets", "seed": s, "lam": lam, **M, "ASR": 10.0 + s + lam, "DER": 0.9}
        for lam in (1.0, 0.0)
        for s in (0, 1)
    ]


def _variant_rows():
    return [
        {"attack": a, "setting": v, "seed": 100, "ASR": 1.0, "cost": 0.5, "DER": 0.9}
        for a in ("badnets", "sig")
        for v in ("v1", "v2")
    ]


def _seed_summary():
    keys = ("BA", "ASR", "RA", "DER", "cost")
    return [
        {
            "attack": "badnets",
            "lam": 1.0,
            **{k: 1.0 for k in keys},
            **{f"{k}_std": 0.1 for k in keys},
            "ASR_spread": 2.0,
            "n_seeds": 2,
        }
    ]


def _reference_rows():
    return [{"defense": "ft", "reference": "lr=0.01", "ASR": 30.0, "cost": 1.0, "defends": False}]


CHOSEN = {"ft": {"setting": "lr=0.1", "ASR": 2.0, "cost": 1.0, "qualified": True}}
VARIANT = {"setting": "reading=suppress", "ASR": 3.0, "DER": 0.9, "cost": 1.0, "qualified": True}
BASELINES = ("undefended", "clean model")

# Sample arguments of every public function of bdlib.report: ``{"module.name": () -> (args, kwargs)}``.
SAMPLES = {
    "common.describe": lambda: ((CFG, "float32, deterministic kernels", ["badnets", "none"], [0]), {}),
    "common.attack_names": lambda: (("all",), {}),
    "common.defense_names": lambda: ((["ft", "ntml"],), {}),
    "common.attacks_among": lambda: ((["badnets", "sig"], ["badnets"]), {}),
    "common.seed_list": lambda: ((CFG, None), {}),
    "common.checked_seeds": lambda: (([0, 1], "seeds", [0, 1]), {}),
    "common.finished": lambda: ((_none_runs(),), {}),
    "common.summarize": lambda: ((_defense_rows(),), {}),
    "common.summary_table": lambda: (({"clean": {"BA": [80.0, 1.0]}},), {}),
    "common.per_attack": lambda: ((_defense_rows(),), {}),
    "common.per_attack_table": lambda: (({"badnets": {"clean": {"BA": [80.0, 1.0]}}},), {}),
    "common.means": lambda: ((_defense_rows(), "badnets", "undefended"), {}),
    "common.table": lambda: ((_defense_rows(),), {}),
    "poisoning.narcissus_rows": lambda: (([{"budget": "paper", "poison_rate": 0.0005, "seed": 0, **M}],), {}),
    "poisoning.tsne_attacks": lambda: ((["wanet", "sig"],), {}),
    "nt_stage.nt_stage_rows": lambda: (({("badnets", 0): _ntml_run()},), {}),
    "nt_stage.tau_rows": lambda: (({1.0: _ntml_run(), 4.0: _ntml_run()},), {}),
    "nt_stage.target_table": lambda: (
        (
            [
                {"attack": "sig", "seed": 0, "model": "M0", "images": i, "p_target": 1.0, "margin": -1.0}
                for i in ("clean", "triggered")
            ],
        ),
        {},
    ),
    "mutual_learning.ml_epoch_rows": lambda: (([_ntml_run()],), {}),
    "mutual_learning.budget_rows": lambda: (({(0.01, 0, "ntml"): _ntml_run(), (0.01, 0, "ft"): _ntml_run()},), {}),
    "mutual_learning.ablation_rows": lambda: (({"default": _ntml_run(), "fine-tuning": _ntml_run()},), {}),
    "mutual_learning.variant_choice": lambda: (("reading=suppress", VARIANT), {}),
    "mutual_learning.variant_table": lambda: ((_variant_rows(),), {}),
    "mutual_learning.variant_verdicts": lambda: ((CFG, _variant_rows(), SimpleNamespace(asr_max=5.0)), {}),
    "mutual_learning.seed_table": lambda: ((_seed_summary(),), {}),
    "mutual_learning.ml_effect": lambda: ((_ml_rows(),), {}),
    "mutual_learning.ml_paired": lambda: ((_ml_rows(),), {}),
    "mutual_learning.ml_paired_lines": lambda: ((_ml_rows(),), {}),
    "mutual_learning.verdict_lines": lambda: ((["badnets"], None, _ml_rows()), {}),
    "none.detection_rows": lambda: ((_none_runs(), {("badnets", 0): torch.tensor([True, True, False, False])}), {}),
    "none.detection_table": lambda: (
        ([{"attack": "badnets", "seed": 0, "precision": 50.0, "recall": 50.0, "flagged": 2, "poisoned": 2}],),
        {},
    ),
    "none.round_rows": lambda: ((_none_runs(), "NONE as tuned"), {}),
    "none.flagged_examples": lambda: ((_none_runs()[("badnets", 0)], _training()), {"n": 1}),
    "mcldef.inversion_rows": lambda: ((_mcldef_runs(), 0, {("badnets", 0): torch.zeros(1, 2, 2)}), {}),
    "mcldef.mcldef_epoch_rows": lambda: ((_mcldef_runs().values(),), {"label": "MCLDef as published"}),
    "mcldef.target_detection": lambda: ((_mcldef_runs(),), {}),
    "mcldef.published_triggers": lambda: ((_mcldef_runs(),), {}),
    "mcldef.no_outlier_notes": lambda: ((_mcldef_runs(),), {}),
    "mcldef.mcldef_forms_rows": lambda: ((_defense_rows("mcldef"), _defense_rows("mcldef_detect")), {}),
    "comparisons.parameters": lambda: ((CFG, "all", "all", None), {}),
    "comparisons.tuning_intro": lambda: ((CFG, [0, 1]), {}),
    "comparisons.protocol_note": lambda: ((CFG, ["ft: the profile has lr=0.01, the protocol chooses lr=0.1"]), {}),
    "comparisons.reference_note": lambda: ((_reference_rows(), 3.0, 5.0), {}),
    "comparisons.backdoorbench_table": lambda: ((_reference_rows(),), {"attack": "badnets"}),
    "comparisons.protocol_table": lambda: ((CHOSEN, {"ft": "lr=0.01"}, VARIANT), {}),
    "comparisons.extra_seeds_note": lambda: (
        (
            [SimpleNamespace(attack="badnets", defense="ft"), SimpleNamespace(attack="badnets", defense="undefended")],
            [3],
            20.0,
            BASELINES,
        ),
        {},
    ),
    "comparisons.der_table": lambda: ((_grid_rows(), BASELINES), {}),
    "comparisons.clean_data_defenses": lambda: ((["none", "ft"],), {}),
    "comparisons.BudgetSweep": lambda: (((0.01,), ("badnets",), (0,), ("ft",)), {}),
    "comparisons.budget_sweep": lambda: (
        ({"clean": [0.01], "attacks": ["badnets"], "seeds": [0]}, ["badnets"], ["ft"]),
        {},
    ),
    "comparisons.budget_curve_rows": lambda: ((_grid_rows(), "badnets", ["ft"], [0]), {}),
    "comparisons.defense_summary": lambda: ((_grid_rows(), ["badnets"], ["ft"]), {}),
}


@pytest.fixture
def nothing_computes(monkeypatch):
    """Training, inference, every stage of bdlib.experiment, the pool and the cells raise."""

    def refuse(what):
        def raiser(*args, **kwargs):
            raise Computed(f"a report function called {what}")

        return raiser

    for name in ("fit", "logits", "features"):
        monkeypatch.setattr(train, name, refuse(f"bdlib.train.{name}"))
    monkeypatch.setattr(torch.nn.Module, "__call__", refuse("a model's forward"))
    for name, obj in vars(experiment).items():
        if inspect.isfunction(obj):
            monkeypatch.setattr(experiment, name, refuse(f"bdlib.experiment.{name}"))
    for name in ("run", "runs", "run_cell", "defended"):
        monkeypatch.setattr(cells, name, refuse(f"bdlib.cells.{name}"))
    for name in ("prefetch", "results"):
        monkeypatch.setattr(pool, name, refuse(f"bdlib.pool.{name}"))


def test_every_public_function_has_sample_arguments():
    public = set(_public())
    assert public - set(SAMPLES) == set(), "add sample arguments to SAMPLES for these new report functions"
    assert set(SAMPLES) - public == set(), "SAMPLES names functions bdlib.report no longer has"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_public_function_runs_with_nothing_computing(name, nothing_computes):
    fn = _public()[name]
    args, kwargs = SAMPLES[name]()
    fn(*args, **kwargs)  # raises Computed if it trains, runs a model, reads the store or runs a cell


def test_the_guard_catches_training_inference_and_the_store(nothing_computes):
    with pytest.raises(Computed, match="forward"):
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))
    with pytest.raises(Computed, match="bdlib.train.fit"):
        train.fit(None, None, None, None)
    with pytest.raises(Computed, match="bdlib.experiment.defend"):
        experiment.defend(CFG, "ft")
    with pytest.raises(Computed, match="bdlib.cells.run"):
        cells.run(CFG, [])
