"""An estimate of the GPU cost of the `paper` grid, from counted work and a measured rate.

The estimate rests on two things:
1. work counted from the `paper` profile's own settings: how many images each step of the
   grid pushes through ResNet-18 forward only (evaluation, frozen models) or forward and
   backward (training, trigger and mask optimisation), per cell;
2. FLOPs per image of CIFAR ResNet-18, counted here with torch's FlopCounterMode, divided by
   a sustained throughput: ``--rate`` images/s of standard training as measured on a GPU
   (default 6,500: an NVIDIA H100 80GB HBM3 training ResNet-18 in notebook 01 on `paper`,
   batch 128, bf16, deterministic kernels, evaluation included; benchmarks/README.md), i.e.
   rate × the forward+backward FLOPs of one image; or an assumed ``--tflops``.
Data loading is not a cost here (bdlib keeps the data on the device), kernel-launch overhead
is ignored, so read the result as a lower bound within a factor of ~2.

    PYTHONPATH=. python benchmarks/gpu_estimate.py [--rate 6500 | --tflops 100] [--budget-seeds 1]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bdlib.models import build
from bdlib.profiles import profile

N_TRAIN, N_TEST, TARGET_SHARE = 50_000, 10_000, 0.1  # CIFAR-10


def flops_per_image() -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one 32×32 image through CIFAR ResNet-18."""
    model = build("resnet18", 3, 10, "cifar10")
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as both:
        F.cross_entropy(model(x), y).backward()
    return fwd.get_total_flops() / 8, both.get_total_flops() / 8


def work(clean_fraction: float) -> dict[str, tuple[float, float]]:
    """Images per cell, as (forward-only, forward+backward), for each piece of the grid."""
    cfg = profile("paper")
    e, d = cfg.train.epochs, cfg.defenses
    n_clean = clean_fraction * N_TRAIN
    evaluation = N_TEST + (1 - TARGET_SHARE) * N_TEST  # clean test set + triggered non-target images
    narc = cfg.attacks["narcissus"]
    trojan = cfg.attacks["trojan"]
    nt, ml = d["ntml"], d["ntml"]
    nt_epochs = nt.nt_epochs or e
    nt_models = 2 if nt.teacher == "kd" else 1
    mcl, nad, anp, ibau, ft, none = d["mcldef"], d["nad"], d["anp"], d["ibau"], d["ft"], d["none"]
    return {
        # per (attack, seed): the victim, plus its clean twin (Trojan's patch, Narcissus' control)
        "poisoned model": (evaluation, e * N_TRAIN),
        "clean model": (evaluation, e * N_TRAIN / 6),  # one per seed, shared by the six attacks
        "Trojan patch": (0, trojan.steps * trojan.n_background / 6),
        "Narcissus trigger": (
            0,
            (
                (narc.surrogate_epochs or e) * (narc.pood_size + TARGET_SHARE * N_TRAIN)
                + narc.synth_epochs * TARGET_SHARE * N_TRAIN
            )
            / 6,
        ),
        "NT-ML": (
            nt_epochs * N_TRAIN + 4 * evaluation + 2 * ml.ml_epochs * evaluation,
            nt_models * nt_epochs * N_TRAIN + 2 * ml.ml_epochs * n_clean,
        ),
        "NONE": (none.rounds * (N_TRAIN + evaluation), none.rounds * none.epochs2 * N_TRAIN),
        "MCLDef": (
            2 * mcl.epochs * n_clean + (mcl.epochs + 1) * evaluation,
            mcl.inv_steps * mcl.inv_batch_size * 10 + mcl.epochs * n_clean * (1 + (mcl.ce_weight > 0)),
        ),
        "FT": (evaluation, ft.epochs * n_clean),
        "NAD": (nad.epochs * n_clean + 2 * evaluation, (nad.teacher_epochs + nad.epochs) * n_clean),
        "ANP": (anp.steps * anp.batch_size + evaluation, anp.steps * anp.batch_size * (1 + anp.ascent_steps)),
        "I-BAU": (ibau.rounds * evaluation, ibau.rounds * ibau.batch_size * (ibau.inner_steps + ibau.fp_iters + 2)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rate",
        type=float,
        default=6500.0,
        help="measured images/s of standard ResNet-18 training (H100, notebook 01 on paper: 6,500)",
    )
    ap.add_argument("--tflops", type=float, default=None, help="an assumed sustained TFLOP/s instead of --rate")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attacks", type=int, default=6)
    ap.add_argument("--budget-seeds", type=int, default=1, help="seeds of the clean-budget sweep")
    args = ap.parse_args()
    f_fwd, f_train = flops_per_image()
    source = f"assumed {args.tflops:g} TFLOP/s" if args.tflops else f"measured {args.rate:,.0f} training images/s"
    rate = args.tflops * 1e12 if args.tflops else args.rate * f_train
    tflops = rate / 1e12
    cells = args.attacks * args.seeds
    print(
        f"ResNet-18 (CIFAR): {f_fwd / 1e9:.2f} GFLOP forward, {f_train / 1e9:.2f} GFLOP forward+backward "
        f"per image; {tflops:.1f} TFLOP/s sustained ({source})"
    )
    print(
        "per cell = per attack x seed; the clean model and the triggers, made once per seed, are "
        "spread over the six attacks"
    )
    print(f"{'piece':20s} {'per cell':>10s} {'cells':>6s} {'GPU-hours':>10s}")
    total = 0.0
    main_work = work(profile("paper").clean_fraction)
    for name, (fwd, train) in main_work.items():
        seconds = (fwd * f_fwd + train * f_train) / rate
        total += seconds * cells
        print(f"{name:20s} {seconds:9.0f}s {cells:6d} {seconds * cells / 3600:10.2f}")
    # The clean-budget sweep re-runs the clean-data defenses (NT-ML's ML stage only: its NT
    # stage is cached) at three more budgets, on every attack.
    sweep = 0.0
    for budget in (0.005, 0.01, 0.02):
        w = work(budget)
        for name in ("MCLDef", "FT", "NAD", "ANP", "I-BAU"):
            fwd, train = w[name]
            sweep += (fwd * f_fwd + train * f_train) / rate
        ml = profile("paper").defenses["ntml"]
        sweep += 2 * ml.ml_epochs * budget * N_TRAIN * f_train / rate
    sweep *= args.attacks * args.budget_seeds
    total += sweep
    print(f"{'clean-budget sweep':20s} {'':>10s} {args.attacks * args.budget_seeds * 3:6d} {sweep / 3600:10.2f}")
    print(f"total: {total / 3600:.1f} GPU-hours at {tflops:.1f} TFLOP/s ({source})")


if __name__ == "__main__":
    main()
