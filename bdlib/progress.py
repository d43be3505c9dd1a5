"""Progress of long steps: one line per notebook cell, a text bar in a terminal, and what the runner reads.

* In a Jupyter kernel (JupyterLab, papermill, nbconvert) a cell that trains shows **one** output
  line, updated in place through a display handle: ``training badnets victim, seed 1 · epoch
  3/6 · 12 s``; each long step of the cell rewrites it, the last one stays as the cell's record.
  No widgets are needed, so there is no ``IProgress not found`` warning and an executed copy
  holds one line per cell, not one bar per model.
* Outside a kernel (a script, a benchmark) it is a text bar (tqdm) on stderr that disappears.
* When ``$BDLIB_STATUS`` names a directory (the runner sets it for each notebook), the current
  cell and step are written to ``stage`` there, and every store lookup appends ``loaded`` or
  ``computed`` to ``store.log`` — from every process, so Dask workers are counted too. The runner
  turns them into its live line and its end-of-notebook count.

Nothing here imports the rest of bdlib.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUS_ENV = "BDLIB_STATUS"
STAGE_FILE = "stage"
STORE_LOG = "store.log"
_MIN_INTERVAL = 0.25  # seconds between two in-place updates of a notebook line

_state: dict[str, Any] = {"cell": None, "tasks": [], "step": "", "handle": None, "handle_cell": None}


def status_dir() -> Path | None:
    d = os.environ.get(STATUS_ENV)
    return Path(d) if d else None


def stage_text() -> str:
    """What is running now: the open tasks and the current step, joined by ' · '."""
    return " · ".join([*_state["tasks"], *([_state["step"]] if _state["step"] else [])])


def _write_stage() -> None:
    d = status_dir()
    if d is None:
        return
    body = json.dumps({"cell": _state["cell"], "stage": stage_text(), "pid": os.getpid(), "time": time.time()})
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".stage.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, d / STAGE_FILE)
    except OSError:
        pass  # the runner has gone away or removed its directory: progress is best effort


def read_stage(directory: Path) -> dict[str, Any]:
    """The runner's view of ``stage``: ``{"cell": int | None, "stage": str}`` ({} if not written yet)."""
    try:
        return json.loads((directory / STAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def store_event(kind: str, outcome: str) -> None:
    """Count one store lookup (``outcome`` is ``loaded`` or ``computed``) in ``store.log``."""
    _append(f"{outcome} {kind}")


def _append(line: str) -> None:
    d = status_dir()
    if d is None:
        return
    try:
        # One short line per O_APPEND write: lines from concurrent processes never interleave.
        fd = os.open(d / STORE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def store_notice(text: str) -> None:
    """Report one store repair or retry (a corrupt entry discarded, a wait for another process)
    to the runner, which prints it and counts it in the notebook's summary line."""
    _append(f"notice {' '.join(text.split())}")


def diverged(text: str) -> None:
    """Report a defense cell whose training diverged (recorded as a result) to the runner, which
    lists it under the notebook's summary line."""
    _append(f"diverged {' '.join(text.split())}")


def read_store_log(directory: Path) -> dict[str, Any]:
    """``{"loaded": {kind: n}, "computed": {kind: n}, "notices": [text, ...], "diverged": [text, ...]}``
    from a status directory's ``store.log``."""
    counts: dict[str, Any] = {"loaded": {}, "computed": {}, "notices": [], "diverged": []}
    try:
        lines = (directory / STORE_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return counts
    for line in lines:
        outcome, _, kind = line.partition(" ")
        if outcome == "notice":
            counts["notices"].append(kind)
        elif outcome == "diverged":
            if kind not in counts["diverged"]:
                counts["diverged"].append(kind)
        elif outcome in counts:
            counts[outcome][kind] = counts[outcome].get(kind, 0) + 1
    return counts


def set_cell(number: int | None) -> None:
    """A new notebook cell starts (called by the kernel's pre-run hook, see ``bdlib.session``)."""
    _state["cell"], _state["step"] = number, ""
    _write_stage()


@contextmanager
def task(text: str) -> Iterator[None]:
    """Name what the enclosed code computes (``training the badnets victim, seed 1``); the steps
    inside it are shown after it."""
    _state["tasks"].append(text)
    _write_stage()
    try:
        yield
    finally:
        _state["tasks"].pop()
        _write_stage()


def kernel_shell() -> Any:
    """The IPython shell when running inside a Jupyter kernel, else None."""
    ipython = sys.modules.get("IPython")  # never import IPython from a plain script
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


class Bar:
    """Iterate over ``iterable`` reporting ``desc · unit i/n`` (see the module docstring)."""

    def __init__(
        self, iterable: Iterable, desc: str, *, show: bool = True, unit: str = "epoch", total: int | None = None
    ) -> None:
        self.iterable, self.desc, self.show, self.unit = iterable, desc, show, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix = ""
        self.done = 0
        self._start = time.perf_counter()
        self._last_shown = 0.0
        self._tqdm: Any = None

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        self._report(force=False)

    def _line(self, finished: bool, timed: bool = True) -> str:
        seconds = time.perf_counter() - self._start
        if finished:
            text = f"{self.desc} · {self.done} {self.unit}{'s' if self.done != 1 else ''} in {seconds:.0f} s"
        else:
            of = f"/{self.total}" if self.total is not None else ""
            text = f"{self.desc} · {self.unit} {min(self.done + 1, self.total or self.done + 1)}{of}"
            text += f" · {seconds:.0f} s" if timed else ""
        return f"{text} · {self.postfix}" if self.postfix else text

    def _report(self, force: bool, finished: bool = False) -> None:
        task_prefix = " · ".join(_state["tasks"])
        # The runner's line has the notebook's own clock: the step's seconds are left out there.
        _state["step"] = "" if finished else self._line(finished, timed=False)
        _write_stage()
        line = self._line(finished)
        if not self.show:
            return
        shell = kernel_shell()
        if shell is None:
            self._text_bar(finished)
            return
        now = time.perf_counter()
        if not force and now - self._last_shown < _MIN_INTERVAL:
            return
        self._last_shown = now
        _show_in_cell(shell, f"{task_prefix} · {line}" if task_prefix else line)

    def _text_bar(self, finished: bool) -> None:
        if self._tqdm is None:
            from tqdm.std import tqdm  # the text bar: tqdm.auto would pick widgets in a kernel

            self._tqdm = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False, file=sys.stderr)
        if finished:
            self._tqdm.close()
            return
        self._tqdm.n = self.done
        if self.postfix:
            self._tqdm.set_postfix_str(self.postfix, refresh=False)
        self._tqdm.refresh()

    def __iter__(self) -> Iterator:
        self._start = time.perf_counter()
        try:
            for item in self.iterable:
                self._report(force=self.done == 0)
                yield item
                self.done += 1
            self._report(force=True, finished=True)
        finally:
            _state["step"] = ""
            if self._tqdm is not None:
                self._tqdm.close()


def bar(iterable: Iterable, desc: str, *, show: bool = True, unit: str = "epoch", total: int | None = None) -> Bar:
    """Wrap a long step's loop (``for epoch in bar(range(6), "training …")``). ``show=False`` still
    reports to the runner's side channel, but draws nothing."""
    return Bar(iterable, desc, show=show, unit=unit, total=total)


def _show_in_cell(shell: Any, line: str) -> None:
    """Write ``line`` to this cell's one progress output, creating it on the cell's first step."""
    from IPython.display import display

    cell, meta = shell.execution_count, {"bdlib_progress": True}
    if _state["handle"] is None or _state["handle_cell"] != cell:
        _state["handle"] = display({"text/plain": line}, raw=True, display_id=True, metadata=meta)
        _state["handle_cell"] = cell
    else:
        _state["handle"].update({"text/plain": line}, raw=True, metadata=meta)


__all__ = [
    "STATUS_ENV",
    "Bar",
    "bar",
    "kernel_shell",
    "task",
    "set_cell",
    "stage_text",
    "store_event",
    "read_stage",
    "read_store_log",
    "store_notice",
    "status_dir",
]
