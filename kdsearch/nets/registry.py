"""The architecture registry: a network is one decorated builder, looked up by name.

Specs name an architecture and its keyword arguments as data; :func:`create` checks both against
the builder's own signature so a typo fails at the edge with a message that lists what is valid.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from kdsearch.errors import KDSearchError
from kdsearch.registry import Registry

Builder = Callable[..., nn.Module]

_BUILDERS: Registry[Builder] = Registry("arch")

#: Register ``fn(num_classes: int = 10, **kwargs) -> nn.Module`` under a name.
register = _BUILDERS.register
names = _BUILDERS.names
_builder = _BUILDERS.get


def kwarg_names(arch: str) -> list[str]:
    """The builder's keyword arguments other than ``num_classes``, in signature order."""
    params = inspect.signature(_builder(arch)).parameters
    return [p for p in params if p != "num_classes"]


def create(arch: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
    """Build ``arch`` for ``num_classes`` classes; a bad name or argument raises KDSearchError."""
    builder = _builder(arch)
    allowed = kwarg_names(arch)
    for key in kwargs:
        if key not in allowed:
            raise KDSearchError(
                f"{arch}: unknown argument {key!r} (allowed: {', '.join(allowed) or 'none'})"
            )
    return builder(num_classes=num_classes, **kwargs)
