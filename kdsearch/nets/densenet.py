"""DenseNet-BC for 32x32 images, named and computed as the 2018 reference's teacher."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import KDSearchError
from kdsearch.nets.registry import register


class Bottleneck(nn.Module):
    """BN -> ReLU -> conv1x1 (4k) -> BN -> ReLU -> conv3x3 (k); output appended to the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        planes = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN -> ReLU -> conv1x1 (compresses channels) -> 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNet(nn.Module):
    """conv3x3 stem (2k channels), three dense blocks joined by transitions, BN -> ReLU -> fc."""

    def __init__(self, depth: int, growth_rate: int, reduction: float, num_classes: int) -> None:
        super().__init__()
        count = (depth - 4) // 6
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        self.dense1, planes = self._dense(planes, growth_rate, count)
        self.trans1, planes = self._transition(planes, reduction)
        self.dense2, planes = self._dense(planes, growth_rate, count)
        self.trans2, planes = self._transition(planes, reduction)
        self.dense3, planes = self._dense(planes, growth_rate, count)
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)

    @staticmethod
    def _dense(planes: int, growth_rate: int, count: int) -> tuple[nn.Sequential, int]:
        layers = [Bottleneck(planes + i * growth_rate, growth_rate) for i in range(count)]
        return nn.Sequential(*layers), planes + count * growth_rate

    @staticmethod
    def _transition(planes: int, reduction: float) -> tuple[Transition, int]:
        out_planes = math.floor(planes * reduction)
        return Transition(planes, out_planes), out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.dense1(self.conv1(x)))
        out = self.dense3(self.trans2(self.dense2(out)))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register("densenet100")
def densenet100(
    num_classes: int = 10, growth_rate: int = 12, depth: int = 100, reduction: float = 0.5
) -> DenseNet:
    """DenseNet-BC-depth-k; the defaults give the reference's DenseNet-BC-100 (k=12) teacher."""
    if depth < 10 or (depth - 4) % 6:
        raise KDSearchError(f"densenet100: depth must be 6n+4 with n >= 1, got {depth}")
    if not 0.0 < reduction <= 1.0:
        raise KDSearchError(f"densenet100: reduction must be in (0, 1], got {reduction}")
    return DenseNet(depth, growth_rate, reduction, num_classes)
