"""docs/methods.md's baseline sections (FT, NAD, ANP, I-BAU) state exactly what the code does.

Each section's parameter table gives, per `Params` field, the default and the `quick` value
(— : the default); its "Grid (`TUNING`)" line gives the tuning grid as a Python literal. Every
stated value is checked against the `Params` defaults, the `quick` profile and the module's
grid; the `paper` profile must use the reference recipes (the defaults) unchanged.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from bdlib import defenses
from bdlib.profiles import profile

METHODS = Path(__file__).resolve().parent.parent / "docs/methods.md"
SECTIONS = {"ft": "FT", "nad": "NAD", "anp": "ANP", "ibau": "I-BAU"}


def _section(title: str) -> str:
    text = METHODS.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = min(i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i != -1)
    return text[start:end]


def _rows(section: str) -> dict[str, tuple[str, str]]:
    """``{field: (default cell, quick cell)}`` of the rows whose first cell is one `field`."""
    out = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \| (.+?) \| (.+?) \|", line)
        if m:
            out[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return out


def _value(cell: str):
    m = re.fullmatch(r"`(.+)`", cell)
    assert m, f"a value cell must be one Python literal in backticks, got {cell!r}"
    return ast.literal_eval(m.group(1))


@pytest.mark.parametrize("name", list(SECTIONS))
def test_baseline_table_states_the_params_and_quick_values(name):
    section = _section(SECTIONS[name])
    rows = _rows(section)
    Params = defenses.get(name).Params
    fields = [f.name for f in dataclasses.fields(Params)]
    assert sorted(rows) == sorted(fields), f"{SECTIONS[name]}: the table's fields differ from Params"
    default, quick = Params(), profile("quick").defenses[name]
    for field, (d_cell, q_cell) in rows.items():
        assert _value(d_cell) == getattr(default, field), f"{name}.{field}: the documented default"
        stated = getattr(default, field) if q_cell == "—" else _value(q_cell)
        assert stated == getattr(quick, field), f"{name}.{field}: the documented quick value"


@pytest.mark.parametrize("name", list(SECTIONS))
def test_baseline_grid_line_is_the_modules_grid_and_holds_the_reference(name):
    section = _section(SECTIONS[name])
    m = re.search(r"Grid \(`TUNING`\): `(\{.+?\})`", section, re.S)
    assert m, f"{SECTIONS[name]}: no 'Grid (`TUNING`)' line"
    grid = defenses.get(name).tuning
    assert ast.literal_eval(m.group(1)) == dict(grid)
    default = defenses.get(name).Params()
    for knob, values in grid.items():
        assert getattr(default, knob) in values, f"{name}: the grid of {knob} lacks the reference value"


@pytest.mark.parametrize("name", list(SECTIONS))
def test_paper_profile_runs_the_reference_recipe(name):
    assert profile("paper").defenses[name] == defenses.get(name).Params()
