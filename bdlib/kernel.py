"""What ``bdlib.setup`` does inside a notebook's Jupyter kernel, whoever started it.

* **Refuse unknown papermill parameters.** papermill only warns about a name the notebook does
  not have (``papermill nb.ipynb out.ipynb -p atack badnets``) and runs everything. Its
  injected cell (tagged ``injected-parameters``, first line ``# Parameters``) runs right after
  the notebook's own ``parameters`` cell, so the kernel's input history holds both: a name the
  injected cell sets that the parameters cell does not is refused here, before any work.
* **Report cells** to the runner's side channel (``bdlib.progress``).
* **Quiet known noise**: Dask's nanny warning that a worker "is still alive … killing" when a
  ``LocalCluster`` closes; bdlib's own warnings are left alone.

Outside a kernel (a script, the tests) every function here does nothing.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from typing import Any

from bdlib import progress
from bdlib.config import ConfigError

INJECTED_HEADER = "# Parameters"  # papermill's first line of the cell it injects


def assigned_names(source: str) -> list[str]:
    """The names a cell assigns at top level, in order (``a = 1`` and ``a: int = 1``)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return []
    names = []
    for node in body:
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def check_injected_parameters(history: Sequence[str]) -> None:
    """Raise ConfigError if papermill's injected cell (the last in ``history``, the kernel's
    cell sources in execution order) sets a name the cell run before it does not define."""
    for i in range(len(history) - 1, 0, -1):
        if history[i].lstrip().startswith(INJECTED_HEADER):
            injected, defaults = assigned_names(history[i]), assigned_names(history[i - 1])
            break
    else:
        return
    if not defaults:  # no parameters cell ran before it: nothing to compare with
        return
    unknown = [n for n in injected if n not in defaults]
    if unknown:
        raise ConfigError(
            f"papermill set {', '.join(repr(n) for n in unknown)}, which this notebook does not take "
            f"(papermill only warns); its parameters are: {', '.join(defaults)}"
        )


def _literals(source: str) -> dict[str, Any] | None:
    """``{name: value}`` of a cell made only of literal assignments (a parameters cell, papermill's
    injected cell); None for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    out: dict[str, Any] = {}
    for node in body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            return None
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            return None
    return out or None


def ran_parameters(history: Sequence[str]) -> dict[str, Any] | None:
    """The parameter values the notebook runs with, from the kernel's cell sources in execution
    order (the current cell last): the last earlier cell made only of literal assignments (the
    parameters cell, as it ran: edited or not), updated with papermill's injected cell where one
    ran right after it. None where no such cell ran."""
    earlier = list(history[:-1])
    for i in range(len(earlier) - 1, -1, -1):
        values = _literals(earlier[i])
        if values is None:
            continue
        if earlier[i].lstrip().startswith(INJECTED_HEADER) and i > 0:
            base = _literals(earlier[i - 1])
            return {**base, **values} if base is not None else values
        return values
    return None


def parameters_of_kernel() -> dict[str, Any] | None:
    """:func:`ran_parameters` of the running kernel; None outside a kernel."""
    shell = progress.kernel_shell()
    if shell is None:
        return None
    return ran_parameters([h for h in (shell.user_ns.get("In") or []) if h])


class _DropNannyKill(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "still alive" not in record.getMessage()


def quiet_dask() -> None:
    """Drop the nanny's shutdown warning of a closing LocalCluster (a worker killed on purpose)."""
    log = logging.getLogger("distributed.nanny")
    if not any(isinstance(f, _DropNannyKill) for f in log.filters):
        log.addFilter(_DropNannyKill())


def _cell_number(shell: Any) -> int:
    # IPython counts the running cell before running it: during (and just before) cell N,
    # ``execution_count`` is already N + 1.
    return shell.execution_count - 1


def _cell_started(info: Any = None) -> None:
    shell = progress.kernel_shell()
    progress.set_cell(_cell_number(shell) if shell is not None else None)


def prepare() -> None:
    """Called by ``bdlib.setup``: the three things above, when running in a kernel."""
    shell = progress.kernel_shell()
    if shell is None:
        return
    check_injected_parameters(shell.user_ns.get("In") or [])
    callbacks = shell.events.callbacks["pre_run_cell"]
    if _cell_started not in callbacks:
        shell.events.register("pre_run_cell", _cell_started)
    progress.set_cell(_cell_number(shell))
    quiet_dask()


__all__ = [
    "assigned_names",
    "check_injected_parameters",
    "ran_parameters",
    "parameters_of_kernel",
    "quiet_dask",
    "prepare",
]
