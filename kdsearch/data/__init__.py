"""Images as uint8 tensors: the data-set registry and splits (``datasets``), image folders
(``imagefolder``), where decoded images live (``store``) and how batches reach the device
(``batches``), and the augmentation views shared by the student and the teacher cache
(``augment``: the pad crop's exact views in ``views``, random-resized crops in ``crops``).

The registry's names load on first use, so that the spec (which imports
:mod:`kdsearch.data.normalization`) can be read without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UNLABELED", "Images", "Splits", "load", "register"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kdsearch.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
