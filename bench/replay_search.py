"""Replay searches on a finished grid's learning curves: sampler and pruner settings compared
in seconds, without training anything.

    .venv/bin/python bench/replay_search.py STORAGE [--study NAME] [--fraction 0.25] [--seeds 30]

A grid run to the end (``kdsearch bench-search``'s ``<name>-grid-<tag>`` study) holds every
point's validation accuracy after every epoch. A search restricted to those points can then be
replayed exactly: Optuna's own samplers and pruners propose points and prune them, and each
reported value is the one the grid measured for that point at that epoch. For each setting and
each of ``--seeds`` sampler seeds this counts, as ``bench-search`` does, the epochs spent until
an epoch came within 0.3 points of the grid's best, within a budget of ``--fraction`` of the
grid's epochs.

What it cannot show: points between the grid's (a real search samples ranges), and seed-to-seed
training noise (each point has the one curve the grid measured). What it isolates: how the
budget, the start-up trials and the pruner's rungs spend epochs on this problem's curves.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from kdsearch.benchmarks.search_efficiency import TOLERANCE
from kdsearch.search.storage import open_storage

Curves = dict[tuple[tuple[str, Any], ...], list[float]]


def grid_curves(url: str, study: str | None) -> tuple[Curves, dict[str, list[Any]]]:
    """Each distinct grid point's per-epoch validation curve (first complete trial per point)."""
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    name = study or next(n for n in names if "-grid-" in n)
    curves: Curves = {}
    for t in sorted(
        optuna.load_study(study_name=name, storage=storage).trials, key=lambda t: t.number
    ):
        key = tuple(sorted(t.params.items()))
        if t.state == optuna.trial.TrialState.COMPLETE and key not in curves:
            curves[key] = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
    choices: dict[str, list[Any]] = {}
    for key in curves:
        for param, value in key:
            choices.setdefault(param, [])
            if value not in choices[param]:
                choices[param].append(value)
    return curves, {k: sorted(v) for k, v in choices.items()}


@dataclass
class Replay:
    reach: int | None
    best: float
    trials: int
    pruned: int


def replay(
    curves: Curves,
    choices: dict[str, list[Any]],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    budget: int,
    target: float,
) -> Replay:
    """One search, one worker, trials one after another, until ``budget`` epochs are spent."""
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    spent, reach, best, trials, pruned = 0, None, 0.0, 0, 0
    while spent < budget:
        trial = study.ask()
        key = tuple(sorted((p, trial.suggest_categorical(p, c)) for p, c in choices.items()))
        curve = curves[key]
        trials += 1
        state = optuna.trial.TrialState.COMPLETE
        for epoch, value in enumerate(curve):
            spent += 1
            if spent <= budget:
                best = max(best, value)
                if reach is None and value >= target - TOLERANCE:
                    reach = spent
            trial.report(value, epoch)
            if trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                pruned += 1
                break
        if state == optuna.trial.TrialState.PRUNED:
            study.tell(trial, state=state)
        else:
            study.tell(trial, max(curve))
    return Replay(reach, best, trials, pruned)


def settings(epochs: int) -> dict[str, tuple[Callable[[int], Any], Callable[[], Any]]]:
    """(sampler from seed, pruner) per setting: bench-search's default first, then variants."""
    tpe = optuna.samplers.TPESampler
    hb = optuna.pruners.HyperbandPruner
    rand = optuna.samplers.RandomSampler
    nop = optuna.pruners.NopPruner

    def hyperband(low: int) -> Callable[[], Any]:
        return lambda: hb(min_resource=low, max_resource=epochs, reduction_factor=3)

    third = max(1, epochs // 3)
    return {
        "TPE + Hyperband, min_resource 1 (Optuna's default)": (
            lambda s: tpe(seed=s),
            hyperband(1),
        ),
        "TPE + Hyperband, min_resource 5": (lambda s: tpe(seed=s), hyperband(5)),
        f"TPE + Hyperband, min_resource {third} (a third of the epochs)": (
            lambda s: tpe(seed=s),
            hyperband(third),
        ),
        f"TPE (5 start-up trials) + Hyperband, min_resource {third}": (
            lambda s: tpe(seed=s, n_startup_trials=5),
            hyperband(third),
        ),
        f"TPE + median pruner, {third} warm-up epochs": (
            lambda s: tpe(seed=s),
            lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=third),
        ),
        "TPE, no pruning": (lambda s: tpe(seed=s), nop),
        "random, no pruning": (lambda s: rand(seed=s), nop),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage")
    parser.add_argument("--study", help="the grid study (default: the one named *-grid-*)")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    curves, choices = grid_curves(args.storage, args.study)
    epochs = len(next(iter(curves.values())))
    grid_epochs = sum(len(c) for c in curves.values())
    target = max(max(c) for c in curves.values())
    budget = math.floor(args.fraction * grid_epochs)
    print(
        f"grid: {len(curves)} points, {grid_epochs} epochs, best {100 * target:.2f}; budget "
        f"{budget} epochs ({args.fraction:g} x grid); {args.seeds} seeds per setting"
    )
    print()
    print("| setting | reached | median epochs to reach (ratio) | median best | trials (pruned) |")
    print("|---|---:|---:|---:|---:|")
    for label, (sampler, pruner) in settings(epochs).items():
        runs = [
            replay(curves, choices, sampler(seed), pruner(), budget, target)
            for seed in range(args.seeds)
        ]
        reached = [r.reach for r in runs if r.reach is not None]
        median = statistics.median([math.inf if r.reach is None else r.reach for r in runs])
        spent = "not reached" if math.isinf(median) else f"{median:g} ({median / grid_epochs:.2f})"
        print(
            f"| {label} | {len(reached)}/{len(runs)} | {spent} | "
            f"{100 * statistics.median(r.best for r in runs):.2f} | "
            f"{statistics.median(r.trials for r in runs):g} "
            f"({statistics.median(r.pruned for r in runs):g}) |"
        )


if __name__ == "__main__":
    main()
