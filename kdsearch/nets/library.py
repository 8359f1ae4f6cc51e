"""Networks from torchvision and timm, named ``torchvision:NAME`` or ``timm:NAME`` in a spec.

The libraries' own registries say which names exist (``torchvision.models.list_models``,
``timm.list_models``) and build them; nothing is re-registered here. A library is imported only
when one of its names is used, so specs of zoo networks never pay for it, and timm is an
optional extra. Specs are validated once per trial, so every answer about a name is cached.

Pretrained weights are asked for as the library asks for them (torchvision ``weights: DEFAULT``,
timm ``pretrained: true``); for another class count the model is built with the weights' own
head, which is then replaced (:func:`kdsearch.nets.heads.replace_head`).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import typing
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch
from torch import nn

from kdsearch.errors import KDSearchError
from kdsearch.nets.heads import replace_head

log = logging.getLogger(__name__)

TORCHVISION, TIMM = "torchvision:", "timm:"
#: Keyword arguments that only load weights: a saved state dict makes them unnecessary.
WEIGHT_KWARGS = {TORCHVISION: "weights", TIMM: "pretrained"}
#: Parameters of a model class that kdsearch sets itself, or that say where it lives.
_NOT_KWARGS = {"self", "num_classes", "device", "dtype"}
#: The spec's ``dropout`` shorthand (the zoo's and torchvision's name for the classifier's
#: dropout) sets this argument in a model that has no ``dropout`` of its own: timm's models
#: and torchvision's DenseNets call that rate ``drop_rate``.
DROP_RATE = "drop_rate"


def is_library(arch: object) -> bool:
    """Whether ``arch`` names a torchvision or timm model rather than a zoo network."""
    return isinstance(arch, str) and arch.startswith((TORCHVISION, TIMM))


def _split(arch: str) -> tuple[str, str]:
    prefix, _, name = arch.partition(":")
    return f"{prefix}:", name


def _timm(arch: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise KDSearchError(
            f"{arch}: timm is not installed; install it with pip install 'kdsearch[timm]'"
        ) from None
    return timm


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    from torchvision import models

    return tuple(models.list_models(module=models))  # image classifiers only


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    return tuple(_timm(TIMM).list_models())


def matching(pattern: str) -> list[str]:
    """The library models whose prefixed names (``timm:mobilenetv3_small_050``) match the
    shell-style ``pattern`` (``timm:mobilenet*``), from the library's own list."""
    import fnmatch

    prefix, _ = _split(pattern)
    names = _torchvision_names() if prefix == TORCHVISION else _timm_names()
    return [prefix + n for n in names if fnmatch.fnmatchcase(prefix + n, pattern)]


def _unknown(where: str, arch: str, names: tuple[str, ...], listing: str) -> KDSearchError:
    prefix, name = _split(arch)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return KDSearchError(f"{where}: unknown {arch!r}{hint} (the names are in {listing})")


@lru_cache(maxsize=256)
def check(arch: str, where: str = "arch") -> None:
    """Raise unless the library has the model ``arch`` names; ``where`` is the spec key."""
    prefix, name = _split(arch)
    if prefix == TORCHVISION:
        if name not in _torchvision_names():
            listing = "torchvision.models.list_models(module=torchvision.models)"
            raise _unknown(where, arch, _torchvision_names(), listing)
    elif not _timm(arch).is_model(name):  # also takes a weights tag: resnet50.a1_in1k
        raise _unknown(where, arch, _timm_names(), "timm.list_models()")


def _takes(params: typing.Iterable[inspect.Parameter], with_default: bool) -> list[str]:
    varargs = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name
        for p in params
        if p.kind not in varargs
        and p.name not in _NOT_KWARGS
        and (p.default is not inspect.Parameter.empty or not with_default)
    ]


@lru_cache(maxsize=256)
def _torchvision_kwargs(name: str) -> tuple[str, ...]:
    """The builder's parameters and its model class's optional ``__init__`` parameters.

    The builder passes its model class's required parameters (a ResNet's block and layers)
    itself, so only the optional ones are the user's to set.
    """
    from torchvision import models

    builder = models.get_model_builder(name)
    own = _takes(inspect.signature(builder).parameters.values(), with_default=True)
    cls = typing.get_type_hints(builder).get("return")
    init = inspect.signature(cls).parameters.values() if isinstance(cls, type) else []
    return tuple(dict.fromkeys([*own, *_takes(init, with_default=True)]))


@lru_cache(maxsize=256)
def _timm_kwargs(arch: str) -> tuple[str, ...]:
    """``pretrained`` and the model class's ``__init__`` parameters.

    timm passes keyword arguments on to the model class, over its own per-model defaults, so
    every parameter of that class may be set. The class is found by building the model once
    on the meta device (no memory, no initialization); where a model cannot be built there,
    on the CPU.
    """
    timm = _timm(arch)
    name = _split(arch)[1]
    try:
        with torch.device("meta"):
            cls = type(timm.create_model(name))
    except (RuntimeError, NotImplementedError):
        cls = type(timm.create_model(name))
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(dict.fromkeys(["pretrained", *_takes(params, with_default=False)]))


def kwarg_names(arch: str) -> list[str]:
    """The keyword arguments a spec may give library model ``arch``, other than num_classes."""
    names = _own_kwargs(arch)
    if "dropout" not in names and DROP_RATE in names:
        names.append("dropout")  # the shorthand, set as drop_rate (see create)
    return names


def _own_kwargs(arch: str) -> list[str]:
    """The keyword arguments the library itself takes for ``arch``."""
    check(arch)
    prefix, name = _split(arch)
    return list(_torchvision_kwargs(name) if prefix == TORCHVISION else _timm_kwargs(arch))


def _dropout_as_drop_rate(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the ``dropout`` shorthand renamed to ``drop_rate`` where the model
    takes no ``dropout`` of its own; both at once is ambiguous, so refused."""
    if "dropout" not in kwargs or "dropout" in _own_kwargs(arch):
        return kwargs
    if DROP_RATE in kwargs:
        raise KDSearchError(
            f"{arch}: dropout and drop_rate set the same rate here; keep one of them"
        )
    out = {k: v for k, v in kwargs.items() if k != "dropout"}
    out[DROP_RATE] = kwargs["dropout"]
    return out


def without_weights(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less the ones that download weights, for a model a state dict will fill."""
    if not is_library(arch):
        return dict(kwargs)
    drop = WEIGHT_KWARGS[_split(arch)[0]]
    return {k: v for k, v in kwargs.items() if k != drop}


def create(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build library model ``arch`` for ``num_classes`` classes (kwargs already checked)."""
    prefix, name = _split(arch)
    kwargs = _dropout_as_drop_rate(arch, kwargs)
    try:
        if prefix == TORCHVISION:
            return _create_torchvision(arch, name, num_classes, kwargs)
        return _create_timm(arch, name, num_classes, kwargs)
    except (TypeError, ValueError) as err:  # the library refusing a value the spec gave
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise KDSearchError(f"{arch}: cannot be built with {kwargs}: {reason}") from err


def _weights(arch: str, name: str, value: object) -> Any:
    """The torchvision weights enum member named ``value`` (``DEFAULT``, ``IMAGENET1K_V1``)."""
    from torchvision import models

    enum = models.get_model_weights(name)
    members = list(enum.__members__)
    key = str(value).removeprefix(f"{enum.__name__}.")
    if key not in members:
        close = difflib.get_close_matches(key, members, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KDSearchError(
            f"{arch}: unknown weights {value!r}{hint} (choose from {', '.join(members)})"
        )
    return enum[key]


def _create_torchvision(
    arch: str, name: str, num_classes: int, kwargs: dict[str, Any]
) -> nn.Module:
    from torchvision import models

    kwargs = dict(kwargs)
    value = kwargs.pop("weights", None)
    if value is None:
        return models.get_model(name, num_classes=num_classes, **kwargs)
    weights = _weights(arch, name, value)
    try:
        model = models.get_model(name, weights=weights, **kwargs)
    except OSError as err:
        raise _cannot_download(arch, f"weights: {value}", err) from err
    _fit_head(model, arch, len(weights.meta["categories"]), num_classes)
    return model


def _create_timm(arch: str, name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    timm = _timm(arch)
    kwargs = dict(kwargs)
    if not kwargs.pop("pretrained", False):
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except OSError as err:
        raise _cannot_download(arch, "pretrained: true", err) from err
    _fit_head(model, arch, model.num_classes, num_classes)
    return model


def _fit_head(model: nn.Module, arch: str, trained: int, num_classes: int) -> None:
    if trained != num_classes:
        replace_head(model, trained, num_classes, arch)
        log.info(
            "%s: replaced the %d-class head of the pretrained weights with a %d-class one",
            arch,
            trained,
            num_classes,
        )


def _cannot_download(arch: str, asked: str, err: OSError) -> KDSearchError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
    return KDSearchError(
        f"{arch}: pretrained weights ({asked}) cannot be downloaded here ({reason}); give a file "
        "instead: drop the kwarg and set teacher.checkpoint, or run `kdsearch import-checkpoint "
        f"FILE --arch {arch} --num-classes 1000 --out models/x.pt` and fine-tune it with "
        "`kdsearch train-teacher SPEC --init models/x.pt`"
    )
