"""He et al.'s CIFAR ResNets (ResNet-20/32/44/56/110), keyed like the public 2018 checkpoints.

Three stages of ``n`` basic blocks at 16, 32 and 64 channels, with "option A" shortcuts
(subsample and zero-pad channels, no parameters) so the parameter counts are the paper's
(ResNet-20: 269,722) and the widely used ``akamaster/pytorch_resnet_cifar10`` weights load
unchanged once their ``module.`` prefix is stripped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.nets.registry import register


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a parameter-free shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if stride != 1 or in_planes != planes else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem to 16 channels, three stages of ``n`` blocks, global average pool, linear."""

    def __init__(self, n: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # the paper's (and the public weights') He initialization
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_planes, planes, stride),
            *(BasicBlock(planes, planes, 1) for _ in range(n - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _define(depth: int) -> None:
    n = (depth - 2) // 6

    def build(num_classes: int = 10) -> CifarResNet:
        return CifarResNet(n, num_classes)

    build.__doc__ = f"ResNet-{depth} for CIFAR ({n} blocks per stage)."
    register(f"resnet{depth}")(build)


for _depth in (20, 32, 44, 56, 110):
    _define(_depth)
