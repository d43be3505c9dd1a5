"""Every value a profile sets has a recorded provenance, and no defense knob comes from a reported seed.

The values live in each method module's ``PROFILES`` (beside its Params and tuning grid);
:mod:`bdlib.profiles` reads and checks them, and the store's code hash does not see them.
"""

import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from bdlib import attacks, defenses, store
from bdlib.config import PROFILES, ConfigError
from bdlib.profiles import _PROFILE_METHODS, PROVENANCE, WHY_KINDS, profile, read_profiles

REPORTED_SEED = re.compile(r"\bseeds? [0-2]\b|\bseeds? 0[-–]2\b|reported seed")
PKG = Path(store.__file__).resolve().parent
METHOD_FILES = sorted([*PKG.glob("attacks/*.py"), *PKG.glob("defenses/*.py")])


def _set_values() -> set[str]:
    return {
        f"{p}.{kind}.{method}.{field}"
        for p, kinds in _PROFILE_METHODS.items()
        for kind, methods in kinds.items()
        for method, fields in methods.items()
        for field in fields
    }


def _declared() -> dict[str, tuple]:
    """Every method module's PROFILES entry, "profile.kind.method.field" -> (value, kind, reason)."""
    out = {}
    for kind, registry in (("attacks", attacks.REGISTRY), ("defenses", defenses.REGISTRY)):
        for module in {importlib.import_module(r.Params.__module__) for r in registry.values()}:
            for p, methods in getattr(module, "PROFILES", {}).items():
                for method, fields in methods.items():
                    for field, entry in fields.items():
                        out[f"{p}.{kind}.{method}.{field}"] = entry
    return out


def _profiles_node(tree: ast.Module) -> ast.stmt | None:
    nodes = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["PROFILES"]
    ]
    assert len(nodes) <= 1, "one PROFILES assignment a module"
    return nodes[0] if nodes else None


def test_every_profile_value_has_a_provenance_and_every_provenance_a_value():
    values = _set_values()
    assert values - set(PROVENANCE) == set(), "profile values without a recorded provenance"
    assert set(PROVENANCE) - values == set(), "provenance of values no profile sets"
    for path, why in PROVENANCE.items():
        assert why.kind in WHY_KINDS and why.reason.strip(), path
        assert (why.kind == "ci") == path.startswith("smoke."), path  # CI values only on smoke, and only CI there


def test_the_profiles_are_what_the_method_modules_declare():
    declared = _declared()
    assert set(declared) == set(PROVENANCE) == _set_values()
    for path, (value, kind, reason) in declared.items():
        assert (PROVENANCE[path].kind, PROVENANCE[path].reason) == (kind, reason), path
        p, kind_, method, field = path.split(".")
        assert _PROFILE_METHODS[p][kind_][method][field] == value, path
        params = getattr(profile(p), kind_)[method]
        assert getattr(params, field) == value and type(getattr(params, field)) is type(value), path


def test_no_defense_value_comes_from_a_reported_seed_and_tuned_knobs_come_from_the_rule():
    reported = set(profile("quick").seeds) | set(profile("paper").seeds)
    assert reported == {0, 1, 2}  # what REPORTED_SEED looks for
    for path, why in PROVENANCE.items():
        p, kind, method, field = path.split(".")
        if kind != "defenses":
            continue
        assert not REPORTED_SEED.search(why.reason), f"{path}: {why.reason}"
        if why.kind == "rule":
            # the protocol's rule (bdlib.study.tune) or NT-ML's readings sweep under it (bdlib.study.readings)
            assert "tuning seeds" in why.reason and "bdlib.study." in why.reason, path
        if p != "smoke" and field in defenses.get(method).tuning:
            # A strength knob the protocol sweeps may differ from the reference only by its rule.
            assert why.kind == "rule", f"{path} is a tuned knob set by {why.kind}, not by the protocol's rule"


SOURCE = '''"""A method."""
import dataclasses

@dataclasses.dataclass(frozen=True)
class Params:
    steps: int = 10

TUNING = {"steps": (5, 10)}
{profiles}
RECORD = ("m", Params)
'''
BLOCK = 'PROFILES = {"quick": {"m": {"steps": (5, "budget", "half the steps")}}}\n'


def test_a_profiles_block_does_not_change_the_normalised_source():
    bare = store.normalised_source(SOURCE.replace("{profiles}", ""))
    assert store.normalised_source(SOURCE.replace("{profiles}", BLOCK)) == bare
    assert store.normalised_source(SOURCE.replace("{profiles}", BLOCK.replace("(5,", "(7,"))) == bare
    annotated = BLOCK.replace("PROFILES =", "PROFILES: dict =")
    assert store.normalised_source(SOURCE.replace("{profiles}", annotated)) == bare
    moved = SOURCE.replace("{profiles}", "") + BLOCK
    assert store.normalised_source(moved) == bare
    # A change elsewhere still counts, and so does a PROFILES that is not a dict (config.PROFILES).
    assert store.normalised_source(SOURCE.replace("{profiles}", BLOCK).replace("= 10", "= 11")) != bare
    assert store.normalised_source(SOURCE.replace("{profiles}", "PROFILES = ('a', 'b')\n")) != bare
    # Only the module-level binding: one inside a function is code.
    inner = SOURCE.replace("{profiles}", "def f():\n    " + BLOCK)
    assert store.normalised_source(inner) != store.normalised_source(
        SOURCE.replace("{profiles}", "def f():\n    pass\n")
    )


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.relative_to(PKG).as_posix())
def test_moving_a_method_modules_profiles_keeps_its_code_hash(path):
    text = path.read_text(encoding="utf-8")
    node = _profiles_node(ast.parse(text))
    if node is None:
        return
    lines = text.splitlines(keepends=True)
    block = "".join(lines[node.lineno - 1 : node.end_lineno])
    without = "".join(lines[: node.lineno - 1] + lines[node.end_lineno :])
    assert store.normalised_source(without) == store.normalised_source(text)
    assert store.normalised_source(without + "\n" + block) == store.normalised_source(text)


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.relative_to(PKG).as_posix())
def test_every_method_modules_profiles_is_pure_data(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = _profiles_node(tree)
    assert not [n for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == "PROFILES"], (
        "declare PROFILES = {...} without an annotation"
    )
    if node is None:
        return
    assert isinstance(node.value, ast.Dict)
    allowed = (ast.Dict, ast.Tuple, ast.List, ast.Constant, ast.UnaryOp, ast.BinOp, ast.expr_context)
    allowed += (ast.operator, ast.unaryop)  # the operator of a BinOp / UnaryOp
    bad = [type(n).__name__ for n in ast.walk(node.value) if not isinstance(n, allowed)]
    assert not bad, f"PROFILES must be data (dicts, tuples, constants, arithmetic on them): found {bad}"
    module = importlib.import_module("bdlib." + path.relative_to(PKG).with_suffix("").as_posix().replace("/", "."))
    assert module.PROFILES == eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": {}})


def _records():
    return {"ft": defenses.get("ft").Params}


def test_read_profiles_names_what_is_wrong_and_the_valid_choices():
    good = {"quick": {"ft": {"steps": (8, "budget", "fewer steps")}}}
    value, why = read_profiles("m", good, _records())["quick"]["ft"]["steps"]
    assert value == 8 and (why.kind, why.reason) == ("budget", "fewer steps")
    fields = ", ".join(f.name for f in dataclasses.fields(defenses.get("ft").Params))
    cases = [
        ({"quick": {"ft": {"stepz": (8, "budget", "x")}}}, ["'stepz'", "did you mean 'steps'", fields]),
        ({"quick": {"ft": {"steps": (8, "tuned", "x")}}}, ["'tuned'", ", ".join(WHY_KINDS)]),
        ({"fast": {"ft": {"steps": (8, "budget", "x")}}}, ["'fast'", ", ".join(PROFILES)]),
        ({"quick": {"nad": {"steps": (8, "budget", "x")}}}, ["'nad'", "choose one of: ft"]),
        ({"quick": {"ft": {"steps": (8, "budget")}}}, ["(value, kind, reason)"]),
        ({"quick": {"ft": {"steps": (8, "budget", " ")}}}, ["reason"]),
        ({"quick": {"ft": {"steps": ("8", "budget", "x")}}}, ["steps"]),  # a value of the wrong type
    ]
    for bad, words in cases:
        with pytest.raises(ConfigError) as err:
            read_profiles("bdlib.defenses.m", bad, _records())
        assert "bdlib.defenses.m.PROFILES" in str(err.value), str(err.value)
        for w in words:
            assert w in str(err.value), (w, str(err.value))
