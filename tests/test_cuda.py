"""What only a GPU can show: no host synchronisation per step, draws on the device, bf16 where
native. Skipped where torch sees no CUDA device (CI); run on a lent GPU (benchmarks/README.md)."""

import copy
import warnings

import pytest
import torch

from bdlib import models
from bdlib.config import TrainConfig
from bdlib.defenses import anp, ibau, mcldef
from bdlib.train import amp_dtype, augment, configure, fit, generator, logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


class _Syncs:
    """Count the host synchronisations CUDA reports (torch.cuda.set_sync_debug_mode('warn'))."""

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def count(self) -> int:
        # Not the one-off "debug mode is a prototype ... synchronizing operations" notice.
        return sum("called a synchronizing CUDA operation" in str(w.message) for w in self.records)


def _data(n=256, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def _resnet():
    torch.manual_seed(0)
    return models.build("resnet18", 3, 10, "cifar10").to(CUDA).to(memory_format=torch.channels_last)


def test_amp_dtype_is_bf16_only_where_native():
    major, _ = torch.cuda.get_device_capability()
    assert amp_dtype(CUDA) == (torch.bfloat16 if major >= 8 else None)


def test_augment_on_the_device_needs_no_host_copy():
    x = torch.rand(64, 3, 32, 32, device=CUDA)
    gen = generator(CUDA, 0)
    with _Syncs() as s:
        out = augment(x, 4, True, gen)
    assert out.device.type == "cuda" and out.shape == x.shape and s.count == 0
    assert torch.equal(out, augment(x, 4, True, generator(CUDA, 0)))


def test_fit_syncs_once_per_epoch_and_is_deterministic_on_cuda():
    x, y = _data()
    x, y = x.to(CUDA), y.to(CUDA)
    configure(deterministic=True)
    weights = []
    for _ in range(2):
        m = _resnet()
        with _Syncs() as s:
            hist = fit(m, x, y, TrainConfig(epochs=2, batch_size=32, crop_pad=4), seed=1)  # 8 steps an epoch
        assert s.count <= 2, f"{s.count} host syncs in 16 steps"
        weights.append(m.fc.weight.detach().clone())
    assert len(hist) == 2 and torch.equal(weights[0], weights[1])


def test_defense_loops_do_not_sync_per_step():
    x, y = _data(128)
    x, y = x.to(CUDA), y.to(CUDA)
    model = _resnet().eval()
    with _Syncs() as s:
        anp.optimize_masks(model, x, y, anp.Params(steps=8, batch_size=16, augment=True), 4, True, seed=0)
    assert s.count <= 2, f"ANP: {s.count} syncs in 8 steps"
    p = mcldef.Params(inv_steps=8, inv_batch_size=16, inv_patience=100)
    with _Syncs() as s:
        mcldef.invert(model, x, y, torch.arange(10), p, seed=0)  # 8 steps, one pass
    assert s.count <= 2, f"MCLDef inversion: {s.count} syncs in 8 steps"
    m = copy.deepcopy(model)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    delta = torch.zeros(1, 3, 32, 32, device=CUDA)
    xf = x.float() / 255
    with _Syncs() as s:
        losses = [
            ibau.unlearn_step(m, opt, xf[i : i + 16], y[i : i + 16], delta, ibau.Params(fp_iters=2))
            for i in range(0, 64, 16)
        ]
    assert s.count == 0, f"I-BAU: {s.count} syncs in 4 steps"
    assert torch.stack(losses).isfinite().all()


def test_compile_opt_in_trains_and_matches_eval():
    x, y = _data(128)
    m = _resnet()
    configure(deterministic=False, compile=True)
    try:
        hist = fit(m, x.to(CUDA), y.to(CUDA), TrainConfig(epochs=1, batch_size=64, crop_pad=4), seed=0)
    finally:
        configure(deterministic=True, compile=False)
    assert hist[0]["loss"] > 0 and logits(m, x).isfinite().all()
