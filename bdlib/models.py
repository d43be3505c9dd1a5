"""Models: a small CNN (smoke / quick) and the CIFAR variants of ResNet-18 and PreAct-ResNet-18.

Every model takes float images in [0, 1] (N×C×H×W) and normalises them itself, so attacks
and defenses all work in pixel space. Every model exposes the same three handles:

* ``model.features(x)`` — the penultimate features after global pooling (MCLDef, t-SNE);
* ``model.fc`` — the final linear layer;
* ``model.stages`` — the feature stages whose outputs NAD's attention maps use.

Raw conv outputs (before BN/ReLU, as NONE needs them) come from forward hooks on the
``nn.Conv2d`` modules listed by :func:`conv_layers`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Per-dataset channel statistics used by the models' own normalisation layer.
STATS = {
    "fmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (width w, 2w, 4w), the first two max-pooled, then 3×3 average pooling.

    Pooling to 3×3 rather than 1×1 keeps the coarse layout Fashion-MNIST classes differ by
    (+3 BA points at the quick budget); the features are still the pooled penultimate layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        stats: tuple = STATS["fmnist"],
        pool: int = 3,
    ):
        super().__init__()
        self.norm = Normalize(*stats)
        self.pool = pool
        w = width
        self.stage1 = nn.Sequential(*_conv_bn(in_channels, w), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(*_conv_bn(w, 2 * w), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(*_conv_bn(2 * w, 4 * w))
        self.fc = nn.Linear(4 * w * pool * pool, num_classes)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.stage1, self.stage2, self.stage3]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.norm(x))))
        return F.adaptive_avg_pool2d(x, self.pool).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, preact: bool = False):
        super().__init__()
        self.preact = preact
        self.bn1 = nn.BatchNorm2d(cin if preact else cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride, bias=False)]
            if not preact:
                layers.append(nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = F.relu(self.bn1(x))
            short = self.shortcut(out) if len(self.shortcut) else x
            out = self.conv1(out)
            out = self.conv2(F.relu(self.bn2(out)))
            return out + short
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs (3×3 stem, no max-pool); ``preact=True`` gives PreAct-ResNet-18."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, preact: bool = False, stats: tuple = STATS["cifar10"]
    ):
        super().__init__()
        self.preact = preact
        self.norm = Normalize(*stats)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        # PreAct blocks normalise their own input, so only the plain ResNet has a stem BN.
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(64)
        widths, cin = (64, 128, 256, 512), 64
        layers = []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride, preact), BasicBlock(w, w, 1, preact)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer2, self.layer3, self.layer4]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.norm(x))
        x = x if self.preact else F.relu(self.bn1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": lambda c, k, stats: SmallCNN(c, k, stats=stats),
    "resnet18": lambda c, k, stats: ResNet18(c, k, preact=False, stats=stats),
    "preact_resnet18": lambda c, k, stats: ResNet18(c, k, preact=True, stats=stats),
}


def build(name: str, in_channels: int, num_classes: int, dataset: str) -> nn.Module:
    """A freshly initialised model; the caller seeds torch beforehand."""
    if name not in MODELS:
        raise ValueError(f"model {name!r} is unknown; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_channels, num_classes, STATS[dataset])


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of the model with its qualified name, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's parameters and buffers, detached, on the CPU, contiguous: what the store saves."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
