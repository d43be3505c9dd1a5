"""``python -m bdlib``: run notebooks headlessly through papermill, list their parameters.

    python -m bdlib run [NOTEBOOK ...] --profile quick [-p name value ...]
    python -m bdlib params NOTEBOOK
    python -m bdlib assignments [NOTEBOOK ...] [--out student/] [--repo-url URL] [--profile smoke]
    python -m bdlib tune --profile quick [DEFENSE ...]

Executed copies go to ``build/executed/`` of the user's project (never over the sources);
figures to ``--figures DIR``, by default ``figures/`` for profile quick and
``build/figures/<profile>/`` for the others (``bdlib.paths``). For each notebook it prints a line
when it starts, a live line of the current cell and step on a terminal, and at the end its
seconds and how many results it computed or loaded from the store. A failing cell is reported
in one paragraph — notebook, cell, error — and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from bdlib import openmp, paths, progress

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
        match = [
            p
            for p in available
            if p == path.resolve() or p.stem == path.stem or p.stem.startswith(path.stem + "_") or p.name == name
        ]
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


# Kernel options: Jupyter's "Kernel is running over TCP without encryption" warning (the kernel
# runs on this machine, for this run only) is not the user's concern; errors still show.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


def last_seconds(figures: Path, notebook: str, profile: str) -> float | None:
    """The notebook's last recorded run time on ``profile``: the sum of its figures' seconds in
    ``figures``/manifest.json (kernel start-up not included); None if it has none there."""
    try:
        manifest = json.loads((figures / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    mine = [
        e.get("seconds", 0.0)
        for e in manifest.values()
        if e.get("notebook") == notebook and e.get("profile") == profile
    ]
    return float(sum(mine)) if mine else None


def store_summary(counts: dict[str, dict[str, int]]) -> str:
    """``3 results computed (2 poisoned_model, 1 trigger), 25 loaded from the store``."""
    computed, loaded = counts["computed"], counts["loaded"]
    n_computed, n_loaded = sum(computed.values()), sum(loaded.values())
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(computed.items()))
    return (
        f"{n_computed} result{'s' if n_computed != 1 else ''} computed"
        + (f" ({kinds})" if kinds else "")
        + f", {n_loaded} loaded from the store"
    )


def notebook_warnings(nb: dict, limit: int = 5) -> list[str]:
    """Warning lines (``…Warning: …``) a notebook's cells wrote to stderr, at most ``limit``, deduplicated."""
    found: list[str] = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                for line in text.splitlines():
                    if "Warning: " in line and (i, line.strip()) not in found:
                        found.append((i, line.strip()))
    return [f"cell {i}: {line}" for i, line in found[:limit]]


class Live:
    """What the runner shows while a notebook runs, read from the kernel's side channel
    (``bdlib.progress``): on a terminal one line rewritten in place (``cell 5/17 · training the
    badnets victim, seed 1 · epoch 3/6 · 40 s``); otherwise a plain line every ``every`` seconds."""

    def __init__(self, name: str, status: Path, cells: int, stream: TextIO = sys.stdout, every: float = 60.0):
        self.name, self.status, self.cells, self.stream, self.every = name, status, cells, stream, every
        self.tty = stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.perf_counter()

    def line(self) -> str:
        state = progress.read_stage(self.status)
        parts = [self.name]
        if state.get("cell"):
            parts.append(f"cell {state['cell']}/{self.cells}")
        if state.get("stage"):
            parts.append(state["stage"])
        parts.append(f"{time.perf_counter() - self._start:.0f} s")
        return " · ".join(parts)

    def _loop(self) -> None:
        last_plain = time.perf_counter()
        while not self._stop.wait(0.5):
            if self.tty:
                width = shutil.get_terminal_size().columns - 1
                self.stream.write("\r\033[K" + self.line()[:width])
                self.stream.flush()
            elif time.perf_counter() - last_plain >= self.every:
                last_plain = time.perf_counter()
                print(f"  {self.line()}", file=self.stream, flush=True)

    def __enter__(self) -> Live:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def run_notebook(
    path: Path,
    params: dict[str, Any],
    out_dir: Path,
    figures: Path,
    cache: Path | None = None,
    stream: TextIO = sys.stdout,
) -> float:
    """Execute one notebook with papermill, showing its progress on ``stream``; return its wall time."""
    import papermill as pm

    valid = parameters(path)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise RunError(
            f"{path.name}: parameter(s) {', '.join(unknown)} unknown; this notebook takes: {', '.join(valid)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = str(params.get("profile", valid.get("profile")))
    before = last_seconds(figures, path.stem, profile)
    print(
        f"{path.stem}: started on {profile}" + (f" (last run {before:.0f} s)" if before is not None else ""),
        file=stream,
        flush=True,
    )
    # One more code cell than the source: the parameters papermill injects.
    cells = 1 + sum(c["cell_type"] == "code" for c in json.loads(path.read_text())["cells"])
    status = Path(tempfile.mkdtemp(prefix="bdlib-status-"))
    omp, line = openmp.for_kernel()
    if line is not None:
        print(f"  {path.stem}: {line}", file=stream, flush=True)
    env = {
        **omp,
        "BDLIB_FIGURES": str(figures.resolve()),
        "BDLIB_CACHE": str((cache or paths.cache_dir()).resolve()),
        "BDLIB_NOTEBOOK": path.stem,
        "BDLIB_PARAMETERS": json.dumps(params, sort_keys=True),
        progress.STATUS_ENV: str(status),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    try:
        with Live(path.stem, status, cells, stream):
            # Once the last cell has run the kernel is stopped at once: a graceful shutdown waits
            # ~2 s per notebook for a kernel with torch loaded (a third of a warm notebook's time).
            # Notebooks release what they start themselves (06 closes its Dask cluster).
            nb = pm.execute_notebook(
                str(path),
                str(out_dir / path.name),
                parameters=params,
                kernel_name="python3",
                cwd=str(path.parent),
                progress_bar=False,
                shutdown_kernel="immediate",
                extra_arguments=list(KERNEL_ARGUMENTS),
            )
    except pm.PapermillExecutionError as err:
        raise RunError(
            f"{path.name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}\n  cell source: {err.source.strip()[:400]}\n"
            f"  the executed copy with the full traceback is {out_dir / path.name}"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        counts = progress.read_store_log(status)
        shutil.rmtree(status, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(f"{path.stem}: {seconds:.1f} s; {store_summary(counts)}", file=stream, flush=True)
    for warning in notebook_warnings(nb):
        print(f"  warning in {path.stem}, {warning}", file=stream, flush=True)
    return seconds


def _assignments(args: argparse.Namespace) -> int:
    from bdlib import classroom

    url = args.repo_url or classroom.default_repo_url()
    args.out = args.out or paths.project_dir() / "student"
    written = classroom.write_assignments(
        notebooks(args.notebooks), args.out, url, args.profile, chosen=bool(args.notebooks)
    )
    for path in written:
        titles = classroom.exercise_titles(json.loads(path.read_text(encoding="utf-8")))
        print(f"{path}: {len(titles)} exercise(s)")
    if url == classroom.PLACEHOLDER_URL:
        print(
            "note: no --repo-url and no http(s) git remote 'origin': the Colab cell holds a placeholder URL "
            "and refuses to run on Colab; regenerate with --repo-url URL",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bdlib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run notebooks through papermill")
    run.add_argument("notebooks", nargs="*", help="notebook names or stems (default: all)")
    run.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter; VALUE is parsed as JSON when it can be",
    )
    run.add_argument(
        "--out", type=Path, default=None, help="executed copies (default: build/executed/ of the project you work in)"
    )
    run.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="where figures go (default: $BDLIB_FIGURES, else figures/ for profile quick and "
        "build/figures/PROFILE/ for the others, in the project you work in)",
    )
    par = sub.add_parser("params", help="list a notebook's parameters and defaults")
    par.add_argument("notebook")
    asg = sub.add_parser("assignments", help="write student copies of the notebooks with exercises")
    asg.add_argument("notebooks", nargs="*", help="notebook names or stems (default: all with exercises)")
    asg.add_argument("--out", type=Path, default=None, help="default: student/ of the project you work in")
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
        figures = args.figures or paths.figures_dir(str(params["profile"]))
        out = args.out or paths.executed_dir()
        total = 0.0
        for path in notebooks(args.notebooks):
            total += run_notebook(path, params, out, figures)
        print(f"all notebooks: {total:.1f} s; figures in {figures}", flush=True)
        return 0
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
