"""The README's instructor path ("For instructors"), step by step, with the real nbgrader (the
``classroom`` extra, which ``make setup`` installs: without it this test fails, it never skips):
a course of the four notebooks' exercises in a temporary directory, nbgrader generate_assignment,
a solved and an unsolved submission, autograde, export. The solved one scores full marks, the
unsolved one zero, neither graded notebook holds an error the student did not cause (no
timeout, no NameError), and autograde takes seconds per student, not the training's minutes.
nbgrader runs as ``.venv/bin/nbgrader`` with the virtualenv's bin/ off PATH: not activated."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bdlib.runner.cli import main

BIN = Path(sys.executable).parent  # the virtualenv's bin/ (sys.executable not resolved: a venv's python is a link)
NBGRADER = BIN / "nbgrader"
ASSIGNMENT = "ps1"
NOTEBOOKS = ["01", "02", "05", "06"]
SECONDS_PER_STUDENT = 30.0  # issue #19's bound; it takes ~5 s on a 2-core CPU


def _nbgrader(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(NBGRADER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _errors(nb: dict) -> list[str]:
    return [out["ename"] for cell in nb["cells"] for out in cell.get("outputs", []) if out["output_type"] == "error"]


def test_the_instructors_path_grades_a_class_in_seconds(tmp_path):
    assert NBGRADER.is_file(), (
        f"{NBGRADER} not found: the classroom extra is not installed; `make setup` installs it "
        "(or: pip install -e '.[classroom]')"
    )
    bin_dir = os.path.realpath(BIN)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and os.path.realpath(p) != bin_dir
    )
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "jupyter")  # no user-wide nbgrader configuration
    course = tmp_path / "course"

    # 1. The course: nbgrader's source (the exercises) and the whole notebooks for students.
    assert main(["assignments", *NOTEBOOKS, "--course", str(course), "--assignment", ASSIGNMENT]) == 0
    assert sorted(p.name for p in (course / "source" / ASSIGNMENT).iterdir()) == ["exercises.ipynb"]
    source = json.loads((course / "source" / ASSIGNMENT / "exercises.ipynb").read_text(encoding="utf-8"))

    # 2. nbgrader's student version.
    _nbgrader("generate_assignment", ASSIGNMENT, cwd=course, env=env)
    release = course / "release" / ASSIGNMENT / "exercises.ipynb"
    handed_out = json.loads(release.read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in handed_out["cells"])
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "raise NotImplementedError()" in text

    # 3-4. Released to two students; alice writes the solutions, bob hands in the copy as he got it.
    solutions = {
        c["metadata"]["nbgrader"]["grade_id"]: c["source"]
        for c in source["cells"]
        if c["metadata"].get("nbgrader", {}).get("solution")
    }
    assert len(solutions) >= 4
    solved = json.loads(json.dumps(handed_out))
    for cell in solved["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in solutions:
            cell["source"] = solutions[grade_id]
    for student, nb in (("alice", solved), ("bob", handed_out)):
        target = course / "submitted" / student / ASSIGNMENT / "exercises.ipynb"
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(nb), encoding="utf-8")

    # 5. Autograde the class.
    start = time.perf_counter()
    _nbgrader("autograde", ASSIGNMENT, cwd=course, env=env)
    per_student = (time.perf_counter() - start) / 2
    print(f"nbgrader autograde: {per_student:.1f} s per student")
    assert per_student < SECONDS_PER_STUDENT, f"autograde took {per_student:.1f} s per student"
    graded = {
        s: json.loads((course / "autograded" / s / ASSIGNMENT / "exercises.ipynb").read_text(encoding="utf-8"))
        for s in ("alice", "bob")
    }
    assert _errors(graded["alice"]) == []
    assert set(_errors(graded["bob"])) == {"NotImplementedError"}  # his stubs, in every check and hidden test
    assert len(_errors(graded["bob"])) == 2 * len(solutions)

    # 6. Export the grades.
    _nbgrader("export", cwd=course, env=env)
    with open(course / "grades.csv", newline="") as f:
        grades = {row["student_id"]: row for row in csv.DictReader(f)}
    points = 3 * len(solutions)  # a visible check (1 point) and hidden tests (2 points) per exercise
    assert float(grades["alice"]["max_score"]) == points
    assert float(grades["alice"]["score"]) == points, grades["alice"]
    assert float(grades["bob"]["score"]) == 0.0, grades["bob"]
