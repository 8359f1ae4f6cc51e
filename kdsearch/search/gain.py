"""What distilling gained: the confirmed best of the distilled study minus the confirmed best
of its tuned baseline arm (``search.baseline``), with a 95 % interval.

Each arm is ranked on its own (:func:`kdsearch.search.confidence.rank`): its winner is the
configuration with the best mean validation accuracy over seeds, the confirmed ones first. The
gain is the difference of the two winners' means. Its interval combines each arm's seed noise
(the pooled standard deviation, which gives even a configuration of few seeds an honest
spread) as Welch's test does for two groups of unequal variance: standard error
sqrt(s_d^2/n_d + s_b^2/n_b), degrees of freedom by Welch-Satterthwaite from each arm's pooled
degrees of freedom. The gain is *resolved* when that two-sided interval leaves out 0.

The test accuracy gain is the difference of the two winners' mean test accuracies; its
interval is Welch's from the winners' own test accuracies, when each has two or more.

Both are the winners' means, and a winner is picked as the largest of many: its own search
trial is a lucky draw, which confirmation dilutes but does not remove, in both arms alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdsearch.search import confidence


@dataclass(frozen=True)
class Arm:
    """One arm's winner: its study, trial and means over its seeds."""

    study: str
    trial: int
    n: int
    val_mean: float
    test_mean: float | None


@dataclass(frozen=True)
class Gain:
    """Distilled minus baseline, in accuracy (0.02 is two points)."""

    distilled: Arm
    baseline: Arm
    val_gain: float
    #: Half-width of the 95 % interval of ``val_gain``; None while an arm's noise is unknown.
    val_ci95: float | None
    test_gain: float | None
    #: Half-width of the 95 % interval of ``test_gain``; None without two tests in each arm.
    test_ci95: float | None

    @property
    def resolved(self) -> bool:
        """Whether the 95 % interval of the validation gain leaves out 0."""
        return self.val_ci95 is not None and abs(self.val_gain) > self.val_ci95

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the sentence every reader shows."""
        return {
            "val_gain": self.val_gain,
            "val_ci95": self.val_ci95,
            "resolved": self.resolved,
            "test_gain": self.test_gain,
            "test_ci95": self.test_ci95,
            "distilled": vars(self.distilled),
            "baseline": vars(self.baseline),
            "summary": self.sentence(),
        }

    def sentence(self) -> str:
        """The gain in words: points, interval, and what it rests on."""
        d, b = self.distilled, self.baseline
        val = f"{100 * self.val_gain:+.2f} points of validation accuracy"
        if self.val_ci95 is None:
            val += " (not tested: an arm has no repeated seeds, so its noise is unknown)"
        else:
            verdict = "resolved" if self.resolved else "not resolved: the interval holds 0"
            val += f" (95% interval ± {100 * self.val_ci95:.2f}, {verdict})"
        test = ""
        if self.test_gain is not None:
            spread = f" ± {100 * self.test_ci95:.2f}" if self.test_ci95 is not None else ""
            test = f", {100 * self.test_gain:+.2f}{spread} of test accuracy"
        return (
            f"distilling gained {val}{test}: {d.study} trial {d.trial} ({d.n} seeds) against "
            f"the tuned baseline {b.study} trial {b.trial} ({b.n} seeds)"
        )


def _welch(parts: list[tuple[float, float]]) -> float | None:
    """Half-width of the 95 % interval of a difference of two means from each mean's
    (variance of the mean, degrees of freedom); None when it cannot be told."""
    from scipy import stats

    if any(df <= 0 for _, df in parts):
        return None
    var = sum(v for v, _ in parts)
    if var <= 0:
        return None
    df = var**2 / sum(v**2 / df for v, df in parts)
    return float(stats.t.ppf(0.975, df) * math.sqrt(var))


def compare(distilled: Any, baseline: Any) -> Gain | None:
    """The gain of Optuna study ``distilled`` over ``baseline``; None until both have a
    complete trial."""
    ranked = confidence.rank(distilled), confidence.rank(baseline)
    d, b = ranked[0].winner, ranked[1].winner
    if d is None or b is None:
        return None
    val_parts = []
    for r, w in ((ranked[0], d), (ranked[1], b)):
        if r.noise is not None:
            val_parts.append((r.noise**2 / w.n, float(r.df)))
    test_parts = []
    for w in (d, b):
        if w.test_std is not None:
            test_parts.append((w.test_std**2 / len(w.tests), float(len(w.tests) - 1)))
    test_gain = None
    if d.test_mean is not None and b.test_mean is not None:
        test_gain = d.test_mean - b.test_mean
    return Gain(
        distilled=Arm(distilled.study_name, d.trial.number, d.n, d.mean, d.test_mean),
        baseline=Arm(baseline.study_name, b.trial.number, b.n, b.mean, b.test_mean),
        val_gain=d.mean - b.mean,
        val_ci95=_welch(val_parts) if len(val_parts) == 2 else None,
        test_gain=test_gain,
        test_ci95=_welch(test_parts) if len(test_parts) == 2 and test_gain is not None else None,
    )


def of_study(study: Any) -> Gain | None:
    """The gain of a study made with ``search.baseline`` over its baseline arm, read from the
    same storage; None for a study without one, or before both arms have a complete trial."""
    import optuna

    from kdsearch.search import study as studies

    sibling = study.user_attrs.get(studies.BASELINE_STUDY_ATTR)
    if sibling is None:
        return None
    storage = study._storage  # the distilled study's own storage: the arms live together
    return compare(study, optuna.load_study(study_name=sibling, storage=storage))
