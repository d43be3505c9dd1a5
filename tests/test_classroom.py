"""Student copies: no solutions or hidden tests, checks that pass on solutions and fail on stubs,
and every student notebook stops at its first exercise with NotImplementedError."""

import json
import sys
import types

import nbformat
import pytest

from bdlib import classroom
from bdlib.notebooks import notebooks
from bdlib.run import main

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


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert main(["assignments", "--out", str(out), "--repo-url", URL]) == 0
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.ipynb")}, out


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


def test_student_copies_have_no_solutions_hidden_tests_or_outputs(student):
    copies, _ = student
    assert sorted(copies) == sorted(WITH_EXERCISES)
    for name, nb in copies.items():
        nbformat.validate(nbformat.from_dict(nb))
        text = "\n".join(_src(c) for c in nb["cells"])
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
            assert marker not in text, f"{name}: {marker!r} left in the student copy"
        source = SOURCES[name]
        outside = set()  # lines that also occur outside the regions may legitimately remain
        secret = set()
        for cell in source["cells"]:
            lines = _src(cell).splitlines()
            inside = False
            for line in lines:
                if line.strip() in (classroom.BEGIN_SOLUTION, classroom.BEGIN_HIDDEN):
                    inside = True
                elif line.strip() in (classroom.END_SOLUTION, classroom.END_HIDDEN):
                    inside = False
                elif line.strip():
                    (secret if inside else outside).add(line.strip())
        leaked = {line for c in nb["cells"] for line in map(str.strip, _src(c).splitlines())} & (secret - outside)
        assert not leaked, f"{name}: solution or hidden-test lines in the student copy: {sorted(leaked)[:3]}"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None
        assert "Instructions (student copy)" in _src(nb["cells"][1])
        assert "google.colab" in _src(nb["cells"][2]) and URL in _src(nb["cells"][2])
        params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1 and 'profile = "smoke"' in _src(params[0])


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_visible_checks_pass_on_the_solution_and_fail_on_the_stub(student, name):
    copies, _ = student
    pairs = zip(_exercises(SOURCES[name]), _exercises(copies[name]))
    for (solution, checks), (stub, student_checks) in pairs:
        ns = {}
        for cell in [solution, *checks]:  # solution, visible check, hidden tests
            exec(_src(cell), ns)
        assert [_role(c) for c in student_checks] == ["check"]
        ns = {}
        exec(_src(stub), ns)
        with pytest.raises(NotImplementedError):
            exec(_src(student_checks[0]), ns)


def test_student_notebooks_stop_at_the_first_exercise(student, tmp_path, monkeypatch):
    import papermill as pm

    copies, out = student
    monkeypatch.setenv("BDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BDLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("BDLIB_PROGRESS", "0")
    for name, nb in copies.items():
        first_check = next(c for c in nb["cells"] if _role(c) == "check")
        with pytest.raises(pm.PapermillExecutionError) as err:
            pm.execute_notebook(
                str(out / f"{name}.ipynb"),
                str(tmp_path / f"{name}.ipynb"),
                parameters={"profile": "smoke"},
                kernel_name="python3",
                cwd=str(out),
                progress_bar=False,
            )
        assert err.value.ename == "NotImplementedError", f"{name}: {err.value.ename}: {err.value.evalue}"
        assert err.value.source.strip() == _src(first_check).strip(), f"{name} stopped elsewhere"


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
        classroom.student_notebook(nb, "99_demo", URL)


def test_markers_need_nbgrader_metadata_and_a_notebook_needs_an_exercise():
    with pytest.raises(classroom.AssignmentError, match="cell 0: .*nbgrader.solution"):
        classroom.student_notebook(
            _nb(
                ("### BEGIN SOLUTION\n### END SOLUTION", {}),
            ),
            "99_demo",
            URL,
        )
    with pytest.raises(classroom.AssignmentError, match="no exercise"):
        classroom.student_notebook(
            _nb(
                ("x = 1", {}),
            ),
            "99_demo",
            URL,
        )


def test_stub_keeps_def_and_docstring_and_names_the_function():
    source = 'def f(x):\n    """Doc."""\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION'
    stub = classroom.clear_solutions(source, "demo")
    assert stub.startswith('def f(x):\n    """Doc."""\n    # YOUR CODE HERE\n    raise NotImplementedError(')
    assert "f is not written yet" in stub and "return x" not in stub


def test_cli_errors_list_the_valid_choices(tmp_path, capsys):
    assert main(["assignments", "99_nothing", "--out", str(tmp_path)]) == 1
    assert WITH_EXERCISES[0] in capsys.readouterr().err
    no_exercise = [n for n in SOURCES if n not in WITH_EXERCISES]
    if no_exercise:
        assert main(["assignments", no_exercise[0], "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "no exercises" in err and ", ".join(WITH_EXERCISES) in err
    assert main(["assignments", "--profile", "fast", "--out", str(tmp_path)]) == 1
    assert "smoke" in capsys.readouterr().err


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
