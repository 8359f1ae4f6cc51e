"""The distillation losses' public names, kept here for scripts that import them.

The methods live in :mod:`kdsearch.distill` (one file each); ``get``/``names``/``register``
are its registry of methods, keyed by ``distill.loss``.
"""

from __future__ import annotations

from kdsearch.distill import (
    cross_entropy,
    dist_loss,
    dkd_loss,
    get,
    kd_loss,
    names,
    register,
    standardize,
)

__all__ = [
    "cross_entropy",
    "dist_loss",
    "dkd_loss",
    "get",
    "kd_loss",
    "names",
    "register",
    "standardize",
]
