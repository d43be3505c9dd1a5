import torch

from bdlib import models
from bdlib.config import TrainConfig
from bdlib.train import augment, fit, logits, predict


def test_augment_crop_is_a_shifted_window_and_flip_mirrors():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    gen = torch.Generator().manual_seed(0)
    out = augment(x, crop_pad=2, flip=False, gen=gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output equals some 5×5 window of the padded image
        windows = padded[i, 0].unfold(0, 5, 1).unfold(1, 5, 1).reshape(-1, 5, 5)
        assert any(torch.equal(out[i, 0], w) for w in windows)
    flipped = augment(x, crop_pad=0, flip=True, gen=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def _toy(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    x[y == 1, :, :4] = 255  # class 1: bright top half
    return x, y


def test_fit_learns_a_toy_task_and_is_deterministic():
    x, y = _toy()
    cfg = TrainConfig(epochs=8, batch_size=16, lr=0.05, crop_pad=0, flip=False)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        m = models.SmallCNN(1, 2, width=4, pool=1)
        hist = fit(m, x, y, cfg, seed=3)
        weights.append(m.fc.weight.detach().clone())
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert (predict(m, x) == y).float().mean() > 0.9
    assert torch.equal(weights[0], weights[1])


def test_fit_on_epoch_records_and_bn_eval_freezes_running_stats():
    x, y = _toy(32)
    m = models.SmallCNN(1, 2, width=4, pool=1)
    before = m.stage1[1].running_mean.clone()
    hist = fit(
        m,
        x,
        y,
        TrainConfig(epochs=2, batch_size=16, crop_pad=0),
        seed=0,
        bn_eval=True,
        on_epoch=lambda e, mod: {"seen": e},
    )
    assert [h["seen"] for h in hist] == [1, 2]
    assert torch.equal(m.stage1[1].running_mean, before)


def test_logits_applies_transform_batchwise():
    x, _ = _toy(10)
    m = models.SmallCNN(1, 2, width=4, pool=1)
    a = logits(m, torch.full_like(x, 255), batch_size=3)
    b = logits(m, x, batch_size=4, transform=lambda t: torch.full_like(t, 255))
    assert torch.allclose(a, b)


def test_models_shapes_features_and_conv_hooks():
    for name, c, size in (("smallcnn", 1, 28), ("smallcnn", 3, 32), ("resnet18", 3, 32), ("preact_resnet18", 1, 28)):
        m = models.build(name, c, 10, "cifar10" if c == 3 else "fmnist").eval()
        x = torch.rand(2, c, size, size)
        assert m(x).shape == (2, 10)
        assert m.fc(m.features(x)).allclose(m(x))
        assert len(m.stages) == 3 and len(models.conv_layers(m)) >= 3


def _count_host_reads(monkeypatch) -> list[str]:
    """Record every tensor -> Python value conversion (each a host sync on a GPU)."""
    reads: list[str] = []
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_fit_reads_the_loss_once_per_epoch_not_per_step(monkeypatch):
    x, y = _toy(64)
    m = models.SmallCNN(1, 2, width=4, pool=1)
    reads = _count_host_reads(monkeypatch)
    hist = fit(m, x, y, TrainConfig(epochs=3, batch_size=8, crop_pad=1, flip=True), seed=0)  # 8 steps per epoch
    assert len(hist) == 3 and all(h["loss"] > 0 for h in hist)
    assert reads == ["__float__"] * 3, reads


def test_epoch_loss_is_the_sample_weighted_mean_of_the_step_losses():
    x, y = _toy(20)  # batches of 8, 8, 4
    losses = []

    def loss_fn(model, xb, yb, idx):
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        losses.append((float(loss.detach()), len(idx)))
        return loss

    m = models.SmallCNN(1, 2, width=4, pool=1)
    hist = fit(m, x, y, TrainConfig(epochs=1, batch_size=8, crop_pad=0, flip=False), seed=0, loss_fn=loss_fn)
    assert hist[0]["loss"] == sum(v * n for v, n in losses) / 20


def test_augment_draws_on_the_generators_device_and_fit_is_reproducible_per_seed():
    from bdlib.train import amp_dtype, generator

    x = torch.rand(6, 3, 8, 8)
    a = augment(x, 2, True, generator("cpu", 4))
    b = augment(x, 2, True, torch.Generator().manual_seed(4))  # the CPU generator bdlib always used
    assert torch.equal(a, b)
    assert amp_dtype(torch.device("cpu")) is None
