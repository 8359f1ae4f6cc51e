"""Swapping a network's classifier head for one with another class count.

Starting from weights trained on other classes (ImageNet's 1000, another data set's) keeps the
features and needs only a fresh last layer. timm models know their head (``reset_classifier``);
for everything else the head is the last ``nn.Linear`` in module order with the old class count,
which is where torchvision and the zoo put it.
"""

from __future__ import annotations

from torch import nn

from kdsearch.errors import KDSearchError


def replace_head(model: nn.Module, old: int, new: int, what: str) -> None:
    """Replace ``model``'s ``old``-class head by a freshly initialized ``new``-class one.

    ``what`` names the network in the error raised when no such head is found.
    """
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(new)
        return
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == old
    ]
    if not linears:
        raise KDSearchError(
            f"{what}: found no linear layer with {old} outputs to replace by a {new}-class head; "
            f"use a checkpoint trained on {new} classes"
        )
    parent, _, attr = linears[-1].rpartition(".")
    head = model.get_submodule(linears[-1])
    assert isinstance(head, nn.Linear)  # linears names nn.Linear modules only
    fresh = nn.Linear(
        head.in_features,
        new,
        bias=head.bias is not None,
        device=head.weight.device,
        dtype=head.weight.dtype,
    )
    setattr(model.get_submodule(parent), attr, fresh)
