"""Distillation methods: each one file, registered by the name ``distill.loss`` uses.

The contract (:class:`Method`) is in ``base``; ``hooks`` reads intermediate features.
"""

from __future__ import annotations

from kdsearch.distill.base import (
    Batch,
    Method,
    check_options,
    create,
    cross_entropy,
    get,
    names,
    option_names,
    register,
    standardize,
)
from kdsearch.distill.dist import DIST, dist_loss
from kdsearch.distill.dkd import DKD, dkd_loss
from kdsearch.distill.fitnets import FitNets
from kdsearch.distill.hinton import Hinton, kd_loss
from kdsearch.distill.hooks import FeatureHooks

__all__ = [
    "DIST",
    "DKD",
    "Batch",
    "FeatureHooks",
    "FitNets",
    "Hinton",
    "Method",
    "check_options",
    "create",
    "cross_entropy",
    "dist_loss",
    "dkd_loss",
    "get",
    "kd_loss",
    "names",
    "option_names",
    "register",
    "standardize",
]
