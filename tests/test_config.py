import dataclasses

import pytest

from bdlib.config import PROFILES, ConfigError
from bdlib.profiles import profile, resolve


def test_every_profile_resolves_with_every_method_params():
    for name in PROFILES:
        cfg = profile(name)
        assert cfg.profile == name
        assert "badnets" in cfg.attacks and cfg.attacks["badnets"].poison_rate > 0


def test_dotted_overrides_apply_and_coerce():
    cfg = resolve(
        "smoke", overrides={"train.epochs": 3, "n_train": 500, "train.lr": 1, "attacks.badnets.poison_rate": 0.2}
    )
    assert cfg.train.epochs == 3 and cfg.n_train == 500
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.attacks["badnets"].poison_rate == 0.2
    assert profile("smoke").attacks["badnets"].poison_rate != 0.2  # the profile is untouched


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"train.epoch": 3}, ["train.epoch", "did you mean 'epochs'", "batch_size"]),
        ({"n_trian": 3}, ["n_trian", "n_train"]),
        ({"attacks.badnet.poison_rate": 0.1}, ["attacks.badnet", "badnets", "blended"]),
        ({"train.epochs": "3"}, ["train.epochs", "must be int", "'3'"]),
        ({"train.flip": 1}, ["train.flip", "must be bool"]),
        ({"attacks.badnets.pattern": "stripes"}, ["pattern", "'white'", "'checkerboard'"]),
        ({"attacks.badnets.poison_rate": 1.5}, ["poison_rate", "1.5"]),
        ({"clean_fraction": 0.0}, ["clean_fraction"]),
        ({"attacks.badnets": 3}, ["group", "attacks.badnets.poison_rate"]),
    ],
)
def test_bad_overrides_name_the_problem_and_the_choices(overrides, words):
    with pytest.raises(ConfigError) as err:
        resolve("smoke", overrides=overrides)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"profile_name": "quik"}, ["quik", "smoke, quick, paper", "did you mean 'quick'"]),
        ({"attack": "badnet"}, ["badnet", "badnets", "blended"]),
        ({"device": "gpu"}, ["gpu", "auto, cpu, cuda"]),
        ({"seed": -1}, ["seed"]),
        ({"seed": True}, ["seed"]),
    ],
)
def test_bad_run_parameters_are_rejected(kwargs, words):
    with pytest.raises(ConfigError) as err:
        resolve(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_config_is_frozen():
    cfg = resolve("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
