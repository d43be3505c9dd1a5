"""The defenses, by name. A new defense is one module with a ``DEFENSE`` record plus a line here."""

from __future__ import annotations

from bdlib.defenses import anp, ft, ibau, mcldef, nad, none, ntml
from bdlib.defenses.base import Defended, Defense, DefenseContext

REGISTRY: dict[str, Defense] = {}
REGISTRY["mcldef"] = mcldef.DEFENSE
REGISTRY["mcldef_detect"] = mcldef.DETECT  # the same method, the target detected, not given
REGISTRY["ntml"] = ntml.DEFENSE
REGISTRY["none"] = none.DEFENSE
REGISTRY["none_published"] = none.PUBLISHED  # NONE at its official recipe, never tuned
REGISTRY["ft"] = ft.DEFENSE
REGISTRY["nad"] = nad.DEFENSE
REGISTRY["anp"] = anp.DEFENSE
REGISTRY["ibau"] = ibau.DEFENSE


def get(name: str) -> Defense:
    if name not in REGISTRY:
        raise ValueError(f"defense {name!r} is unknown; choose one of: {', '.join(REGISTRY) or '(none yet)'}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "get", "Defense", "DefenseContext", "Defended"]
