"""An nbgrader course from the notebooks' exercises: ``python -m bdlib assignments [NOTEBOOK ...]
[--course course/] [--assignment ps1]``.

Exercises are marked in the notebooks the way nbgrader marks them (``### BEGIN SOLUTION`` …
``### END SOLUTION``, ``### BEGIN HIDDEN TESTS`` … ``### END HIDDEN TESTS``, ``metadata.nbgrader``
on the cells). An exercise is a solution cell, the nbgrader cells right after it (a visible check,
hidden tests) and the markdown right above it; it uses nothing the rest of its notebook computes.
Into the course directory go:

* ``source/<assignment>/exercises.ipynb``: the chosen notebooks' exercises and nothing else, cells
  and nbgrader metadata as they are in the notebooks (solutions and hidden tests included). It is
  nbgrader's source: ``nbgrader generate_assignment`` makes the student version, and ``nbgrader
  autograde`` runs a few seconds of code per student, never the training.
* ``companion/<assignment>/<notebook>.ipynb``: each whole notebook for students to run, without
  its exercise (a pointer to the assignment instead), outputs stripped, ``profile = "smoke"``, an
  instructions cell and a cell that installs bdlib on Colab. No nbgrader metadata: never graded.
* ``nbgrader_config.py``, when the course has none: the course id, and ``alembic`` (which
  nbgrader runs by name) found beside the Python that runs nbgrader.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any, Sequence

from bdlib.config import PROFILES
from bdlib.runner.notebooks import REPO, NotebookError, notebooks

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


def instructions_cell(name: str, titles: Sequence[str], profile: str, assignment: str) -> dict:
    listed = "\n".join(f"* {t}" for t in titles)
    return _markdown(f"""
## Instructions (student copy)

This is the companion's notebook `{name}` for students, generated by `python -m bdlib assignments`.
Its exercise is not in this copy: it is graded in `exercises.ipynb` of the assignment `{assignment}`,
and nothing in this notebook uses it:

{listed}

1. On Colab, run the next cell first: it installs bdlib and Fashion-MNIST (elsewhere it does
   nothing).
2. Run the notebook from the top (Kernel → Restart & Run All). The parameters cell sets
   `profile = "{profile}"`: `"smoke"` runs in a few minutes on a CPU; `"quick"` gives the
   companion's real results but takes longer.
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


def exercise_spans(nb: Notebook, name: str) -> list[tuple[int, int]]:
    """(first, stop) cell indices of each exercise: a solution cell with the markdown cells right
    above it (never the title, cell 0) and the nbgrader cells right after it; an nbgrader cell
    outside every exercise is an error (it would be graded without its solution)."""
    cells, spans = nb["cells"], []
    for i, cell in enumerate(cells):
        if not _nbgrader(cell).get("solution"):
            continue
        first, stop = i, i + 1
        while first > 1 and cells[first - 1]["cell_type"] == "markdown" and not _nbgrader(cells[first - 1]):
            first -= 1
        while stop < len(cells) and _nbgrader(cells[stop]) and not _nbgrader(cells[stop]).get("solution"):
            stop += 1
        if spans and spans[-1][1] == first:  # a second solution cell right after the first: one exercise
            first = spans.pop()[0]
        spans.append((first, stop))
    inside = {j for first, stop in spans for j in range(first, stop)}
    for j, cell in enumerate(cells):
        if _nbgrader(cell) and j not in inside:
            raise AssignmentError(
                f"{name}, cell {j}: has nbgrader metadata but is no part of an exercise (a solution cell and "
                "the graded cells right after it)"
            )
    return spans


def _title(nb: Notebook, name: str) -> str:
    text = _source(nb["cells"][0]).strip() if nb["cells"] else ""
    return text.splitlines()[0].lstrip("#").strip() if text else name


def _exercises_of(nb: Notebook, name: str) -> list[tuple[int, int]]:
    _check_markup(nb, name)
    spans = exercise_spans(nb, name)
    if not spans:
        raise AssignmentError(f"{name} has no exercise (no cell with metadata.nbgrader.solution)")
    return spans


def _clean(cell: dict) -> dict:
    """A copy of ``cell`` without outputs, and without a cell id (the notebooks written are nbformat 4.4)."""
    cell = copy.deepcopy(cell)
    cell.pop("id", None)
    if cell["cell_type"] == "code":
        cell["outputs"], cell["execution_count"] = [], None
    return cell


def exercises_notebook(sources: dict[str, Notebook], assignment: str) -> Notebook:
    """nbgrader's source notebook of ``assignment``: the exercises of the notebooks ``sources``
    (name → notebook), each under a heading naming its notebook; nothing else is run."""
    if not sources:
        raise AssignmentError("no notebook to take exercises from")
    names = ", ".join(f"`{n}`" for n in sources)
    cells = [
        _markdown(f"""
# {assignment} · exercises of the backdoor-defense companion

This notebook holds the exercises of the companion's {names} and nothing else: it runs in
seconds. In each exercise, write your code in place of `# YOUR CODE HERE` and
`raise NotImplementedError()` (keep the function's name and arguments) and run the check cell
below it: it compares your function with bdlib's own on small examples. Before you submit, run
Kernel → Restart & Run All: every check prints a line when it passes. Grading runs these cells
and hidden tests, nothing else.

The experiment around each exercise is in the whole notebook of the same name that comes with
this assignment (not graded, and it does not use your functions); it runs in a few minutes on a
CPU.
""")
    ]
    for name, nb in sources.items():
        spans = _exercises_of(nb, name)
        cells.append(_markdown(f"## {_title(nb, name)}\n\nThe exercise of the whole notebook `{name}.ipynb`."))
        for first, stop in spans:
            for cell in nb["cells"][first:stop]:
                cell = _clean(cell)
                if cell["cell_type"] == "markdown":  # one heading level below the notebook's
                    cell["source"] = _lines(re.sub(r"(?m)^(#{1,5}) ", r"#\1 ", _source(cell)))
                cells.append(cell)
    first_nb = next(iter(sources.values()))
    metadata = {
        k: copy.deepcopy(v) for k, v in first_nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")
    }
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 4}


def companion_notebook(nb: Notebook, name: str, repo_url: str, assignment: str, profile: str = "smoke") -> Notebook:
    """The student copy of the whole notebook ``nb`` (named ``name`` in error messages): each exercise
    replaced by a pointer to ``assignment``, no outputs, ``profile``; ``nb`` is not changed."""
    if profile not in PROFILES:
        raise AssignmentError(f"profile {profile!r} is unknown; choose one of: {', '.join(PROFILES)}")
    starts = dict(_exercises_of(nb, name))
    cells, i = [], 0
    while i < len(nb["cells"]):
        if i in starts:
            title = exercise_titles({"cells": nb["cells"][i : starts[i]]})
            cells.append(
                _markdown(
                    f"## {title[0] if title else 'Exercise'}\n\n"
                    f"This exercise is graded: it is in `exercises.ipynb` of the assignment `{assignment}`. "
                    "Nothing below uses it."
                )
            )
            i = starts[i]
            continue
        cell = _clean(nb["cells"][i])
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            _set_profile(cell, profile, name)
        cells.append(cell)
        i += 1
    cells[1:1] = [instructions_cell(name, exercise_titles(nb), profile, assignment), colab_cell(repo_url)]
    return {"cells": cells, "metadata": copy.deepcopy(nb.get("metadata", {})), "nbformat": 4, "nbformat_minor": 4}


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


NBGRADER_CONFIG = """\
# nbgrader's configuration of this course, written by `python -m bdlib assignments` (which never
# overwrites it): edit it freely. The exchange directory (Exchange.root) is set where students and
# instructors share it, e.g. /etc/jupyter/nbgrader_config.py; nbgrader's default is /srv/nbgrader/exchange.
import os
import sys

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = {course_id}

# nbgrader runs the `alembic` executable by name when it opens the gradebook: look for it beside the
# Python that runs nbgrader, so a virtualenv's bin/nbgrader works without activating the virtualenv.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
"""


def _write(path: Path, nb: Notebook) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_course(
    paths: Sequence[Path],
    course: Path,
    assignment: str,
    repo_url: str,
    profile: str = "smoke",
    chosen: bool = False,
    course_id: str = "bdlib",
) -> list[Path]:
    """Write ``assignment`` of the nbgrader course in ``course`` from the notebooks in ``paths``:
    ``source/<assignment>/exercises.ipynb``, ``companion/<assignment>/<notebook>.ipynb`` and, when
    absent, ``nbgrader_config.py``. Returns the notebooks written, the exercises first.

    Notebooks without exercises are skipped, unless they were ``chosen`` by name: then it is an error.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", assignment):
        raise AssignmentError(f"assignment {assignment!r}: use letters, digits, '_', '-' and '.' (e.g. ps1)")
    loaded = {p: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    with_exercises = [p for p, nb in loaded.items() if has_exercises(nb)]
    if chosen and len(with_exercises) < len(paths):
        missing = [p.stem for p in paths if p not in with_exercises]
        available = [p.stem for p in notebooks() if has_exercises(json.loads(p.read_text(encoding="utf-8")))]
        raise AssignmentError(
            f"{', '.join(missing)}: no exercises; the notebooks with exercises are: {', '.join(available) or 'none'}"
        )
    source = course / "source" / assignment
    others = sorted(p.name for p in source.glob("*.ipynb") if p.name != "exercises.ipynb")
    if others:
        # nbgrader grades every notebook of source/<assignment>/, and a whole notebook runs the training.
        raise AssignmentError(
            f"{source} holds other notebooks ({', '.join(others)}): nbgrader would grade them too, running "
            "whole notebooks; remove them, or choose another --assignment"
        )
    exercises = exercises_notebook({p.stem: loaded[p] for p in with_exercises}, assignment)
    copies = {p: companion_notebook(loaded[p], p.stem, repo_url, assignment, profile) for p in with_exercises}
    written = [_write(source / "exercises.ipynb", exercises)]
    written += [_write(course / "companion" / assignment / p.name, nb) for p, nb in copies.items()]
    config = course / "nbgrader_config.py"
    if not config.exists():
        config.write_text(NBGRADER_CONFIG.format(course_id=json.dumps(course_id)), encoding="utf-8")
    return written
