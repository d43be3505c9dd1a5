"""bdlib — the helper library of the NT-ML / NONE / MCLDef companion notebooks."""
from __future__ import annotations

__version__ = "0.1.0"

from bdlib.experiment import setup  # noqa: E402  (the notebooks' entry point)

__all__ = ["setup", "__version__"]
