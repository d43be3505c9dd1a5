"""ANP's mask optimisation: the masks as BN affine parameters against a rewrite of the BN output (issue #29).

bdlib's ``anp.Masking`` runs the model with each BatchNorm's weight and bias replaced for the call
(``torch.func.functional_call``): one BN kernel per layer. The form it replaced rewrote each BN's
output in a forward hook, (y − β)·(m + δ) + β·(1 + ξ): three more elementwise passes over every
BN activation, forward and backward. Both are the same function (tests/test_baselines_reference.py);
this times ``steps`` mask steps of each on profile quick's model and batch, alternating, one
thread (the one-thread rule of every stored result), and prints the ratio.

    python benchmarks/anp_masks.py [--steps 100] [--repeats 3]

Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from bdlib import models
from bdlib.defenses import anp


class HookMasking(anp.Masking):
    """The replaced form: forward hooks rewrite each BN's output (ANP's NoisyBatchNorm2d, written as
    a rewrite of y = γ·x̂ + β)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        for i, bn in enumerate(self.bns):
            bn.register_forward_hook(self._rewrite(i))

    def _rewrite(self, i: int):
        def hook(bn, inputs, y):
            shape = (1, -1) + (1,) * (y.dim() - 2)
            m, b = self.masks[i].view(shape), bn.bias.view(shape)
            if not self.perturb:
                return (y - b) * m + b
            return (y - b) * (m + self.d_weight[i].view(shape)) + b * (1 + self.d_bias[i].view(shape))

        return hook

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def seconds(form: type, steps: int, x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(0)
    model = models.build("smallcnn", 1, 10, "fmnist").to(memory_format=torch.channels_last).train()
    masking = form(model)
    opt = torch.optim.SGD(masking.masks, lr=0.2, momentum=0.9)
    p, gen = anp.Params(), torch.Generator().manual_seed(0)
    anp.anp_step(masking, opt, x[:128], y[:128], p, gen)  # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        j = (i * 128) % (len(x) - 128)
        anp.anp_step(masking, opt, x[j : j + 128], y[j : j + 128], p, gen)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(400, 1, 28, 28, generator=gen), torch.randint(0, 10, (400,), generator=gen)
    fused, hooked = [], []
    for _ in range(args.repeats):
        fused.append(seconds(anp.Masking, args.steps, x, y))
        hooked.append(seconds(HookMasking, args.steps, x, y))
    f, h = min(fused), min(hooked)
    print(
        f"torch {torch.__version__}, 1 thread, {args.steps} ANP steps of 128 images (quick's SmallCNN), best of {args.repeats}"
    )
    print(f"affine parameters (bdlib): {f:.2f} s; output rewrite (hooks): {h:.2f} s; ratio {f / h:.2f}")


if __name__ == "__main__":
    main()
