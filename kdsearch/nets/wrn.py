"""Wide ResNet (pre-activation), named and computed as the 2018 reference's teacher.

The reference block has one quirk that its checkpoints depend on: where the width or stride
changes, the 1x1 shortcut conv reads the *pre-activated* input relu(bn1(x)), while elsewhere
the identity shortcut reads the raw x. This module keeps that so imported teachers agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import KDSearchError
from kdsearch.nets.registry import register


class WideBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> dropout -> conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.convShortcut = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    """One stage; exists only because the reference's keys go through ``blockN.layer``."""

    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(
            WideBlock(in_planes, out_planes, stride, dropout),
            *(WideBlock(out_planes, out_planes, 1, dropout) for _ in range(count - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """conv3x3 stem, three stages at 16k, 32k, 64k channels, BN -> ReLU -> pool -> fc."""

    def __init__(self, depth: int, widen_factor: int, dropout: float, num_classes: int) -> None:
        super().__init__()
        count = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(count, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(count, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(count, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register("wrn28_10")
def wrn28_10(
    num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0
) -> WideResNet:
    """WRN-depth-widen_factor; the defaults give the reference's WRN-28-10 teacher."""
    if depth < 10 or (depth - 4) % 6:
        raise KDSearchError(f"wrn28_10: depth must be 6n+4 with n >= 1, got {depth}")
    return WideResNet(depth, widen_factor, dropout, num_classes)
