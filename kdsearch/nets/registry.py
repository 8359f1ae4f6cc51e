"""The architecture registry: a network is one decorated builder, looked up by name.

Specs name an architecture and its keyword arguments as data; :func:`create` checks both against
the builder's own signature so a typo fails at the edge with a message that lists what is valid.
Names with a library prefix (``torchvision:resnet50``, ``timm:resnet10t``) are answered by that
library instead (:mod:`kdsearch.nets.library`), so every caller takes both kinds alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from kdsearch.errors import KDSearchError, unknown_name
from kdsearch.nets import library
from kdsearch.registry import Registry

Builder = Callable[..., nn.Module]

_BUILDERS: Registry[Builder] = Registry("arch")

#: Register ``fn(num_classes: int = 10, **kwargs) -> nn.Module`` under a name.
register = _BUILDERS.register
#: The zoo's names; library models are named by prefix and listed by their library.
names = _BUILDERS.names
_builder = _BUILDERS.get


def check_arch(arch: str, where: str = "arch") -> None:
    """Raise unless ``arch`` is a zoo network or a library model; ``where`` is the spec key."""
    if library.is_library(arch):
        library.check(arch, where)
    elif arch not in names():
        err = unknown_name(where, arch, names())
        raise KDSearchError(f"{err}, or a library model: torchvision:NAME or timm:NAME")


def kwarg_names(arch: str) -> list[str]:
    """The builder's keyword arguments other than ``num_classes``, in signature order."""
    if library.is_library(arch):
        return library.kwarg_names(arch)
    params = inspect.signature(_builder(arch)).parameters
    return [p for p in params if p != "num_classes"]


def refused(key: str, allowed: list[str]) -> str:
    """Why a net refuses argument ``key``: what it takes (``allowed``), and for the
    ``dropout`` shorthand, which of its arguments sets a drop rate instead (or that none does)."""
    text = f"(allowed: {', '.join(allowed) or 'none'})"
    if key != "dropout":
        return text
    rates = [k for k in allowed if "drop" in k]
    if rates:
        return f"{text}; its drop rates are {', '.join(rates)}: set one of those"
    return f"{text}; it has no dropout to set: leave dropout out"


def create(arch: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
    """Build ``arch`` for ``num_classes`` classes; a bad name or argument raises KDSearchError."""
    allowed = kwarg_names(arch)
    for key in kwargs:
        if key not in allowed:
            raise KDSearchError(f"{arch}: unknown argument {key!r} {refused(key, allowed)}")
    if library.is_library(arch):
        return library.create(arch, num_classes, **kwargs)
    return _builder(arch)(num_classes=num_classes, **kwargs)
