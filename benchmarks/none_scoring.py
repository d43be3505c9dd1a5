"""NONE channel scoring: bdlib's vectorised version against a per-channel, per-class loop.

The loop reference does what the public NONE code does (float64 NumPy, one channel and one
class at a time, class index sets computed once); bdlib scores in float32 (see
``channel_scores``). Both see the same random activations and softmax outputs; the script
prints both times, the speed-up, whether the scores agree and whether both pick the same
channels to reset.

    PYTHONPATH=. python benchmarks/none_scoring.py [--n 20000 --channels 512 --classes 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bdlib.defenses.none import Params, channel_scores


def loop_scores(acts: np.ndarray, probs: np.ndarray, p: Params) -> np.ndarray:
    n_classes = probs.shape[1]
    strong = [np.flatnonzero(probs[:, k] > p.strong) for k in range(n_classes)]
    weak = [np.flatnonzero(probs[:, k] < p.weak) for k in range(n_classes)]
    scores = np.full(acts.shape[1], -np.inf)
    for j in range(acts.shape[1]):
        for k in range(n_classes):
            if len(strong[k]) == 0 or len(weak[k]) == 0:
                continue
            w = acts[weak[k], j]
            d = acts[strong[k], j].max() - (w.mean() + p.std_k * w.std())
            scores[j] = max(scores[j], d)
    return scores


def best_of(repeats: int, fn):
    """The fastest of ``repeats`` timed calls (the first one pays for warm-up) and its result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    # Rectified, heavy-tailed activations; logits scaled so both strong and weak sets are populated.
    acts = torch.randn(args.n, args.channels, generator=gen).exp()
    probs = (4 * torch.randn(args.n, args.classes, generator=gen)).softmax(1)
    p = Params()

    acts64, probs64 = acts.double().numpy(), probs.double().numpy()
    t_fast, fast = best_of(args.repeats, lambda: channel_scores(acts, probs, p.strong, p.weak, p.std_k))
    t_loop, ref = best_of(args.repeats, lambda: loop_scores(acts64, probs64, p))

    same = np.allclose(fast.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    top = max(1, int(0.03 * args.channels))  # NONE's rho on ResNet-18: the channels it would reset
    same_top = set(np.argsort(-fast.numpy())[:top]) == set(np.argsort(-ref)[:top])
    print(
        f"samples {args.n}, channels {args.channels}, classes {args.classes}, "
        f"threads {args.threads}, best of {args.repeats}"
    )
    print(f"vectorised: {t_fast * 1e3:9.1f} ms")
    print(f"loop:       {t_loop * 1e3:9.1f} ms")
    print(f"speed-up:   {t_loop / t_fast:9.1f}x")
    print(
        f"allclose:   {same} (max |diff| {np.abs(fast.numpy() - ref).max():.2e}, scores up to {np.abs(ref).max():.1f})"
    )
    print(f"same top {top} channels: {same_top}")


if __name__ == "__main__":
    main()
