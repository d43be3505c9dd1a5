"""Student copies of the notebooks: ``python -m bdlib assignments [NOTEBOOK ...] [--out student/]``.

Exercises are marked in the notebooks the way nbgrader marks them, so an instructor can use
nbgrader itself, but this module needs only the notebooks' JSON: code between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes a stub that raises
``NotImplementedError``, lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``
are removed (with their cell if nothing else is left), outputs are stripped, and two cells are
added after the title: instructions, and a cell that installs bdlib and Fashion-MNIST on Colab
and does nothing elsewhere.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any, Sequence

from bdlib.config import PROFILES
from bdlib.notebooks import REPO, NotebookError, notebooks

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
PLACEHOLDER_URL = "<REPOSITORY-URL: regenerate with python -m bdlib assignments --repo-url URL>"

Notebook = dict[str, Any]


class AssignmentError(NotebookError):
    """A notebook's exercise markup is malformed, or a request cannot be met."""


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _lines(text: str) -> list[str]:
    """Jupyter's on-disk form of a cell source: lines keeping their newline, the last without."""
    return text.splitlines(keepends=True)


def _regions(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(begin line, end line) index pairs of every ``begin`` … ``end`` region; unpaired markers raise."""
    regions, start = [], None
    for i, line in enumerate(lines):
        mark = line.strip()
        if mark == begin:
            if start is not None:
                raise AssignmentError(
                    f"{where}: {begin!r} on line {i + 1} inside the region opened on line {start + 1}"
                )
            start = i
        elif mark == end:
            if start is None:
                raise AssignmentError(f"{where}: {end!r} on line {i + 1} without a {begin!r} before it")
            regions.append((start, i))
            start = None
        elif begin in line or end in line:
            # Anything else on a marker's line would be kept or dropped by accident.
            raise AssignmentError(f"{where}: line {i + 1} has a marker among other text; put it on a line of its own")
    if start is not None:
        raise AssignmentError(f"{where}: {begin!r} on line {start + 1} has no {end!r}")
    return regions


def clear_solutions(source: str, where: str, markdown: bool = False) -> str:
    """Replace every solution region by nbgrader's stub, indented like its BEGIN marker.

    In code the stub names the function being written (the nearest ``def`` above the region).
    """
    lines = _lines(source)
    out, done = [], 0
    for start, stop in _regions(lines, BEGIN_SOLUTION, END_SOLUTION, where):
        out += lines[done:start]
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        if markdown:
            out.append(f"{indent}YOUR ANSWER HERE\n")
        else:
            defs = [m.group(1) for line in lines[:start] if (m := re.match(r"\s*def\s+(\w+)", line))]
            what = f"{defs[-1]} is not written yet" if defs else "this exercise is not done yet"
            out += [
                f"{indent}# YOUR CODE HERE\n",
                f'{indent}raise NotImplementedError("{what}: replace these two lines with your code")\n',
            ]
        done = stop + 1
    return "".join(out + lines[done:]).rstrip("\n")


def remove_hidden_tests(source: str, where: str) -> str:
    """The source without its hidden-test regions (markers included)."""
    lines = _lines(source)
    keep = [True] * len(lines)
    for start, stop in _regions(lines, BEGIN_HIDDEN, END_HIDDEN, where):
        keep[start : stop + 1] = [False] * (stop + 1 - start)
    return "".join(line for line, k in zip(lines, keep) if k).rstrip("\n")


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercise_titles(nb: Notebook) -> list[str]:
    """Each solution cell's title: the first line of the nearest markdown cell above it."""
    titles, heading = [], None
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown" and _source(cell).strip():
            heading = _source(cell).strip().splitlines()[0].lstrip("#").strip()
        elif cell["cell_type"] == "code" and _nbgrader(cell).get("solution"):
            titles.append(heading or _nbgrader(cell).get("grade_id", "exercise"))
    return titles


def _check_markup(nb: Notebook, name: str) -> None:
    """Markers only in cells whose nbgrader metadata says what they are, as nbgrader requires."""
    for i, cell in enumerate(nb["cells"]):
        text, meta = _source(cell), _nbgrader(cell)
        where = f"{name}, cell {i}"
        if BEGIN_SOLUTION in text or END_SOLUTION in text:
            _regions(_lines(text), BEGIN_SOLUTION, END_SOLUTION, where)
            if not meta.get("solution"):
                raise AssignmentError(f"{where}: has a solution region but its metadata.nbgrader.solution is not true")
        if BEGIN_HIDDEN in text or END_HIDDEN in text:
            _regions(_lines(text), BEGIN_HIDDEN, END_HIDDEN, where)
            if not meta.get("grade"):
                raise AssignmentError(f"{where}: has hidden tests but its metadata.nbgrader.grade is not true")


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": _lines(text.strip("\n"))}


def _code(text: str) -> dict:
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        "source": _lines(text.strip("\n")),
    }


def instructions_cell(name: str, titles: Sequence[str], profile: str) -> dict:
    listed = "\n".join(f"* {t}" for t in titles)
    return _markdown(f"""
## Instructions (student copy)

This is a student copy of the companion's notebook `{name}`, generated by
`python -m bdlib assignments`. Its exercises:

{listed}

1. On Colab, run the next cell first: it installs bdlib and Fashion-MNIST (elsewhere it does
   nothing).
2. Run the notebook from the top. It stops at the first exercise with `NotImplementedError`:
   that is expected.
3. In each exercise, replace the two lines `# YOUR CODE HERE` and `raise NotImplementedError(…)`
   with your code. Keep the function's name and arguments; leave the other cells as they are.
4. Run the check cell below your code: it compares your function with bdlib's own on small
   examples and says what differs. Grading runs further tests that are not shown here.
5. When every check passes, run the whole notebook again (Kernel → Restart & Run All). The
   parameters cell sets `profile = "{profile}"`: `"smoke"` runs in a few minutes on a CPU;
   `"quick"` gives the companion's real results but takes longer.
""")


def colab_cell(repo_url: str) -> dict:
    # torchvision's download checks the files' MD5 sums; bdlib.data reads $BDLIB_DATA/FashionMNIST/raw.
    return _code(f"""
# Colab only: install bdlib and fetch Fashion-MNIST. Anywhere else this cell does nothing.
try:
    import google.colab  # noqa: F401
    on_colab = True
except ImportError:
    on_colab = False

if on_colab:
    import os
    import subprocess
    import sys

    bdlib_repo = {json.dumps(repo_url, ensure_ascii=False)}
    if bdlib_repo.startswith("<"):
        raise RuntimeError("this copy was generated without the repository's URL; ask for one made with "
                           "`python -m bdlib assignments --repo-url URL`")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "git+" + bdlib_repo], check=True)
    for var, default in (("BDLIB_DATA", "/content/bdlib-data"), ("BDLIB_CACHE", "/content/bdlib-cache"),
                         ("BDLIB_FIGURES", "/content/figures")):
        os.environ.setdefault(var, default)
    import torchvision

    torchvision.datasets.FashionMNIST(os.environ["BDLIB_DATA"], download=True)
""")


def _set_profile(cell: dict, profile: str, name: str) -> None:
    text, n = re.subn(r"(?m)^profile\s*=.*$", f"profile = {json.dumps(profile)}", _source(cell))
    if n != 1:
        raise AssignmentError(f"{name}: the parameters cell has no single `profile = …` line to set")
    cell["source"] = _lines(text)


def has_exercises(nb: Notebook) -> bool:
    return any(_nbgrader(c).get("solution") for c in nb["cells"])


def student_notebook(nb: Notebook, name: str, repo_url: str, profile: str = "smoke") -> Notebook:
    """The student copy of notebook ``nb`` (named ``name`` in error messages); ``nb`` is not changed."""
    if profile not in PROFILES:
        raise AssignmentError(f"profile {profile!r} is unknown; choose one of: {', '.join(PROFILES)}")
    _check_markup(nb, name)
    if not has_exercises(nb):
        raise AssignmentError(f"{name} has no exercise (no cell with metadata.nbgrader.solution)")
    out = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(out["cells"]):
        where = f"{name}, cell {i}"
        text = _source(cell)
        if BEGIN_HIDDEN in text:
            text = remove_hidden_tests(text, where)
            if not text.strip():
                continue
        if BEGIN_SOLUTION in text:
            text = clear_solutions(text, where, markdown=cell["cell_type"] == "markdown")
        cell["source"] = _lines(text)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                _set_profile(cell, profile, name)
        cells.append(cell)
    cells[1:1] = [instructions_cell(name, exercise_titles(nb), profile), colab_cell(repo_url)]
    out["cells"] = cells
    return out


def default_repo_url() -> str:
    """``origin``'s URL as Colab can install from it (SSH → HTTPS), else :data:`PLACEHOLDER_URL`."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return PLACEHOLDER_URL
    url = proc.stdout.strip()
    # Colab has no SSH keys: git@host:path and ssh://git@host/path become https://host/path.
    ssh = re.fullmatch(r"(?:ssh://)?[\w.-]+@([\w.-]+)[:/](.+)", url)
    if ssh:
        url = f"https://{ssh.group(1)}/{ssh.group(2)}"
    # A local path (a clone of a clone) is no use on Colab.
    return url if proc.returncode == 0 and re.match(r"https?://", url) else PLACEHOLDER_URL


def write_assignments(
    paths: Sequence[Path], out: Path, repo_url: str, profile: str = "smoke", chosen: bool = False
) -> list[Path]:
    """Write the student copy of each notebook in ``paths`` to ``out``; return the written files.

    Notebooks without exercises are skipped, unless they were ``chosen`` by name: then it is an error.
    """
    loaded = {p: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    with_exercises = [p for p, nb in loaded.items() if has_exercises(nb)]
    if chosen and len(with_exercises) < len(paths):
        missing = [p.stem for p in paths if p not in with_exercises]
        available = [p.stem for p in notebooks() if has_exercises(json.loads(p.read_text(encoding="utf-8")))]
        raise AssignmentError(
            f"{', '.join(missing)}: no exercises; the notebooks with exercises are: {', '.join(available) or 'none'}"
        )
    copies = {p: student_notebook(loaded[p], p.stem, repo_url, profile) for p in with_exercises}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p, nb in copies.items():
        target = out / p.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written
