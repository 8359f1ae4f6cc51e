"""Configurations ranked by their mean over seeds, with the seed noise and the ties it leaves.

A search trial is one seed of its configuration; its confirmation trials
(:mod:`kdsearch.search.confirm`) are more. :func:`rank` groups them, ranks configurations by
mean validation accuracy and says which of them the data cannot tell apart from the winner.

The test, and why:

- **Seed noise is pooled.** A configuration's spread over seeds is estimated from all
  configurations with two or more seeds together (the pooled within-configuration standard
  deviation, as in a one-way ANOVA), with sum(n - 1) degrees of freedom. Three seeds give a
  poor std of their own (its 95 % interval spans 0.5x-6x), while on CIFAR-10 the measured
  std of the top configurations differed by less than that (docs/cifar10.md: 0.19-0.57
  points); pooling is what lets a configuration with a single seed be tested at all.
- **One-sided t-test against the winner at 5 %.** A configuration is *tied* with the winner
  when a pooled-variance t-test cannot reject, at the 5 % level, that its mean equals the
  winner's, against the alternative that the winner is better. One-sided because the winner
  was picked as the largest mean: the question is only whether its lead is real. Welch's
  test would need a variance per configuration, which one seed does not have.
- **Confirmed first.** Once a study has confirmation trials, only confirmed configurations
  (two or more seeds) can be the winner: the unconfirmed ones all had a worse first seed than
  every confirmed one, and a single seed is the lucky draw confirmation exists to correct.
  They are ranked after the confirmed ones, by their one value, and still tested for ties.

A study without any configuration of two seeds keeps its single-seed order, and every reader
says that the order is not tested. So does a study whose repeated configurations each scored
exactly the same on every seed (a small validation split makes accuracy coarse: 144 digits
images move it in steps of 0.69 points): a measured noise of 0 is not a noise of 0, and a test
on it would call any one-image lead real.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdsearch.search import ranking

#: The test's level: one-sided, winner better.
LEVEL = 0.05


@dataclass(frozen=True)
class Configuration:
    """One configuration: the search trial that found it and its complete re-runs."""

    trial: Any
    runs: tuple[Any, ...]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def values(self) -> list[float]:
        """Validation accuracy per seed, the search trial's first."""
        return [float(t.values[0]) for t in self.runs]

    @property
    def seeds(self) -> list[int | None]:
        return [t.user_attrs.get(ranking.SEED) for t in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None with one seed)."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def tests(self) -> list[float]:
        """Test accuracy of each run's best-epoch checkpoint (runs that stored one)."""
        found = (t.user_attrs.get("test_accuracy") for t in self.runs)
        return [float(v) for v in found if v is not None]

    @property
    def test_mean(self) -> float | None:
        return statistics.fmean(self.tests) if self.tests else None

    @property
    def test_std(self) -> float | None:
        return statistics.stdev(self.tests) if len(self.tests) > 1 else None


@dataclass(frozen=True)
class Row:
    """A configuration's place in the ranking and how it compares with the winner."""

    rank: int
    configuration: Configuration
    #: Half-width of the 95 % confidence interval of the mean (pooled noise); None untested.
    ci95: float | None
    #: One-sided p-value of "the winner is better"; None for the winner and when untested.
    p_value: float | None
    #: Whether the test cannot tell it from the winner (always False for the winner itself).
    tied: bool


@dataclass(frozen=True)
class Ranking:
    """Configurations best first, and the study's seed noise."""

    rows: list[Row]
    #: Pooled standard deviation of validation accuracy over seeds; None without repeats.
    noise: float | None
    #: Its degrees of freedom, sum(n - 1) over configurations.
    df: int

    @property
    def tested(self) -> bool:
        return self.noise is not None

    @property
    def winner(self) -> Configuration | None:
        return self.rows[0].configuration if self.rows else None

    @property
    def ties(self) -> int:
        """Configurations other than the winner that the test cannot tell apart from it."""
        return sum(r.tied for r in self.rows)

    @property
    def resolution(self) -> float | None:
        """The smallest lead this study resolves between two configurations run with as many
        seeds as the winner (the one-sided least significant difference); None untested."""
        if self.noise is None or self.winner is None:
            return None
        from scipy import stats

        n = self.winner.n
        return float(stats.t.ppf(1 - LEVEL, self.df) * self.noise * math.sqrt(2 / n))

    def summary(self) -> str:
        """The noise as a sentence, for every report."""
        if not self.rows:
            return "no complete trial yet"
        if not self.tested and self.df > 0:
            return (
                "every repeated configuration scored the same on each of its seeds: the seed "
                "noise cannot be estimated and the order is not tested (more seeds, or a "
                "larger validation split, would tell)"
            )
        if not self.tested:
            return (
                "single seed per configuration: the order is not tested (seed noise is "
                "unknown; add search.confirm or run `kdsearch confirm`)"
            )
        w = self.winner
        assert w is not None and self.noise is not None and self.resolution is not None
        own = f", the winner's own {100 * w.std:.2f}" if w.std is not None else ""
        return (
            f"seed noise {100 * self.noise:.2f} points (pooled std, {self.df} degrees of "
            f"freedom{own}); differences under {100 * self.resolution:.2f} points between "
            f"configurations of {w.n} seeds are not resolved by this study; "
            f"{self.ties} of {len(self.rows) - 1} other configurations tied with the winner "
            f"(one-sided pooled t-test, {LEVEL:.0%})"
        )


def configurations(study: Any, trials: list[Any] | None = None) -> list[Configuration]:
    """The search trials of ``trials`` (default: every complete feasible one), each with its
    complete confirmation trials (one per seed)."""
    import optuna

    pool = ranking.complete(study) if trials is None else trials
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    extra: dict[int, dict[Any, Any]] = {}
    for t in sorted(done, key=lambda t: t.number):
        if ranking.is_confirmation(t):
            seeds = extra.setdefault(t.user_attrs[ranking.CONFIRM_OF], {})
            seeds.setdefault(t.user_attrs.get(ranking.SEED), t)  # a raced duplicate: the first
    return [Configuration(t, (t, *extra.get(t.number, {}).values())) for t in pool]


def rank(study: Any, budgets: Mapping[str, float] | None = None) -> Ranking:
    """Configurations within ``budgets`` (costs at most these), ranked as the module says."""

    def within(t: Any) -> bool:
        costs = {m: ranking.cost(t, m) for m in budgets or {}}
        return all(c is not None and c <= (budgets or {})[m] for m, c in costs.items())

    pool = [t for t in ranking.complete(study) if within(t)]
    return assess(configurations(study, pool), ranking.sign(study))


def assess(configs: list[Configuration], sign: int = 1) -> Ranking:
    """Rank ``configs`` (``sign`` -1: lower accuracy is better) and test each against the
    winner."""
    from scipy import stats

    repeated = [c for c in configs if c.n > 1]
    df = sum(c.n - 1 for c in repeated)
    noise = None
    if df > 0:
        squares = sum((v - c.mean) ** 2 for c in repeated for v in c.values)
        noise = math.sqrt(squares / df) or None  # identical seeds: untestable, not noiseless
    order = sorted(configs, key=lambda c: (not (repeated and c.n > 1), -sign * c.mean))
    rows = []
    for i, c in enumerate(order):
        ci = p = None
        tied = False
        if noise is not None:
            ci = float(stats.t.ppf(0.975, df) * noise / math.sqrt(c.n))
            if i > 0:
                lead = sign * (order[0].mean - c.mean)
                se = noise * math.sqrt(1 / order[0].n + 1 / c.n)
                p = float(stats.t.sf(lead / se, df)) if se > 0 else float(lead <= 0)
                tied = p > LEVEL
        rows.append(Row(i + 1, c, ci, p, tied))
    return Ranking(rows, noise, df)
