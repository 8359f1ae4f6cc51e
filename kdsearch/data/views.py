"""CIFAR augmentation as enumerable views, applied as batched tensor ops on the device.

Random crop with 4-pixel zero padding plus horizontal flip produces exactly 9×9×2 = 162
distinct views of an image. Numbering them lets the teacher cache hold the teacher's logits
for every view, so distilling from the cache is identical to running the teacher online on the
same view. View ``v`` is ``flip = v % 2``, ``dx = (v // 2) % 9``, ``dy = v // 18``; the
un-augmented image is ``IDENTITY`` (offset 4, 4, no flip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4
SIDE = 2 * PAD + 1
N_VIEWS = SIDE * SIDE * 2
IDENTITY = PAD * SIDE * 2 + PAD * 2


def view_set(augment: bool) -> torch.Tensor:
    """Every view index a run can draw: all 162 with augmentation, else just the identity."""
    return torch.arange(N_VIEWS) if augment else torch.tensor([IDENTITY])


def apply(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The views ``views[i]`` of uint8 images ``x[i]`` (B×C×H×W), still uint8.

    Zero padding happens in pixel space before normalization, exactly as torchvision's
    ``RandomCrop(32, padding=4)`` does on a uint8 image.
    """
    b, _, h, w = x.shape
    views = views.to(x.device)
    flip = (views % 2).bool()
    dx = (views // 2) % SIDE
    dy = views // (2 * SIDE)
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def normalize(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 images to normalized floats; ``mean`` and ``std`` are C×1×1 in [0, 1] units."""
    return (x.to(dtype) / 255 - mean) / std
