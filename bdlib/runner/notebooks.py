"""The companion's notebooks as files: which there are, and their parameters.

Shared by the runner (``bdlib.runner.cli``, the CLI) and the student copies (``bdlib.runner.classroom``):
:func:`notebooks` finds the numbered notebooks (or those named), :func:`parameters` reads the
literals of a notebook's cell tagged ``parameters``, :func:`parse_value` reads a ``-p`` value and
:func:`check_parameters` validates given values against a notebook's parameters before a kernel
starts. Every error here is a :class:`NotebookError`, whose message is the one paragraph a user reads.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]  # bdlib/runner/notebooks.py -> the repository
NOTEBOOKS = REPO / "notebooks"


class NotebookError(RuntimeError):
    """What the user asked cannot be done: the message is the one paragraph the user reads;
    ``code`` the CLI's exit status (1, or 130 for Ctrl-C)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def notebooks(names: Sequence[str] = ()) -> list[Path]:
    """The notebooks to run: all numbered ones by default, else those named (by stem or path)."""
    available = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return available
    chosen = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file() and path.resolve().parent != NOTEBOOKS:
            chosen.append(path.resolve())  # a notebook of the user's own, run the same way
            continue
        match = [
            p
            for p in available
            if p == path.resolve() or p.stem == path.stem or p.stem.startswith(path.stem + "_") or p.name == name
        ]
        if len(match) != 1:
            raise NotebookError(f"notebook {name!r} is unknown; choose from: {', '.join(p.stem for p in available)}")
        chosen.append(match[0])
    return chosen


def parameters(path: Path) -> dict[str, Any]:
    """The literals of the notebook's one cell tagged ``parameters``."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookError(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    out = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def parse_value(text: str) -> Any:
    """A ``-p`` value: JSON when it parses, else the plain string (checked by :func:`check_parameters`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _Plain(text)


class _Plain(str):
    """A ``-p`` value that is not JSON, kept as a string (checked against the parameter's default)."""


def check_parameters(path: Path, params: dict[str, Any], valid: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``params`` for the notebook at ``path`` before a kernel starts: known names,
    values of the default's kind (a value that is not JSON only where the default is a string),
    the profile and overrides (``bdlib.profiles.resolve``), attack / defense names, seeds.
    Returns the parameters as plain values; raises NotebookError naming the parameter."""
    from bdlib.config import ConfigError
    from bdlib.profiles import resolve
    from bdlib.train import select_device

    valid = parameters(path) if valid is None else valid
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise NotebookError(
            f"{path.name}: parameter(s) {', '.join(unknown)} unknown; this notebook takes: {', '.join(valid)}"
        )
    out = {}
    for name, value in params.items():
        default = valid[name]
        looks_json = isinstance(value, _Plain) and value.lstrip()[:1] in ("[", "{")
        if isinstance(value, _Plain) and (looks_json or not (default is None or isinstance(default, str))):
            raise NotebookError(
                f"{path.name}: -p {name} {str(value)!r} is not valid JSON (strings inside a list or dict need "
                f"double quotes); {name}'s default is {json.dumps(default)}, e.g. -p {name} '{json.dumps(default)}'"
            )
        out[name] = str(value) if isinstance(value, _Plain) else value
    try:
        resolve(str(out.get("profile", valid.get("profile"))), overrides=out.get("overrides", valid.get("overrides")))
        if "device" in valid:
            select_device(str(out.get("device", valid["device"])))  # a device the machine lacks
        for name, value in out.items():
            _check_value(name, value, valid[name])
    except (ConfigError, ValueError, TypeError) as err:
        raise NotebookError(f"{path.name}: {err}") from None
    return out


def route_parameters(paths: Sequence[Path], params: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """Each notebook with the parameters it declares, every one checked (:func:`check_parameters`)
    before the first kernel starts, so a bad value for the last notebook costs no run of the first.
    A parameter none of ``paths`` declares is refused, naming what they take."""
    valid = {path: parameters(path) for path in paths}
    taken = {name for names in valid.values() for name in names}
    unknown = sorted(set(params) - taken)
    if unknown:
        if len(paths) == 1:
            where, takes = paths[0].name, "this notebook takes"
        else:
            where, takes = ", ".join(p.stem for p in paths), "they take"
        raise NotebookError(f"{where}: parameter(s) {', '.join(unknown)} unknown; {takes}: {', '.join(sorted(taken))}")
    return [
        (path, check_parameters(path, {k: v for k, v in params.items() if k in valid[path]}, valid[path]))
        for path in paths
    ]


def _check_value(name: str, value: Any, default: Any) -> None:
    """One parameter's value against its name and default: attack and defense names, seeds,
    lists where the default is a list, and a dict's entries (``budgets["attacks"]``) likewise."""
    from bdlib import attacks, defenses
    from bdlib.config import ConfigError

    if isinstance(default, dict) and default and name != "overrides":
        if not isinstance(value, dict) or set(value) != set(default):
            raise ConfigError(f"'{name}' must be a dict with the keys {', '.join(default)} (default {default!r})")
        for key, v in value.items():
            _check_value(key, v, default[key])
    elif name.endswith("attacks") and value != "all":
        for a in [value] if isinstance(value, str) else list(value):
            attacks.get(a)
    elif name == "defenses" and value != "all":
        for d in [value] if isinstance(value, str) else list(value):
            defenses.get(d)
    elif name.endswith("seeds") and value is not None:
        if not isinstance(value, list) or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value):
            raise ConfigError(f"'{name}' must be a list of non-negative integers, got {value!r}")
    elif isinstance(default, list) and not isinstance(value, list):
        raise ConfigError(f"'{name}' must be a list like its default {default!r}, got {value!r}")
