"""Tests for bdlib.defenses.none: channel scores, the two-means split, channel reset, Params, run."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import pytest
import torch

from bdlib.defenses import none
from bdlib.defenses.base import DefenseContext
from bdlib.metrics import evaluate
from bdlib.models import BasicBlock, ResNet18, SmallCNN
from bdlib.profiles import profile

torch.set_num_threads(1)


def test_channel_scores_hand_computed():
    # 6 samples, 2 classes, 2 channels (rows need not sum to 1 for the pure function).
    # Class 0: strong {0, 1}, weak {3, 4, 5}. Class 1: strong {4, 5}, weak {0, 1, 2}.
    probs = torch.tensor([[0.95, 0.05], [0.97, 0.03], [0.5, 0.05], [0.05, 0.5], [0.02, 0.98], [0.01, 0.99]])
    acts = torch.tensor([[9.0, 1.0], [3.0, 2.0], [100.0, -100.0], [1.0, 4.0], [2.0, 6.0], [3.0, 5.0]])
    got = none.channel_scores(acts, probs, strong=0.9, weak=0.1, std_k=3.0)
    std = math.sqrt(2 / 3)  # population std of {1, 2, 3}
    # channel 0: class 0 -> 9 − (2 + 3·std); class 1 -> max(2, 3) − (mean{9,3,100} + 3·std{9,3,100})
    c0k1 = 3 - (torch.tensor([9.0, 3.0, 100.0]).mean() + 3 * torch.tensor([9.0, 3.0, 100.0]).std(unbiased=False))
    # channel 1: class 0 -> 2 − (5 + 3·std{4,6,5}); class 1 -> 6 − (mean{1,2,−100} + 3·std{1,2,−100})
    w = torch.tensor([1.0, 2.0, -100.0])
    c1k1 = 6 - (w.mean() + 3 * w.std(unbiased=False))
    want = torch.tensor(
        [max(9 - (2 + 3 * std), float(c0k1)), max(2 - (5 + 3 * math.sqrt(2 / 3)), float(c1k1))], dtype=torch.float32
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # float32 scoring


def test_channel_scores_empty_strong_set_is_ignored():
    probs = torch.tensor([[0.5, 0.5], [0.95, 0.05], [0.05, 0.5]])  # class 1 has no strong sample
    acts = torch.tensor([[1.0], [7.0], [2.0]])
    got = none.channel_scores(acts, probs, 0.9, 0.1, 3.0)
    assert got.item() == pytest.approx(7.0 - 2.0)  # only class 0: weak set {2.0}, std 0


def test_detection_statistic_sums_each_layers_top_channels():
    acts = {
        "a": torch.tensor([[1.0, 10.0, 100.0], [2.0, 20.0, 200.0]]),
        "b": torch.tensor([[1000.0, 3.0], [4000.0, 5.0]]),
    }
    scores = {"a": torch.tensor([0.5, 2.0, 1.0]), "b": torch.tensor([1.0, -1.0])}
    # top 1: a's channel 1, b's channel 0
    assert none.detection_statistic(acts, scores, 1).tolist() == [1010.0, 4020.0]
    # top 2: a's channels 1 and 2; b has only two channels, both count
    assert none.detection_statistic(acts, scores, 2).tolist() == [1113.0, 4225.0]
    assert none.detection_statistic(acts, scores, 5).tolist() == [1114.0, 4227.0]


def _sse(v: torch.Tensor, high: torch.Tensor) -> float:
    return sum(float(((g - g.mean()) ** 2).sum()) for g in (v[high], v[~high]) if len(g))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_two_means_split_is_the_brute_force_optimum(seed, ties):
    gen = torch.Generator().manual_seed(seed)
    v = torch.cat([torch.randn(40, generator=gen), 3 + torch.randn(15, generator=gen)])
    if ties:
        v = v.round()  # many equal values
    threshold, high = none.two_means_split(v)
    assert torch.equal(high, v > threshold)
    cands = [v > t for t in v.unique()[:-1]]
    best = min(_sse(v, m) for m in cands)
    assert _sse(v, high) == pytest.approx(best, rel=1e-12, abs=1e-12)
    if not ties:  # continuous data: the optimum is unique
        assert torch.equal(high, min(cands, key=lambda m: _sse(v, m)))


def test_two_means_split_constant_flags_nothing():
    _, high = none.two_means_split(torch.full((7,), 2.5))
    assert not high.any()


def _params_of(model):
    return {k: v.clone() for k, v in itertools.chain(model.named_parameters(), model.named_buffers())}


def _assert_reset(model, selection, zeroed):
    """``zeroed``: parameter name -> boolean mask of entries that must become zero; all else unchanged."""
    before = _params_of(model)
    for name, mask in zeroed.items():  # make sure the zeros come from the reset
        assert (before[name][mask] != 0).all(), name
    none.reset_channels(model, selection)
    after = _params_of(model)
    for name, old in before.items():
        mask = zeroed.get(name, torch.zeros_like(old, dtype=torch.bool))
        assert (after[name][mask] == 0).all(), name
        assert torch.equal(after[name][~mask], old[~mask]), name


def _randomise_bn(model):
    # Default BN γ=1, β=0 would make "β was zeroed" untestable.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)


def test_reset_smallcnn_zeroes_exactly_the_channel_and_its_readers():
    m = SmallCNN(1, 10, width=4)  # channels 4, 8, 16; fc reads 16·3·3
    _randomise_bn(m)
    sel = {"stage2.0": torch.tensor([1, 6]), "stage3.0": torch.tensor([5])}
    z = {}
    mask = torch.zeros(8, 4, 3, 3, dtype=torch.bool)
    mask[[1, 6]] = True
    z["stage2.0.weight"] = mask
    for p in ("weight", "bias"):
        z[f"stage2.1.{p}"] = torch.tensor([i in (1, 6) for i in range(8)])
        z[f"stage3.1.{p}"] = torch.tensor([i == 5 for i in range(16)])
    mask = torch.zeros(16, 8, 3, 3, dtype=torch.bool)
    mask[:, [1, 6]] = True
    mask[5] = True
    z["stage3.0.weight"] = mask
    mask = torch.zeros(10, 144, dtype=torch.bool)
    mask[:, 45:54] = True
    z["fc.weight"] = mask
    _assert_reset(m, sel, z)


class TinyResNet(torch.nn.Module):
    """Two stages of two bdlib BasicBlocks (4 and 8 channels; the second stage downsamples with a
    projection shortcut), global pooling and an fc: the shape of ResNet-18 at a tiny size."""

    def __init__(self, preact: bool):
        super().__init__()
        self.preact = preact
        self.conv1 = torch.nn.Conv2d(1, 4, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.Identity() if preact else torch.nn.BatchNorm2d(4)
        self.layer1 = torch.nn.Sequential(BasicBlock(4, 4, 1, preact), BasicBlock(4, 4, 1, preact))
        self.layer2 = torch.nn.Sequential(BasicBlock(4, 8, 2, preact), BasicBlock(8, 8, 1, preact))
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv1(x)
        x = x if self.preact else torch.nn.functional.relu(self.bn1(x))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _rows(n_out, n_in, k, idx):
    m = torch.zeros(n_out, n_in, k, k, dtype=torch.bool)
    m[idx] = True
    return m


def _cols(n_out, n_in, k, idx):
    m = torch.zeros(n_out, n_in, k, k, dtype=torch.bool)
    m[:, idx] = True
    return m


@pytest.mark.parametrize("preact", [False, True])
def test_reset_tiny_resnet_zeroes_the_readers_as_nones_code(preact):
    # NONE's none/reset_neurons.py (ResNet-18): a block's conv1 channel -> its filter, bn1 and the
    # block's conv2 input; a block's conv2 channel -> its filter, bn2 and the NEXT block's conv1
    # input (not the next block's downsample input), the fc column after the last block; a
    # downsample channel -> its filter and BN only.
    m = TinyResNet(preact)
    _randomise_bn(m)
    sel = {
        "layer1.1.conv2": torch.tensor([1]),  # joins a sum; read past it by layer2.0.conv1
        "layer2.0.conv1": torch.tensor([0]),  # mid-block: read by layer2.0.conv2
        "layer2.0.conv2": torch.tensor([2, 6]),  # joins a sum; read past it by layer2.1.conv1
        "layer2.0.shortcut.0": torch.tensor([3]),  # the projection: its filter (and BN) only
        "layer2.1.conv2": torch.tensor([5]),  # the last block: read past the sum by the fc
    }
    ch = lambda n, idx: torch.tensor([i in idx for i in range(n)])  # noqa: E731
    z = {
        "layer1.1.conv2.weight": _rows(4, 4, 3, [1]),
        "layer2.0.conv1.weight": _rows(8, 4, 3, [0]) | _cols(8, 4, 3, [1]),
        "layer2.0.conv2.weight": _rows(8, 8, 3, [2, 6]) | _cols(8, 8, 3, [0]),
        "layer2.0.shortcut.0.weight": _rows(8, 4, 1, [3]),
        "layer2.1.conv1.weight": _cols(8, 8, 3, [2, 6]),
        "layer2.1.conv2.weight": _rows(8, 8, 3, [5]),
    }
    fc = torch.zeros(3, 8, dtype=torch.bool)
    fc[:, 5] = True
    z["fc.weight"] = fc
    mid_bn = "bn2" if preact else "bn1"  # the BN between a block's conv1 and conv2
    for p in ("weight", "bias"):
        z[f"layer2.0.{mid_bn}.{p}"] = ch(8, [0])
        if not preact:  # a plain block's conv2 and projection have their own BN before the sum
            z[f"layer1.1.bn2.{p}"] = ch(4, [1])
            z[f"layer2.0.bn2.{p}"] = ch(8, [2, 6])
            z[f"layer2.0.shortcut.1.{p}"] = ch(8, [3])
            z[f"layer2.1.bn2.{p}"] = ch(8, [5])
    _assert_reset(m, sel, z)


def test_reset_resnet18_readers_are_the_official_table():
    # Each monitored conv of ResNet-18 and the convs / fc whose input weights NONE's
    # reset_neurons.py zeroes for it (a block's conv1 -> its conv2; a block's conv2 -> the next
    # block's conv1, or fc; a downsample -> none).
    want = {}
    blocks = [f"layer{i}.{j}" for i in (2, 3, 4) for j in (0, 1)]
    for k, b in enumerate(blocks):
        want[f"{b}.conv1"] = ((f"{b}.conv2",), None)
        want[f"{b}.conv2"] = ((f"{blocks[k + 1]}.conv1",), None) if k + 1 < len(blocks) else ((), "fc")
        if b.endswith(".0"):
            want[f"{b}.shortcut.0"] = ((), None)
    m = ResNet18(1, 10)
    got = none.consumers(m)
    assert {n: (got[n].convs, got[n].linear) for n in none.monitored_convs(m)} == want


def test_monitored_convs():
    assert none.monitored_convs(SmallCNN(1, 10, width=4)) == ["stage2.0", "stage3.0"]
    names = none.monitored_convs(ResNet18(1, 10))
    assert len(names) == 15 and "layer2.0.shortcut.0" in names
    assert all(n.split(".")[0] in ("layer2", "layer3", "layer4") for n in names)


@pytest.mark.parametrize(
    "field,value",
    [
        ("rho", 0.0),
        ("rho", 1.5),
        ("rounds", 0),
        ("none_lr", 0.0),
        ("epochs2", -1),
        ("strong", 1.0),
        ("weak", 0.95),
        ("std_k", -1.0),
        ("detect_top", 0),
    ],
)
def test_params_validation_names_the_bad_value(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(none.Params(), **{field: value}).validate()
    none.Params().validate()


def _tiny_run(rounds: int = 1, params: none.Params | None = None):
    cfg = profile("smoke")
    gen = torch.Generator().manual_seed(0)
    n = 240
    y = torch.arange(n) % 10
    # Class-coloured images plus a white corner patch on the first 24, relabelled 0.
    x = (y[:, None, None, None] * 20 + torch.randint(0, 40, (n, 1, 12, 12), generator=gen)).to(torch.uint8)
    x[:24, :, -3:, -3:] = 255
    y = y.clone()
    y[:24] = 0
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=4)
    ctx = DefenseContext(
        params=params or none.Params(epochs2=1, none_lr=0.01, rounds=rounds),
        train=cfg.train,
        x_train=x,
        y_train=y,
        x_clean=x[:0],
        y_clean=y[:0],
        num_classes=10,
        seed=0,
        new_model=lambda s: SmallCNN(1, 10, width=4),
        evaluate=functools.partial(evaluate, x=x[24:], y=y[24:], target=0, trigger=None),
    )
    return model, none.run(model, ctx)


def test_run_end_to_end_on_a_tiny_model():
    n = 240
    model, out = _tiny_run(1)
    rec = out.record
    assert rec.flagged.shape == (n,) and rec.flagged.dtype == torch.bool
    assert 0 < int(rec.flagged.sum()) < n
    assert list(rec.scores) == list(rec.selected) == rec.monitored == ["stage2.0", "stage3.0"]
    assert rec.scores["stage2.0"].shape == (8,) and rec.selected["stage3.0"].shape == (1,)
    assert [h["round"] for h in rec.rounds] == [1] and "BA" in rec.rounds[0]
    assert rec.rounds[0]["flagged"] == int(rec.flagged.sum())
    # With BN γ = β = 0 a reset filter gets no gradient: it is still zero after fine-tuning.
    for name, conv in (("stage2.0", model.stage2[0]), ("stage3.0", model.stage3[0])):
        assert (conv.weight[rec.selected[name]] == 0).all()


def test_flagged_samples_accumulate_over_rounds(monkeypatch):
    seen = []  # the training-set sizes each round's fine-tuning gets
    fit = none.fit
    monkeypatch.setattr(none, "fit", lambda model, x, y, *a, **k: seen.append(len(x)) or fit(model, x, y, *a, **k))
    _, out = _tiny_run(2)
    first, second = out.record.rounds
    assert second["flagged"] >= first["flagged"] == first["flagged_this_round"] > 0
    assert second["flagged"] >= second["flagged_this_round"]
    assert int(out.record.flagged.sum()) == second["flagged"]
    assert seen == [240 - first["flagged"], 240 - second["flagged"]]


def test_downsample_convs_can_be_read_after_their_batchnorm_as_nones_code():
    from bdlib.defenses.none import activations, monitored_convs, read_points
    from bdlib.models import ResNet18

    torch.manual_seed(0)
    model = ResNet18().eval()
    with torch.no_grad():  # a fresh BN is the identity in eval mode: give it statistics
        for i in (2, 3, 4):
            bn = getattr(model, f"layer{i}")[0].shortcut[1]
            bn.running_var.fill_(4.0), bn.bias.fill_(0.5)
    layers = monitored_convs(model)
    assert len(layers) == 15
    plain, after = read_points(model, layers, False), read_points(model, layers, True)
    assert plain == {n: n for n in layers}
    moved = {n: m for n, m in after.items() if m != n}
    assert moved == {f"layer{i}.0.shortcut.0": f"layer{i}.0.shortcut.1" for i in (2, 3, 4)}
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    raw, _ = activations(model, x, layers, 4)
    bn, _ = activations(model, x, layers, 4, after)
    name = "layer3.0.shortcut.0"
    with torch.no_grad():
        out = {}
        h = model.layer3[0].shortcut[1].register_forward_hook(lambda m, i, o: out.setdefault("bn", o))
        model(x.float() / 255)
        h.remove()
    assert torch.allclose(bn[name], out["bn"].amax((2, 3)), atol=1e-5)
    assert not torch.allclose(raw[name], bn[name])
    assert torch.equal(raw["layer3.0.conv1"], bn["layer3.0.conv1"])


def test_params_defaults_are_the_published_recipe():
    # NONE's README command and run_none.py / compromised_detection.py defaults.
    p = none.Params()
    assert (p.rho, p.none_lr, p.epochs2, p.rounds, p.detect_top) == (0.03, 1e-4, 20, 1, 1)
    assert (p.strong, p.weak, p.std_k, p.schedule, p.downsample_after_bn) == (0.9, 0.1, 3.0, "constant", True)
    # The protocol's grid spans ρ and the lr, and holds the published point.
    assert set(none.TUNING) == {"rho", "none_lr"}
    assert p.rho in none.TUNING["rho"] and p.none_lr in none.TUNING["none_lr"]


def test_none_as_published_is_a_labelled_untuned_variant():
    from bdlib.defenses import REGISTRY

    pub = REGISTRY["none_published"]
    assert pub.run is none.run and pub.variant_of == "none" and not pub.tuning
    assert REGISTRY["none"].tuning == none.TUNING and REGISTRY["none"].variant_of is None
    # On quick and paper, NONE as published runs the Params defaults unchanged.
    for name in ("quick", "paper"):
        assert profile(name).defenses["none_published"] == none.Params()


def test_fine_tuning_lr_is_constant_as_nones_code(monkeypatch):
    # run_none.py sets every group's lr to none_lr and decays it only every 80 epochs: within the
    # 20 fine-tuning epochs each step runs at none_lr.
    lrs = []
    step = torch.optim.SGD.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    _, out = _tiny_run(1, params=none.Params(epochs2=3))
    kept = 240 - out.record.rounds[0]["flagged"]
    assert len(lrs) == 3 * math.ceil(kept / profile("smoke").train.batch_size)
    assert set(lrs) == {1e-4}
