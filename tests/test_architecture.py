"""The house's rules, read from the source: no import cycle among bdlib's modules (deferred imports
inside functions included: a cycle that works only because an import is deferred is still one),
no module reaching into another's ``_private`` names, config a leaf, and a defense's context
that carries nothing of the attack."""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "bdlib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _imported(tree: ast.AST, here: str, mods: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import statement anywhere in ``tree``, relative
    imports resolved; ``from bdlib import x`` where x is a module counts as importing x (the
    package itself is already initialised by then)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here if _is_package(here, mods) else here.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}" if base else pkg
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{base}.{n}" in mods]
            if len(submodules) < len(names):  # something other than a submodule comes from base itself
                out.append((base, [n for n in names if n not in submodules]))
            out += [(f"{base}.{n}", []) for n in submodules]
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in _imported(ast.parse(path.read_text()), name, mods):
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_deferred_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from bdlib.train import fit\n")
    assert ("bdlib.train", ["fit"]) in _imported(tree, "bdlib.metrics", _modules())


def test_no_import_cycle_among_bdlib_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_config_is_a_leaf():
    graph = import_graph()
    assert graph["bdlib.config"] == set(), f"bdlib.config imports {sorted(graph['bdlib.config'])}"


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    users = sorted(m for m, targets in graph.items() if "bdlib.runner.cli" in targets and m != "bdlib.__main__")
    assert not users, f"library modules import the CLI (bdlib.runner.cli): {users}"


def _private_uses(path: Path, here: str, mods: dict[str, Path]) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for target, names in _imported(tree, here, mods):
        if target.startswith("bdlib") and target != here:
            found += [f"from {target} import {n}" for n in names if n.startswith("_") and not n.startswith("__")]
    aliases = {}  # local name -> bdlib module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bdlib"):
            for a in node.names:
                if f"{node.module}.{a.name}" in mods:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != here
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return [f"{path.relative_to(REPO)}: {f}" for f in found]


def test_no_module_uses_another_modules_private_names():
    mods = _modules()
    found = [u for name, path in mods.items() for u in _private_uses(path, name, mods)]
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        src = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        tmp = REPO / "build" / "arch" / (nb.stem + ".py")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(src)
        found += [u.replace(str(tmp.relative_to(REPO)), nb.name) for u in _private_uses(tmp, "__main__", mods)]
    assert not found, "cross-module use of private names:\n" + "\n".join(found)


def test_the_private_name_check_catches_both_forms(tmp_path):
    mods = _modules()
    probe = REPO / "build" / "arch" / "probe.py"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("from bdlib.experiment import _secret\nfrom bdlib import experiment as ex\nex._other()\n")
    assert len(_private_uses(probe, "__main__", mods)) == 2


def test_config_datasets_and_models_match_the_registries():
    from bdlib import config, data, models

    assert set(typing.get_args(config.Dataset)) == set(data.DATASETS) - {"cifar100"}
    assert set(typing.get_args(config.Model)) == set(models.MODELS)


def _reachable(obj, depth: int = 0, seen: set[int] | None = None):
    """Every value reachable from ``obj`` through public attributes, dataclass fields, mappings,
    sequences and functools.partial arguments (what a defense could read off its context)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6 or isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        yield obj
        return
    seen.add(id(obj))
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, typing.Mapping):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, torch.nn.Module):
        children = []
    else:
        children = [getattr(obj, a, None) for a in ("args", "keywords", "func") if hasattr(obj, a)]
        children += [v for k, v in vars(obj).items() if not k.startswith("_")] if hasattr(obj, "__dict__") else []
    for c in children:
        yield from _reachable(c, depth + 1, seen)


def test_only_mcldef_as_published_is_granted_the_target():
    """The one declared grant beyond the threat model (``Defense.needs_target``): MCLDef as
    published, whose official code is told ``--target_label``. Its detecting form is not."""
    from bdlib import defenses
    from bdlib.defenses.base import DefenseContext

    assert {n for n, d in defenses.REGISTRY.items() if d.needs_target} == {"mcldef"}
    assert {f.name: f.default for f in dataclasses.fields(DefenseContext)}["target"] is None


@pytest.mark.parametrize("defense", ["ft", "mcldef_detect", "mcldef"])
def test_a_defense_context_reaches_neither_the_target_nor_the_attack(monkeypatch, defense):
    """No context carries the attack; only a defense declaring ``needs_target`` gets the target."""
    from bdlib import defenses, experiment
    from bdlib.config import Config
    from bdlib.defenses.base import DefenseContext
    from bdlib.profiles import resolve

    assert "cfg" not in {f.name for f in dataclasses.fields(DefenseContext)}
    seen: list[DefenseContext] = []

    def spy(model, ctx):
        seen.append(ctx)
        return defenses.Defended(model)

    monkeypatch.setitem(defenses.REGISTRY, defense, dataclasses.replace(defenses.get(defense), run=spy))
    monkeypatch.setattr(experiment, "module_hash", lambda fn: "test")
    monkeypatch.setattr(experiment, "store", lambda: _NoStore())
    # An unusual target and attack parameters, so that finding them by value means something.
    cfg = resolve(
        "smoke",
        device="cpu",
        overrides={"target": 7, "n_train": 200, "n_test": 50, "train.epochs": 1, "attacks.badnets.poison_rate": 0.123},
    )
    experiment.defend(cfg, defense)
    (ctx,) = seen
    granted = defenses.get(defense).needs_target
    assert ctx.target == (7 if granted else None)
    values = list(_reachable(dataclasses.replace(ctx, target=None)))  # all but the declared grant
    assert not any(isinstance(v, Config) for v in values), "the context carries the run's Config"
    assert not any(v is cfg.attack_params or type(v) is type(cfg.attack_params) for v in values)
    assert 0.123 not in [v for v in values if isinstance(v, float)], "the poison rate is reachable"
    assert 7 not in [v for v in values if isinstance(v, int) and not isinstance(v, bool)], "the target is reachable"


class _NoStore:
    """Computes every entry, stores nothing (the context test needs no cache)."""

    def get_or_compute(self, kind, spec, compute):
        tensors, meta = compute()
        return _Entry(dict(tensors), {"seconds": 0.0, **meta}, "k" * 64)


@dataclasses.dataclass
class _Entry:
    tensors: dict
    meta: dict
    key: str


# The floors of the house, from the bottom: the core and the method rooms, then the cells module
# (one way to run a cell), then the study package (grid, protocol, readings, ledger,
# measurements), then the report package (pure functions over rows) and the notebooks.
ABOVE_CORE = ("bdlib.study", "bdlib.report")
ENTRY_POINTS = ("bdlib.runner.cli", "bdlib.__main__")  # the command line sits on top, beside the notebooks


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_nothing_below_the_study_and_report_packages_imports_them():
    graph = import_graph()
    found = []
    for module, targets in graph.items():
        if any(_in(module, p) for p in ABOVE_CORE) or module in ENTRY_POINTS:
            continue
        found += [f"{module} imports {t}" for t in sorted(targets) if any(_in(t, p) for p in ABOVE_CORE)]
    assert not found, "modules below the study and report packages import them:\n" + "\n".join(found)


def test_the_report_package_imports_nothing_that_computes():
    """The report package formats rows; whatever computes goes through bdlib.cells, the study
    package or bdlib.experiment, none of which it may import."""
    graph = import_graph()
    computes = ("bdlib.experiment", "bdlib.cells", "bdlib.pool", "bdlib.train", "bdlib.study")
    found = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        if _in(m, "bdlib.report")
        for t in sorted(targets)
        if any(_in(t, c) for c in computes)
    ]
    assert not found, "\n".join(found)


def test_the_method_rooms_import_neither_the_study_nor_the_cells():
    graph = import_graph()
    rooms = [m for m in graph if _in(m, "bdlib.attacks") or _in(m, "bdlib.defenses")]
    found = [f"{m} imports {t}" for m in rooms for t in sorted(graph[m]) if t in ("bdlib.cells", "bdlib.experiment")]
    assert not found, "\n".join(found)


def test_the_ledger_names_only_registered_defenses_and_attacks():
    from bdlib import attacks, defenses
    from bdlib.study import claims

    named = {c.defense for c in claims.CLAIMS} | {r for c in claims.CLAIMS for r in c.rivals}
    assert named <= set(defenses.REGISTRY), (
        f"claims name unregistered defenses: {sorted(named - set(defenses.REGISTRY))}"
    )
    assert set(claims.BASELINE_DEFENSES) <= set(defenses.REGISTRY)
    used = {a for c in claims.CLAIMS for a in c.attacks}
    assert used <= set(attacks.REGISTRY), f"claims name unregistered attacks: {sorted(used - set(attacks.REGISTRY))}"
    assert claims.RIVALS == claims.rivals(defenses.REGISTRY)


def test_the_rivals_come_from_the_registry():
    from bdlib import defenses
    from bdlib.study import claims

    reg = dict(defenses.REGISTRY)
    assert "mcldef" not in claims.RIVALS and "none_published" not in claims.RIVALS  # told the target; a variant
    assert "mcldef_detect" in claims.RIVALS and "ntml" not in claims.RIVALS and "ft" not in claims.RIVALS
    reg["toy"] = dataclasses.replace(defenses.get("ft"), name="toy")
    assert claims.rivals(reg) == (*claims.RIVALS, "toy")
