"""The network zoo: every architecture registered by name, plus size measurements.

Importing this package imports each network module so its ``@register`` runs; add a network by
writing one module with a decorated builder and listing it here.
"""

from __future__ import annotations

from kdsearch.nets import cnn5, densenet, preresnet, resnet, resnet_cifar, resnext, wrn  # noqa: F401
from kdsearch.nets.cost import Cost, measure
from kdsearch.nets.flops import count_parameters, forward_flops
from kdsearch.nets.registry import create, kwarg_names, names, register

__all__ = [
    "Cost",
    "count_parameters",
    "create",
    "forward_flops",
    "kwarg_names",
    "measure",
    "names",
    "register",
]
