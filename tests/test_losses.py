"""``kdsearch.distill.kd_loss`` against an independent float64 computation of Hinton's loss.

The reference is written out by hand in numpy: ``(1-α)·CE + α·T²·Σ_c p_t·(log p_t − log p_s)``,
the KL term averaged over the batch and the CE term over the labeled examples only.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdsearch import distill
from kdsearch.data.datasets import UNLABELED
from kdsearch.distill import Batch, kd_loss

TEMPERATURES = [1.0, 2.0, 4.0, 20.0]
ALPHAS = [0.0, 0.3, 0.9, 1.0]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float, a: float
) -> float:
    """Hinton's loss in float64 numpy, from the formula (no torch loss functions)."""
    s = student.detach().double().numpy()
    te = teacher.detach().double().numpy()
    y = labels.numpy()
    labeled = y != UNLABELED
    log_p = _log_softmax(s)
    ce_terms = -log_p[labeled.nonzero()[0], y[labeled]]
    ce = ce_terms.sum() / max(1, labeled.sum())
    log_ps, log_pt = _log_softmax(s / t), _log_softmax(te / t)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean()
    return float((1 - a) * ce + a * t * t * kl)


def _batch(
    seed: int, n: int = 32, classes: int = 10, scale: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(n, classes, generator=gen) * scale
    teacher = torch.randn(n, classes, generator=gen) * scale
    labels = torch.randint(classes, (n,), generator=gen)
    return student, teacher, labels


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_matches_float64_reference(temperature: float, alpha: float) -> None:
    """kd_loss equals the hand-written float64 formula within 1e-5 (float32 inputs)."""
    student, teacher, labels = _batch(seed=int(temperature * 10 + alpha * 100))
    ours = kd_loss(student, teacher, labels, temperature, alpha).item()
    ref = reference(student, teacher, labels, temperature, alpha)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_float64_inputs_match_to_rounding(temperature: float) -> None:
    """In float64 the loss equals the reference to ~1e-10, so no term is approximated."""
    student, teacher, labels = _batch(seed=7, classes=100)
    ours = kd_loss(student.double(), teacher.double(), labels, temperature, 0.7).item()
    ref = reference(student, teacher, labels, temperature, 0.7)
    assert ours == pytest.approx(ref, rel=1e-10, abs=1e-10)


def test_registry_serves_kd_loss() -> None:
    """``distill.loss: hinton`` is the method whose terms sum to this function."""
    student, teacher, labels = _batch(seed=8)
    method = distill.get("hinton")(4.0, 0.7, distill.get("hinton").Options())
    terms = method(Batch(student, teacher, labels), epoch=0)
    assert set(terms) == {"ce", "kd"}
    torch.testing.assert_close(sum(terms.values()), kd_loss(student, teacher, labels, 4.0, 0.7))


def test_alpha_zero_is_cross_entropy() -> None:
    """alpha=0 is plain cross-entropy, whatever the teacher says (or without a teacher)."""
    student, teacher, labels = _batch(seed=1)
    ce = F.cross_entropy(student, labels)
    torch.testing.assert_close(kd_loss(student, teacher, labels, 4.0, 0.0), ce)
    torch.testing.assert_close(kd_loss(student, None, labels, 4.0, 0.0), ce)
    torch.testing.assert_close(kd_loss(student, teacher * 50, labels, 1.0, 0.0), ce)


def test_alpha_one_ignores_labels() -> None:
    """alpha=1 is only the distillation term: relabeling or hiding labels changes nothing."""
    student, teacher, labels = _batch(seed=2)
    base = kd_loss(student, teacher, labels, 4.0, 1.0)
    hidden = torch.full_like(labels, UNLABELED)
    torch.testing.assert_close(kd_loss(student, teacher, (labels + 1) % 10, 4.0, 1.0), base)
    torch.testing.assert_close(kd_loss(student, teacher, hidden, 4.0, 1.0), base)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_unlabeled_left_out_of_ce_but_kept_in_kl(alpha: float) -> None:
    """Labels of -100 drop out of the CE mean (count = labeled only); KL averages all rows."""
    student, teacher, labels = _batch(seed=3, n=40)
    labels = labels.clone()
    labels[::3] = UNLABELED
    labeled = labels != UNLABELED
    ours = kd_loss(student, teacher, labels, 4.0, alpha)
    ref = reference(student, teacher, labels, 4.0, alpha)
    assert ours.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # The same split of terms, spelled with torch: CE over labeled rows, KL over all 40 rows.
    ce = F.cross_entropy(student[labeled], labels[labeled])
    kl_all = kd_loss(student, teacher, torch.full_like(labels, UNLABELED), 4.0, 1.0)
    torch.testing.assert_close(ours, (1 - alpha) * ce + alpha * kl_all)
    # Unlabeled rows still pull on the student through the teacher (when alpha > 0) only.
    student = student.clone().requires_grad_(True)
    kd_loss(student, teacher, labels, 4.0, alpha).backward()
    unlabeled_grad = student.grad[~labeled].abs().sum().item()
    assert (unlabeled_grad > 0) == (alpha > 0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_all_unlabeled_batch_is_finite(alpha: float) -> None:
    """A batch with no labels gives a finite loss (0 CE, no 0/0) and finite gradients."""
    student, teacher, _ = _batch(seed=4, n=8)
    labels = torch.full((8,), UNLABELED)
    student.requires_grad_(True)
    loss = kd_loss(student, teacher, labels, 4.0, alpha)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(reference(student, teacher, labels, 4.0, alpha), abs=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_identical_logits_give_zero_kl() -> None:
    """Student equal to teacher: the KL term is zero at every temperature."""
    student, _, labels = _batch(seed=5)
    for t in TEMPERATURES:
        assert kd_loss(student, student.clone(), labels, t, 1.0).item() == pytest.approx(
            0.0, abs=1e-5
        )


@pytest.mark.parametrize("classes", [10, 100])
def test_reference_kldivloss_was_num_classes_too_weak(classes: int) -> None:
    """The 2018 reference's ``nn.KLDivLoss()`` (mean over batch×classes) is our KL / C.

    Documents the bug kdsearch fixed: the reference's distillation term was divided by the
    number of classes (10× weaker on CIFAR-10, 100× on CIFAR-100).
    """
    student, teacher, labels = _batch(seed=6, n=16, classes=classes)
    t, alpha = 4.0, 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that reduction="mean" is not batchmean
        ref_kl = torch.nn.KLDivLoss()(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1))
    ref_term = alpha * t * t * ref_kl
    ours_total = kd_loss(student, teacher, labels, t, alpha)
    ours_term = ours_total - (1 - alpha) * F.cross_entropy(student, labels)
    assert ours_term.item() == pytest.approx(classes * ref_term.item(), rel=1e-5)
    assert ours_term.item() > ref_term.item() * (classes - 1)
