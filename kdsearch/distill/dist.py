"""DIST: distillation from a stronger teacher (Huang et al., NeurIPS 2022; ``distill.loss: dist``).

Instead of matching probabilities exactly (KL), the student matches the teacher's *relations*:
per image, the Pearson correlation of the two class distributions (inter-class), and per
class, their correlation across the batch (intra-class). Correlation ignores shifts and
scales, which is why it tolerates a large teacher/student capacity gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdsearch.distill.base import Batch, Method, cross_entropy, register, standardize, total
from kdsearch.schema import in_range

#: Guards the correlation of a constant row or column (0/0).
CORR_EPS = 1e-8


@dataclass(frozen=True)
class DISTOptions:
    #: Weight of the inter-class (per image) relation term.
    beta: float = 1.0
    #: Weight of the intra-class (per class, across the batch) relation term.
    gamma: float = 1.0
    standardize: bool = False

    def check(self, path: str) -> None:
        in_range(f"{path}.beta", self.beta, 0.0, float("inf"))
        in_range(f"{path}.gamma", self.gamma, 0.0, float("inf"))


def _one_minus_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − the mean over rows of the Pearson correlation between rows of ``a`` and ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    corr = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + CORR_EPS)
    return 1.0 - corr.mean()


def dist_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    gamma: float,
    standardized: bool = False,
) -> dict[str, torch.Tensor]:
    """``{"ce": CE, "inter": α·β·T²·(1 − ρ̄_rows), "intra": α·γ·T²·(1 − ρ̄_columns)}``
    of the temperature-softened probabilities (T² as in the DIST authors' code)."""
    s, t = student_logits, teacher_logits.to(student_logits.dtype)
    if standardized:
        s, t = standardize(s), standardize(t)
    temp = temperature
    p_s, p_t = F.softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)
    scale = alpha * temp * temp
    return {
        "ce": cross_entropy(student_logits, labels),
        "inter": scale * beta * _one_minus_pearson(p_s, p_t),
        "intra": scale * gamma * _one_minus_pearson(p_s.T, p_t.T),
    }


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """DIST's loss: ``CE + α·T²·(β·inter + γ·intra)``; see :func:`dist_terms`."""
    terms = dist_terms(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
    )
    return total(terms)


@register("dist")
class DIST(Method):
    """Relation matching: alpha scales both correlation terms, ``beta``/``gamma`` split them."""

    Options = DISTOptions
    options: DISTOptions

    def terms(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        assert batch.teacher_logits is not None  # forward() leaves the baseline out
        return dist_terms(
            batch.student_logits,
            batch.teacher_logits,
            batch.labels,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.options.beta,
            gamma=self.options.gamma,
            standardized=self.options.standardize,
        )
