"""DKD, DIST, logit standardization and the FitNets hint against float64 formulas.

Every reference is written out in numpy from the papers' definitions (no torch losses and no
kdsearch helpers), so a wrong term, weight, mask or reduction in kdsearch shows up here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsearch.data.datasets import UNLABELED
from kdsearch.distill import Batch, FitNets, dist_loss, dkd_loss, get, kd_loss
from kdsearch.distill.base import cross_entropy, standardize
from kdsearch.distill.dist import DISTOptions, dist_terms
from kdsearch.distill.dkd import DKDOptions, dkd_terms
from kdsearch.distill.fitnets import FitNetsOptions
from kdsearch.distill.hinton import hinton_terms
from kdsearch.errors import KDSearchError

SETTINGS = [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0), (4.0, 1.0, 8.0), (8.0, 0.3, 4.0)]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def _ce(s: np.ndarray, y: np.ndarray) -> float:
    labeled = y != UNLABELED
    p = _softmax(s)
    return float(-np.log(p[labeled.nonzero()[0], y[labeled]]).sum() / max(1, labeled.sum()))


def _zscore(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def dkd_reference(s, t, y, temp, alpha, beta, warm=1.0, standardized=False) -> float:
    """CE + w·(α·KL(b_t‖b_s) + β·KL(q_t‖q_s))·T², b = [p_target, 1 − p_target], q = the
    softmax over the non-target classes only; unlabeled rows take the teacher's argmax."""
    s, t, y = s.double().numpy(), t.double().numpy(), y.numpy()
    target = np.where(y == UNLABELED, t.argmax(axis=1), y)
    ce = _ce(s, y)
    if standardized:
        s, t = _zscore(s), _zscore(t)
    tckd, nckd = [], []
    for i in range(len(s)):
        ps, pt = _softmax(s[i : i + 1] / temp)[0], _softmax(t[i : i + 1] / temp)[0]
        k = target[i]
        bs, bt = np.array([ps[k], 1 - ps[k]]), np.array([pt[k], 1 - pt[k]])
        tckd.append((bt * np.log(bt / bs)).sum())
        rest = [c for c in range(s.shape[1]) if c != k]
        qs = _softmax(s[i : i + 1, rest] / temp)[0]
        qt = _softmax(t[i : i + 1, rest] / temp)[0]
        nckd.append((qt * np.log(qt / qs)).sum())
    kd = alpha * np.mean(tckd) + beta * np.mean(nckd)
    return float(ce + warm * kd * temp * temp)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def dist_reference(s, t, y, temp, alpha, beta, gamma, standardized=False) -> float:
    """CE + α·T²·(β·(1 − mean_i ρ(p_s[i], p_t[i])) + γ·(1 − mean_c ρ(p_s[:, c], p_t[:, c])))."""
    s, t, y = s.double().numpy(), t.double().numpy(), y.numpy()
    ce = _ce(s, y)
    if standardized:
        s, t = _zscore(s), _zscore(t)
    ps, pt = _softmax(s / temp), _softmax(t / temp)
    inter = 1 - np.mean([_pearson(ps[i], pt[i]) for i in range(len(ps))])
    intra = 1 - np.mean([_pearson(ps[:, c], pt[:, c]) for c in range(ps.shape[1])])
    return float(ce + alpha * temp * temp * (beta * inter + gamma * intra))


def hinton_reference(s, t, y, temp, alpha, standardized=False) -> float:
    s, t, y = s.double().numpy(), t.double().numpy(), y.numpy()
    ce = _ce(s, y)
    if standardized:
        s, t = _zscore(s), _zscore(t)
    kl = _kl_rows(_softmax(t / temp), _softmax(s / temp)).mean()
    return float((1 - alpha) * ce + alpha * temp * temp * kl)


def _batch(seed: int, n: int = 32, classes: int = 10, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(n, classes, generator=gen) * scale
    teacher = torch.randn(n, classes, generator=gen) * scale
    labels = torch.randint(classes, (n,), generator=gen)
    return student, teacher, labels


def _method_loss(name: str, s, t, y, temp, alpha, epoch=100, **kwargs) -> float:
    method = get(name)(temp, alpha, get(name).Options(**kwargs))
    return sum(method(Batch(s, t, y), epoch).values()).item()


@pytest.mark.parametrize(("temp", "alpha", "beta"), SETTINGS)
def test_dkd_matches_float64(temp: float, alpha: float, beta: float) -> None:
    s, t, y = _batch(seed=int(temp * 7 + beta))
    ours = dkd_loss(s, t, y, temperature=temp, alpha=alpha, beta=beta).item()
    assert ours == pytest.approx(dkd_reference(s, t, y, temp, alpha, beta), rel=1e-5, abs=1e-5)


def test_dkd_warmup_factor_scales_only_the_kd_part() -> None:
    s, t, y = _batch(seed=11)
    ours = dkd_loss(s, t, y, temperature=4.0, alpha=1.0, beta=8.0, warmup_factor=0.25).item()
    ref = dkd_reference(s, t, y, 4.0, 1.0, 8.0, warm=0.25)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_dkd_unlabeled_rows_use_the_teachers_argmax() -> None:
    """Labels of -100 leave the CE (mean over labeled rows) and split at the teacher's top class."""
    s, t, y = _batch(seed=12, n=40)
    y = y.clone()
    y[::3] = UNLABELED
    ours = dkd_loss(s, t, y, temperature=4.0, alpha=1.0, beta=8.0).item()
    assert ours == pytest.approx(dkd_reference(s, t, y, 4.0, 1.0, 8.0), rel=1e-5, abs=1e-5)
    hidden = torch.full_like(y, UNLABELED)
    as_labels = dkd_loss(s, t, t.argmax(1), temperature=4.0, alpha=1.0, beta=8.0)
    as_unlabeled = dkd_loss(s, t, hidden, temperature=4.0, alpha=1.0, beta=8.0)
    ce_of_argmax = _ce(s.double().numpy(), t.argmax(1).numpy())
    assert (as_labels - as_unlabeled).item() == pytest.approx(ce_of_argmax, rel=1e-5)


def test_dkd_method_warms_up_over_epochs() -> None:
    """The method's weight is min(epoch / warmup, 1), epochs counted from 1."""
    s, t, y = _batch(seed=13)
    for epoch, warm in ((0, 0.2), (2, 0.6), (4, 1.0), (9, 1.0)):
        ours = _method_loss("dkd", s, t, y, 4.0, 1.0, epoch=epoch, beta=2.0, warmup=5)
        ref = dkd_reference(s, t, y, 4.0, 1.0, 2.0, warm=warm)
        assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5), epoch


@pytest.mark.parametrize(("temp", "alpha", "beta"), SETTINGS)
def test_dist_matches_float64(temp: float, alpha: float, beta: float) -> None:
    s, t, y = _batch(seed=int(temp * 3 + beta))
    gamma = 3.0 - alpha
    ours = dist_loss(s, t, y, temperature=temp, alpha=alpha, beta=beta, gamma=gamma).item()
    ref = dist_reference(s, t, y, temp, alpha, beta, gamma)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(("temp", "alpha", "beta"), SETTINGS)
@pytest.mark.parametrize("method", ["hinton", "dkd", "dist"])
def test_standardize_z_scores_both_logits(method: str, temp: float, alpha: float, beta: float):
    """``standardize: true`` z-scores both logits (sample std) before T; CE keeps raw logits."""
    s, t, y = _batch(seed=int(temp * 5 + beta), scale=5.0)
    s = s + 3.0  # a shift and a scale that standardization removes
    if method == "hinton":
        ours = _method_loss("hinton", s, t, y, temp, alpha, standardize=True)
        ref = hinton_reference(s, t, y, temp, alpha, standardized=True)
    elif method == "dkd":
        ours = _method_loss("dkd", s, t, y, temp, alpha, beta=beta, warmup=0, standardize=True)
        ref = dkd_reference(s, t, y, temp, alpha, beta, standardized=True)
    else:
        ours = _method_loss("dist", s, t, y, temp, alpha, beta=beta, gamma=1.0, standardize=True)
        ref = dist_reference(s, t, y, temp, alpha, beta, 1.0, standardized=True)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_hinton_method_sums_to_kd_loss_for_every_setting() -> None:
    s, t, y = _batch(seed=14)
    for temp, alpha, _ in SETTINGS:
        ours = _method_loss("hinton", s, t, y, temp, alpha)
        assert ours == pytest.approx(kd_loss(s, t, y, temp, alpha).item(), rel=1e-6)


@pytest.mark.parametrize("method", ["hinton", "dkd", "dist"])
def test_without_teacher_every_method_is_cross_entropy(method: str) -> None:
    """The baseline (no teacher logits) is the labeled CE, whatever the method."""
    s, _, y = _batch(seed=15)
    terms = get(method)(4.0, 0.9, get(method).Options())(Batch(s, None, y), 0)
    assert list(terms) == ["ce"]
    assert terms["ce"].item() == pytest.approx(_ce(s.double().numpy(), y.numpy()), rel=1e-5)


@pytest.mark.parametrize(("temp", "alpha", "weight"), [(4.0, 0.9, 100.0), (2.0, 0.0, 1.0)])
def test_fitnets_hint_matches_float64(temp: float, alpha: float, weight: float) -> None:
    """Hinton's terms plus weight·mean((W·f_s + b − f_t)²) with W the 1×1 conv regressor."""
    gen = torch.Generator().manual_seed(16)
    fs, ft = torch.randn(6, 3, 4, 4, generator=gen), torch.randn(6, 5, 4, 4, generator=gen)
    s, t, y = _batch(seed=16, n=6)
    method = FitNets(temp, alpha, FitNetsOptions("a", "b", weight=weight))
    method.build({"a": fs}, {"b": ft})
    terms = method(Batch(s, t, y, {"a": fs}, {"b": ft}), epoch=0)
    w = method.regressor.weight.detach().double().numpy()[:, :, 0, 0]
    b = method.regressor.bias.detach().double().numpy()
    regressed = np.einsum("oc,nchw->nohw", w, fs.double().numpy()) + b[None, :, None, None]
    hint = ((regressed - ft.double().numpy()) ** 2).mean()
    ref = hinton_reference(s, t, y, temp, alpha) + weight * hint
    assert sum(terms.values()).item() == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert terms["hint"].item() == pytest.approx(weight * hint, rel=1e-5)


def test_fitnets_regressor_gets_gradients_and_maps_vectors_linearly() -> None:
    gen = torch.Generator().manual_seed(17)
    fs = torch.randn(6, 7, generator=gen, requires_grad=True)
    ft = torch.randn(6, 2, 3, 3, generator=gen)
    s, t, y = _batch(seed=17, n=6)
    method = FitNets(4.0, 0.5, FitNetsOptions("a", "b"))
    method.build({"a": fs}, {"b": ft})
    assert isinstance(method.regressor, torch.nn.Linear)
    assert method.regressor.weight.shape == (18, 7)
    sum(method(Batch(s, t, y, {"a": fs}, {"b": ft}), 0).values()).backward()
    assert method.regressor.weight.grad.abs().sum() > 0
    assert fs.grad.abs().sum() > 0


def test_terms_are_named_for_the_trial_record_and_options_keep_their_bounds() -> None:
    """The term names are what each trial stores in ``loss_terms``; alpha 0 is the plain
    baseline (cross-entropy alone); an option at its lower bound is valid, below it is not."""
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert set(hinton_terms(s, t, y, 4.0, 0.5)) == {"ce", "kd"}
    assert set(hinton_terms(s, t, y, 4.0, 0.0)) == {"ce"}
    assert set(dkd_terms(s, t, y, temperature=4.0, alpha=1.0, beta=8.0)) == {"ce", "tckd", "nckd"}
    assert set(dist_terms(s, t, y, temperature=4.0, alpha=1.0, beta=1.0, gamma=1.0)) == {
        "ce",
        "inter",
        "intra",
    }
    one = torch.full((6,), UNLABELED)
    one[2] = 2  # one labeled image: its own cross-entropy, not half of it
    assert cross_entropy(s, one).item() == pytest.approx(_ce(s.numpy()[2:3], np.array([2])))
    z = standardize(s + 3.0)
    assert torch.allclose(z.mean(dim=1), torch.zeros(6), atol=1e-6)
    assert torch.allclose(z.std(dim=1), torch.ones(6), atol=1e-5)

    DKDOptions(beta=0.5, warmup=0).check("distill.options")
    DISTOptions(beta=0.5, gamma=0.5).check("distill.options")
    with pytest.raises(KDSearchError, match=r"^distill\.options\.beta"):
        DKDOptions(beta=-1.0).check("distill.options")
    with pytest.raises(KDSearchError, match=r"^distill\.options\.warmup"):
        DKDOptions(warmup=-1).check("distill.options")
    with pytest.raises(KDSearchError, match=r"^distill\.options\.gamma"):
        DISTOptions(gamma=-1.0).check("distill.options")
