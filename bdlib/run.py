"""``python -m bdlib``: run notebooks headlessly through papermill, list their parameters.

    python -m bdlib run [NOTEBOOK ...] --profile quick [-p name value ...]
    python -m bdlib params NOTEBOOK
    python -m bdlib assignments [NOTEBOOK ...] [--out student/] [--repo-url URL] [--profile smoke]
    python -m bdlib tune --profile quick [DEFENSE ...]

Executed copies go to ``build/executed/`` (never over the sources); figures go to
``figures/`` (or ``--figures DIR``). A failing cell is reported in one paragraph — notebook,
cell, error — and the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


class RunError(RuntimeError):
    pass


def notebooks(names: Sequence[str] = ()) -> list[Path]:
    """The notebooks to run: all numbered ones by default, else those named (by stem or path)."""
    available = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return available
    chosen = []
    for name in names:
        path = Path(name)
        match = [p for p in available if p == path.resolve() or p.stem == path.stem
                 or p.stem.startswith(path.stem + "_") or p.name == name]
        if len(match) != 1:
            raise RunError(f"notebook {name!r} is unknown; choose from: {', '.join(p.stem for p in available)}")
        chosen.append(match[0])
    return chosen


def parameters(path: Path) -> dict[str, Any]:
    """The literals of the notebook's one cell tagged ``parameters``."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise RunError(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    out = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_notebook(path: Path, params: dict[str, Any], out_dir: Path, figures: Path) -> float:
    """Execute one notebook with papermill; return its wall time in seconds."""
    import papermill as pm

    valid = parameters(path)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise RunError(f"{path.name}: parameter(s) {', '.join(unknown)} unknown; "
                       f"this notebook takes: {', '.join(valid)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"BDLIB_FIGURES": str(figures.resolve()), "BDLIB_NOTEBOOK": path.stem,
           "BDLIB_PARAMETERS": json.dumps(params, sort_keys=True), "BDLIB_PROGRESS": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    try:
        # Once the last cell has run the kernel is stopped at once: a graceful shutdown waits
        # ~2 s per notebook for a kernel with torch loaded (a third of a warm notebook's time).
        # Notebooks release what they start themselves (06 closes its Dask cluster).
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params,
                            kernel_name="python3", cwd=str(path.parent), progress_bar=False,
                            shutdown_kernel="immediate")
    except pm.PapermillExecutionError as err:
        raise RunError(
            f"{path.name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}\n  cell source: {err.source.strip()[:400]}\n"
            f"  the executed copy with the full traceback is {out_dir / path.name}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return time.perf_counter() - start


def _assignments(args: argparse.Namespace) -> int:
    from bdlib import classroom

    url = args.repo_url or classroom.default_repo_url()
    written = classroom.write_assignments(notebooks(args.notebooks), args.out, url, args.profile,
                                          chosen=bool(args.notebooks))
    for path in written:
        titles = classroom.exercise_titles(json.loads(path.read_text(encoding="utf-8")))
        print(f"{path}: {len(titles)} exercise(s)")
    if url == classroom.PLACEHOLDER_URL:
        print("note: no --repo-url and no http(s) git remote 'origin': the Colab cell holds a placeholder URL "
              "and refuses to run on Colab; regenerate with --repo-url URL", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bdlib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run notebooks through papermill")
    run.add_argument("notebooks", nargs="*", help="notebook names or stems (default: all)")
    run.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a notebook parameter; VALUE is parsed as JSON when it can be")
    run.add_argument("--out", type=Path, default=REPO / "build" / "executed")
    run.add_argument("--figures", type=Path, default=REPO / "figures")
    par = sub.add_parser("params", help="list a notebook's parameters and defaults")
    par.add_argument("notebook")
    asg = sub.add_parser("assignments", help="write student copies of the notebooks with exercises")
    asg.add_argument("notebooks", nargs="*", help="notebook names or stems (default: all with exercises)")
    asg.add_argument("--out", type=Path, default=REPO / "student")
    asg.add_argument("--repo-url", help="what the Colab cell installs bdlib from (default: git remote origin)")
    asg.add_argument("--profile", default="smoke", help="the student copies' default profile (default smoke)")
    tun = sub.add_parser("tune", help="run the comparison protocol: every defense's grid on the tuning seeds")
    tun.add_argument("defenses", nargs="*", help="defense names (default: all)")
    tun.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    tun.add_argument("--out", help="where the JSON of rows and choices goes (default build/tune-PROFILE.json)")
    args = parser.parse_args(argv)
    try:
        if args.command == "tune":
            from bdlib import tune

            return tune.main(args.profile, args.defenses, args.out)
        if args.command == "assignments":
            return _assignments(args)
        if args.command == "params":
            for name, value in parameters(notebooks([args.notebook])[0]).items():
                print(f"{name} = {value!r}")
            return 0
        params = {"profile": args.profile, **{k: _parse_value(v) for k, v in args.parameter}}
        total = 0.0
        for path in notebooks(args.notebooks):
            seconds = run_notebook(path, params, args.out, args.figures)
            total += seconds
            print(f"{path.stem}: {seconds:.1f} s", flush=True)
        print(f"all notebooks: {total:.1f} s; figures in {args.figures}")
        return 0
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
