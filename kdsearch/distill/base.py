"""The distiller contract: a method turns one batch into named loss terms.

Learned from mdistiller's ``Distiller`` (one small base class, named terms, extra trainable
modules handed to the optimizer) and torchdistill's forward hooks (intermediate features are
read from named layers, so networks need no edits). A method is an ``nn.Module`` built from
the spec's ``distill`` section: ``temperature`` and ``alpha`` are shared by every method
(``alpha = 0`` is always the plain baseline, no teacher), everything else is the method's own
``Options`` dataclass, filled from ``distill.kwargs``.

The training loop sums the terms a method returns, logs each one per epoch, gives the
method's own parameters (a FitNets regressor) to the optimizer and saves them in the resume
state.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.data.datasets import UNLABELED
from kdsearch.errors import KDSearchError
from kdsearch.registry import Registry
from kdsearch.schema import build

#: Added to the standard deviation so a constant logit vector standardizes to zeros.
STD_EPS = 1e-7


@dataclass
class Batch:
    """What a method sees of one training batch (features only for the layers it asked for)."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    labels: torch.Tensor
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


class Method(nn.Module):
    """Base class of a distillation method; subclasses set ``Options`` and ``terms``."""

    #: The dataclass of the method's ``distill.kwargs`` (validated with the spec's schema).
    Options: ClassVar[type] = NoOptions
    #: Whether the method reads teacher features, which a logit-only cache cannot give.
    needs_online_teacher: ClassVar[bool] = False

    def __init__(self, temperature: float, alpha: float, options: object) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        self.options = options

    def student_layers(self) -> tuple[str, ...]:
        """Student layers (``named_modules`` names) whose outputs ``terms`` reads."""
        return ()

    def teacher_layers(self) -> tuple[str, ...]:
        """Teacher layers whose outputs ``terms`` reads; non-empty needs the online teacher."""
        return ()

    def build(
        self, student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]
    ) -> None:
        """Create trainable modules once feature shapes are known (one probe batch)."""

    def terms(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; their sum is the training loss.

        ``epoch`` counts from 0; ``batch.teacher_logits`` is None for the baseline.
        """
        raise NotImplementedError

    def forward(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        if batch.teacher_logits is None:  # alpha = 0 or no teacher: the plain baseline
            return {"ce": cross_entropy(batch.student_logits, batch.labels)}
        return self.terms(batch, epoch)


_METHODS: Registry[type[Method]] = Registry("distill.loss")

#: Register a :class:`Method` subclass under the name ``distill.loss`` uses.
register = _METHODS.register
get = _METHODS.get
names = _METHODS.names


def option_names(method: str) -> list[str]:
    """The keys ``distill.kwargs`` may hold for ``method``."""
    return [f.name for f in dataclasses.fields(get(method).Options)]


def check_options(kwargs: dict[str, object], methods: Iterable[str]) -> None:
    """Validate ``distill.kwargs`` for every method a study may run.

    A key is an error only when none of ``methods`` takes it (a typo, with a did-you-mean);
    a key another candidate takes (``beta`` while ``distill.loss`` is searched over hinton
    and dkd) is ignored by the methods without it. Each method's own keys are type- and
    range-checked.
    """
    methods = sorted(set(methods))
    taken = {m: option_names(m) for m in methods}
    known = sorted({k for keys in taken.values() for k in keys})
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = "; ".join(f"{m}: {', '.join(k) or 'none'}" for m, k in taken.items())
            raise KDSearchError(f"distill.kwargs.{key}: no method takes it{hint} ({allowed})")
    for method in methods:
        options(method, kwargs)


def options(method: str, kwargs: dict[str, object]) -> object:
    """``method``'s Options from the keys of ``kwargs`` it takes (others are ignored)."""
    cls = get(method).Options
    mine = {k: v for k, v in kwargs.items() if k in option_names(method)}
    return build(cls, mine, "distill.kwargs")


def create(loss: str, temperature: float, alpha: float, kwargs: dict[str, object]) -> Method:
    """The method ``distill.loss`` names, with its options from ``distill.kwargs``."""
    return get(loss)(temperature, alpha, options(loss, kwargs))


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labeled examples; 0 when a batch has none.

    Written as sum / count so that no batch forces a device sync to look at its labels.
    """
    total = F.cross_entropy(student_logits, labels, ignore_index=UNLABELED, reduction="sum")
    return total / (labels != UNLABELED).sum().clamp_min(1)


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss that named terms add up to (``sum`` would also allow the int 0 of no terms)."""
    loss, *rest = terms.values()
    for term in rest:
        loss = loss + term
    return loss


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row (logit standardization, Sun et al., CVPR 2024).

    Uses the sample standard deviation (n - 1), as the paper's code does, so the student
    matches the teacher's logit *relations* rather than their scale.
    """
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (logits.std(dim=1, keepdim=True) + STD_EPS)


def kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)), summed over classes, averaged over rows."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits.to(student_logits.dtype), dim=1),
        reduction="batchmean",
        log_target=True,
    )
