"""ResNeXt-29 for 32x32 images, named and computed as the 2018 reference's teacher."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.nets.registry import register


class ResNeXtBottleneck(nn.Module):
    """conv1x1 -> grouped conv3x3 -> conv1x1, each with BN; a 1x1 conv + BN shortcut if needed."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, inner: int, groups: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_planes, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_conv = nn.Conv2d(
            inner, inner, 3, stride=stride, padding=1, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out_planes, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if in_planes != out_planes:
            conv = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
            self.shortcut = nn.Sequential(
                OrderedDict(shortcut_conv=conv, shortcut_bn=nn.BatchNorm2d(out_planes))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(out + self.shortcut(x))


def _stage(
    number: int, in_planes: int, count: int, cardinality: int, base_width: int
) -> nn.Sequential:
    """Stage ``number`` (1-3): ``count`` blocks, 256 * 2**(number-1) channels out.

    The grouped conv has ``cardinality`` groups of ``base_width * 2**(number-1)`` channels;
    blocks are named ``stage_N_bottleneck_i`` because the reference's keys are.
    """
    scale = 2 ** (number - 1)
    out_planes, inner = 256 * scale, cardinality * base_width * scale
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(count):
        stride = 2 if number > 1 and i == 0 else 1
        blocks[f"stage_{number}_bottleneck_{i}"] = ResNeXtBottleneck(
            in_planes if i == 0 else out_planes, out_planes, stride, inner, cardinality
        )
    return nn.Sequential(blocks)


class CifarResNeXt(nn.Module):
    """conv3x3 stem, three stages of bottlenecks at 256, 512, 1024 channels, pool, classifier."""

    def __init__(self, depth: int, cardinality: int, base_width: int, num_classes: int) -> None:
        super().__init__()
        count = (depth - 2) // 9
        self.conv_1_3x3 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.stage_1 = _stage(1, 64, count, cardinality, base_width)
        self.stage_2 = _stage(2, 256, count, cardinality, base_width)
        self.stage_3 = _stage(3, 512, count, cardinality, base_width)
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_1(self.conv_1_3x3(x)))
        out = self.stage_3(self.stage_2(self.stage_1(out)))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register("resnext29_8x64d")
def resnext29_8x64d(num_classes: int = 10) -> CifarResNeXt:
    """The reference's ResNeXt-29 8x64d teacher (34.4M parameters)."""
    return CifarResNeXt(29, 8, 64, num_classes)
