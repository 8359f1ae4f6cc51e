"""Racing: confirmation seeds spent only where the order is still open.

Today's confirmation (:mod:`kdsearch.search.confirm`) gives each of the top K configurations
the same N new seeds, whether it is already clearly behind the leader or tied with it. Racing
spends them a round at a time instead:

- **Round 1**: each of the top K configurations gets one new seed (with one seed each there is
  no seed noise to test with).
- **After each round** the K configurations are ranked and tested with
  :func:`kdsearch.search.confidence.assess` (pooled seed noise over all of them, one-sided
  pooled t-test against the leader at ``level``): those clearly behind the leader get no more
  seeds; the leader and those tied with it get one more each, up to ``seeds`` new seeds per
  configuration and ``cap`` new runs in all.
- **It stops** when only the leader is left, when everyone left has its ``seeds``, or when the
  cap is spent.

:func:`next_round` is a pure function of the values seen so far, not of the rounds before: a
configuration dropped once comes back if the leader's lead melts with more seeds, and any
worker can ask it again at any time and get the same answer (as :func:`confirm.enqueue` is
idempotent). An untested order (every repeated configuration scored the same on each seed: the
noise cannot be estimated) keeps everyone in the race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kdsearch.search import confidence


@dataclass(frozen=True)
class Policy:
    """Racing's settings; the defaults spend at most what ``confirm: {top: 3, seeds: 3}`` does."""

    #: Configurations in the race: the K best by their search trial.
    top: int = 3
    #: New seeds at most per configuration (the search trial's own seed not counted).
    seeds: int = 3
    #: One-sided level of the test that drops a configuration (confidence.LEVEL by default).
    level: float = confidence.LEVEL
    #: New runs at most over all configurations; None: top x seeds.
    cap: int | None = None

    @property
    def budget(self) -> int:
        return self.top * self.seeds if self.cap is None else self.cap


def next_round(observed: Sequence[Sequence[float]], policy: Policy, sign: int = 1) -> list[int]:
    """Indices into ``observed`` of the configurations that get one more seed now; [] to stop.

    ``observed`` holds, per candidate configuration best first by its search trial, its values
    so far: the search trial's first, then its confirmation runs. Only the first
    ``policy.top`` take part. ``sign`` -1: lower is better.
    """
    racing = list(observed[: policy.top])
    if any(not values for values in racing):
        raise ValueError("racing: every configuration needs its search trial's value")
    spent = sum(len(values) - 1 for values in racing)
    left = policy.budget - spent
    if left <= 0:
        return []
    fresh = [i for i, values in enumerate(racing) if len(values) == 1]
    if fresh:
        return fresh[:left]
    alive = contenders(racing, policy.level, sign)
    if len(alive) == 1:
        return []
    more = [i for i in alive if len(racing[i]) - 1 < policy.seeds]
    return more[:left]


def contenders(observed: Sequence[Sequence[float]], level: float, sign: int = 1) -> list[int]:
    """Indices of the leader (first) and of the configurations the test cannot tell from it,
    best mean first; everyone, by mean, when the order cannot be tested."""
    configs = [_configuration(values) for values in observed]
    index = {id(c): i for i, c in enumerate(configs)}
    return [
        index[id(row.configuration)]
        for row in confidence.assess(configs, sign).rows
        if row.rank == 1 or row.p_value is None or row.p_value > level
    ]


def _configuration(values: Sequence[float]) -> confidence.Configuration:
    """``values`` as a configuration of complete trials, one per seed, for
    :func:`confidence.assess` (which reads each run's value as Optuna stores it)."""
    import optuna

    runs = tuple(
        optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=v) for v in values
    )
    return confidence.Configuration(runs[0], runs)


def race(
    runs: Sequence[Sequence[float]], policy: Policy, sign: int = 1
) -> tuple[list[list[float]], bool]:
    """Racing replayed on runs already made: ``runs`` per configuration (search trial's value,
    then its confirmation runs in seed order); each round takes the next unused run of each
    configuration it picks. Returns the values it used per configuration and whether it
    stopped only because a picked configuration had no run left."""
    seen = [list(values[:1]) for values in runs]
    while picked := next_round(seen, policy, sign):
        if any(len(seen[i]) >= len(runs[i]) for i in picked):
            return seen, True
        for i in picked:
            seen[i].append(runs[i][len(seen[i])])
    return seen, False
