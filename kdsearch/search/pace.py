"""How fast a search trains, for ``kdsearch status``'s epochs per second and time left.

Every trial keeps an epoch clock (the user attribute :data:`CLOCK_ATTR`): the wall time of the
first and of the latest epoch it trained, and how many it trained (epochs a retry re-reports
from the attempt it resumes are not its own). A worker's pace runs from its first reported
epoch to its latest, so what came before that first epoch is never counted as training: the
worker starting (decoding images, building the teacher cache) and the first epoch itself, which
began at an unknown moment. Timed from the first trial's start instead, with the remaining
trials assumed to train every epoch of the schedule, a first ``status`` said 12m31s for a
search that then finished in 4.5 minutes (issue 35).

Pure arithmetic on stored attributes: ``status`` reads no more than the trials it already has.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CLOCK_ATTR = "epoch_clock"


def tick(clock: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The epoch clock after one more trained epoch at ``now`` (seconds since the epoch)."""
    if clock is None:
        return {"first": now, "last": now, "epochs": 1}
    return {**clock, "last": now, "epochs": clock["epochs"] + 1}


def _spans(trials: Iterable[Any]) -> dict[Any, tuple[float, float, int]]:
    """Per worker (its ``worker`` attribute): its first and latest epoch and the epochs it
    trained after its first, which alone fall inside that span."""
    spans: dict[Any, tuple[float, float, int]] = {}
    for t in trials:
        clock = t.user_attrs.get(CLOCK_ATTR)
        if not clock:
            continue
        key = t.user_attrs.get("worker")
        first, last, epochs = spans.get(key, (clock["first"], clock["last"], 0))
        spans[key] = (
            min(first, clock["first"]),
            max(last, clock["last"]),
            epochs + clock["epochs"],
        )
    return {k: (first, last, epochs - 1) for k, (first, last, epochs) in spans.items()}


def _rate(span: tuple[float, float, int]) -> float | None:
    first, last, epochs = span
    return epochs / (last - first) if epochs > 0 and last > first else None


def epochs_per_second(trials: Iterable[Any], live_workers: set[Any]) -> float | None:
    """Epochs per second of the whole search; None until a worker has trained two epochs.

    While workers run (``live_workers``: their ``worker`` attributes), the sum of their own
    paces, a live worker not yet timed counted at the timed ones' mean: a worker that joins
    late, or left, does not slow the estimate with time it did not train. Otherwise the epochs
    trained over the time any worker was training (overlapping spans counted once), so a pause
    between two worker runs is not counted either.
    """
    spans = _spans(trials)
    live = [_rate(s) for w, s in spans.items() if w in live_workers]
    timed = [r for r in live if r is not None]
    if live_workers:
        if not timed:
            return None
        return sum(timed) / len(timed) * len(live_workers)
    covered, reach = 0.0, float("-inf")
    for first, last, _ in sorted(spans.values()):
        covered += max(0.0, last - max(first, reach))
        reach = max(reach, last)
    epochs = sum(e for _, _, e in spans.values())
    return epochs / covered if epochs > 0 and covered > 0 else None


def epochs(trial: Any) -> int:
    """The epochs ``trial`` has behind it, those of the attempt it resumed included: as
    reported to the pruner, or by its clock (a study of several objectives reports none)."""
    clock = trial.user_attrs.get(CLOCK_ATTR) or {}
    counted = clock.get("epochs", 0) + trial.user_attrs.get("resumed_from_epoch", 0)
    return max(len(trial.intermediate_values), counted)


def trial_epochs(finished: list[Any], schedule: int | None, prunes: bool) -> float | None:
    """The epochs a trial yet to run can be expected to train: the mean of what ``finished``
    trials trained (pruned ones included), else the full ``schedule`` when nothing prunes the
    trials, else None: before a trial has finished, the pruner's cut is unknown."""
    if finished:
        return sum(map(epochs, finished)) / len(finished)
    return None if prunes or schedule is None else float(schedule)
