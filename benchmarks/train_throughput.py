"""bdlib's training loop against the conventional pipeline, same model / data / batch / augmentations.

Conventional: a torchvision-style ``Dataset`` that stamps the BadNets trigger per sample on
poisoned indices, converts through PIL, applies ``RandomCrop(padding)`` + ``RandomHorizontalFlip``
+ ``ToTensor``, and a ``DataLoader`` with workers (pinned memory on CUDA). bdlib: uint8 tensors
on the device, the poisoned set stamped once batch-wise, crop and flip as batch tensor ops
(``bdlib.train.fit``). Both run the same model in the same layout (channels_last) and precision
(``bdlib.train.autocast``: bf16 on recent GPUs), so the ratio is the data pipeline's. With
``--compile``, bdlib's loop also runs once more with ``torch.compile``.

Every pipeline trains ``--epochs`` epochs (default 2) and reports the images/s of its last
epoch (steady state: DataLoader workers started, cuDNN and compiled kernels chosen) and of its
first (what a short run pays).

    python benchmarks/train_throughput.py [--model smallcnn|resnet18] [--device auto|cpu|cuda]
        [--n 12000] [--workers 2] [--batch 128] [--epochs 2] [--compile] [--json out.json]

``smallcnn`` trains on Fashion-MNIST (profile quick's data); ``resnet18`` on generated 3×32×32
images in CIFAR-10's shape (random pixels and labels: throughput does not depend on content).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from bdlib import models
from bdlib.attacks import badnets
from bdlib.attacks.base import TriggerContext
from bdlib.config import TrainConfig
from bdlib.train import autocast, configure, fit, select_device


class PoisonedPIL(Dataset):
    """The field's usual poisoned dataset: per-sample stamping and PIL transforms in __getitem__."""

    def __init__(self, x, y, poison, trigger, target, pad):
        self.x, self.y, self.poison = x.numpy(), y.numpy(), set(poison.tolist())
        self.mask = trigger["mask"].numpy().transpose(1, 2, 0)  # H×W×1
        self.pattern = trigger["pattern"].numpy().transpose(1, 2, 0) * 255.0  # H×W×C
        self.target = target
        self.gray = x.shape[1] == 1
        self.tf = transforms.Compose(
            [transforms.RandomCrop(x.shape[-1], padding=pad), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img, label = self.x[i].transpose(1, 2, 0).astype(np.float32), int(self.y[i])
        if i in self.poison:
            img = (1 - self.mask) * img + self.mask * self.pattern
            label = self.target
        img = np.round(img).astype(np.uint8)
        pil = Image.fromarray(img[..., 0], mode="L") if self.gray else Image.fromarray(img, mode="RGB")
        return self.tf(pil), label


def load_data(model: str, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if model == "smallcnn":
        from bdlib import data

        ds = data.load("fmnist")
        idx = data.subset(ds.x_train, ds.y_train, n, 0)
        return ds.x_train[idx], ds.y_train[idx], "fmnist"
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        "cifar10",
    )


def new_model(name: str, channels: int, dataset: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(name, channels, 10, dataset).to(device).to(memory_format=torch.channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def conventional(loader: DataLoader, model: torch.nn.Module, device: torch.device, epochs: int) -> list[float]:
    """Seconds per epoch of the DataLoader pipeline."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    times = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yb = yb.to(device, non_blocking=True)
            with autocast(device):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bdlib_loop(model, x, y, p_idx, trig, train: TrainConfig, device: torch.device) -> list[float]:
    """Seconds per epoch of bdlib's loop; the batch-wise stamping of the poisoned set is counted
    in the first epoch, as it is part of the pipeline."""
    _sync(device)
    start = time.perf_counter()
    x, y = x.to(device), y.to(device)
    xp, yp = x.clone(), y.clone()
    xp[p_idx] = badnets.apply(x[p_idx], trig, badnets.Params(), False)
    yp[p_idx] = 0
    stamps = [start]

    def tick(epoch, m):
        _sync(device)
        stamps.append(time.perf_counter())
        return {}

    fit(model, xp, yp, train, seed=0, on_epoch=tick)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smallcnn", choices=("smallcnn", "resnet18"))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time bdlib's loop under torch.compile")
    ap.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="deterministic kernels (default off here: cudnn.benchmark, as a GPU run would choose)",
    )
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    device = select_device(args.device)
    configure(deterministic=args.deterministic)
    x, y, dataset = load_data(args.model, args.n)
    c, size = x.shape[1], x.shape[-1]
    pad = 2 if args.model == "smallcnn" else 4
    trig = badnets.make_trigger(
        TriggerContext(
            params=badnets.Params(), target=0, seed=0, shape=(c, size, size), num_classes=10, x_train=x, y_train=y
        )
    )
    nonzero = torch.nonzero(y != 0).flatten()
    p_idx = nonzero[torch.randperm(len(nonzero), generator=torch.Generator().manual_seed(0))[: len(y) // 10]]
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=0.05, crop_pad=pad, flip=True)

    ds = PoisonedPIL(x, y, p_idx, trig, 0, pad)
    loader = DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    results = {
        "device": device.type,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "model": args.model,
        "n": len(y),
        "batch": args.batch,
        "epochs": args.epochs,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cudnn_benchmark": not args.deterministic,
    }
    runs = {
        "conventional": conventional(loader, new_model(args.model, c, dataset, device), device, args.epochs),
        "bdlib": bdlib_loop(new_model(args.model, c, dataset, device), x, y, p_idx, trig, train, device),
    }
    if args.compile:
        configure(deterministic=args.deterministic, compile=True)
        runs["bdlib + torch.compile"] = bdlib_loop(
            new_model(args.model, c, dataset, device), x, y, p_idx, trig, train, device
        )
        configure(deterministic=args.deterministic, compile=False)
    print(
        f"device {device.type}{' (' + results['gpu'] + ')' if results['gpu'] else ''}, model {args.model}, "
        f"{torch.get_num_threads()} threads, {len(y)} images, batch {args.batch}, "
        f"DataLoader workers {args.workers}, {args.epochs} epochs, torch {torch.__version__}"
    )
    for name, times in runs.items():
        results[name] = {"first_epoch_images_per_s": len(y) / times[0], "last_epoch_images_per_s": len(y) / times[-1]}
        print(f"{name:24s} {len(y) / times[-1]:9.0f} images/s (last epoch), {len(y) / times[0]:9.0f} (first)")
    base = results["conventional"]["last_epoch_images_per_s"]
    for name in runs:
        if name != "conventional":
            ratio = results[name]["last_epoch_images_per_s"] / base
            results[name]["ratio_to_conventional"] = ratio
            print(f"ratio {name} / conventional: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
