"""Decoupled knowledge distillation (Zhao et al., CVPR 2022; ``distill.loss: dkd``).

Hinton's KL splits into a target-class part (TCKD: the binary "target vs the rest"
distribution) and a non-target part (NCKD: the distribution over the other classes, the
target masked out), which the original loss couples by the teacher's target confidence. DKD
weighs them independently: ``CE + w·(α·TCKD + β·NCKD)``, with ``w`` ramping up over the first
``warmup`` epochs because a large β destabilises the start of training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsearch.data.datasets import UNLABELED
from kdsearch.distill.base import Batch, Method, cross_entropy, register, standardize, total
from kdsearch.schema import in_range


@dataclass(frozen=True)
class DKDOptions:
    #: Weight of the non-target term (the paper uses 1 to 8 across teacher/student pairs).
    beta: float = 8.0
    #: Epochs over which the distillation weight ramps linearly from 1/warmup to 1 (0: none).
    warmup: int = 20
    standardize: bool = False

    def check(self, path: str) -> None:
        in_range(f"{path}.beta", self.beta, 0.0, float("inf"))
        in_range(f"{path}.warmup", self.warmup, 0, float("inf"))


def _split_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batchmean KL times T², computed in log space (no log of 0)."""
    n, c = student_logits.shape
    mask = torch.zeros_like(student_logits, dtype=torch.bool)
    mask.scatter_(1, target.view(-1, 1), True)
    parts = []
    for z in (student_logits / t, teacher_logits.to(student_logits.dtype) / t):
        log_all = torch.logsumexp(z, dim=1)
        others = z[~mask].view(n, c - 1)
        log_target = z[mask] - log_all
        log_rest = torch.logsumexp(others, dim=1) - log_all
        binary = torch.stack([log_target, log_rest], dim=1)
        parts.append((binary, torch.log_softmax(others, dim=1)))
    (bin_s, non_s), (bin_t, non_t) = parts
    tckd = (bin_t.exp() * (bin_t - bin_s)).sum(dim=1).mean()
    nckd = (non_t.exp() * (non_t - non_s)).sum(dim=1).mean()
    return tckd * t * t, nckd * t * t


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    warmup_factor: float = 1.0,
    standardized: bool = False,
) -> dict[str, torch.Tensor]:
    """``{"ce": CE(s, y), "tckd": w·α·TCKD, "nckd": w·β·NCKD}``.

    An unlabeled image (label -100) takes the teacher's argmax as its target class for the
    split; it stays out of the cross-entropy, whose mean counts labeled images only.
    """
    target = torch.where(labels == UNLABELED, teacher_logits.argmax(dim=1), labels)
    s, t = student_logits, teacher_logits.to(student_logits.dtype)
    if standardized:
        s, t = standardize(s), standardize(t)
    tckd, nckd = _split_kl(s, t, target, temperature)
    return {
        "ce": cross_entropy(student_logits, labels),
        "tckd": warmup_factor * alpha * tckd,
        "nckd": warmup_factor * beta * nckd,
    }


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    warmup_factor: float = 1.0,
) -> torch.Tensor:
    """DKD's loss ``CE(s, y) + warmup_factor·(α·TCKD + β·NCKD)``, both KL terms with
    ``batchmean``·T² as in the paper; labels of -100 as in :func:`dkd_terms`."""
    terms = dkd_terms(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        beta=beta,
        warmup_factor=warmup_factor,
    )
    return total(terms)


@register("dkd")
class DKD(Method):
    """Target and non-target knowledge weighed apart: alpha for TCKD, ``beta`` for NCKD."""

    Options = DKDOptions
    options: DKDOptions

    def terms(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        assert batch.teacher_logits is not None  # forward() leaves the baseline out
        warmup = self.options.warmup
        return dkd_terms(
            batch.student_logits,
            batch.teacher_logits,
            batch.labels,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.options.beta,
            warmup_factor=min((epoch + 1) / warmup, 1.0) if warmup else 1.0,
            standardized=self.options.standardize,
        )
