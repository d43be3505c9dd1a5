"""``python -m bdlib``: run notebooks headlessly through papermill, list their parameters.

    python -m bdlib run [NOTEBOOK ...] --profile quick [-p name value ...]
    python -m bdlib params NOTEBOOK
    python -m bdlib assignments [NOTEBOOK ...] [--course course/] [--assignment ps1] [--repo-url URL]
    python -m bdlib tune --profile quick [DEFENSE ...]

    python -m bdlib status

Executed copies go to ``build/executed/`` of the user's project (never over the sources);
figures to ``--figures DIR``, by default ``figures/`` for the committed configuration (profile
quick, the notebook's default parameters) and ``build/figures/<profile>/`` for any other run
(:func:`figures_for`). For each notebook it prints a line
when it starts, a live line of the current cell and step on a terminal, and at the end its
seconds and how many results it computed or loaded from the store. A failing cell is reported
in one paragraph — notebook, cell, error — and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from bdlib import paths, progress, store
from bdlib.runner import openmp, provenance, publish
from bdlib.runner.notebooks import NotebookError, notebooks, parameters, parse_value, route_parameters


class RunError(NotebookError):
    """A run that did not finish: its message is the one paragraph the user reads; ``code`` the
    exit status (1, or 130 for Ctrl-C)."""


def figures_for(path: Path, own: dict[str, Any]) -> Path:
    """Where a notebook run with ``own`` parameters writes its figures: ``figures/`` only for the
    committed configuration (profile quick, every given value the notebook's default), else
    ``build/figures/<profile>/`` (``$BDLIB_FIGURES`` overrides both; ``--figures`` overrides this)."""
    defaults = parameters(path)
    committed = all(k in defaults and defaults[k] == v for k, v in own.items())
    return paths.figures_dir(str(own.get("profile", defaults.get("profile"))), committed=committed)


def committed_figures(figures: Path) -> bool:
    """Whether ``figures`` is the project's committed ``figures/`` (which also gets the executed
    copies and the machine's measured throughput)."""
    return figures.resolve() == (paths.project_dir() / "figures").resolve()


def parameters_position(nb: dict) -> int | None:
    """The 1-based position, among the notebook's code cells, of its cell tagged ``parameters``."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [i + 1 for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    return tagged[0] if tagged else None


def own_cell(execution_count: int | None, parameters_at: int | None) -> int | None:
    """The notebook's own number of the code cell that ran as ``execution_count``: papermill's
    injected cell runs right after the ``parameters`` cell (at ``parameters_at``) and is not the
    notebook's."""
    if execution_count is None or parameters_at is None:
        return execution_count
    return execution_count - 1 if execution_count > parameters_at + 1 else execution_count


def memory_note() -> str:
    """``this machine has 23.5 GiB of memory, 20.1 GiB available now`` (from /proc/meminfo)."""
    try:
        info = {
            line.split(":")[0]: int(line.split()[1]) / 2**20
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith(("MemTotal:", "MemAvailable:"))
        }
        return f"this machine has {info['MemTotal']:.1f} GiB of memory, {info['MemAvailable']:.1f} GiB available now"
    except (OSError, KeyError, ValueError, IndexError):
        return "this machine's memory is unknown"


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


def store_summary(counts: dict[str, Any]) -> str:
    """``3 results computed (2 poisoned_model, 1 trigger), 25 loaded from the store`` (and
    ``, 1 store repair`` when the store reported any, :func:`bdlib.progress.store_notice`)."""
    computed, loaded = counts["computed"], counts["loaded"]
    n_computed, n_loaded = sum(computed.values()), sum(loaded.values())
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(computed.items()))
    n_notices = len(counts.get("notices", ()))
    return (
        f"{n_computed} result{'s' if n_computed != 1 else ''} computed"
        + (f" ({kinds})" if kinds else "")
        + f", {n_loaded} loaded from the store"
        + (f", {n_notices} store repair{'s' if n_notices != 1 else ''} (listed above)" if n_notices else "")
    )


def _where(status: Path, parameters_at: int | None) -> str:
    state = progress.read_stage(status)
    cell = own_cell(state.get("cell"), parameters_at)
    return f"in code cell {cell}" + (f" ({state['stage']})" if state.get("stage") else "") if cell else "while running"


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

    def __init__(
        self,
        name: str,
        status: Path,
        cells: int,
        stream: TextIO = sys.stdout,
        every: float = 60.0,
        cell_of: Any = None,
    ):
        self.name, self.status, self.cells, self.stream, self.every = name, status, cells, stream, every
        self.cell_of = cell_of or (lambda n: n)  # kernel execution count -> the cell number shown
        self.tty = stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.perf_counter()

    def line(self) -> str:
        state = progress.read_stage(self.status)
        parts = [self.name]
        if state.get("cell"):
            parts.append(f"cell {self.cell_of(state['cell'])}/{self.cells}")
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
    """Execute one notebook with papermill, showing its progress on ``stream``; return its wall time.
    ``params`` are the notebook's own, checked (:func:`bdlib.runner.notebooks.route_parameters`)."""
    # jsonschema (imported by papermill through nbformat) imports the optional rfc3987_syntax when
    # it is installed (jupyterlab's jsonschema[format-nongpl] brings it), which compiles its lark
    # grammars at import: 1.3 of papermill's 1.7 s import here. Nothing the runner does checks IRI
    # formats, so it goes without (jsonschema treats the missing module as not installed).
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill as pm

    from bdlib import figures as figs

    valid = parameters(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = str(params.get("profile", valid.get("profile")))
    before = last_seconds(figures, path.stem, profile)
    print(
        f"{path.stem}: started on {profile}" + (f" (last run {before:.0f} s)" if before is not None else ""),
        file=stream,
        flush=True,
    )
    source = json.loads(path.read_text())
    cells = sum(c["cell_type"] == "code" for c in source["cells"])
    at = parameters_position(source)
    status = Path(tempfile.mkdtemp(prefix="bdlib-status-"))
    # Figures and metrics go to a staging directory beside ``figures``, moved into place only when
    # the notebook succeeds: a failed run leaves ``figures`` as it was.
    figures.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{figures.name}-staging-", dir=figures.parent))
    omp, line = openmp.for_kernel()
    if line is not None:
        print(f"  {path.stem}: {line}", file=stream, flush=True)
    env = {
        **omp,
        "BDLIB_FIGURES": str(staging.resolve()),
        "BDLIB_CACHE": str((cache or paths.cache_dir()).resolve()),
        "BDLIB_NOTEBOOK": path.stem,
        "BDLIB_PARAMETERS": json.dumps(params, sort_keys=True),
        progress.STATUS_ENV: str(status),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    # The runner reports failures itself, in one paragraph; papermill's and nbclient's own error
    # lines ("Kernel died while waiting for execute reply.") would only repeat them as noise.
    quiet = [logging.getLogger(n) for n in ("papermill", "traitlets", "nbclient")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        with Live(path.stem, status, cells, stream, cell_of=lambda n: own_cell(n, at)):
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
        figs.publish(staging, figures)
        if committed_figures(figures):
            publish.publish(out_dir / path.name)  # the committed executed copy: executed/<notebook>.ipynb
    except pm.PapermillExecutionError as err:
        raise RunError(
            f"{path.name} failed in code cell {own_cell(err.exec_count, at)} of {cells}: "
            f"{err.ename}: {err.evalue}\n  cell source: {err.source.strip()[:400]}\n"
            f"  the executed copy with the full traceback is {out_dir / path.name}; {figures} is unchanged"
        ) from None
    except KeyboardInterrupt:
        counts = progress.read_store_log(status)
        raise RunError(
            f"{path.name} interrupted (Ctrl-C) {_where(status, at)}; the {sum(counts['computed'].values())} "
            f"result(s) it finished are in the store ({os.environ.get('BDLIB_CACHE') or paths.cache_dir()}), so "
            f"rerunning the same command resumes from there; {figures} is unchanged",
            code=130,
        ) from None
    except Exception as err:
        if type(err).__name__ != "DeadKernelError":  # nbclient's, raised when the kernel process dies
            raise
        raise RunError(
            f"{path.name}: the kernel died {_where(status, at)} without a Python error: the system "
            f"killed it, most often for lack of memory ({memory_note()}). Results it finished are in the "
            "store; rerun to resume, with fewer attacks or seeds (-p attacks '[\"badnets\"]') or a smaller "
            f"profile if memory is short; {figures} is unchanged"
        ) from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        counts = progress.read_store_log(status)
        for notice in counts["notices"]:
            print(f"  {path.stem}: store: {notice}", file=stream, flush=True)
        shutil.rmtree(status, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(f"{path.stem}: {seconds:.1f} s; {store_summary(counts)}", file=stream, flush=True)
    if counts["diverged"]:
        print(f"  {path.stem}: {len(counts['diverged'])} defense cell(s) diverged:", file=stream, flush=True)
    for text in counts["diverged"]:
        print(f"    {text}", file=stream, flush=True)
    for warning in notebook_warnings(nb):
        print(f"  warning in {path.stem}, {warning}", file=stream, flush=True)
    return seconds


def _assignments(args: argparse.Namespace) -> int:
    from bdlib.runner import classroom

    url = args.repo_url or classroom.default_repo_url()
    course = args.course or paths.project_dir() / "course"
    written = classroom.write_course(
        notebooks(args.notebooks), course, args.assignment, url, args.profile, chosen=bool(args.notebooks)
    )
    exercises, *copies = written
    titles = classroom.exercise_titles(json.loads(exercises.read_text(encoding="utf-8")))
    print(f"{exercises}: {len(titles)} exercise(s), with their solutions and hidden tests (nbgrader's source)")
    for path in copies:
        print(f"{path}: the whole notebook for students, profile {args.profile}, not graded")
    print(
        f"next, in {course}: nbgrader generate_assignment {args.assignment}, then release, collect, autograde "
        "(README, 'For instructors')"
    )
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
    run.add_argument("--profile", default=None, help="smoke | quick | paper (default quick)")
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
        help="where figures go (default: $BDLIB_FIGURES, else figures/ for profile quick with a notebook's "
        "default parameters and build/figures/PROFILE/ for any other run, in the project you work in)",
    )
    par = sub.add_parser("params", help="list a notebook's parameters and defaults")
    par.add_argument("notebook")
    asg = sub.add_parser(
        "assignments", help="write an nbgrader course: the exercises to grade, the whole notebooks for students"
    )
    asg.add_argument("notebooks", nargs="*", help="notebook names or stems (default: all with exercises)")
    asg.add_argument(
        "--course", type=Path, default=None, help="the nbgrader course directory (default: course/ of the project)"
    )
    asg.add_argument("--assignment", default="ps1", help="the nbgrader assignment's name (default ps1)")
    asg.add_argument("--repo-url", help="what the Colab cell installs bdlib from (default: git remote origin)")
    asg.add_argument("--profile", default="smoke", help="the student copies' default profile (default smoke)")
    tun = sub.add_parser("tune", help="run the comparison protocol: every defense's grid on the tuning seeds")
    tun.add_argument("defenses", nargs="*", help="defense names (default: all)")
    tun.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    tun.add_argument("--out", help="where the JSON of rows and choices goes (default build/tune-PROFILE.json)")
    sub.add_parser("status", help="say which committed figures the current code would not reproduce")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return provenance.main()
        if args.command == "tune":
            from bdlib.study import protocol

            return protocol.main(args.profile, args.defenses, args.out)
        if args.command == "assignments":
            return _assignments(args)
        if args.command == "params":
            for name, value in parameters(notebooks([args.notebook])[0]).items():
                print(f"{name} = {value!r}")
            return 0
        given = {k: parse_value(v) for k, v in args.parameter}
        if "profile" in given and args.profile is not None and str(given["profile"]) != args.profile:
            raise RunError(
                f"--profile {args.profile} and -p profile {given['profile']} disagree; give the profile once"
            )
        params = {"profile": args.profile or "quick", **given}
        params["profile"] = str(params["profile"])
        out = args.out or paths.executed_dir()
        total = 0.0
        # A parameter goes to the notebooks that declare it (-p taus to 02 of 01 02); all checked first,
        # and the store with them, before the first kernel starts.
        routed = route_parameters(notebooks(args.notebooks), params)
        try:
            store.check_root()
        except store.StoreAccessError as err:
            raise RunError(str(err)) from None
        places = set()
        for path, own in routed:
            figures = args.figures or figures_for(path, own)
            if committed_figures(figures) and not os.environ.get(provenance.THROUGHPUT_ENV):
                # The committed figures record the machine's training throughput beside their times.
                rate = provenance.measure_throughput()
                os.environ[provenance.THROUGHPUT_ENV] = f"{rate:.0f}"
                print(
                    f"training throughput of this machine: {rate:,.0f} images/s (bdlib's loop, small CNN)", flush=True
                )
            places.add(str(figures))
            total += run_notebook(path, own, out, figures)
        print(f"all notebooks: {total:.1f} s; figures in {', '.join(sorted(places))}", flush=True)
        return 0
    except NotebookError as err:  # RunError, an unknown notebook or parameter, AssignmentError
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); results already finished are in the store, a rerun resumes", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("BDLIB_DEBUG"):
            raise
        print(
            f"error: {type(err).__name__}: {err}\n  (an unexpected failure of the runner: rerun with BDLIB_DEBUG=1 "
            "for the traceback, and please report it with the command you ran)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
