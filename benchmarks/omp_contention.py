"""SmallCNN training throughput under OpenMP settings, on an idle machine and beside a busy process.

For each candidate setting (torch threads × OMP_WAIT_POLICY) it measures, back to back, the
images/s of bdlib's training loop alone and then while a competitor trains the same model in
another process with OpenMP's defaults (what another user's job on a shared machine does).
Each measurement runs in a fresh process, because OpenMP reads its wait policy once, at start.

    python benchmarks/omp_contention.py [--images 8000] [--epochs 2] [--repeats 2] [--only TEXT]

Prints one row per setting: idle and contended images/s and contended / idle. Run it on an
otherwise quiet machine: a third process makes both columns meaningless.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (torch threads, OpenMP environment); {} keeps the runtime's default (libgomp: spin
# GOMP_SPINCOUNT = 300,000 times, then sleep). PASSIVE never spins; a smaller spin count is between.
SETTINGS = [
    (2, {}),
    (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    (2, {"GOMP_SPINCOUNT": "10000"}),
    (2, {"GOMP_SPINCOUNT": "1000"}),
    (1, {}),
    (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
]
OMP_KEYS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def child(images: int, epochs: int, threads: int) -> None:
    """Train a SmallCNN on random Fashion-MNIST-sized data; print images/s of the timed epochs."""
    import torch

    from bdlib.config import TrainConfig
    from bdlib.models import SmallCNN
    from bdlib.train import fit

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    model = SmallCNN().to(memory_format=torch.channels_last)
    train = TrainConfig(epochs=1, crop_pad=0)
    fit(model, x[:1024], y[:1024], train, seed=0)  # warm-up: allocator, kernels, thread pool
    start = time.perf_counter()
    fit(model, x, y, train, seed=0, epochs=epochs)
    print(f"{images * epochs / (time.perf_counter() - start):.1f}", flush=True)


def _env(threads: int, omp: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    env["OMP_NUM_THREADS"] = str(threads)
    env.update(omp)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def measure(args: argparse.Namespace, threads: int, omp: dict[str, str]) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--images",
        str(args.images),
        "--epochs",
        str(args.epochs),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, env=_env(threads, omp), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def competitor(args: argparse.Namespace) -> subprocess.Popen:
    """A process that trains with OpenMP's defaults (2 threads) until it is killed."""
    cmd = [sys.executable, __file__, "--child", "--images", str(args.images), "--epochs", "1000", "--threads", "2"]
    return subprocess.Popen(cmd, env=_env(2, {}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="idle / contended pairs per setting (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only", help="run only the settings whose environment contains this text (e.g. GOMP_SPINCOUNT)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.images, args.epochs, args.threads)
        return
    print(f"{os.cpu_count()} CPUs; {args.images} images x {args.epochs} epochs per measurement; best of {args.repeats}")
    print(f"{'threads':>7} {'OpenMP env':>22} {'idle img/s':>11} {'contended img/s':>16} {'contended/idle':>15}")
    for threads, omp in SETTINGS:
        label = " ".join(f"{k}={v}" for k, v in omp.items()) or "default"
        if args.only is not None and args.only not in label:
            continue
        idle, busy = [], []
        for _ in range(args.repeats):
            idle.append(measure(args, threads, omp))
            other = competitor(args)
            try:
                time.sleep(5)  # the competitor past its start-up, training
                busy.append(measure(args, threads, omp))
            finally:
                other.kill()
                other.wait()
        i, b = max(idle), max(busy)
        print(f"{threads:>7} {label:>22} {i:>11.0f} {b:>16.0f} {b / i:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
