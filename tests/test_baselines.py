"""Tests for the baseline defenses FT, NAD, ANP and I-BAU (bdlib.defenses.ft / nad / anp / ibau)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from defense_context import FAKE_METRICS, context, tiny_cnn
from torch import nn

from bdlib.config import ConfigError
from bdlib.defenses import anp, ft, ibau, nad
from bdlib.defenses.base import DefenseContext
from bdlib.profiles import resolve

torch.set_num_threads(1)


def _data(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n) % 10


def _ctx(params, calls: list | None = None) -> DefenseContext:
    return context(params, *_data(), calls)


def _changed(before: dict, model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)]


# --------------------------------------------------------------------------- Params validation


@pytest.mark.parametrize(
    "module, field, value",
    [
        (ft, "steps", 0),
        (ft, "budget", 0.0),
        (ft, "lr", 0.0),
        (nad, "steps", 0),
        (nad, "lr_drop_at", 1.5),
        (nad, "teacher_lr", -1.0),
        (nad, "betas", ()),
        (nad, "betas", (1.0, -1.0)),
        (nad, "distance", "l1"),
        (anp, "eps", -0.1),
        (anp, "alpha", 1.5),
        (anp, "threshold", -0.1),
        (anp, "steps", 0),
        (anp, "pruning_by", "size"),
        (anp, "n_pruned", -1),
        (anp, "mask_momentum", 1.0),
        (ibau, "rounds", 0),
        (ibau, "eps", -1.0),
        (ibau, "portion", 0.0),
        (ibau, "inner_labels", "none"),
        (ibau, "fp_iters", -1),
        (ibau, "lr", 0.0),
    ],
)
def test_params_reject_bad_values(module, field, value):
    with pytest.raises(ValueError, match=field):
        module.Params(**{field: value}).validate()


def test_profile_overrides_are_validated():
    name = {ft: "ft", nad: "nad", anp: "anp", ibau: "ibau"}
    for module, field, value in ((ft, "lr", -1.0), (anp, "alpha", 2.0), (ibau, "rounds", 0)):
        with pytest.raises(ConfigError, match=field):
            resolve("smoke", overrides={f"defenses.{name[module]}.{field}": value})
    for module in name:
        module.Params().validate()


# --------------------------------------------------------------------------- FT


def test_ft_changes_weights_and_records_every_epoch_loss():
    model, calls = tiny_cnn(), []
    before = copy.deepcopy(model.state_dict())
    out = ft.run(model, _ctx(ft.Params(steps=4, batch_size=10, lr=0.05), calls))  # 20 images: 2 steps an epoch
    assert out.model is model and [r["epoch"] for r in out.record.epochs] == [1, 2] and not calls
    changed = _changed(before, model)
    assert any(k.startswith("stage1.0") for k in changed) and any(k.startswith("fc") for k in changed)


# --------------------------------------------------------------------------- NAD


def test_attention_map_matches_hand_computation():
    act = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[3.0, 0.0], [0.0, 1.0]]]])  # [1, 2, 2, 2]
    # channel sum of squares: [1+9, 4+0, 0, 9+1] = [10, 4, 0, 10], norm √216 (+ 1e-6, as NAD's at.py)
    expected = torch.tensor([[10.0, 4.0, 0.0, 10.0]]) / (216**0.5 + 1e-6)
    assert torch.allclose(nad.attention_map(act, 2.0), expected)
    assert torch.allclose(nad.attention_map(act, 2.0).norm(dim=1), torch.ones(1))


def test_at_loss_zero_for_identical_and_scale_invariant():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 5, 5, generator=gen)
    b = torch.randn(4, 3, 5, 5, generator=gen)
    for distance in ("l2", "mse"):
        assert nad.at_loss(a, a.clone(), 2.0, distance).item() == 0.0
        assert nad.at_loss(a, 3.0 * a, 2.0, distance).item() == pytest.approx(0.0, abs=1e-6)  # maps are normalised
        assert nad.at_loss(a, b, 2.0, distance).item() > 0.0
    # l2 is the per-sample distance; mse its square averaged over samples and the H·W positions.
    d = (nad.attention_map(a) - nad.attention_map(b)).norm(dim=1)
    assert nad.at_loss(a, b, 2.0, "l2").item() == pytest.approx(d.mean().item(), rel=1e-5)
    assert nad.at_loss(a, b, 2.0, "mse").item() == pytest.approx((d**2).mean().item() / 25, rel=1e-5)


def test_capture_records_stage_outputs_and_removes_hooks():
    model = tiny_cnn().eval()
    x = torch.rand(3, 1, 28, 28)
    with nad.capture(model.stages) as outs:
        model(x)
    s1 = model.stage1(model.norm(x))
    assert torch.allclose(outs[0], s1) and torch.allclose(outs[2], model.stage3(model.stage2(s1)))
    assert all(len(m._forward_hooks) == 0 for m in model.stages)


def test_nad_loss_pulls_student_towards_teacher_and_leaves_teacher_alone():
    teacher, student = tiny_cnn(0).eval(), tiny_cnn(1)
    t0 = copy.deepcopy(teacher.state_dict())
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    loss_fn = nad.make_loss(teacher, list(student.stages), (1000.0, 1000.0, 1000.0), 2.0)
    with nad.capture(student.stages) as s, nad.capture(teacher.stages) as t:
        student.eval()(x), teacher(x)
        gap0 = sum(nad.at_loss(a, b).item() for a, b in zip(s, t))
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        student.train()
        loss_fn(student, x, y, torch.arange(8)).backward()
        opt.step()
    with nad.capture(student.stages) as s, nad.capture(teacher.stages) as t:
        student.eval()(x), teacher(x)
        gap1 = sum(nad.at_loss(a, b).item() for a, b in zip(s, t))
    assert gap1 < gap0
    assert all(torch.equal(t0[k], v) for k, v in teacher.state_dict().items())


def test_nad_run_end_to_end_and_beta_count_checked():
    model, calls = tiny_cnn(), []
    before = copy.deepcopy(model.state_dict())
    out = nad.run(model, _ctx(nad.Params(teacher_steps=2, steps=4, batch_size=10, betas=(10.0, 10.0, 10.0)), calls))
    assert len(out.record.teacher_epochs) == 1 and len(out.record.epochs) == 2 and len(calls) == 1
    assert out.record.teacher == FAKE_METRICS
    assert _changed(before, model)
    with pytest.raises(ValueError, match="stages"):
        nad.run(tiny_cnn(), _ctx(nad.Params(teacher_steps=1, steps=1, betas=(1.0, 1.0))))


# --------------------------------------------------------------------------- ANP


def test_prune_zeroes_exactly_the_weights_of_the_low_channels():
    model = tiny_cnn()
    with torch.no_grad():
        for _, bn in anp.batchnorms(model):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.5, 1.5)
    before = copy.deepcopy(model.state_dict())
    names = [n for n, _ in anp.batchnorms(model)]
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(len(before[f"{n}.weight"]), generator=gen) for n in names}
    pruned = anp.prune(model, anp.pruned_channels(masks, anp.Params(threshold=0.3)))
    after = model.state_dict()
    assert pruned == sum(int((m <= 0.3).sum()) for m in masks.values()) > 0
    for n, m in masks.items():
        w = after[f"{n}.weight"]
        assert torch.all(w[m <= 0.3] == 0) and torch.equal(w[m > 0.3], before[f"{n}.weight"][m > 0.3])
        assert torch.equal(after[f"{n}.bias"], before[f"{n}.bias"])
    assert all(torch.equal(before[k], v) for k, v in after.items() if not k.endswith("weight") or ".1." not in k)
    # By number: the k lowest masks over all layers.
    k = 5
    cut = anp.pruned_channels(masks, anp.Params(pruning_by="number", n_pruned=k))
    low = torch.cat(list(masks.values())).sort().values[k - 1]
    assert sum(int(c.sum()) for c in cut.values()) == k
    assert all(torch.equal(c, m <= low) for c, m in zip(cut.values(), masks.values()))


def test_masking_equals_bn_with_scaled_weights():
    model = tiny_cnn().eval()
    x = torch.rand(4, 1, 28, 28)
    w0 = copy.deepcopy(model.state_dict())
    masking = anp.Masking(model)
    ref = model(x)
    assert torch.allclose(masking(x), ref, atol=1e-6)  # mask 1, no noise: unchanged
    with torch.no_grad():
        masking.masks[0][:2] = 0.0
        masking.d_weight[1].fill_(0.3)
        masking.d_bias[1].fill_(-0.2)
    masking.perturb = True
    hooked = masking(x)
    manual = copy.deepcopy(model)
    with torch.no_grad():
        b0, b1 = manual.stage1[1], manual.stage2[1]
        b0.weight[:2] = 0.0  # the mask scales the weight only
        b1.weight.mul_(1.3)
        b1.bias.mul_(0.8)
    assert torch.allclose(hooked, manual(x), atol=1e-5)
    assert torch.equal(model(x), ref)  # the model's own parameters are untouched
    assert all(torch.equal(w0[k], v) for k, v in model.state_dict().items())


def test_anp_step_keeps_masks_in_unit_interval_and_model_weights_fixed():
    model = tiny_cnn().eval()
    w0 = copy.deepcopy(model.state_dict())
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    masking = anp.Masking(model)
    opt = torch.optim.SGD(masking.masks, lr=50.0)  # huge steps: the clip must hold them in [0, 1]
    p = anp.Params(eps=0.4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        anp.anp_step(masking, opt, x, y, p, gen)
    assert all(m.min() >= 0 and m.max() <= 1 for m in masking.masks)
    assert any(((m > 0) & (m < 1)).any() or (m == 0).any() for m in masking.masks)
    assert all(d.abs().max() <= 2 * p.eps + 1e-6 for d in masking.noise)  # U[−ε, ε] + one step of ε
    assert all(torch.equal(w0[k], v) for k, v in model.state_dict().items())


def test_anp_run_prunes_and_records_masks():
    model = tiny_cnn()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    ctx = _ctx(anp.Params(steps=5, batch_size=10, threshold=1.0))  # every mask <= 1: all pruned
    out = anp.run(model, ctx)
    masks = out.record.masks
    assert set(masks) == {n for n, _ in anp.batchnorms(model)} and out.record.losses.shape == (5,)
    assert out.record.pruned == out.record.channels == sum(len(m) for m in masks.values())
    assert all(torch.all(bn.weight == 0) for _, bn in anp.batchnorms(model))
    # The masks train on a copy in train mode: the victim's BN statistics are untouched.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())


def test_anp_masks_are_computed_once_per_victim_for_a_pruning_sweep(monkeypatch):
    cache: dict = {}

    def memo(name, spec, compute):
        key = (name, repr(sorted(spec.items())))
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    calls = []
    optimize = anp.optimize_masks
    monkeypatch.setattr(anp, "optimize_masks", lambda *a, **k: calls.append(1) or optimize(*a, **k))
    x, y = _data()
    pruned = []
    for threshold in (0.5, 0.9, 1.0):
        model = tiny_cnn()
        out = anp.run(model, context(anp.Params(steps=3, batch_size=10, threshold=threshold), x, y, memo=memo))
        pruned.append(out.record.pruned)
    assert len(calls) == 1 and pruned == sorted(pruned) and pruned[-1] == out.record.channels


# --------------------------------------------------------------------------- I-BAU


def test_universal_perturbation_raises_the_loss_on_predicted_labels():
    model = tiny_cnn().eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28, generator=gen), torch.arange(32) % 10
    batches = [(x[:16], y[:16]), (x[16:], y[16:])] * 3
    delta = ibau.universal_perturbation(model, batches, ibau.Params(inner_lr=1.0))
    pred = model(x).argmax(1)
    assert delta.shape == (1, 1, 28, 28) and delta.norm() > 0
    with torch.no_grad():
        assert F.cross_entropy(model(x + delta), pred) > F.cross_entropy(model(x), pred)
    bounded = ibau.universal_perturbation(model, batches, ibau.Params(inner_lr=1.0, eps=0.5))
    assert bounded.norm() <= 0.5 + 1e-5


def test_project_l2():
    v = torch.tensor([3.0, 4.0])
    assert torch.allclose(ibau.project_l2(v, 1.0), torch.tensor([0.6, 0.8]))
    assert torch.equal(ibau.project_l2(v, 10.0), v)


def test_implicit_hypergradient_matches_quadratic_closed_form():
    # inner: δ*(θ) = argmax −½δᵀAδ + δᵀBθ = A⁻¹Bθ; outer ψ = ½‖δ − c‖² + dᵀθ.
    # dψ/dθ = d + (A⁻¹B)ᵀ(δ* − c).
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    a = q @ q.T + torch.eye(3, dtype=torch.float64)
    b = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    c, d = torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(2, generator=gen, dtype=torch.float64)
    theta = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    eta = 1.0 / torch.linalg.eigvalsh(a).max().item()  # contraction: ρ(I − ηA) < 1
    star = torch.linalg.solve(a, b @ theta.detach())

    def fp_map(delta):
        return delta + eta * (-(a @ delta) + b @ theta)

    def outer(delta):
        return 0.5 * (delta - c).pow(2).sum() + d @ theta

    (got,) = ibau.implicit_hypergradient(outer, fp_map, star, [theta], iters=2000)
    expected = d + torch.linalg.solve(a, b).T @ (star - c)
    assert torch.allclose(got, expected, atol=1e-8)
    (direct,) = ibau.implicit_hypergradient(outer, fp_map, star, [theta], iters=0)
    assert not torch.allclose(direct, expected, atol=1e-3)  # the implicit term matters


def test_unlearn_step_updates_model_and_ibau_run_records_rounds():
    model, calls = tiny_cnn(), []
    before = copy.deepcopy(model.state_dict())
    out = ibau.run(model, _ctx(ibau.Params(rounds=2, batches=2, batch_size=10, fp_iters=2, portion=0.1), calls))
    assert [r["round"] for r in out.record.rounds] == [1, 2] and len(calls) == 2
    changed = _changed(before, model)
    assert any(k.startswith("fc") for k in changed) and not any("running" in k for k in changed)
