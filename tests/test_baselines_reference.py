"""The baselines against their reference code, each on a tiny hand-made case (issue #31, item 3).

Each test writes the official update out independently, as a few lines of tensor algebra, and
compares bdlib's implementation with it:

- ANP (csdongxian/ANP_backdoor, models/anp_batchnorm.py, optimize_mask_cifar.py): the perturbed
  BatchNorm forward γ·(m + δ)·x̂ + β·(1 + ξ) in train mode, and one mask step (δ, ξ ~ U[−ε, ε],
  one signed ascent step of ε with no clamp, then SGD on the masks, clipped to [0, 1]);
- NAD (bboylyg/NAD, at.py): the attention loss, mean squared difference of the maps
  Σ_c |a|^p / (‖·‖₂ + 1e-6);
- I-BAU (YiZeng623/I-BAU, defense.py loss_outer): the outer step perturbs int(n · 0.01) images;
- FT (SCLBD/BackdoorBench, defense/ft.py, config/defense/ft/config.yaml): lr 0.01 with
  CosineAnnealingLR(T_max=100) stepped per epoch, 10 steps of 256 an epoch on 2,500 images.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from defense_context import context
from torch import nn

from bdlib.defenses import anp, ft, ibau, nad

torch.set_num_threads(1)


def _bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net


# --------------------------------------------------------------------------- ANP


def test_anp_perturbed_bn_forward_equals_noisy_batchnorm():
    net = _bn_net().train()
    bn = net[1]
    x = torch.randn(6, 3, 4, 4)
    m, d, xi = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.3, -0.2, 0.1]), torch.tensor([-0.4, 0.2, 0.3])
    masking = anp.Masking(bn)
    with torch.no_grad():
        masking.masks[0].copy_(m)
        masking.d_weight[0].copy_(d)
        masking.d_bias[0].copy_(xi)
    # NoisyBatchNorm2d.forward in train mode (batch statistics): weight·(mask + noise), bias·(1 + noise_bias).
    w, b = bn.weight.detach(), bn.bias.detach()
    perturbed = F.batch_norm(x, None, None, w * (m + d), b * (1 + xi), True, 0.0, bn.eps)
    plain = F.batch_norm(x, None, None, w * m, b, True, 0.0, bn.eps)  # the bias is never masked
    masking.perturb = True
    got_perturbed = masking(x)
    masking.perturb = False
    got_plain = masking(x)
    assert torch.allclose(got_perturbed, perturbed, atol=1e-5)
    assert torch.allclose(got_plain, plain, atol=1e-5)


def test_anp_step_equals_the_official_perturbation_and_mask_update():
    net = _bn_net().train()
    bn = net[1]
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 4, 4, generator=gen), torch.arange(8) % 4
    p = anp.Params(eps=0.4, alpha=0.2, ascent_steps=1, mask_lr=0.2, mask_momentum=0.9)
    w, b = bn.weight.detach(), bn.bias.detach()

    def forward(mask, dw, db):  # the network with NoisyBatchNorm2d (train mode), written out
        h = F.batch_norm(net[0](x), None, None, w * (mask + dw), b * (1 + db), True, 0.0, bn.eps)
        return net[4](net[3](net[2](h)))

    # reset(rand_init=True): δ, ξ ~ U[−ε, ε] (drawn here in bdlib's order: weights, then biases).
    draw = torch.Generator().manual_seed(7)
    d0 = (torch.rand(3, generator=draw) * 2 - 1) * p.eps
    xi0 = (torch.rand(3, generator=draw) * 2 - 1) * p.eps
    # One step of SGD(lr = ε / anp_steps) on −CE with the signed gradient: δ + ε·sign(∇CE), no clamp.
    dw, db = d0.clone().requires_grad_(), xi0.clone().requires_grad_()
    gw, gb = torch.autograd.grad(F.cross_entropy(forward(torch.ones(3), dw, db), y), [dw, db])
    d1, xi1 = d0 + p.eps * gw.sign(), xi0 + p.eps * gb.sign()
    # Mask step: α·CE(mask only) + (1 − α)·CE(mask + δ), one SGD step (momentum's first step is
    # plain), clipped to [0, 1].
    m = torch.ones(3, requires_grad=True)
    loss = p.alpha * F.cross_entropy(forward(m, 0.0, 0.0), y) + (1 - p.alpha) * F.cross_entropy(forward(m, d1, xi1), y)
    (gm,) = torch.autograd.grad(loss, m)
    m1 = (1 - p.mask_lr * gm).clamp(0, 1)

    masking = anp.Masking(net)
    opt = torch.optim.SGD(masking.masks, lr=p.mask_lr, momentum=p.mask_momentum)
    anp.anp_step(masking, opt, x, y, p, torch.Generator().manual_seed(7))
    assert (d1.abs() > p.eps).any()  # the official step leaves [−ε, ε]: no clamp
    assert torch.allclose(masking.d_weight[0], d1, atol=1e-6)
    assert torch.allclose(masking.d_bias[0], xi1, atol=1e-6)
    assert torch.allclose(masking.masks[0], m1, atol=1e-6)


def test_anp_prunes_the_bn_weight_only_at_mask_at_most_threshold():
    net = _bn_net()
    before = copy.deepcopy(net.state_dict())
    masks = {"1": torch.tensor([0.2, 0.5, 0.1])}
    cut = anp.pruned_channels(masks, anp.Params(threshold=0.2))
    assert anp.prune(net, cut) == 2
    assert torch.equal(net[1].weight, torch.stack([torch.tensor(0.0), before["1.weight"][1], torch.tensor(0.0)]))
    assert torch.equal(net[1].bias, before["1.bias"])  # prune_neuron_cifar.py zeroes the weight only
    by_number = anp.pruned_channels(masks, anp.Params(pruning_by="number", n_pruned=1))
    assert by_number["1"].tolist() == [False, False, True]


# --------------------------------------------------------------------------- NAD


def test_nad_attention_loss_equals_official_at():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)

    def official_map(fm, p=2.0, eps=1e-6):  # NAD at.py AT.attention_map
        am = fm.abs().pow(p).sum(dim=1, keepdim=True)
        return am / (am.norm(dim=(2, 3), keepdim=True) + eps)

    expected = F.mse_loss(official_map(s), official_map(t))  # NAD at.py AT.forward
    assert torch.allclose(nad.at_loss(s, t, nad.Params().p, nad.Params().distance), expected, rtol=1e-5)
    assert torch.allclose(nad.at_loss(s, t), expected, rtol=1e-5)
    assert nad.Params().betas == (500.0, 1000.0, 1000.0)  # NAD config.py beta1-3


# --------------------------------------------------------------------------- I-BAU


def test_ibau_outer_step_perturbs_the_reference_portion():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
    x, y = torch.rand(100, 1, 4, 4), torch.arange(100) % 4
    delta = torch.full((1, 1, 4, 4), 0.5)
    p = ibau.Params()
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    ibau.unlearn_step(model, opt, x, y, delta, (x, y), p, torch.Generator().manual_seed(0))
    outer_input = seen[0]  # the outer loss's forward comes first
    changed = (outer_input != x).flatten(1).any(1)
    assert int(changed.sum()) == int(100 * 0.01) == 1  # I-BAU defense.py loss_outer: portion 0.01
    assert torch.allclose(outer_input[changed], x[changed] + delta)


# --------------------------------------------------------------------------- FT


def test_ft_lr_per_step_matches_backdoorbench_schedule(monkeypatch):
    n = 2500  # 5 % of CIFAR-10: 10 batches of 256 an epoch
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 2, 2), generator=gen, dtype=torch.uint8)
    y = torch.arange(n) % 10
    lrs: list[float] = []
    step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    ft.run(model, context(ft.Params(), x, y))
    # CosineAnnealingLR(T_max=100) stepped once per epoch of 10 batches, over 100 epochs.
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * e / 100)) for e in range(100) for _ in range(10)]
    assert len(lrs) == len(expected) == 1000
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-12
