"""ResNet-18 for 32x32 images (3x3 stem, no max-pool), named as the 2018 reference saves it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.nets.registry import register


class BasicBlock(nn.Module):
    """Two 3x3 convs with post-activation BN; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, count: int, stride: int) -> nn.Sequential:
    """``count`` blocks; only the first changes resolution and width."""
    first = BasicBlock(in_planes, planes, stride)
    return nn.Sequential(first, *(BasicBlock(planes, planes, 1) for _ in range(count - 1)))


class ResNet(nn.Module):
    """Four stages of basic blocks at 64, 128, 256, 512 channels, global average pool, linear."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, blocks[0], stride=1)
        self.layer2 = _stage(64, 128, blocks[1], stride=2)
        self.layer3 = _stage(128, 256, blocks[2], stride=2)
        self.layer4 = _stage(256, 512, blocks[3], stride=2)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register("resnet18")
def resnet18(num_classes: int = 10) -> ResNet:
    """The reference's ResNet-18 (11.2M parameters), a teacher or a large student."""
    return ResNet((2, 2, 2, 2), num_classes)
