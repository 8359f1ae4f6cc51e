"""One registry type for everything a spec names: architectures, data sets, losses.

Adding an entry is one decorated function; looking up a wrong name fails with the key path it
came from and the nearest valid name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from kdsearch.errors import unknown_name

T = TypeVar("T", bound=Callable[..., object])


class Registry(Generic[T]):
    """Named functions, registered by decorator; ``what`` names the spec key they answer."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return decorate

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown_name(self.what, name, self._items)
        return self._items[name]
