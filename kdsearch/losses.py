"""Distillation losses, in a registry keyed by ``distill.loss``.

Every loss takes ``(student_logits, teacher_logits, labels, temperature, alpha)`` and returns
a scalar; ``teacher_logits`` may be ``None`` when alpha is 0 (the plain baseline), so
baseline and distillation share one training loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdsearch.data import UNLABELED
from kdsearch.registry import Registry

Loss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, float, float], torch.Tensor]
_LOSSES: Registry[Loss] = Registry("distill.loss")

#: Register ``fn(student_logits, teacher_logits, labels, temperature, alpha)`` under a name.
register = _LOSSES.register
get = _LOSSES.get


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labeled examples; 0 when a batch has none.

    Written as sum / count so that no batch forces a device sync to look at its labels.
    """
    total = F.cross_entropy(student_logits, labels, ignore_index=UNLABELED, reduction="sum")
    return total / (labels != UNLABELED).sum().clamp_min(1)


@register("hinton")
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
    """
    ce = cross_entropy(student_logits, labels)
    if alpha == 0 or teacher_logits is None:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.to(student_logits.dtype) / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * t * t * kl
