"""The CPU kernel choices of issue #29, each against its alternative in one run (profile quick's model and data).

* ``torch.compile`` of the SmallCNN for a victim-sized training (8,000 images × 6 epochs, what
  every poisoned model costs on ``quick``): the first run pays the compilation, so the table gives
  the whole training's seconds, not a steady-state rate;
* evaluation batch sizes (``train.eval_batch_size``) on the 2,000 test images, BA and ASR passes;
* channels_last against the default layout, for the same training and evaluation.

    python benchmarks/kernels.py [--threads 2] [--epochs 6] [--json out.json]

Run it on a quiet machine; the threads are torch's intra-op threads of this one process.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bdlib import data, models
from bdlib.config import TrainConfig
from bdlib.train import configure, fit, predict


def _model(channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = models.build("smallcnn", 1, 10, "fmnist")
    return m.to(memory_format=torch.channels_last) if channels_last else m


def train_seconds(x, y, epochs: int, channels_last: bool = True, compile: bool = False) -> float:
    configure(True, compile)
    m = _model(channels_last)
    t0 = time.perf_counter()
    fit(m, x, y, TrainConfig(epochs=epochs, batch_size=128, lr=0.05, crop_pad=0), seed=0)
    seconds = time.perf_counter() - t0
    configure(True, False)
    return seconds


def eval_seconds(x, batch: int, channels_last: bool = True, repeats: int = 5) -> float:
    m = _model(channels_last).eval()
    predict(m, x, batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        predict(m, x, batch)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = data.load("fmnist")
    x, y = ds.x_train[: args.n], ds.y_train[: args.n]
    xt = ds.x_test[:2000]
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"torch {torch.__version__}, {out['threads']} thread(s), {args.n} images x {args.epochs} epochs")

    plain = train_seconds(x, y, args.epochs)
    compiled = train_seconds(x, y, args.epochs, compile=True)
    again = train_seconds(x, y, args.epochs, compile=True)  # compiled code cached in this process
    out["train"] = {"eager": plain, "compile_first": compiled, "compile_second": again}
    print(f"victim training: eager {plain:.1f} s, torch.compile {compiled:.1f} s (first), {again:.1f} s (second)")
    print(f"  compile / eager: {compiled / plain:.2f} (first), {again / plain:.2f} (second)")

    contiguous = train_seconds(x, y, args.epochs, channels_last=False)
    out["train"]["contiguous"] = contiguous
    print(f"  channels_last / contiguous: {plain / contiguous:.2f} ({plain:.1f} vs {contiguous:.1f} s)")

    out["eval"] = {}
    for batch in (128, 256, 512, 1024, 2000):
        out["eval"][batch] = eval_seconds(xt, batch)
    best = min(out["eval"], key=out["eval"].get)
    line = ", ".join(f"{b}: {s * 1000:.0f} ms" for b, s in out["eval"].items())
    print(
        f"evaluation of 2,000 images by batch size: {line} (fastest {best}; 256 / fastest: "
        f"{out['eval'][256] / out['eval'][best]:.2f})"
    )
    cont = eval_seconds(xt, 256, channels_last=False)
    out["eval_contiguous_256"] = cont
    print(f"  channels_last / contiguous at 256: {out['eval'][256] / cont:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
