"""The network zoo: every architecture registered by name, plus size measurements.

Importing this package imports each network module so its ``@register`` runs; add a network by
writing one module with a decorated builder and listing it here. torchvision and timm models
are named ``torchvision:NAME`` and ``timm:NAME`` (:mod:`kdsearch.nets.library`).
"""

from __future__ import annotations

from kdsearch.nets import cnn5, densenet, preresnet, resnet, resnet_cifar, resnext, wrn  # noqa: F401
from kdsearch.nets.cost import Cost, measure
from kdsearch.nets.flops import check_input_size, count_parameters, forward_flops
from kdsearch.nets.heads import replace_head
from kdsearch.nets.library import is_library, without_weights
from kdsearch.nets.registry import check_arch, create, kwarg_names, names, refused, register

__all__ = [
    "Cost",
    "check_arch",
    "check_input_size",
    "count_parameters",
    "create",
    "forward_flops",
    "is_library",
    "kwarg_names",
    "measure",
    "names",
    "refused",
    "register",
    "replace_head",
    "without_weights",
]
