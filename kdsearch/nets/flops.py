"""Model size: parameter count and forward FLOPs of one image, for reports and budgets."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdsearch.errors import KDSearchError


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def check_input_size(model: nn.Module, side: int, what: str) -> None:
    """Raise a one-line KDSearchError unless ``model`` takes ``side``-pixel square images.

    A network whose pooling or fixed-size layers need more pixels (cnn5's linear layer, a
    ViT's patch grid) would otherwise fail mid-trial with a shape error deep in torch.
    """
    ref = next(model.parameters())
    image = torch.zeros(2, 3, side, side, dtype=ref.dtype, device=ref.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(image)
    except (RuntimeError, ValueError, AssertionError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise KDSearchError(
            f"dataset.image_size: {side} px does not fit {what} ({reason}); use an image_size "
            "the network takes (larger, or the size it was built for)"
        ) from None
    finally:
        model.train(was_training)


def forward_flops(model: nn.Module, image_size: int = 32, channels: int = 3) -> int:
    """FLOPs (a multiply-add counts 2) of one eval-mode forward pass on one image.

    The model's train/eval mode is restored afterwards, so this is safe mid-training.
    """
    ref = next(model.parameters())
    image = torch.zeros(1, channels, image_size, image_size, dtype=ref.dtype, device=ref.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
