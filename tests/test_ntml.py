"""Tests for bdlib.defenses.ntml: the non-target loss, mutual learning, Params, and run end to end."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdlib import metrics
from bdlib.config import ConfigError
from bdlib.defenses import DefenseContext, ntml
from bdlib.models import SmallCNN
from bdlib.profiles import profile, resolve

torch.set_num_threads(1)


def test_given_label_logit_has_no_effect():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=gen, requires_grad=True)
    t = torch.randn(6, 5, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    loss = ntml.nontarget_kd_loss(s, t, y, 4.0)
    loss.backward()
    rows = torch.arange(6)
    assert torch.all(s.grad[rows, y] == 0)
    assert torch.all(s.grad.abs().sum(1) > 0)
    s2, t2 = s.detach().clone(), t.clone()
    s2[rows, y] += 50.0
    t2[rows, y] -= 50.0
    assert torch.allclose(ntml.nontarget_kd_loss(s2, t2, y, 4.0), loss.detach())


def test_temperature_matches_hand_computation():
    s = torch.tensor([[9.0, 1.0, 2.0, 0.0]])
    t = torch.tensor([[-3.0, 3.0, 0.0, 1.0]])
    y = torch.tensor([0])
    tau = 2.0
    ps = [math.exp(v / tau) for v in (1.0, 2.0, 0.0)]
    pt = [math.exp(v / tau) for v in (3.0, 0.0, 1.0)]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    hand = tau**2 * sum(q * math.log(q / p) for q, p in zip(pt, ps))
    assert ntml.nontarget_kd_loss(s, t, y, tau).item() == pytest.approx(hand, rel=1e-5)
    # The full-class loss is a different number: the mask really removed the label's column.
    assert ntml.kd_loss(s, t, tau).item() != pytest.approx(hand, rel=1e-3)


def test_zero_when_nontarget_distributions_match():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(8, 10, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    # Same non-target logits up to a per-row shift (softmax-invariant); given label wildly different.
    t = s + torch.randn(8, 1, generator=gen)
    t[torch.arange(8), y] = 30.0
    assert ntml.nontarget_kd_loss(s, t, y, 4.0).item() == pytest.approx(0.0, abs=1e-5)
    assert ntml.kd_loss(s, t, 4.0).item() > 1.0


def test_mutual_losses_have_separate_gradients():
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(4, 3, generator=gen, requires_grad=True)
    t = torch.randn(4, 3, generator=gen, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    ls, lt = ntml.mutual_losses(s, t, y, 4.0, 1.0)
    (ls + lt).backward()
    grad_s, grad_t = s.grad.clone(), t.grad.clone()
    s.grad = t.grad = None
    ls, _ = ntml.mutual_losses(s, t, y, 4.0, 1.0)
    ls.backward()
    assert torch.allclose(s.grad, grad_s) and t.grad is None
    expected = F.cross_entropy(s.detach(), y) + 16.0 * F.kl_div(
        F.log_softmax(s.detach() / 4, 1), F.softmax(t.detach() / 4, 1), reduction="batchmean"
    )
    assert ls.item() == pytest.approx(expected.item(), rel=1e-5)
    assert grad_t.abs().sum() > 0


def _tiny_ctx(**params) -> DefenseContext:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 1, 12, 12), generator=gen, dtype=torch.uint8)
    y = torch.arange(48) % 3
    cfg = profile("smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1, batch_size=64))

    def new_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return SmallCNN(1, 3, width=4, pool=1)

    def stamp(xb: torch.Tensor) -> torch.Tensor:
        xb = xb.clone()
        xb[..., -3:, -3:] = 255
        return xb

    return DefenseContext(
        params=ntml.Params(**params),
        train=cfg.train,
        x_train=x,
        y_train=y,
        x_clean=x[:12],
        y_clean=y[:12],
        num_classes=3,
        seed=0,
        new_model=new_model,
        evaluate=lambda m: metrics.evaluate(m, x[:24], y[:24], 0, stamp),
    )


def test_one_ml_step_changes_both_models():
    ctx = _tiny_ctx(ml_epochs=1, ml_lr=0.1, ml_curve=True)
    pair = nn.ModuleDict({"student": ctx.new_model(0), "teacher": ctx.new_model(1)})
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    history = ntml.ml_stage(pair, ctx)
    assert len(history) == 1 and set(history[0]["student"]) == set(history[0]["teacher"]) == {"BA", "ASR", "RA"}
    for role in ("student", "teacher"):
        w = f"{role}.fc.weight"
        assert not torch.equal(pair.state_dict()[w], before[w]), role


def test_params_validation_names_value_and_choices():
    with pytest.raises(ValueError, match=r"'mentor'.*kd, poisoned"):
        ntml.Params(teacher="mentor").validate()
    with pytest.raises(ValueError, match=r"init 'random'.*scratch, poisoned"):
        ntml.Params(init="random").validate()
    with pytest.raises(ValueError, match=r"tau must be > 0, got -1"):
        ntml.Params(tau=-1.0).validate()
    with pytest.raises(ValueError, match=r"nt_epochs.*got 0"):
        ntml.Params(nt_epochs=0).validate()
    with pytest.raises(ConfigError, match=r"ntml.*lam must be >= 0, got -0.5"):
        resolve("smoke", overrides={"defenses.ntml.lam": -0.5})
    ntml.Params().validate()


@pytest.mark.parametrize("teacher", ["kd", "poisoned"])
def test_run_end_to_end(teacher):
    ctx = _tiny_ctx(teacher=teacher, nt_epochs=2, ml_epochs=2)
    m0 = ctx.new_model(7)
    m0_state = {k: v.clone() for k, v in m0.state_dict().items()}
    out = ntml.DEFENSE.run(m0, ctx)
    rec = out.record
    assert [h["epoch"] for h in rec.nt_history] == [1, 2] and [h["epoch"] for h in rec.ml_history] == [1, 2]
    assert rec.nt_student_metrics.keys() == rec.ml_teacher_metrics.keys() == {"BA", "ASR", "RA"}
    assert out.model is not m0 and not out.model.training
    assert all(torch.equal(m0.state_dict()[k], v) for k, v in m0_state.items())
    # the NT student is kept as it was before mutual learning changed the student
    assert rec.nt_student is not out.model
    assert any(not torch.equal(v, out.model.state_dict()[k]) for k, v in rec.nt_student.state_dict().items())
    if teacher == "poisoned":  # the NT teacher is M0 itself
        assert rec.nt_teacher_metrics == rec.poisoned
        assert all(torch.equal(m0.state_dict()[k], v) for k, v in rec.nt_teacher.state_dict().items())


# ---- the readings ------------------------------------------------------------------------


def test_unlearn_loss_pushes_the_weighted_label_down_and_nothing_else():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    w = torch.tensor([1.0, 0.0])
    loss = ntml.unlearn_loss(z, y, w)
    p0 = torch.softmax(z.detach()[0], 0)[0].item()
    assert loss.item() == pytest.approx(-math.log(1 - p0) / 2, rel=1e-5)  # mean over the 2 samples
    loss.backward()
    assert z.grad[0, 0] > 0  # descent lowers the given label's logit of the weighted sample
    assert torch.all(z.grad[1] == 0)  # weight 0: untouched
    # Stays finite where the label's probability rounds to 1 in float32.
    z = torch.tensor([[60.0, 0.0, 0.0]], requires_grad=True)
    loss = ntml.unlearn_loss(z, torch.tensor([0]), torch.ones(1))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(60.0 - math.log(2), rel=1e-4)
    assert torch.isfinite(z.grad).all()


def test_isolate_takes_the_most_confident_and_estimates_the_target():
    given_logit = torch.tensor([9.0, 1.0, 8.0, 7.0, 0.0, 6.5, 2.0, 3.0])
    y = torch.tensor([2, 0, 2, 1, 1, 2, 0, 0])
    chosen, target = ntml.isolate(given_logit, y, 0.5, estimated=False)
    assert chosen.tolist() == [True, False, True, True, False, True, False, False] and target == 2
    chosen, target = ntml.isolate(given_logit, y, 0.5, estimated=True)
    assert chosen.tolist() == [True, False, True, False, False, True, False, False] and target == 2


def _reading_loss(reading, z_s, z0, y, isolated, weight=2.0):
    return ntml.nt_student_loss(z_s, z0, y, isolated, ntml.Params(reading=reading, suppress_weight=weight))


def test_readings_mask_and_push_what_they_say():
    gen = torch.Generator().manual_seed(3)
    z_s = torch.randn(4, 5, generator=gen)
    z0 = torch.randn(4, 5, generator=gen)
    z0[torch.arange(4), torch.tensor([1, 2, 3, 4])] += 10.0  # M0 predicts 1, 2, 3, 4
    y = torch.tensor([1, 2, 0, 0])  # the given labels: M0 disagrees on samples 2 and 3
    none = torch.zeros(4, dtype=torch.bool)
    some = torch.tensor([True, False, False, True])
    base = ntml.nontarget_kd_loss(z_s, z0, y, 4.0)
    assert torch.allclose(_reading_loss("nontarget", z_s, z0, y, some), base)
    # predicted: M0's predicted label is masked; the given label of samples 2 and 3 is taught.
    predicted = _reading_loss("predicted", z_s, z0, y, none)
    assert torch.allclose(predicted, ntml.nontarget_kd_loss(z_s, z0, z0.argmax(1), 4.0))
    assert not torch.allclose(predicted, base)
    zg = z_s.clone().requires_grad_()
    _reading_loss("predicted", zg, z0, y, none).backward()
    assert torch.all(zg.grad[torch.arange(4), z0.argmax(1)] == 0) and zg.grad[2, 0] != 0
    # suppress / estimated: the masked distillation plus β·unlearning on the isolated samples only.
    for reading in ("suppress", "estimated"):
        assert torch.allclose(_reading_loss(reading, z_s, z0, y, none), base)
        extra = 2.0 * ntml.unlearn_loss(z_s, y, some.float())
        assert torch.allclose(_reading_loss(reading, z_s, z0, y, some), base + extra)
        zg = z_s.clone().requires_grad_()
        _reading_loss(reading, zg, z0, y, some).backward()
        assert zg.grad[0, 1] > 0 and zg.grad[3, 0] > 0  # isolated samples' given labels pushed down
        assert zg.grad[1, 2] == 0 and zg.grad[2, 0] == 0  # not isolated: given label untouched


def test_reading_params_validated():
    with pytest.raises(
        ValueError, match=r"reading 'inverse'.*nontarget, predicted, suppress, estimated, complementary"
    ):
        ntml.Params(reading="inverse").validate()
    with pytest.raises(ValueError, match=r"ml_data 'all'.*clean, clean\+train, clean\+agree"):
        ntml.Params(ml_data="all").validate()
    with pytest.raises(ValueError, match=r"isolate.*got 1.5"):
        ntml.Params(isolate=1.5).validate()
    with pytest.raises(ConfigError, match=r"suppress_weight must be >= 0"):
        resolve("smoke", overrides={"defenses.ntml.suppress_weight": -1.0})


def test_nt_cache_key_covers_every_nt_field():
    p = ntml.Params()
    changed = {
        "tau": 2.0,
        "teacher": "poisoned",
        "nt_epochs": 3,
        "nt_lr": 0.2,
        "init": "poisoned",
        "reading": "suppress",
        "isolate": 0.1,
        "suppress_weight": 3.0,
        "lam": 2.0,
        "ml_epochs": 3,
        "ml_lr": 0.5,
        "ml_data": "clean+train",
        "ml_curve": True,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(p)}, "a new field needs a line here"
    for name, value in changed.items():
        differs = ntml.nt_spec(dataclasses.replace(p, **{name: value})) != ntml.nt_spec(p)
        assert differs == (name not in ntml.ML_FIELDS), name


@pytest.mark.parametrize(
    "reading,ml_data,init",
    [
        ("suppress", "clean+train", "scratch"),
        ("estimated", "clean", "scratch"),
        ("predicted", "clean", "scratch"),
        ("complementary", "clean+agree", "poisoned"),
    ],
)
def test_readings_run_end_to_end(reading, ml_data, init):
    ctx = _tiny_ctx(reading=reading, ml_data=ml_data, init=init, isolate=0.25, nt_epochs=1, ml_epochs=1)
    out = ntml.DEFENSE.run(ctx.new_model(7), ctx)
    if reading == "complementary":  # weighted samples: above their class's median, at most half
        assert 0 < out.record.isolated <= 24
    else:
        expected = 12 if reading != "estimated" else None  # 25 % of 48; estimated keeps one label's share
        if expected is not None:
            assert out.record.isolated == expected
        assert 0 < out.record.isolated <= 12
    assert out.record.estimated_target in (0, 1, 2)
    assert len(out.record.nt_history) == len(out.record.ml_history) == 1


# ---- (a) complementary NT, weighted; (b) ML routed by disagreement; (c) restore ----------


def test_complementary_loss_is_full_softmax_kl_against_renormalised_m0():
    s = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[8.0, 0.0, 1.0, 2.0], [1.0, 0.0, 2.0, -2.0]])
    y = torch.tensor([0, 2])
    tau = 2.0
    hand = 0.0
    for i in range(2):
        q = [0.0 if c == y[i] else math.exp(t[i, c].item() / tau) for c in range(4)]
        q = [v / sum(q) for v in q]  # M0 without the given label, renormalised
        p = torch.softmax(s.detach()[i] / tau, 0).tolist()  # the student's full softmax
        hand += tau**2 * sum(qc * math.log(qc / pc) for qc, pc in zip(q, p) if qc > 0) / 2
    full = ntml.complementary_kd_loss(s, t, y, tau, torch.ones(2))
    assert full.item() == pytest.approx(hand, rel=1e-5)
    # weight 0: exactly the non-target reading (no gradient on the given label)
    zero = ntml.complementary_kd_loss(s, t, y, tau, torch.zeros(2))
    assert zero.item() == pytest.approx(ntml.nontarget_kd_loss(s, t, y, tau).item(), rel=1e-5)
    # a per-sample weight: only the weighted sample's given label is pushed down
    ntml.complementary_kd_loss(s, t, y, tau, torch.tensor([1.0, 0.0])).backward()
    assert s.grad[0, 0] > 0 and s.grad[1, 2] == 0


def test_atypicality_is_zero_for_typical_samples():
    given = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 9.0])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    w = ntml.atypicality(given, y)
    # class 0's median 2, class 1's 5; excesses 1 and 4, over the largest (4)
    assert torch.allclose(w, torch.tensor([0.0, 0.0, 0.25, 0.0, 0.0, 1.0]))
    assert torch.equal(ntml.atypicality(torch.ones(4), torch.tensor([0, 0, 1, 1])), torch.zeros(4))


def test_complementary_reading_weights_by_atypicality_times_beta():
    gen = torch.Generator().manual_seed(4)
    z_s, z0 = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    y = torch.tensor([0, 1, 2])
    w = torch.tensor([0.0, 0.5, 1.0])
    got = _reading_loss("complementary", z_s, z0, y, w, weight=2.0)
    assert torch.allclose(got, ntml.complementary_kd_loss(z_s, z0, y, 4.0, 2.0 * w))


def test_agreement_kd_counts_only_agreeing_images():
    s = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.5]], requires_grad=True)
    t = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    ls, lt = ntml.agreement_kd_losses(s, t, 4.0)  # only row 0 agrees (class 0)
    assert ls.item() == pytest.approx(ntml.kd_loss(s[:1], t[:1], 4.0).item() / 3, rel=1e-5)
    assert lt.item() == pytest.approx(ntml.kd_loss(t[:1], s[:1], 4.0).item() / 3, rel=1e-5)
    ls.backward()
    assert s.grad[0].abs().sum() > 0 and torch.all(s.grad[1:] == 0) and t.grad is None  # partner detached
    # nobody agrees: nothing is learned from the partner
    zero, _ = ntml.agreement_kd_losses(s, torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), 4.0)
    assert zero.item() == 0.0


def test_restore_starts_the_student_from_m0():
    ctx = _tiny_ctx(init="poisoned")
    m0 = ctx.new_model(7)
    start = ntml._start(m0, ctx, 0)
    assert start is not m0 and all(torch.equal(m0.state_dict()[k], v) for k, v in start.state_dict().items())
