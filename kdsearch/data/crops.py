"""Random-resized crops with flip, as batched tensor ops, each view a stored box.

torchvision's ``RandomResizedCrop`` draws a box covering ``scale`` of the image's area with an
aspect ratio in ``ratio`` (log-uniform), tries 10 times, then falls back to the centre crop of
the whole image; the box is resized to the output size. Here the same draw runs for a whole
batch at once, and a view is the row ``(x0, y0, w, h, flip)`` in stored pixels: integers, so
a view kept in the teacher cache gives back exactly the crop the teacher saw. The resize is
``torchvision.ops.roi_align`` with adaptive sampling (each output pixel averages the input
pixels under it), an antialiased bilinear resize for a batch of boxes of different sizes.
"""

from __future__ import annotations

import math

import torch

#: torchvision's defaults: the aspect-ratio range and the tries before the fallback.
RATIO = (3 / 4, 4 / 3)
TRIES = 10


def draw(
    n: int,
    side: int,
    min_scale: float,
    gen: torch.Generator,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``n`` random boxes with flips (``n×5`` float: x0, y0, w, h, flip) in a ``side``² image."""
    device = device or gen.device
    area = float(side * side)
    scale = min_scale + (1 - min_scale) * torch.rand(n, TRIES, device=device, generator=gen)
    log_ratio = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * torch.rand(
        n, TRIES, device=device, generator=gen
    )
    ratio = log_ratio.exp()
    w = (area * scale * ratio).sqrt().round()
    h = (area * scale / ratio).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= side) & (h <= side)
    # The first try that fits, as torchvision takes; rows where none fits use the centre crop.
    first = torch.where(fits, torch.arange(TRIES, device=device), TRIES).min(1).values
    found = first < TRIES
    pick = first.clamp(max=TRIES - 1)[:, None]
    w, h = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    w = torch.where(found, w, torch.full_like(w, side))
    h = torch.where(found, h, torch.full_like(h, side))
    u = torch.rand(n, 2, device=device, generator=gen)
    x0 = (u[:, 0] * (side - w + 1)).floor().clamp(max=side - w)
    y0 = (u[:, 1] * (side - h + 1)).floor().clamp(max=side - h)
    flip = (torch.rand(n, device=device, generator=gen) < 0.5).float()
    return torch.stack([x0, y0, w, h, flip], 1)


def centre(n: int, side: int, size: int, device: torch.device | None = None) -> torch.Tensor:
    """``n`` copies of the centre ``size``² box without flip: the evaluation view."""
    offset = float(round((side - size) / 2))
    box = torch.tensor([offset, offset, float(size), float(size), 0.0], device=device)
    return box.expand(n, 5).clone()


def apply(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The views ``boxes[i]`` of uint8 images ``x[i]`` at ``size``², still uint8."""
    from torchvision.ops import roi_align

    boxes = boxes.to(x.device, torch.float32)
    batch = torch.arange(len(x), device=x.device, dtype=torch.float32)
    x0, y0, w, h, flip = boxes.unbind(1)
    rois = torch.stack([batch, x0, y0, x0 + w, y0 + h], 1)
    out = roi_align(x.float(), rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    out = torch.where(flip.bool()[:, None, None, None], out.flip(3), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)
