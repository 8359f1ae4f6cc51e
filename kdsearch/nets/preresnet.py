"""Pre-activation ResNet with bottleneck blocks, named and computed as the reference's teacher.

The reference calls it PreResNet-110 because it derives the block count as (110 - 2) / 6 = 18
per stage, as for basic blocks, but then builds 3-conv bottlenecks: 164 weighted layers, 1.7M
parameters (the PreResNet-164 of He et al., 2016). Checkpoints need this exact shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.nets.registry import register

EXPANSION = 4


class PreActBottleneck(nn.Module):
    """BN -> ReLU -> conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 (4x wide).

    The projection shortcut reads the raw input, not the pre-activated one.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.downsample = None
        if stride != 1 or in_planes != planes * EXPANSION:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes * EXPANSION, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


def _stage(in_planes: int, planes: int, count: int, stride: int) -> nn.Sequential:
    """``count`` blocks; only the first changes resolution and width."""
    rest = (PreActBottleneck(planes * EXPANSION, planes, 1) for _ in range(count - 1))
    return nn.Sequential(PreActBottleneck(in_planes, planes, stride), *rest)


class PreResNet(nn.Module):
    """conv3x3 stem, three stages at 16, 32, 64 (x4) channels, BN -> ReLU -> pool -> fc."""

    def __init__(self, count: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layer1 = _stage(16, 16, count, stride=1)
        self.layer2 = _stage(16 * EXPANSION, 32, count, stride=2)
        self.layer3 = _stage(32 * EXPANSION, 64, count, stride=2)
        self.bn = nn.BatchNorm2d(64 * EXPANSION)
        self.fc = nn.Linear(64 * EXPANSION, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register("preresnet110")
def preresnet110(num_classes: int = 10) -> PreResNet:
    """The reference's "PreResNet-110" teacher: 18 bottleneck blocks per stage."""
    return PreResNet((110 - 2) // 6, num_classes)
