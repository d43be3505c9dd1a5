"""One check shared by the smoke run and the paper path: every attack really poisons."""

import torch

from bdlib import attacks


def assert_every_attack_poisons(ex, cfg, min_change: float = 1.0) -> None:
    """For each attack, from the store the notebooks filled: its test trigger changes every
    non-target test image (largest pixel change at least ``min_change`` of 255), it stamps every
    poisoned training image and nothing else, a clean-label attack keeps the labels, and its
    poisoned model is not the clean model of the same seed."""
    d = ex.run_data(cfg)
    x_test = d.x_test[d.y_test != cfg.target]
    for name in attacks.REGISTRY:
        c = ex.with_run(cfg, attack=name)
        _, poisoned, trig = ex.poisoned_data(c)
        triggered = attacks.get(name).test_transform(trig, c.attack_params)(x_test)
        changed = (triggered != x_test).flatten(1).any(1)
        assert changed.all(), f"{name}: the test trigger left {int((~changed).sum())} test images unchanged"
        peak = float((triggered.float() - x_test.float()).abs().max())
        assert peak >= min_change, f"{name}: the test trigger changes pixels by at most {peak}/255"
        idx = poisoned.poison_idx
        assert idx.any(), f"{name} poisoned no training image"
        stamped = (poisoned.x[idx] != d.x_train[idx]).flatten(1).any(1)
        assert stamped.all(), f"{name}: {int((~stamped).sum())} poisoned training images are unchanged"
        untouched = ~idx & ~poisoned.extra.get("noise_idx", torch.zeros_like(idx))
        assert torch.equal(poisoned.x[untouched], d.x_train[untouched]), f"{name} changed unpoisoned images"
        if attacks.get(name).clean_label:
            assert torch.equal(poisoned.y, d.y_train), f"{name} is clean-label but changed labels"
        else:
            assert (poisoned.y[idx] == cfg.target).all()
        victim, clean = ex.poisoned_model(c).model.state_dict(), ex.clean_model(c).model.state_dict()
        assert any(not torch.equal(victim[k], clean[k]) for k in victim), f"{name}: the poisoned model is the clean one"
