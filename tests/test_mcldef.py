"""Tests for bdlib.defenses.mcldef: contrastive loss, anomaly index, inversion, Params, purification."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from defense_context import context, tiny_cnn
from torch import nn

from bdlib.config import ConfigError, TrainConfig
from bdlib.defenses import mcldef
from bdlib.profiles import resolve
from bdlib.train import fit

torch.set_num_threads(1)

SIDE, PATCH, K = 8, 2, 6  # 8×8 images; the planted trigger is the 2×2 bottom-right corner


class PatchModel(nn.Module):
    """A hand-built linear classifier with a planted backdoor.

    Class 0 has a large weight on the bottom-right 2×2 patch and a bias that keeps it off for
    dark images; classes 1..5 each sum one 16-pixel band, so reaching them takes a big mask.
    """

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(SIDE * SIDE, K)
        w = torch.zeros(K, SIDE, SIDE)
        w[0, -PATCH:, -PATCH:] = 20.0
        for k in range(1, K):  # bands of 16 pixels: rows 0-1, 2-3, 4-5, then left / middle columns
            band = [
                (slice(0, 2), slice(None)),
                (slice(2, 4), slice(None)),
                (slice(4, 6), slice(None)),
                (slice(None), slice(0, 2)),
                (slice(None), slice(2, 4)),
            ][k - 1]
            w[k][band] = 1.0
        with torch.no_grad():
            self.fc.weight.copy_(w.flatten(1))
            self.fc.bias.copy_(torch.tensor([-24.0] + [0.0] * (K - 1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _dark_images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, SIDE, SIDE, generator=gen) * 0.3 * 255).to(torch.uint8)


# --------------------------------------------------------------------------- contrastive loss


def test_contrastive_loss_hand_computed_2d():
    z, z_pos, z_neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    # cos(z, z⁺) = 1/√2, cos(z, z⁻) = 0, τ = 0.5: −log(e^{√2} / (e^{√2} + e^0)).
    expected = -math.log(math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1.0))
    assert mcldef.contrastive_loss(z, z_pos, z_neg, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_is_smallest_when_z_matches_positive_and_opposes_negative():
    gen = torch.Generator().manual_seed(0)
    z_pos = torch.randn(16, 8, generator=gen)
    z_neg = -z_pos
    best = mcldef.contrastive_loss(z_pos * 3.0, z_pos, z_neg, 0.5)  # cosine ignores the scale
    assert best.item() == pytest.approx(math.log1p(math.exp(-4.0)), rel=1e-5)  # cos ±1, τ = 0.5
    others = [torch.randn(16, 8, generator=gen), z_neg, z_pos + torch.randn(16, 8, generator=gen)]
    for z in others:
        assert mcldef.contrastive_loss(z, z_pos, z_neg, 0.5) > best
    # Orthogonal to z⁻ (and equal to z⁺) is worse than opposite to it.
    ortho = torch.tensor([[1.0, 0.0]])
    assert mcldef.contrastive_loss(ortho, ortho, torch.tensor([[0.0, 1.0]]), 0.5) > mcldef.contrastive_loss(
        ortho, ortho, -ortho, 0.5
    )


# --------------------------------------------------------------------------- anomaly index


def test_anomaly_index_hand_computed():
    norms = torch.tensor([1.0, 10.0, 11.0, 12.0, 13.0, 14.0])
    # median 11.5 (mean of the two middle values), |dev| = 10.5 1.5 .5 .5 1.5 2.5, MAD = 1.5.
    expected = torch.tensor([10.5, 1.5, 0.5, 0.5, 1.5, 2.5]) / (1.4826 * 1.5)
    torch.testing.assert_close(mcldef.anomaly_index(norms), expected)
    assert mcldef.detect_target(norms, 2.0) == (0, True)


def test_detection_not_confident_without_an_outlier_and_high_outliers_ignored():
    assert mcldef.detect_target(torch.tensor([9.0, 10.0, 11.0, 12.0, 13.0]), 2.0) == (0, False)
    # A class with an anomalously *large* norm is not a target.
    k, confident = mcldef.detect_target(torch.tensor([10.0, 10.5, 11.0, 11.5, 90.0]), 2.0)
    assert (k, confident) == (0, False)


# --------------------------------------------------------------------------- inversion


def test_inversion_recovers_planted_patch_and_detects_target():
    model = PatchModel()
    x = _dark_images(128)
    y = model(x.float() / 255).argmax(1)
    assert (y != 0).all()  # the clean images never reach the backdoor class
    params = mcldef.Params(inv_steps=400, inv_batch_size=32, inv_patience=5)
    masks, patterns, norms = mcldef.invert(model, x, y, torch.arange(K), params, seed=0)
    assert masks.shape == (K, 1, SIDE, SIDE) and patterns.shape == (K, 1, SIDE, SIDE)
    assert masks.min() >= 0 and masks.max() <= 1 and patterns.min() >= 0 and patterns.max() <= 1
    target, confident = mcldef.detect_target(norms, params.anomaly_threshold)
    assert target == 0 and confident
    in_patch = masks[0, 0, -PATCH:, -PATCH:].sum() / masks[0].sum()
    assert in_patch > 0.7, f"only {in_patch:.2f} of the mask mass is on the planted patch"
    success = mcldef.trigger_success(model, x, y, torch.arange(K), masks, patterns)
    assert success[0] > 90


def test_inversion_leaves_the_model_untouched():
    model = PatchModel()
    before = copy.deepcopy(model.state_dict())
    mcldef.invert(model, _dark_images(16), None, [0], mcldef.Params(inv_steps=5), seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- Params


@pytest.mark.parametrize(
    "change",
    [
        dict(target="auto"),
        dict(target=-1),
        dict(target=True),
        dict(lam=0.0),
        dict(inv_steps=0),
        dict(tau=-0.5),
        dict(lr_decay=1.5),
        dict(lr_decay_epochs=(10, 5)),
        dict(first_epoch_lr=0.0),
        dict(ce_weight=-1.0),
    ],
)
def test_params_validation_rejects(change):
    with pytest.raises(ValueError, match=next(iter(change))):
        dataclasses.replace(mcldef.Params(), **change).validate()


def test_params_through_config_overrides():
    cfg = resolve("smoke", overrides={"defenses.mcldef.target": 3, "defenses.mcldef.tau": 1})
    assert cfg.defenses["mcldef"].target == 3 and cfg.defenses["mcldef"].tau == 1.0
    with pytest.raises(ConfigError, match="target"):
        resolve("smoke", overrides={"defenses.mcldef.target": "guess"})


# --------------------------------------------------------------------------- purification


def test_one_contrastive_step_changes_theta_and_not_frozen_copy():
    model = tiny_cnn(0)
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    theta0 = copy.deepcopy(model.state_dict())
    frozen0 = copy.deepcopy(frozen.state_dict())
    mask = torch.zeros(1, 28, 28)
    mask[:, -4:-1, -4:-1] = 1.0
    pattern = torch.ones(1, 28, 28)
    x = _dark_images(8).repeat(1, 1, 4, 4)[:, :, :28, :28]
    y = torch.arange(8)
    loss_fn = mcldef.make_loss(frozen, mask, pattern, tau=0.5, ce_weight=0.0)
    fit(model, x, y, TrainConfig(epochs=1, batch_size=8, crop_pad=0, flip=False), seed=0, loss_fn=loss_fn, lr=0.1)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(theta0[k], v)]
    assert any(k.startswith("stage1.0") for k in changed) and any(k.startswith("stage3.0") for k in changed)
    assert all(torch.equal(frozen0[k], v) for k, v in frozen.state_dict().items())


@pytest.mark.parametrize("curve", [True, False])
def test_run_records_detection_and_history(curve):
    torch.manual_seed(0)
    model = tiny_cnn(0)
    x = _dark_images(20).repeat(1, 1, 4, 4)[:, :, :28, :28]
    y = torch.arange(20) % 10
    params = mcldef.Params(inv_steps=3, epochs=2, batch_size=10, curve=curve)
    calls = []
    ctx = context(params, x, y, calls)
    out = mcldef.run(model, ctx)
    rec = out.record
    if curve:  # evaluated before purification and after each epoch
        assert [r["epoch"] for r in rec.epochs] == [0, 1, 2] and len(calls) == 3
    else:  # epoch losses only, the test set never touched
        assert [r["epoch"] for r in rec.epochs] == [1, 2] and not calls and "BA" not in rec.epochs[0]
    assert rec.mask_norms.shape == (10,) and rec.mask.shape == (1, 28, 28)
    assert rec.target == int(rec.mask_norms.argmin())
    assert rec.true_target_known_to_defense is False


# Each Params field set to another valid value: the inversion's cache key must change exactly
# for the fields the inversion reads, and its result must not change for any other field.
_OTHER_VALUES = {
    "target": 0,
    "lam": 0.05,
    "inv_lr": 0.05,
    "inv_steps": 4,
    "inv_patience": 1,
    "inv_batch_size": 8,
    "anomaly_threshold": 3.0,
    "tau": 0.1,
    "epochs": 3,
    "lr": 0.2,
    "first_epoch_lr": 0.1,
    "lr_decay_epochs": (1,),
    "lr_decay": 0.5,
    "momentum": 0.5,
    "weight_decay": 0.01,
    "batch_size": 16,
    "ce_weight": 1.0,
    "bn_eval": True,
    "curve": True,
}


def test_inversion_cache_key_is_exactly_what_the_inversion_reads():
    base = mcldef.Params(inv_steps=6, inv_batch_size=4)
    assert set(_OTHER_VALUES) == {f.name for f in dataclasses.fields(base)}, "a new field needs a line here"
    model, x = PatchModel(), _dark_images(12)
    y = torch.arange(12) % K
    classes = torch.arange(K)
    ref = mcldef.invert(model, x, y, classes, base, seed=0)
    key = mcldef.inversion_spec(base, context(base, x, y))
    for name, value in _OTHER_VALUES.items():
        changed = dataclasses.replace(base, **{name: value})
        changed.validate()
        keyed = mcldef.inversion_spec(changed, context(changed, x, y)) != key
        assert keyed == (name in mcldef.INVERSION_FIELDS), name
        if not keyed:  # a shared cached inversion must be what this setting would compute
            out = mcldef.invert(model, x, y, classes, changed, seed=0)
            assert all(torch.equal(a, b) for a, b in zip(out, ref)), name
    assert mcldef.inversion_spec(base, context(base, x[:6], y[:6])) != key  # another clean subset


def test_run_inverts_once_per_victim_and_inversion_setting():
    stored, computed = {}, []

    def memo(name, spec, compute):  # the store's behaviour: compute once per (name, spec)
        key = (name, repr(sorted(spec.items())))
        if key not in stored:
            computed.append(spec)
            found, meta = compute()
            stored[key] = ({k: v.detach().cpu().clone() for k, v in found.items()}, meta)
        return stored[key]

    x = _dark_images(20).repeat(1, 1, 4, 4)[:, :, :28, :28]
    y = torch.arange(20) % 10
    outs = []
    for params in (
        mcldef.Params(inv_steps=3, epochs=1, batch_size=10, lr=0.01),
        mcldef.Params(inv_steps=3, epochs=1, batch_size=10, lr=0.1, curve=True),  # reuses the inversion
        mcldef.Params(inv_steps=4, epochs=1, batch_size=10, lr=0.01),  # a new inversion
    ):
        outs.append(mcldef.run(tiny_cnn(0), context(params, x, y, memo=memo)))
    assert [s["inv_steps"] for s in computed] == [3, 4]
    uncached = mcldef.run(tiny_cnn(0), context(mcldef.Params(inv_steps=3, epochs=1, batch_size=10, lr=0.1), x, y))
    for k in ("mask", "pattern", "mask_norms", "trigger_success"):
        assert torch.equal(getattr(outs[1].record, k), getattr(uncached.record, k)), k
    assert outs[1].record.target == uncached.record.target
    # and the purified model is the same whether the inversion was computed or read back
    assert all(
        torch.equal(a, b) for a, b in zip(outs[1].model.state_dict().values(), uncached.model.state_dict().values())
    )
