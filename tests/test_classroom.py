"""The course ``python -m bdlib assignments`` writes: nbgrader's source notebook holds the
notebooks' exercises and nothing else, and runs on its own; the students' whole notebooks hold no
solution, hidden test, exercise or nbgrader metadata. nbgrader itself runs in tests/test_nbgrader.py."""

import json
import sys
import types

import nbformat
import pytest

from bdlib.runner import classroom
from bdlib.runner.cli import main
from bdlib.runner.notebooks import notebooks

SOURCES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in notebooks()}
WITH_EXERCISES = [name for name, nb in SOURCES.items() if classroom.has_exercises(nb)]
URL = "https://example.org/teacher/bdlib.git"


def _src(cell):
    return "".join(cell["source"])


def _role(cell):
    meta = cell["metadata"].get("nbgrader", {})
    if meta.get("solution"):
        return "solution"
    if meta.get("grade"):
        return "hidden" if classroom.BEGIN_HIDDEN in _src(cell) else "check"
    return None


def _exercises(nb):
    """(solution, [check cells]) per exercise: a solution cell and the grade cells after it."""
    out = []
    for cell in nb["cells"]:
        if _role(cell) == "solution":
            out.append((cell, []))
        elif _role(cell) and out:
            out[-1][1].append(cell)
    return out


def _plain_code(cells):
    """The sources of the code cells without metadata (no exercise, no parameters cell)."""
    return [_src(c) for c in cells if c["cell_type"] == "code" and not c["metadata"]]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    assert main(["assignments", "--course", str(out), "--assignment", "ps1", "--repo-url", URL]) == 0
    exercises = json.loads((out / "source" / "ps1" / "exercises.ipynb").read_text(encoding="utf-8"))
    copies = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (out / "companion" / "ps1").glob("*.ipynb")}
    return exercises, copies, out


def test_at_least_four_exercises_each_with_visible_and_hidden_checks():
    exercises = [ex for name in WITH_EXERCISES for ex in _exercises(SOURCES[name])]
    assert len(exercises) >= 4
    for solution, checks in exercises:
        assert [_role(c) for c in checks] == ["check", "hidden"], solution["metadata"]
    ids = [
        c["metadata"]["nbgrader"]["grade_id"]
        for nb in SOURCES.values()
        for c in nb["cells"]
        if "nbgrader" in c["metadata"]
    ]
    assert len(ids) == len(set(ids)), "nbgrader needs unique grade ids"


def test_the_exercises_notebook_holds_every_exercise_as_it_is_and_nothing_else_to_run(course):
    exercises, _, _ = course
    nbformat.validate(nbformat.from_dict(exercises))
    graded = [c for name in WITH_EXERCISES for c in SOURCES[name]["cells"] if "nbgrader" in c["metadata"]]
    assert [(c["source"], c["metadata"]) for c in exercises["cells"] if "nbgrader" in c["metadata"]] == [
        (c["source"], c["metadata"]) for c in graded
    ]
    code = [c for c in exercises["cells"] if c["cell_type"] == "code"]
    assert all("nbgrader" in c["metadata"] and c["outputs"] == [] for c in code)  # no set-up, no training
    assert exercises["metadata"]["kernelspec"]["name"] == "python3"


def test_the_exercises_run_on_their_own_as_autograde_runs_them(course):
    exercises, _, _ = course
    ns = {}
    for cell in exercises["cells"]:
        if cell["cell_type"] == "code":
            exec(_src(cell), ns)  # solutions, visible checks, hidden tests, in one fresh namespace


def test_students_whole_notebooks_have_no_exercise_solution_hidden_test_or_output(course):
    _, copies, _ = course
    assert sorted(copies) == sorted(WITH_EXERCISES)
    for name, nb in copies.items():
        nbformat.validate(nbformat.from_dict(nb))
        assert not any("nbgrader" in c["metadata"] for c in nb["cells"]), f"{name}: a copy nbgrader could grade"
        text = "\n".join(_src(c) for c in nb["cells"])
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "YOUR CODE HERE"):
            assert marker not in text, f"{name}: {marker!r} left in the student copy"
        source = SOURCES[name]
        outside = set()  # lines that also occur outside the exercises may legitimately remain
        secret = set()
        for cell in source["cells"]:
            lines = {line.strip() for line in _src(cell).splitlines() if line.strip()}
            (secret if "nbgrader" in cell["metadata"] else outside).update(lines)
        leaked = {line for c in nb["cells"] for line in map(str.strip, _src(c).splitlines())} & (secret - outside)
        assert not leaked, f"{name}: exercise lines in the student copy: {sorted(leaked)[:3]}"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None
        assert "Instructions (student copy)" in _src(nb["cells"][1]) and "ps1" in _src(nb["cells"][1])
        assert "google.colab" in _src(nb["cells"][2]) and URL in _src(nb["cells"][2])
        params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1 and 'profile = "smoke"' in _src(params[0])
        # every other code cell of the notebook, in order: the copy runs like the notebook, minus its exercise
        assert _plain_code(nb["cells"][3:]) == _plain_code(source["cells"])


def test_colab_cell_acts_only_on_colab(monkeypatch):
    import subprocess

    import torchvision

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda root, download: calls.append(root))
    cell = _src(classroom.colab_cell(URL))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setitem(sys.modules, "google", None)  # not importable: not Colab
    exec(cell, {})
    assert calls == []
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    for var in ("BDLIB_DATA", "BDLIB_CACHE", "BDLIB_FIGURES"):
        monkeypatch.setenv(var, "")  # recorded, so what the cell sets is undone after the test
        monkeypatch.delenv(var)
    exec(cell, {})
    assert calls[0][-1] == f"git+{URL}" and calls[1] == "/content/bdlib-data"
    with pytest.raises(RuntimeError, match="--repo-url"):
        exec(_src(classroom.colab_cell(classroom.PLACEHOLDER_URL)), {})


def _nb(*cells):
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "outputs": [], "metadata": m, "source": s} for s, m in cells
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }


SOLUTION = {
    "nbgrader": {"grade": False, "grade_id": "a", "locked": False, "schema_version": 3, "solution": True, "task": False}
}


@pytest.mark.parametrize(
    "source, message",
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "has no '### END SOLUTION'"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "without a '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside the region"),
        ("### BEGIN SOLUTION\nx = 1  ### END SOLUTION\n", "a line of its own"),
    ],
)
def test_malformed_markup_names_notebook_and_cell(source, message):
    nb = _nb(("profile = 'quick'", {"tags": ["parameters"]}), (source, SOLUTION))
    with pytest.raises(classroom.AssignmentError, match=rf"^99_demo, cell 1: .*{message}"):
        classroom.exercises_notebook({"99_demo": nb}, "ps1")


def test_markers_need_nbgrader_metadata_graded_cells_an_exercise_and_a_notebook_an_exercise():
    with pytest.raises(classroom.AssignmentError, match="cell 0: .*nbgrader.solution"):
        classroom.exercises_notebook({"99_demo": _nb(("### BEGIN SOLUTION\n### END SOLUTION", {}))}, "ps1")
    check = {"nbgrader": {**SOLUTION["nbgrader"], "grade": True, "solution": False, "points": 1, "grade_id": "b"}}
    with pytest.raises(classroom.AssignmentError, match="cell 1: .*no part of an exercise"):
        classroom.exercises_notebook({"99_demo": _nb(("x = 1", {}), ("assert x", check))}, "ps1")
    with pytest.raises(classroom.AssignmentError, match="no exercise"):
        classroom.companion_notebook(_nb(("x = 1", {})), "99_demo", URL, "ps1")


def test_an_exercise_is_its_markdown_solution_and_graded_cells():
    check = {"nbgrader": {**SOLUTION["nbgrader"], "grade": True, "solution": False, "points": 1, "grade_id": "b"}}
    nb = _nb(("profile = 'quick'", {"tags": ["parameters"]}), ("setup()", {}), ("def f(): ...", SOLUTION))
    nb["cells"] += [nb["cells"][1] | {"metadata": check, "source": "f()"}, nb["cells"][1]]
    nb["cells"][2:2] = [{"cell_type": "markdown", "metadata": {}, "source": "## Exercise · f"}]
    nb["cells"][:0] = [{"cell_type": "markdown", "metadata": {}, "source": "# 99 · Demo"}]
    # title, parameters, setup() | the exercise: markdown, solution, check | setup()
    assert classroom.exercise_spans(nb, "99_demo") == [(3, 6)]
    copy = classroom.companion_notebook(nb, "99_demo", URL, "ps1")
    assert [_src(c) for c in copy["cells"][3:]] == [
        'profile = "smoke"',
        "setup()",
        "## Exercise · f\n\nThis exercise is graded: it is in `exercises.ipynb` of the assignment `ps1`. "
        "Nothing below uses it.",
        "setup()",
    ]
    exercises = classroom.exercises_notebook({"99_demo": nb}, "ps1")
    assert [_src(c) for c in exercises["cells"][1:]] == [
        "## 99 · Demo\n\nThe exercise of the whole notebook `99_demo.ipynb`.",
        "### Exercise · f",
        "def f(): ...",
        "f()",
    ]


def test_cli_errors_list_the_valid_choices(tmp_path, capsys):
    assert main(["assignments", "99_nothing", "--course", str(tmp_path)]) == 1
    assert WITH_EXERCISES[0] in capsys.readouterr().err
    no_exercise = [n for n in SOURCES if n not in WITH_EXERCISES]
    if no_exercise:
        assert main(["assignments", no_exercise[0], "--course", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "no exercises" in err and ", ".join(WITH_EXERCISES) in err
    assert main(["assignments", "--profile", "fast", "--course", str(tmp_path)]) == 1
    assert "smoke" in capsys.readouterr().err
    assert main(["assignments", "--assignment", "week 1", "--course", str(tmp_path)]) == 1
    assert "ps1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_course_config_is_written_once_and_whole_notebooks_are_never_graded(tmp_path, capsys):
    assert main(["assignments", "01", "--course", str(tmp_path), "--assignment", "hw"]) == 0
    config = tmp_path / "nbgrader_config.py"
    assert 'course_id = "bdlib"' in config.read_text(encoding="utf-8")
    config.write_text("# mine\n", encoding="utf-8")
    assert main(["assignments", "01", "--course", str(tmp_path), "--assignment", "hw"]) == 0
    assert config.read_text(encoding="utf-8") == "# mine\n"
    # A whole notebook in nbgrader's source (the old README's way) would be graded, training and all.
    (tmp_path / "source" / "hw" / "01_poisoning.ipynb").write_text("{}", encoding="utf-8")
    capsys.readouterr()
    assert main(["assignments", "01", "--course", str(tmp_path), "--assignment", "hw"]) == 1
    assert "01_poisoning.ipynb): nbgrader would grade them too" in capsys.readouterr().err


@pytest.mark.parametrize(
    "remote, expected",
    [
        ("https://github.com/t/bdlib.git", "https://github.com/t/bdlib.git"),
        ("git@github.com:t/bdlib.git", "https://github.com/t/bdlib.git"),
        ("ssh://git@gitlab.example.org/t/bdlib.git", "https://gitlab.example.org/t/bdlib.git"),
        ("/home/teacher/bdlib", classroom.PLACEHOLDER_URL),
        ("", classroom.PLACEHOLDER_URL),
    ],
)
def test_default_repo_url_is_one_colab_can_install_from(monkeypatch, remote, expected):
    import subprocess

    done = subprocess.CompletedProcess([], 0 if remote else 2, stdout=remote + "\n", stderr="")
    monkeypatch.setattr(classroom.subprocess, "run", lambda *a, **kw: done)
    assert classroom.default_repo_url() == expected
