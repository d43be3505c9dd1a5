"""Where bdlib writes: under the user's project, never inside the installed package.

The project directory is the nearest of the working directory and its parents that holds a
``pyproject.toml`` or a ``.git`` (a clone of this repository, a course repository of student
copies), else the working directory itself. Under it:

* ``.bdlib-cache/`` the store (``$BDLIB_CACHE`` overrides it);
* ``figures/`` the figures of profile ``quick``, the ones committed to this repository;
  ``build/figures/<profile>/`` those of any other profile, so a look at ``smoke`` or ``paper``
  never overwrites the committed ``quick`` figures (``$BDLIB_FIGURES`` overrides both, and the
  runner's ``--figures`` sets it);
* ``build/executed/`` the runner's executed copies of the notebooks.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PROFILE = "quick"  # the profile whose figures live in figures/ (the committed ones)
_MARKERS = ("pyproject.toml", ".git")


def project_dir(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest of ``start`` (default: the working directory) and its parents with a
    ``pyproject.toml`` or ``.git``; ``start`` itself when there is none."""
    here = Path(os.path.abspath(start if start is not None else os.getcwd()))
    for d in (here, *here.parents):
        if any((d / m).exists() for m in _MARKERS):
            return d
    return here


def cache_dir() -> Path:
    """``$BDLIB_CACHE``, else ``<project>/.bdlib-cache``."""
    env = os.environ.get("BDLIB_CACHE")
    return Path(os.path.abspath(os.path.expanduser(env))) if env else project_dir() / ".bdlib-cache"


def figures_dir(profile: str = DEFAULT_PROFILE, committed: bool = True) -> Path:
    """``$BDLIB_FIGURES``, else ``<project>/figures`` for the committed configuration (profile
    ``quick``, and ``committed``: the notebook's default parameters) and
    ``<project>/build/figures/<profile>`` for any other run."""
    env = os.environ.get("BDLIB_FIGURES")
    if env:
        return Path(os.path.abspath(os.path.expanduser(env)))
    if profile == DEFAULT_PROFILE and committed:
        return project_dir() / "figures"
    return project_dir() / "build" / "figures" / profile


def executed_dir() -> Path:
    """Where the runner writes executed copies of the notebooks: ``<project>/build/executed``."""
    return project_dir() / "build" / "executed"
