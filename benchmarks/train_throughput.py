"""bdlib's training loop against the conventional pipeline, same model / data / batch / augmentations.

Conventional: a torchvision-style ``Dataset`` that stamps the BadNets trigger per sample on
poisoned indices, converts through PIL, applies ``RandomCrop(padding)`` + ``RandomHorizontalFlip``
+ ``ToTensor``, and a ``DataLoader`` with workers. bdlib: uint8 tensors on the device, the
poisoned set stamped once batch-wise, crop and flip as batch tensor ops (``bdlib.train.fit``).
Both train the same SmallCNN for one epoch; prints images/second of each and the ratio.

    python benchmarks/train_throughput.py [--n 12000] [--workers 2] [--device auto]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from bdlib import experiment as ex
from bdlib.attacks import badnets
from bdlib.config import TrainConfig
from bdlib.train import fit, select_device


class PoisonedPIL(Dataset):
    """The field's usual poisoned dataset: per-sample stamping and PIL transforms in __getitem__."""

    def __init__(self, x, y, poison, trigger, target):
        self.x, self.y, self.poison = x.numpy(), y.numpy(), set(poison.tolist())
        self.mask = trigger["mask"][0].numpy()
        self.pattern = (trigger["pattern"][0].numpy() * 255.0)
        self.target = target
        self.tf = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor()])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img, label = self.x[i, 0].astype(np.float32), int(self.y[i])
        if i in self.poison:
            img = (1 - self.mask) * img + self.mask * self.pattern
            label = self.target
        return self.tf(Image.fromarray(np.round(img).astype(np.uint8), mode="L")), label


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    cfg = ex.setup("quick", device=args.device, overrides={"n_train": args.n}, progress=False)
    device = select_device(args.device)
    d = ex.run_data(cfg)
    trig = {k: v for k, v in ex.trigger(cfg)[1].items()}
    train = TrainConfig(epochs=1, batch_size=args.batch, lr=0.05, crop_pad=2, flip=True)

    # conventional
    p = ex.poisoned_data(cfg)[1]
    ds = PoisonedPIL(d.x_train, d.y_train, torch.nonzero(p.poison_idx).flatten(), trig, cfg.target)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        persistent_workers=False)
    model = ex.new_model(cfg, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    conventional = len(ds) / (time.perf_counter() - start)

    # bdlib: stamping the poisoned set (batch-wise) is part of the measured time
    model = ex.new_model(cfg, 0)
    start = time.perf_counter()
    p = badnets.ATTACK.poison_dataset(d.x_train, d.y_train, cfg.attack_params, trig, cfg.target, 0)
    fit(model, p.x.to(device), p.y.to(device), train, seed=0)
    fast = len(p.y) / (time.perf_counter() - start)

    print(f"device {device.type}, {torch.get_num_threads()} threads, {args.n} images, batch {args.batch}, "
          f"DataLoader workers {args.workers}")
    print(f"conventional (PIL Dataset + DataLoader): {conventional:8.0f} images/s")
    print(f"bdlib (tensor pipeline):                 {fast:8.0f} images/s")
    print(f"ratio: {fast / conventional:.2f}x")


if __name__ == "__main__":
    main()
