"""The 2018 reference's 5-layer CNN student (3 conv blocks, 2 fully connected layers).

Submodule names follow the reference so its ``best.pth.tar`` checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.nets.registry import register


class CNN5(nn.Module):
    """conv3x3 -> BN -> maxpool2 -> ReLU, three times (32x32 -> 4x4), then fc1 -> BN -> fc2."""

    def __init__(self, num_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        widths = (num_channels, 2 * num_channels, 4 * num_channels)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.bn2 = nn.BatchNorm2d(widths[1])
        self.conv3 = nn.Conv2d(widths[1], widths[2], 3, padding=1)
        self.bn3 = nn.BatchNorm2d(widths[2])
        self.fc1 = nn.Linear(4 * 4 * widths[2], widths[2])
        self.fcbn1 = nn.BatchNorm1d(widths[2])
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(F.max_pool2d(bn(conv(x)), 2))
        x = self.dropout(F.relu(self.fcbn1(self.fc1(x.flatten(1)))))
        return self.fc2(x)


@register("cnn5")
def cnn5(num_classes: int = 10, num_channels: int = 32, dropout: float = 0.0) -> CNN5:
    """The reference student; ``dropout`` is searched because the reference tuned it by hand."""
    return CNN5(num_channels, num_classes, dropout)
