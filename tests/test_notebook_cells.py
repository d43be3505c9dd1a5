"""Notebook code cells stay short: a call into bdlib, a plot, a save.

Every code cell outside the exercises (solution, ``# Check:`` and hidden-test cells, which the
classroom tooling owns) is at most 8 lines of at most 100 characters, the ``parameters`` cell
included.
"""

import json

from bdlib.runner.notebooks import notebooks

MAX_LINES = 8
MAX_WIDTH = 100


def _exercise(cell: dict) -> bool:
    text = "".join(cell["source"])
    markers = ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS", "# Check:")
    return "nbgrader" in cell.get("metadata", {}) or any(m in text for m in markers)


def test_code_cells_are_a_few_short_lines():
    long = []
    for nb in notebooks():
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] != "code" or _exercise(cell):
                continue
            lines = "".join(cell["source"]).splitlines()
            if len(lines) > MAX_LINES:
                long.append(f"{nb.name} cell {i}: {len(lines)} lines")
            long += [f"{nb.name} cell {i}: {len(s)} characters: {s!r}" for s in lines if len(s) > MAX_WIDTH]
    assert not long, "move the logic into bdlib.report: " + "; ".join(long)
