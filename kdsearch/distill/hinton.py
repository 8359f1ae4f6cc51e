"""Hinton et al.'s soft-target distillation (``distill.loss: hinton``, the default)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsearch.distill.base import (
    Batch,
    Method,
    cross_entropy,
    kl_batchmean,
    register,
    standardize,
    total,
)


@dataclass(frozen=True)
class HintonOptions:
    #: Z-score both logits per sample before the temperature (logit standardization).
    standardize: bool = False


def hinton_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    standardized: bool = False,
) -> dict[str, torch.Tensor]:
    """``{"ce": (1-α)·CE(s, y), "kd": α·T²·KL(softmax(t/T) ‖ softmax(s/T))}``.

    Cross-entropy always reads the raw student logits; ``standardized`` z-scores only what
    the KL term compares.
    """
    ce = cross_entropy(student_logits, labels)
    if alpha == 0 or teacher_logits is None:
        return {"ce": ce}
    s, t = student_logits, teacher_logits.to(student_logits.dtype)
    if standardized:
        s, t = standardize(s), standardize(t)
    temp = temperature
    kl = kl_batchmean(s / temp, t / temp)
    return {"ce": (1.0 - alpha) * ce, "kd": alpha * temp * temp * kl}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.'s loss: ``(1-α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``.

    The KL divergence is summed over classes and averaged over the batch (``batchmean``), the
    mathematically correct form. The 2018 reference used ``nn.KLDivLoss()`` with its default
    ``reduction="mean"``, which averages over batch × classes and so silently divides the
    distillation term by the number of classes (10× weaker on CIFAR-10, 100× on CIFAR-100);
    its alpha and temperature values are therefore not directly comparable with ours.

    Every image counts in the KL term, labeled or not; labels of -100 are left out of the
    cross-entropy mean, which is how unlabeled images still learn from the teacher.
    ``teacher_logits`` may be None when alpha is 0 (the plain baseline).
    """
    return total(hinton_terms(student_logits, teacher_logits, labels, temperature, alpha))


@register("hinton")
class Hinton(Method):
    """Soft targets at temperature T, mixed with the labels' cross-entropy by alpha."""

    Options = HintonOptions
    options: HintonOptions

    def terms(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return hinton_terms(
            batch.student_logits,
            batch.teacher_logits,
            batch.labels,
            self.temperature,
            self.alpha,
            self.options.standardize,
        )
