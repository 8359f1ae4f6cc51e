"""What a study optimizes, and which of its trials count: objectives, constraints, the best.

A study maximizes validation accuracy, alone or (``search.objectives``) together with costs of
the student to minimize. Each cost is measured before training (:mod:`kdsearch.nets.cost`) and
stored as a trial user attribute; :data:`kdsearch.config.metrics.METRICS` maps the spec's
names to those attributes.

``search.constraints`` puts a ceiling on a cost. The objective stores each ceiling's excess
(value minus max, feasible when <= 0) with Optuna's ``Trial.set_constraint``, which Optuna's
samplers (TPE, NSGA-II) and ``best_trials`` read, and prunes a trial over a ceiling before
training.
Every reader of a study (best, export, status, report) ranks trials through this module, so
none of them can report a trial over a ceiling, and all of them read accuracy the same way,
whether the study has one objective or several.

Confirmation trials (:mod:`kdsearch.search.confirm`) re-run a search trial's configuration
with another seed. They are not candidates of their own: :func:`complete`, :func:`best` and
:func:`pareto` see search trials only, and :mod:`kdsearch.search.confidence` folds the
confirmations into their configuration's mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdsearch.config.metrics import METRICS

#: User attribute of a confirmation trial: the number of the search trial it re-runs.
CONFIRM_OF = "confirm_of"
#: User attribute of a confirmation trial: its ``train.seed``.
SEED = "seed"
#: User attribute of a trial pruned untrained because the budget was taken when it started.
OVER_BUDGET = "over_budget"


def is_confirmation(trial: Any) -> bool:
    """Whether ``trial`` re-runs another trial's configuration with a new seed."""
    return CONFIRM_OF in trial.user_attrs


def claims_budget(trial: Any) -> bool:
    """Whether ``trial`` takes one of ``search.n_trials``: a search trial (no confirmation, not
    turned away over budget) that has not failed (a failed one's retry takes its place)."""
    return (
        not is_confirmation(trial)
        and OVER_BUDGET not in trial.user_attrs
        and trial.state.name != "FAIL"
    )


def cost(trial: Any, metric: str) -> float | None:
    """A trial's measured cost (``student_params``, ``flops``, ``latency_ms``), if stored."""
    return trial.user_attrs.get(METRICS[metric])


def excess(
    attrs: Mapping[str, Any], constraints: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Each constraint's measured value minus its max (feasible when <= 0)."""
    return {m: float(attrs[METRICS[m]]) - float(c["max"]) for m, c in constraints.items()}


def violation(attrs: Mapping[str, Any], constraints: Mapping[str, Mapping[str, float]]) -> str:
    """The first limit ``attrs`` break, in words (empty if none), e.g. for ``prune_reason``."""
    for metric, limit in constraints.items():
        value = attrs[METRICS[metric]]
        if value > limit["max"]:
            return f"{metric} {value:g} is over the limit {limit['max']:g} (search.constraints)"
    return ""


def feasible(trial: Any) -> bool:
    """Whether the trial is within every constraint of its study."""
    return all(c <= 0 for c in trial.constraints.values())


def accuracy(trial: Any) -> float | None:
    """A trial's validation accuracy: its first objective value (None if it has none)."""
    return trial.values[0] if trial.values else None


def multi(study: Any) -> bool:
    return len(study.directions) > 1


def sign(study: Any) -> int:
    """+1 when accuracy is maximized (always, for several objectives), -1 when minimized."""
    import optuna

    return 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1


def complete(study: Any) -> list[Any]:
    """Complete search trials within the constraints: the only ones that may be called best."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if feasible(t) and not is_confirmation(t)]


def ranked(study: Any, trials: list[Any] | None = None) -> list[Any]:
    """``trials`` (default: :func:`complete`), best accuracy first in the study's direction."""
    s = sign(study)
    # Only complete trials are ranked, and a complete trial always holds its values.
    return sorted(complete(study) if trials is None else trials, key=lambda t: -s * t.values[0])


def best(
    study: Any, budgets: Mapping[str, float] | None = None, trials: list[Any] | None = None
) -> Any | None:
    """The most accurate complete, feasible trial of ``trials`` (default: the study's) whose
    costs are within ``budgets``, or None when there is none (a fresh study, or only pruned,
    failed or over-limit trials).

    With budgets on a study's cost objectives this is the front's best trial within them (a
    trial off the front is beaten by one at most as costly); it also answers budgets on costs
    the study did not optimize.
    """
    import optuna

    pool = complete(study) if trials is None else trials
    ok = [
        t
        for t in pool
        if t.state == optuna.trial.TrialState.COMPLETE
        and feasible(t)
        and all((c := cost(t, m)) is not None and c <= v for m, v in (budgets or {}).items())
    ]
    top = ranked(study, ok)
    return top[0] if top else None


def pareto(study: Any) -> list[Any]:
    """The non-dominated feasible search trials, most accurate first.

    Optuna's ``best_trials`` would count confirmation trials, and a configuration's luckier
    seed would push its own search trial off the front.
    """
    import numpy as np

    pool = complete(study)
    if not pool:
        return []
    # Every objective as "larger is better": accuracy first, then the negated costs.
    signs = np.array([sign(study)] + [-1] * (len(study.directions) - 1), dtype=float)
    values = np.array([t.values for t in pool], dtype=float) * signs
    front = [
        t
        for t, v in zip(pool, values, strict=True)
        if not np.any(np.all(values >= v, axis=1) & np.any(values > v, axis=1))
    ]
    return ranked(study, front)


def describe_budgets(budgets: Mapping[str, float]) -> str:
    return ", ".join(f"{m} <= {v:g}" for m, v in budgets.items())
