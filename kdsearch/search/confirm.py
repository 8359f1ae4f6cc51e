"""Confirmation trials: a finished search's best configurations, trained again with new seeds.

``search.confirm: {top: K, seeds: N}`` (or ``kdsearch confirm``) queues, for each of the K best
distinct configurations, N trials with the configuration's parameters fixed (Optuna's
``enqueue_trial``) and the user attributes ``confirm_of`` (the search trial's number) and
``seed`` (its ``train.seed``: the configuration's own seed + 1 ... + N, so asking for more
seeds later adds only the missing ones). They are ordinary trials of the study: the same
workers run them in parallel, a killed one is retried from its epoch checkpoint, and they are
never pruned. They are counted apart from ``search.n_trials`` and never sampled from.

Which configurations: with one objective, the K most accurate distinct ones; with several,
the K most accurate members of the Pareto front (optionally within cost budgets), since a
configuration off the front is beaten on every objective by one on it.

Queueing is idempotent, so every worker that sees the search end may call :func:`enqueue`;
two workers queueing at the same moment can still queue one pair twice, and the objective
prunes the later copy before it trains (:func:`duplicate_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdsearch.config.spec import Spec
from kdsearch.errors import KDSearchError
from kdsearch.search import ranking
from kdsearch.search.ranking import CONFIRM_OF, SEED, is_confirmation

#: User attribute of a confirmation trial pruned because another trial runs its seed.
DUPLICATE = "confirm_duplicate_of"


def candidates(study: Any, top: int, budgets: Mapping[str, float] | None = None) -> list[Any]:
    """The search trials whose configurations are confirmed, best first, distinct params."""
    pool = ranking.pareto(study) if ranking.multi(study) else ranking.ranked(study)
    if budgets:
        pool = [t for t in pool if ranking.best(study, budgets, trials=[t]) is not None]
    chosen: list[Any] = []
    seen: set[str] = set()
    for t in pool:
        key = repr(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            chosen.append(t)
        if len(chosen) == top:
            break
    return chosen


def new_seeds(spec: Spec, trial: Any, seeds: int) -> list[int]:
    """The ``train.seed`` of each confirmation run of ``trial``: the ones after its own."""
    base = spec.with_overrides(trial.params).train.seed
    return [base + i for i in range(1, seeds + 1)]


def enqueue(
    study: Any,
    spec: Spec,
    top: int,
    seeds: int,
    budgets: Mapping[str, float] | None = None,
) -> list[tuple[int, int]]:
    """Queue the missing confirmation runs of the ``top`` best configurations; returns the
    (trial, seed) pairs queued now (none when all are queued, running or done)."""
    import optuna

    for key, value in (("top", top), ("seeds", seeds)):
        if value < 1:
            raise KDSearchError(f"confirm: --{key} {value} must be at least 1")
    chosen = candidates(study, top, budgets)
    if not chosen:
        raise KDSearchError(
            f"confirm: study {study.study_name!r} has no complete trial to confirm"
            + (f" within {ranking.describe_budgets(budgets)}" if budgets else "")
            + f"; run `kdsearch worker --study {study.study_name}` first"
        )
    fail = optuna.trial.TrialState.FAIL
    have = {
        (t.user_attrs[CONFIRM_OF], t.user_attrs.get(SEED))
        for t in study.get_trials(deepcopy=False)
        if is_confirmation(t) and t.state != fail
    }
    queued = []
    for trial in chosen:
        for seed in new_seeds(spec, trial, seeds):
            if (trial.number, seed) not in have:
                study.enqueue_trial(trial.params, user_attrs={CONFIRM_OF: trial.number, SEED: seed})
                queued.append((trial.number, seed))
    return queued


def waiting(study: Any) -> bool:
    """Whether a confirmation trial waits for a worker."""
    import optuna

    states = (optuna.trial.TrialState.WAITING,)
    return any(is_confirmation(t) for t in study.get_trials(deepcopy=False, states=states))


def progress(study: Any) -> dict[str, int]:
    """Confirmation runs (distinct trial and seed pairs) by state, for ``status``."""
    order = ("complete", "running", "waiting", "failed")
    pairs: dict[tuple[Any, Any], str] = {}
    for t in study.get_trials(deepcopy=False):
        if not is_confirmation(t) or DUPLICATE in t.user_attrs:
            continue
        state = {"COMPLETE": "complete", "RUNNING": "running", "WAITING": "waiting"}.get(
            t.state.name, "failed"
        )
        pair = (t.user_attrs[CONFIRM_OF], t.user_attrs.get(SEED))
        old = pairs.get(pair, "failed")
        pairs[pair] = min(old, state, key=order.index)  # a retried failure counts as its retry
    counts = {k: 0 for k in order}
    for state in pairs.values():
        counts[state] += 1
    return {"runs": len(pairs), **counts}


def duplicate_of(study: Any, number: int, confirm_of: int, seed: int) -> int | None:
    """Another trial that already trains (or trained) this confirmation run, if any.

    A complete one always wins; of two running at once, the one with the lower number.
    """
    import optuna

    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
    for t in study.get_trials(deepcopy=False, states=live):
        same = t.user_attrs.get(CONFIRM_OF) == confirm_of and t.user_attrs.get(SEED) == seed
        first = t.state == optuna.trial.TrialState.COMPLETE or t.number < number
        if same and first and t.number != number and DUPLICATE not in t.user_attrs:
            return t.number
    return None
