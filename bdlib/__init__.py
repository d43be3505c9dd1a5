"""bdlib — the helper library of the NT-ML / NONE / MCLDef companion notebooks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["setup", "__version__"]


def __getattr__(name: str):
    # ``bdlib.setup`` (the notebooks' entry point) imports torch on first use, not on ``import
    # bdlib``: the runner and the assignments command never need torch (1.5 s saved per call).
    if name == "setup":
        from bdlib.session import setup

        return setup
    raise AttributeError(f"module 'bdlib' has no attribute {name!r}")
