"""FitNets hints (Romero et al., ICLR 2015; ``distill.loss: fitnets``).

The student's output at ``student_layer`` is mapped by a learned regressor (a 1×1 conv for
feature maps, a linear layer for vectors) to the shape of the teacher's output at
``teacher_layer`` and pulled towards it by mean squared error. The paper trains the hint
first and distills logits after; here both run together, the hint added to Hinton's loss
(so alpha and temperature keep their meaning). Teacher features exist only when the teacher
runs on every batch, hence ``teacher_cache: none``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.distill.base import Batch, Method, register
from kdsearch.distill.hinton import hinton_terms
from kdsearch.schema import in_range


@dataclass(frozen=True)
class FitNetsOptions:
    #: Student layer (a ``named_modules`` name, e.g. ``conv3`` or ``layer3``) giving the hint.
    student_layer: str
    #: Teacher layer whose output the hint must match.
    teacher_layer: str
    #: Weight of the hint's mean squared error (mdistiller uses 100 on CIFAR).
    weight: float = 100.0
    standardize: bool = False

    def check(self, path: str) -> None:
        in_range(f"{path}.weight", self.weight, 0.0, float("inf"))


def regressor(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    """conv1×1 between feature maps, linear between anything else (flattened)."""
    if student.dim() == 4 and teacher.dim() == 4:
        return nn.Conv2d(student.shape[1], teacher.shape[1], kernel_size=1)
    return nn.Linear(student[0].numel(), teacher[0].numel())


def hint_loss(regressed: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error; feature maps of different sizes are pooled to the teacher's."""
    if regressed.dim() == 4 and regressed.shape[2:] != teacher.shape[2:]:
        regressed = F.adaptive_avg_pool2d(regressed, (teacher.shape[2], teacher.shape[3]))
    return F.mse_loss(regressed.flatten(1).float(), teacher.flatten(1).float())


@register("fitnets")
class FitNets(Method):
    """Hinton's loss plus ``weight``·MSE(regressor(student feature), teacher feature)."""

    Options = FitNetsOptions
    options: FitNetsOptions
    needs_online_teacher = True

    def __init__(self, temperature: float, alpha: float, options: FitNetsOptions) -> None:
        super().__init__(temperature, alpha, options)
        self.regressor: nn.Module | None = None

    def student_layers(self) -> tuple[str, ...]:
        return (self.options.student_layer,)

    def teacher_layers(self) -> tuple[str, ...]:
        return (self.options.teacher_layer,)

    def build(
        self, student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]
    ) -> None:
        self.regressor = regressor(
            student_features[self.options.student_layer],
            teacher_features[self.options.teacher_layer],
        )

    def terms(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        out = hinton_terms(
            batch.student_logits,
            batch.teacher_logits,
            batch.labels,
            self.temperature,
            self.alpha,
            self.options.standardize,
        )
        feature = batch.student_features[self.options.student_layer]
        if isinstance(self.regressor, nn.Linear):
            feature = feature.flatten(1)
        target = batch.teacher_features[self.options.teacher_layer].detach()
        assert self.regressor is not None  # build() made it from the probe batch
        out["hint"] = self.options.weight * hint_loss(self.regressor(feature), target)
        return out
