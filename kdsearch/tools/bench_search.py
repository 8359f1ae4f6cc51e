"""Search efficiency: a spec's grid run to the end versus a TPE + Hyperband search, in epochs.

kdsearch exists to find a student as good as the reference's grid search with less compute.
``kdsearch bench-search SPEC`` measures that on the spec's data, with the epoch as the budget
unit (an epoch of one trial costs the same whatever its hyperparameters):

1. the grid: the spec as written (``search.sampler: {name: grid}``), every point, every epoch,
   no pruning;
2. one search per sampler seed: the same spec with the grid's choices turned into ranges
   (:func:`search_space`), TPE (:data:`SAMPLER`) and Hyperband (:data:`PRUNER`), given a budget
   of ``fraction`` x the grid's epochs.

Both run through :func:`kdsearch.search.study.create` and :func:`kdsearch.search.worker.run`
with one worker, so the trials run one after another and "the epochs spent so far" is well
defined: every epoch of every trial, pruned ones included, in the order the trials started
(the trial's ``datetime_start``), each read from the trial's per-epoch reports
(``intermediate_values``).

For each search: ``reach`` is the number of epochs spent when an epoch's validation accuracy
first came within :data:`TOLERANCE` of the grid's best (None if it never did within the
budget), ``ratio`` is ``reach / grid epochs``, and ``best`` is the highest validation accuracy
of any epoch within the budget (the epochs a search trained past its budget, while finishing
its last trial, are not counted).
"""

from __future__ import annotations

import itertools
import math
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kdsearch.config.spec import ParamSpec, Spec
from kdsearch.errors import KDSearchError

#: How close (in accuracy, 0.003 = 0.3 points) a search must come to the grid's best.
TOLERANCE = 0.003
#: The search's sampler; ``seed`` is set per run.
SAMPLER: dict[str, Any] = {"name": "tpe"}
#: The search's pruner; ``max_resource`` is the spec's ``train.epochs`` (kdsearch.search.study).
PRUNER: dict[str, Any] = {"name": "hyperband", "min_resource": 1, "reduction_factor": 3}


@dataclass
class SearchRun:
    """One search's epoch accounting."""

    seed: int
    budget: int
    curve: list[float]  # validation accuracy of every epoch trained, in training order
    reach: int | None
    ratio: float | None
    best: float


@dataclass
class Result:
    grid_best: float
    grid_epochs: int
    grid_points: int
    fraction: float
    searches: list[SearchRun]

    @property
    def median_reach(self) -> float | None:
        """Median epochs-to-reach over seeds; a seed that never reached counts as infinite."""
        values = [math.inf if r.reach is None else r.reach for r in self.searches]
        median = statistics.median(values)
        return None if math.isinf(median) else median

    @property
    def median_ratio(self) -> float | None:
        reach = self.median_reach
        return None if reach is None else reach / self.grid_epochs

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": {
                "best": self.grid_best,
                "epochs": self.grid_epochs,
                "points": self.grid_points,
            },
            "fraction": self.fraction,
            "searches": [
                {k: getattr(r, k) for k in ("seed", "budget", "reach", "ratio", "best")}
                for r in self.searches
            ],
            "median": {
                "reach": self.median_reach,
                "ratio": self.median_ratio,
                "best": statistics.median(r.best for r in self.searches),
            },
        }


def _geometric(values: Sequence[float]) -> bool:
    """Three or more positive values whose consecutive ratios agree within 10%."""
    if len(values) < 3 or min(values) <= 0:
        return False
    ratios = [b / a for a, b in itertools.pairwise(values)]
    return max(ratios) <= 1.1 * min(ratios)


def search_range(values: Sequence[Any]) -> ParamSpec:
    """The range a search explores in place of one grid parameter's values.

    One value stays pinned, non-numbers stay categorical; numbers become low = min, high = max,
    an int range when all are ints, on a log scale when all are positive and either
    max/min >= 10 or the values are geometric (each a constant multiple of the one before).
    """
    distinct = sorted(set(values), key=str)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct)
    if len(distinct) == 1 or not numeric:
        return ParamSpec(type="categorical", choices=list(values))
    ordered = sorted(float(v) for v in distinct)
    low, high = ordered[0], ordered[-1]
    log = low > 0 and (high / low >= 10 or _geometric(ordered))
    kind = "int" if all(isinstance(v, int) for v in distinct) else "float"
    return ParamSpec(type=kind, low=low, high=high, log=log)


def search_space(spec: Spec) -> dict[str, ParamSpec]:
    from kdsearch.search.study import grid_values

    return {k: search_range(grid_values(k, p)) for k, p in spec.search.space.items()}


def grid_size(spec: Spec) -> int:
    from kdsearch.search.study import grid_values

    return math.prod(len(grid_values(k, p)) for k, p in spec.search.space.items())


def _with_search(spec: Spec, **search: Any) -> Spec:
    from kdsearch.config import spec as specs

    data = spec.to_dict()
    data["search"].update(search)
    return specs.from_dict(data)


def grid_spec(spec: Spec) -> Spec:
    """The spec's grid, every point run to the end."""
    if spec.search.sampler.get("name") != "grid":
        raise KDSearchError(
            f"search.sampler: bench-search needs a grid spec (sampler {{name: grid}}), "
            f"not {spec.search.sampler.get('name')!r}; it compares a search against that grid"
        )
    return _with_search(spec, n_trials=grid_size(spec), pruner={"name": "none"})


def search_spec(spec: Spec, seed: int, budget: int) -> Spec:
    """The search replacing the grid; ``n_trials`` only caps it (each trial costs >= 1 epoch)."""
    space = {k: p.__dict__ for k, p in search_space(spec).items()}
    return _with_search(
        spec,
        n_trials=budget,
        sampler={**SAMPLER, "seed": seed},
        pruner=dict(PRUNER),
        space=space,
    )


def epoch_curve(trials: Sequence[Any]) -> list[float]:
    """Validation accuracy of every epoch trained, trials in the order they started."""
    ordered = sorted(
        (t for t in trials if t.datetime_start is not None),
        key=lambda t: (t.datetime_start, t.number),
    )
    return [t.intermediate_values[e] for t in ordered for e in sorted(t.intermediate_values)]


def reach(curve: Sequence[float], target: float, budget: int) -> int | None:
    """Epochs spent when the curve first came within TOLERANCE of ``target`` (within budget)."""
    for spent, value in enumerate(curve[:budget], start=1):
        if value >= target - TOLERANCE:
            return spent
    return None


def _run(spec: Spec, url: str, name: str, trials: int | None, index: int = 0) -> None:
    from kdsearch.search import storage, study, worker

    study.create(spec, storage.open_storage(url), name, load_if_exists=True)
    worker.run(name, index, spec.train.device, trials, None, url=url)


def _trials(url: str, name: str) -> list[Any]:
    import optuna

    from kdsearch.search import storage

    loaded = optuna.load_study(study_name=name, storage=storage.open_storage(url))
    return loaded.get_trials(deepcopy=False)


def run_search(spec: Spec, url: str, name: str, budget: int) -> list[float]:
    """Run one search until it has trained ``budget`` epochs; returns its epoch curve.

    Each call of the worker runs as many trials as surely fit in what is left (a trial costs
    at most ``train.epochs``), at least one; a new worker index per call gives the TPE
    sampler a fresh seed (kdsearch.search.study.worker_seed), so its random start does not repeat.
    """
    curve: list[float] = []
    index = 0
    while len(curve) < budget:
        trials = max(1, (budget - len(curve)) // spec.train.epochs)
        _run(spec, url, name, trials, index)
        curve = epoch_curve(_trials(url, name))
        index += 1
    return curve


def bench(spec: Spec, seeds: Sequence[int], fraction: float, url: str) -> Result:
    """Run the grid, then one search per seed, all in the storage at ``url``."""
    if not 0 < fraction <= 1:
        raise KDSearchError(f"--budget-fraction: {fraction} must be in (0, 1]")
    tag = uuid.uuid4().hex[:6]
    grid = grid_spec(spec)
    grid_name = f"{spec.name}-grid-{tag}"
    _run(grid, url, grid_name, None)
    grid_trials = _trials(url, grid_name)
    grid_curve = epoch_curve(grid_trials)
    best = max(t.value for t in grid_trials if t.value is not None)
    budget = max(1, math.floor(fraction * len(grid_curve)))
    runs = []
    for seed in seeds:
        name = f"{spec.name}-tpe{seed}-{tag}"
        curve = run_search(search_spec(spec, seed, budget), url, name, budget)
        spent = reach(curve, best, budget)
        runs.append(
            SearchRun(
                seed=seed,
                budget=budget,
                curve=curve,
                reach=spent,
                ratio=None if spent is None else spent / len(grid_curve),
                best=max(curve[:budget]),
            )
        )
    return Result(best, len(grid_curve), len(grid_trials), fraction, runs)


def format_table(result: Result) -> str:
    """The one table: the grid, each seed's search and their median."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    budget = result.searches[0].budget if result.searches else 0
    lines = [
        f"grid: {result.grid_points} points, {result.grid_epochs} epochs, "
        f"best val accuracy {pct(result.grid_best)}",
        f"search: TPE + Hyperband, budget {budget} epochs ({result.fraction:g} x grid); "
        f"reached = within {100 * TOLERANCE:.1f} points of the grid's best",
        "",
        "| run | epochs to reach | ratio to grid epochs | best val accuracy within budget |",
        "|---|---:|---:|---:|",
        f"| grid | {result.grid_epochs} | 1.00 | {pct(result.grid_best)} |",
    ]
    for r in result.searches:
        spent = "not reached" if r.reach is None else str(r.reach)
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| seed {r.seed} | {spent} | {ratio} | {pct(r.best)} |")
    m = result.to_dict()["median"]
    spent = "not reached" if m["reach"] is None else f"{m['reach']:g}"
    ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}"
    lines.append(f"| median | {spent} | {ratio} | {pct(m['best'])} |")
    return "\n".join(lines)
