"""Attack behaviour on tiny tensors: where triggers land, who gets poisoned, determinism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bdlib import attacks
from bdlib.attacks import badnets, blended, narcissus, sig, trojan, wanet
from bdlib.attacks.base import TriggerContext, poison_count
from bdlib.config import TrainConfig
from bdlib.models import STATS, SmallCNN
from bdlib.train import fit

torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 17, 23), (3, 12, 9)]
TARGET = 0


def images(shape, n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(30, 226, (n, *shape), generator=gen, dtype=torch.uint8)
    y = torch.arange(n) % 4
    return x, y


def tiny_model(c: int, seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    stats = STATS["fmnist"] if c == 1 else STATS["cifar10"]
    return SmallCNN(c, 4, width=4, stats=stats, pool=1)


def context(name, shape, seed=0, **changes):
    x, y = images(shape, seed=seed)
    params = dataclasses.replace(attacks.get(name).Params(), **changes)
    params.validate()

    def train_model(xs, ys, s, **kw):
        m = tiny_model(shape[0], s)
        fit(m, xs, ys, TrainConfig(epochs=kw.get("epochs", 1), batch_size=16, crop_pad=0), seed=s)
        return m

    return TriggerContext(
        params=params,
        target=TARGET,
        seed=seed,
        shape=shape,
        num_classes=4,
        x_train=x,
        y_train=y,
        x_aux=x.flip(0),
        y_aux=y.flip(0),
        clean_model=lambda: tiny_model(shape[0], seed),
        train_model=train_model,
    )


FAST = {
    "trojan": {"steps": 3, "n_background": 8, "patch_size": 3},
    "narcissus": {
        "pood_size": 20,
        "surrogate_epochs": 1,
        "warmup_epochs": 1,
        "synth_epochs": 3,
        "synth_lr": 0.05,
        "synth_batch": 8,
        "poison_rate": 0.1,
        "aug_crop_pad": 1,
    },
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(attacks.REGISTRY))
def test_every_attack_keeps_shape_dtype_and_changes_the_image(name, shape):
    ctx = context(name, shape, **FAST.get(name, {}))
    atk = attacks.get(name)
    trig = atk.make_trigger(ctx)
    x = ctx.x_train[:5]
    for test in (False, True):
        out = atk.apply(x, trig, ctx.params, test)
        assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(atk.apply(x, trig, ctx.params, True), x)


@pytest.mark.parametrize("shape", SHAPES)
def test_badnets_patch_lands_bottom_right_and_nowhere_else(shape):
    ctx = context("badnets", shape)
    x = torch.zeros(3, *shape, dtype=torch.uint8)
    out = badnets.apply(x, badnets.make_trigger(ctx), ctx.params, True)
    p, m = ctx.params.patch_size, ctx.params.margin
    _, h, w = shape
    expected = torch.zeros(3, *shape, dtype=torch.uint8)
    expected[..., h - m - p : h - m, w - m - p : w - m] = 255
    assert torch.equal(out, expected)


def test_badnets_checkerboard_alternates():
    ctx = context("badnets", (1, 10, 10), pattern="checkerboard")
    out = badnets.apply(torch.zeros(1, 1, 10, 10, dtype=torch.uint8), badnets.make_trigger(ctx), ctx.params, True)
    patch = out[0, 0, 6:9, 6:9]
    assert patch[0, 0] == 255 and patch[0, 1] == 0 and patch[1, 1] == 255
    assert out.sum() == 5 * 255


def test_blended_mixes_with_a_seeded_noise_image():
    ctx = context("blended", (3, 8, 8))
    trig = blended.make_trigger(ctx)
    x, _ = images((3, 8, 8), n=2)
    out = blended.apply(x, trig, ctx.params, False)
    expected = (0.8 * x.float() + 0.2 * 255 * trig["pattern"]).round().to(torch.uint8)
    assert (out.int() - expected.int()).abs().max() <= 1
    assert torch.equal(trig["pattern"], blended.make_trigger(ctx)["pattern"])
    other = blended.make_trigger(context("blended", (3, 8, 8), noise_seed=1))
    assert not torch.equal(trig["pattern"], other["pattern"])


@pytest.mark.parametrize("name", ["badnets", "blended", "trojan", "wanet"])
def test_dirty_label_poisoning_flips_only_poisoned_labels(name):
    ctx = context(name, (1, 12, 12), **FAST.get(name, {}), poison_rate=0.25)
    atk = attacks.get(name)
    trig = atk.make_trigger(ctx)
    x, y = ctx.x_train, ctx.y_train
    p = atk.poison_dataset(x, y, ctx.params, trig, TARGET, seed=3)
    idx = p.poison_idx
    assert idx.sum() == poison_count(ctx.params, y, TARGET) == 10
    assert (y[idx] != TARGET).all() and (p.y[idx] == TARGET).all()
    untouched = ~idx & ~p.extra.get("noise_idx", torch.zeros_like(idx))
    assert torch.equal(p.y[~idx], y[~idx]) and torch.equal(p.x[untouched], x[untouched])
    assert torch.equal(p.x[idx], atk.apply(x[idx], trig, ctx.params, False))
    again = atk.poison_dataset(x, y, ctx.params, trig, TARGET, seed=3)
    other = atk.poison_dataset(x, y, ctx.params, trig, TARGET, seed=4)
    assert torch.equal(again.poison_idx, idx) and torch.equal(again.x, p.x)
    assert not torch.equal(other.poison_idx, idx)


@pytest.mark.parametrize("name", ["sig", "narcissus"])
def test_clean_label_poisoning_stamps_only_target_images_and_keeps_labels(name):
    ctx = context(name, (1, 12, 12), **FAST.get(name, {}))
    atk = attacks.get(name)
    trig = atk.make_trigger(ctx)
    x, y = ctx.x_train, ctx.y_train
    p = atk.poison_dataset(x, y, ctx.params, trig, TARGET, seed=0)
    pool = int((y == TARGET).sum()) if ctx.params.rate_of == "target_class" else len(y)
    expected = round(ctx.params.poison_rate * pool)
    assert p.poison_idx.sum() == expected > 0
    assert (y[p.poison_idx] == TARGET).all() and torch.equal(p.y, y)
    assert torch.equal(p.x[~p.poison_idx], x[~p.poison_idx])


def test_sig_adds_a_column_sinusoid_of_the_given_amplitude():
    ctx = context("sig", (3, 6, 24), test_delta=40 / 255)
    trig = sig.make_trigger(ctx)
    x = torch.full((1, 3, 6, 24), 128, dtype=torch.uint8)
    diff = sig.apply(x, trig, ctx.params, False).int() - 128
    assert (diff == diff[:, :1, :1, :]).all()  # constant down each column, same in every channel
    j = torch.arange(24)
    assert torch.allclose(diff[0, 0, 0].float(), 20 * torch.sin(2 * torch.pi * j * 6 / 24), atol=0.51)
    assert (sig.apply(x, trig, ctx.params, True).int() - 128).abs().max() == 40


def test_wanet_grid_is_a_small_fixed_warp_and_identity_grid_is_identity():
    h, w = 20, 16
    x, _ = images((1, h, w), n=3)
    assert torch.equal(wanet.warp(x, wanet.identity_grid(h, w)), x)
    ctx = context("wanet", (1, h, w))
    grid = wanet.make_trigger(ctx)["grid"]
    shift = (grid - wanet.identity_grid(h, w)).abs()
    assert grid.abs().max() <= 1 and 0 < shift.max() < 4 * ctx.params.strength * 2 / min(h, w)
    assert torch.equal(grid, wanet.make_trigger(context("wanet", (1, h, w), seed=5))["grid"])
    stronger = wanet.make_trigger(context("wanet", (1, h, w), strength=1.0))["grid"]
    assert torch.allclose(stronger - wanet.identity_grid(h, w), 2 * (grid - wanet.identity_grid(h, w)), atol=1e-5)


def test_wanet_noise_mode_warps_twice_as_many_other_samples_and_keeps_their_labels():
    ctx = context("wanet", (1, 12, 12), poison_rate=0.1)
    trig = wanet.make_trigger(ctx)
    x, y = ctx.x_train, ctx.y_train
    p = wanet.ATTACK.poison_dataset(x, y, ctx.params, trig, TARGET, seed=0)
    noise = p.extra["noise_idx"]
    assert noise.sum() == 2 * p.poison_idx.sum() == 8
    assert not (noise & p.poison_idx).any()
    assert torch.equal(p.y[noise], y[noise])
    changed = (p.x[noise] != x[noise]).flatten(1).any(1)
    assert changed.all()
    # The noise warp differs from the trigger warp itself.
    assert not torch.equal(p.x[noise], wanet.apply(x[noise], trig, ctx.params, False))


def test_trojan_patch_stays_in_the_mask_and_raises_the_chosen_unit():
    ctx = context("trojan", (1, 16, 16), steps=40, n_background=16, patch_size=4, lr=0.1)
    trig = trojan.make_trigger(ctx)
    mask = trig["mask"]
    assert mask.sum() == 16 and mask[0, 11:15, 11:15].all()
    assert (trig["pattern"] * (1 - mask) == 0).all()
    assert 0 <= trig["pattern"].min() and trig["pattern"].max() <= 1
    model = ctx.clean_model().eval()
    assert trig["units"].item() == model.fc.weight.abs().sum(0).argmax().item()
    x = ctx.x_train[:16]
    gen = torch.Generator().manual_seed(1)
    random_patch = {"mask": mask, "pattern": torch.rand(1, 16, 16, generator=gen) * mask}
    with torch.no_grad():

        def act(t):
            return model.features(trojan.apply(x, t, ctx.params, True).float() / 255)[:, trig["units"]].mean()

        assert act(trig) > act(random_patch)


def test_narcissus_delta_is_bounded_and_magnified_at_test_time():
    ctx = context("narcissus", (1, 12, 12), **FAST["narcissus"])
    trig = narcissus.make_trigger(ctx)
    delta = trig["delta"]
    assert delta.abs().max() <= ctx.params.eps + 1e-6 and delta.abs().max() > 0
    x = torch.full((1, 1, 12, 12), 128, dtype=torch.uint8)
    train_diff = narcissus.apply(x, trig, ctx.params, False).float() - 128
    test_diff = narcissus.apply(x, trig, ctx.params, True).float() - 128
    assert torch.allclose(train_diff, (delta * 255).round(), atol=1)
    assert torch.allclose(test_diff, (3 * delta * 255).round().clamp(-128, 127), atol=1)
    assert torch.equal(delta, narcissus.make_trigger(ctx)["delta"])


def test_params_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="poison_rate"):
        sig.Params(poison_rate=1.5).validate()
    with pytest.raises(ValueError, match="k must be"):
        wanet.Params(k=1).validate()
    with pytest.raises(ValueError, match="eps"):
        narcissus.Params(eps=0.0).validate()
    with pytest.raises(ValueError, match="does not fit"):
        trojan.patch_mask((1, 4, 4), 5, 1)


def test_attack_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="choose one of"):
        attacks.get("badnet")
