"""Typed dataclasses from plain mappings, with errors that name the key path.

A small validator for the spec (and anything else read from YAML): every field is checked
against its type hint, unknown keys get the nearest valid name, nested dataclasses are built
recursively and each may add its own ``check(path)`` for ranges. Messages look like
``train.epochs: expected an integer, got 'ten'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from kdsearch.errors import KDSearchError


def in_range(
    path: str,
    value: float,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above or (isinstance(value, float) and math.isnan(value)):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise KDSearchError(f"{path}: {value} is outside {left}{_num(low)}, {_num(high)}{right}")


def positive(path: str, value: float) -> None:
    if not 0 < value < math.inf:
        raise KDSearchError(f"{path}: {value} must be a finite number > 0")


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if x == int(x) else str(x)


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, path)
            except KDSearchError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise KDSearchError(
                f"{path}: {value!r} is not allowed (choose from {', '.join(map(str, allowed))})"
            )
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise KDSearchError(f"{path}: expected a mapping, got {value!r}")
        _, vtype = typing.get_args(tp)
        return {str(k): convert(vtype, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise KDSearchError(f"{path}: expected a list, got {value!r}")
        return list(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise KDSearchError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KDSearchError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" as a string; accept it as the number it means.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KDSearchError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise KDSearchError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"spec field type {tp!r} is not supported")  # a bug, not user input


def build(cls: type, data: Any, path: str) -> Any:
    where = path or "spec"
    if not isinstance(data, dict):
        raise KDSearchError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(fields)
            raise KDSearchError(f"{join(path, key)}: unknown key{hint} (allowed here: {allowed})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KDSearchError(f"{join(path, name)}: missing (this key is required)")
    obj = cls(**kwargs)
    for name in fields:
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value) and name not in data and hasattr(value, "check"):
            value.check(join(path, name))
    if hasattr(obj, "check"):
        obj.check(where)
    return obj


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)
