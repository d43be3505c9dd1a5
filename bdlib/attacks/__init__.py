"""The attacks, by name. A new attack is one module with an ``ATTACK`` record plus a line here."""

from __future__ import annotations

from bdlib.attacks import badnets, blended, narcissus, sig, trojan, wanet
from bdlib.attacks.base import Attack, Poisoned, Trigger, TriggerContext

REGISTRY: dict[str, Attack] = {
    "badnets": badnets.ATTACK,
    "blended": blended.ATTACK,
    "trojan": trojan.ATTACK,
    "sig": sig.ATTACK,
    "wanet": wanet.ATTACK,
    "narcissus": narcissus.ATTACK,
}


def get(name: str) -> Attack:
    if name not in REGISTRY:
        raise ValueError(f"attack {name!r} is unknown; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "get", "Attack", "Poisoned", "Trigger", "TriggerContext"]
