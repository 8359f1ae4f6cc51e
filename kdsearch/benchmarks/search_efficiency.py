"""Search efficiency: a spec's grid run to the end versus a TPE + Hyperband search, in epochs.

kdsearch exists to find a student as good as the reference's grid search with less compute.
``kdsearch bench-search SPEC`` measures that on the spec's data, with the epoch as the budget
unit (an epoch of one trial costs the same whatever its hyperparameters):

1. the grid: the spec as written (``search.sampler: {name: grid}``), every point, every epoch,
   no pruning; or an earlier run of it, finished (:func:`finished_grid`);
2. one search per sampler seed: the same spec with the grid's choices turned into ranges
   (:func:`search_space`), TPE (:data:`SAMPLER`) and Hyperband (:data:`PRUNER`), given a budget
   of ``fraction`` x the grid's epochs.

Both run through :func:`kdsearch.search.study.create` and :func:`kdsearch.search.worker.run`.
Each search has one worker, so its trials run one after another and "the epochs spent so far"
is well defined: every epoch of every trial, pruned ones included, in the order the trials
started (the trial's ``datetime_start``), each read from the trial's per-epoch reports
(``intermediate_values``). With ``jobs`` > 1 the grid's points share workers and the searches
run side by side, each still alone in its study (:func:`bench`).

For each search: ``reach`` is the number of epochs spent when an epoch's validation accuracy
first came within :data:`TOLERANCE` of the grid's best (None if it never did within the
budget), ``ratio`` is ``reach / grid epochs``, and ``best`` is the highest validation accuracy
of any epoch within the budget (the epochs a search trained past its budget, while finishing
its last trial, are not counted).

A single seed's best is partly a lucky draw (docs/confidence.md), so with ``confirm_seeds``
N > 0 each run's winner, the grid's best trial and, per search, the trial holding its best
epoch within the budget, is trained again with N new seeds (the ones
:func:`kdsearch.search.confirm.new_seeds` gives a confirmation run) and tested: the mean test
accuracy of the winners is the fairer comparison of what the grid and each search found.
"""

from __future__ import annotations

import functools
import math
import re
import statistics
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdsearch.config.spec import ParamSpec, Spec
from kdsearch.errors import KDSearchError

#: How close (in accuracy, 0.003 = 0.3 points) a search must come to the grid's best.
TOLERANCE = 0.003
#: The search's sampler; ``seed`` is set per run.
SAMPLER: dict[str, Any] = {"name": "tpe"}
#: The search's pruner; ``min_resource`` (a third of ``train.epochs``) and ``max_resource`` are
#: kdsearch's Hyperband defaults (kdsearch.search.study.make_pruner).
PRUNER: dict[str, Any] = {"name": "hyperband", "reduction_factor": 3}
#: The workers' seed salt (kdsearch.search.study.worker_seed): a fixed one makes each search a
#: function of the spec and its seed, so a rerun proposes the same trials.
SEED_SALT = "bench-search"


@dataclass
class Confirmed:
    """A run's single-seed winner trained again with new seeds, each tested."""

    trial: int  # its number in its study
    params: dict[str, Any]
    seeds: list[int]
    test_accuracies: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.test_accuracies) if len(self.test_accuracies) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        keys = ("trial", "params", "seeds", "test_accuracies", "mean", "std")
        return {k: getattr(self, k) for k in keys}


@dataclass
class SearchRun:
    """One search's epoch accounting."""

    seed: int
    budget: int
    curve: list[float]  # validation accuracy of every epoch trained, in training order
    reach: int | None
    ratio: float | None
    best: float
    confirmed: Confirmed | None = None
    #: The configuration ranked first by its mean over seeds (confirmation runs in the study).
    confirmed_best: Confirmed | None = None
    #: Epochs the study's confirmation runs trained: what confirming cost beyond the budget.
    confirm_epochs: int = 0


@dataclass
class Result:
    grid_best: float
    grid_epochs: int
    grid_points: int
    fraction: float
    searches: list[SearchRun]
    grid_confirmed: Confirmed | None = None
    grid_confirmed_best: Confirmed | None = None
    grid_confirm_epochs: int = 0

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
        def confirmed(c: Confirmed | None) -> dict[str, Any] | None:
            return None if c is None else c.to_dict()

        found = [r.confirmed.mean for r in self.searches if r.confirmed is not None]
        return {
            "grid": {
                "best": self.grid_best,
                "epochs": self.grid_epochs,
                "points": self.grid_points,
                "confirmed": confirmed(self.grid_confirmed),
                "confirmed_best": confirmed(self.grid_confirmed_best),
                "confirm_epochs": self.grid_confirm_epochs,
            },
            "fraction": self.fraction,
            "searches": [
                {k: getattr(r, k) for k in ("seed", "budget", "reach", "ratio", "best")}
                | {
                    "confirmed": confirmed(r.confirmed),
                    "confirmed_best": confirmed(r.confirmed_best),
                    "confirm_epochs": r.confirm_epochs,
                }
                for r in self.searches
            ],
            "median": {
                "reach": self.median_reach,
                "ratio": self.median_ratio,
                "best": statistics.median(r.best for r in self.searches),
                "confirmed_mean": statistics.median(found) if found else None,
            },
        }


def _log_scale(ordered: Sequence[float]) -> bool:
    """Whether the grid's values are spaced on a log scale rather than a linear one.

    The grid's author placed the points; the search should give each part of the range the
    weight the grid gave it. So: the scale on which the values' median sits mid-range, i.e.
    the median is nearer (in ratio) the ends' geometric mean than their arithmetic mean.
    {1, 4, 16}, {1, 2, 4, 8} and the reference's temperatures {1, 2, 3, ..., 20, 40} are log;
    {1, 2, 3, 4} and the reference's alphas {0.01, 0.1, 0.5, 0.95, 0.999}, dense at both ends,
    are linear (on a log scale, alpha > 0.5 would be 15% of the range; the grid gives it 40%).
    With only two values there is no median to read: log when they span a factor of 10.
    """
    low, high = ordered[0], ordered[-1]
    if low <= 0:
        return False
    if len(ordered) < 3:
        return high / low >= 10
    median = statistics.median(ordered)
    to_geometric = abs(math.log(median / math.sqrt(low * high)))
    to_arithmetic = abs(math.log(median / ((low + high) / 2)))
    return to_geometric < to_arithmetic


def search_range(values: Sequence[Any]) -> ParamSpec:
    """The range a search explores in place of one grid parameter's values.

    One value stays pinned, non-numbers stay categorical; numbers become low = min, high = max,
    an int range when all are ints, on the scale the grid's values are spaced on
    (:func:`_log_scale`).
    """
    distinct = sorted(set(values), key=str)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct)
    if len(distinct) == 1 or not numeric:
        return ParamSpec(type="categorical", choices=list(values))
    ordered = sorted(float(v) for v in distinct)
    kind: Literal["int", "float"] = "int" if all(isinstance(v, int) for v in distinct) else "float"
    return ParamSpec(type=kind, low=ordered[0], high=ordered[-1], log=_log_scale(ordered))


def search_space(spec: Spec) -> dict[str, ParamSpec]:
    from kdsearch.search.study import grid_values

    return {k: search_range(grid_values(k, p)) for k, p in spec.search.space.items()}


def grid_size(spec: Spec) -> int:
    from kdsearch.search.study import grid_values

    return math.prod(len(grid_values(k, p)) for k, p in spec.search.space.items())


def _with_search(spec: Spec, **search: Any) -> Spec:
    from kdsearch.config import spec as specs

    data = spec.to_dict()
    # Epochs to reach the grid's best are the search's own: confirmation runs are not counted,
    # and no baseline arm is searched beside (bench-search measures search, not distilling).
    data["search"].update({"confirm": None, "baseline": False, **search})
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


def _epochs(trials: Sequence[Any]) -> list[tuple[Any, float]]:
    """(trial, validation accuracy) of every epoch trained, trials in the order they started."""
    ordered = sorted(
        (t for t in trials if t.datetime_start is not None),
        key=lambda t: (t.datetime_start, t.number),
    )
    return [(t, t.intermediate_values[e]) for t in ordered for e in sorted(t.intermediate_values)]


def epoch_curve(trials: Sequence[Any]) -> list[float]:
    """Validation accuracy of every epoch trained, trials in the order they started."""
    return [value for _, value in _epochs(trials)]


def winner(trials: Sequence[Any], budget: int | None = None) -> Any:
    """The trial that holds the best epoch within the first ``budget`` epochs (all: None);
    of equal epochs, the first trained."""
    epochs = _epochs(trials)[:budget]
    return max(epochs, key=lambda pair: pair[1])[0]  # max keeps the first of equals


def confirm_winner(spec: Spec, trial: Any, seeds: int) -> Confirmed:
    """Train ``trial``'s configuration of ``spec`` again with ``seeds`` new seeds and test each:
    the same training as a confirmation trial (validation held out, its best epoch kept)."""
    from kdsearch.search import confirm
    from kdsearch.training.experiment import Context, fit_student

    chosen = spec.with_overrides(trial.params)
    result = Confirmed(trial.number, dict(trial.params), confirm.new_seeds(spec, trial, seeds))
    ctx = Context.load(chosen, chosen.train.device)  # the data do not depend on train.seed
    with tempfile.TemporaryDirectory() as tmp:
        for seed in result.seeds:
            run = chosen.with_overrides({"train.seed": seed})
            outcome = fit_student(ctx, run, Path(tmp) / f"seed-{seed}.pt", progress=False)
            result.test_accuracies.append(outcome.test_accuracy)
    return result


def reach(curve: Sequence[float], target: float, budget: int) -> int | None:
    """Epochs spent when the curve first came within TOLERANCE of ``target`` (within budget)."""
    for spent, value in enumerate(curve[:budget], start=1):
        if value >= target - TOLERANCE:
            return spent
    return None


def _run(
    spec: Spec,
    url: str,
    name: str,
    trials: int | None,
    index: int = 0,
    stop: threading.Event | None = None,
) -> None:
    from kdsearch.search import worker

    device = spec.train.device
    worker.run(name, index, device, trials, None, url=url, seed_salt=SEED_SALT, stop=stop)


def _load(url: str, name: str) -> Any:
    import optuna

    from kdsearch.search import storage

    return optuna.load_study(study_name=name, storage=storage.open_storage(url))


def _search_trials(study: Any) -> list[Any]:
    from kdsearch.search import ranking

    return [t for t in study.get_trials(deepcopy=False) if not ranking.is_confirmation(t)]


def search_trials(url: str, name: str) -> list[Any]:
    """The study's search trials: confirmation runs queued on it later are not the search's
    (their epochs are not spent finding the winner, and the grid's best is its own points')."""
    return _search_trials(_load(url, name))


def _confirmed(configuration: Any) -> Confirmed | None:
    """A configuration's confirmation runs (its runs after the search trial), or None."""
    from kdsearch.search import ranking

    runs = configuration.runs[1:]
    if not runs:
        return None
    trial = configuration.trial
    return Confirmed(
        trial.number,
        dict(trial.params),
        [t.user_attrs[ranking.SEED] for t in runs],
        [t.user_attrs["test_accuracy"] for t in runs],
    )


def confirmations(study: Any, winner_trial: Any) -> tuple[Confirmed | None, Confirmed | None, int]:
    """What confirmation runs in ``study`` (``kdsearch confirm``) say, without training:
    ``winner_trial``'s runs, those of the configuration ranked first by its mean over seeds
    (:func:`kdsearch.search.confidence.rank`), and the epochs all confirmation runs trained."""
    from kdsearch.search import confidence, ranking

    trials = study.get_trials(deepcopy=False)
    spent = sum(len(t.intermediate_values) for t in trials if ranking.is_confirmation(t))
    if not spent:
        return None, None, 0
    (own,) = confidence.configurations(study, [winner_trial])
    best = confidence.rank(study).winner
    return _confirmed(own), None if best is None else _confirmed(best), spent


def run_search(spec: Spec, url: str, name: str, budget: int) -> list[float]:
    """Run one search until it has trained ``budget`` epochs; returns its epoch curve.

    Each call of the worker runs as many trials as surely fit in what is left (a trial costs
    at most ``train.epochs``), at least one; a new worker index per call gives the TPE
    sampler a new seed (kdsearch.search.study.worker_seed, with :data:`SEED_SALT`), so its
    random start does not repeat, while a rerun of the benchmark repeats it.
    """
    curve: list[float] = []
    index = 0
    stop = threading.Event()
    while len(curve) < budget:
        trials = max(1, (budget - len(curve)) // spec.train.epochs)
        _run(spec, url, name, trials, index, stop)
        if stop.is_set():  # Ctrl-C, or the pool's parent died: end the search, not one worker
            raise KeyboardInterrupt
        curve = epoch_curve(search_trials(url, name))
        index += 1
    return curve


def _in_process(task: Callable[[], object], threads: int, verbosity: int, index: int) -> None:
    """One of bench-search's runs in a process of the worker's pool: it stops after its epoch
    if bench-search dies, takes its share of the CPU threads and logs as bench-search does; an
    error is one line on stderr and exit code 2, as from the command."""
    import os
    import sys

    from kdsearch.errors import report_errors
    from kdsearch.search import progress, worker

    worker.stop_when_orphaned()
    worker.name_process(f"kdsearch-b{index}")
    os.environ["OMP_NUM_THREADS"] = os.environ["KDSEARCH_THREADS"] = str(threads)
    progress.configure(verbosity)

    def run() -> int:
        task()  # what it returns is for a caller in this process; here it is in the studies
        return 0

    sys.exit(report_errors(run))


def _execute(tasks: Sequence[Callable[[], object]], jobs: int) -> None:
    """Run the tasks in order in this process, or ``jobs`` at a time in processes of the
    worker's pool (:func:`kdsearch.search.worker.run_processes`), sharing the CPU threads.

    Ctrl-C stops the running ones after their epoch (their trials re-queued) and starts no
    more; bench-search then ends as interrupted. A run that fails fails the benchmark.
    """
    if jobs == 1:
        for task in tasks:
            task()
        return
    import os

    from kdsearch.search import progress, worker

    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    verbosity = progress.verbosity()
    targets = [(_in_process, (task, threads, verbosity, i)) for i, task in enumerate(tasks)]
    outcome = worker.run_processes(targets, jobs)
    if outcome.stopped:
        raise KeyboardInterrupt
    if outcome.code:
        raise KDSearchError(
            f"bench-search: a run ended with exit code {outcome.code} (its error is above)"
        )


#: A grid study's name as bench-search gives it: ``<spec>-grid-<tag>``.
GRID_NAME = re.compile(r"-grid-(?P<tag>[0-9a-f]+)$")


def finished_grid(grid: Spec, storage: Any, name: str) -> str:
    """Check that study ``name`` is ``grid`` run to the end, so a benchmark can compare
    against it instead of training it again; returns the tag its searches are named with.

    The grid is the expensive half of the benchmark (every point, every epoch) and, on one
    machine, a rerun reproduces it (docs/confidence.md), so a committed or earlier grid
    (``bench/study_json.py load``) serves. Its stored spec must be this grid's, key for key,
    and every point finished; otherwise the comparison would not be with this grid.
    """
    from kdsearch.search import ranking
    from kdsearch.search import study as studies

    try:
        study, _ = studies.load(storage, name)
    except KDSearchError as err:
        raise KDSearchError(f"--grid {name}: {err}") from None
    diff = studies.spec_diff(study.user_attrs[studies.SPEC_ATTR], grid.public_dict())
    if diff:
        raise KDSearchError(
            f"--grid {name}: its spec is not this spec's grid ({'; '.join(diff[:3])}); "
            "name the grid of this spec, or leave --grid out to run it"
        )
    done = sum(
        t.state.name == "COMPLETE" and not ranking.is_confirmation(t)
        for t in study.get_trials(deepcopy=False)
    )
    if done < grid.search.n_trials:
        raise KDSearchError(
            f"--grid {name}: {done} of its {grid.search.n_trials} points are complete; finish "
            f"it (`kdsearch worker --study {name}`) or leave --grid out to run it"
        )
    named = GRID_NAME.search(name)
    return named["tag"] if named else uuid.uuid4().hex[:6]


def bench(
    spec: Spec,
    seeds: Sequence[int],
    fraction: float,
    url: str,
    jobs: int = 1,
    confirm_seeds: int = 0,
    grid_study: str | None = None,
) -> Result:
    """Run the grid and one search per seed, all in the storage at ``url``; ``jobs`` at once.

    The studies do not depend on each other (a search's budget follows from the grid's size,
    its result is compared with the grid's only afterwards), so with ``jobs`` > 1 the grid's
    points run on up to ``jobs`` workers and each search in a process of its own, as slots
    free up. Each search still runs its trials one after another, so its epoch order, and
    hence its accounting, is the same as with one job. With ``grid_study``, the grid is that
    finished study in the same storage (:func:`finished_grid`) and only the searches run.
    With ``confirm_seeds`` > 0 the winners are then trained again (:func:`confirm_winner`),
    one after another in this process.
    """
    import optuna

    from kdsearch.search import storage
    from kdsearch.search import study as studies

    if not 0 < fraction <= 1:
        raise KDSearchError(f"--budget-fraction: {fraction} must be in (0, 1]")
    if confirm_seeds < 0:
        raise KDSearchError(f"--confirm-seeds: {confirm_seeds} must be 0 (off) or more")
    grid = grid_spec(spec)
    opened = storage.open_storage(url)
    if grid_study is None:
        tag = uuid.uuid4().hex[:6]
        grid_name = f"{spec.name}-grid-{tag}"
    else:
        tag, grid_name = finished_grid(grid, opened, grid_study), grid_study
    grid_epochs = grid.search.n_trials * spec.train.epochs  # no pruning: every epoch runs
    budget = max(1, math.floor(fraction * grid_epochs))
    names = {seed: f"{spec.name}-tpe{seed}-{tag}" for seed in seeds}
    searches = {seed: search_spec(spec, seed, budget) for seed in seeds}
    taken = sorted(set(names.values()) & set(optuna.get_all_study_names(opened)))
    if taken:
        raise KDSearchError(
            f"bench-search: study {taken[0]!r} already exists in this storage; "
            "use another --storage, or other --seeds"
        )
    tasks: list[Callable[[], object]] = []
    if grid_study is None:
        studies.create(grid, opened, grid_name, load_if_exists=False)
        grid_workers = min(jobs, grid.search.n_trials)
        tasks += [
            functools.partial(_run, grid, url, grid_name, None, index)
            for index in range(grid_workers)
        ]
    for seed in seeds:
        created = studies.create(searches[seed], opened, names[seed], load_if_exists=False)
        created.set_user_attr(studies.EPOCH_BUDGET_ATTR, budget)
    tasks += [
        functools.partial(run_search, searches[seed], url, names[seed], budget) for seed in seeds
    ]
    _execute(tasks, jobs)
    result = measure(url, grid_name, names, budget, fraction)
    if confirm_seeds:
        for run in result.searches:
            trials = search_trials(url, names[run.seed])
            chosen = winner(trials, budget)
            run.confirmed = confirm_winner(searches[run.seed], chosen, confirm_seeds)
        result.grid_confirmed = confirm_winner(
            grid, winner(search_trials(url, grid_name)), confirm_seeds
        )
    return result


def measure(
    url: str, grid_name: str, searches: Mapping[int, str], budget: int, fraction: float
) -> Result:
    """The table of finished studies: the grid's and each search's (by sampler seed) epochs.

    What :func:`bench` prints after its runs, and what ``bench/search_table.py`` prints for
    studies run earlier (a committed experiment loaded by ``bench/study_json.py``). Where the
    studies hold confirmation runs (``kdsearch confirm``), each run's winner and confirmed
    winner are read from them (:func:`confirmations`).
    """
    grid_study = _load(url, grid_name)
    grid_trials = _search_trials(grid_study)
    grid_curve = epoch_curve(grid_trials)
    best = max(t.value for t in grid_trials if t.value is not None)
    runs = []
    for seed, name in searches.items():
        study = _load(url, name)
        trials = _search_trials(study)
        curve = epoch_curve(trials)
        spent = reach(curve, best, budget)
        own, top, extra = confirmations(study, winner(trials, budget))
        runs.append(
            SearchRun(
                seed=seed,
                budget=budget,
                curve=curve,
                reach=spent,
                ratio=None if spent is None else spent / len(grid_curve),
                best=max(curve[:budget]),
                confirmed=own,
                confirmed_best=top,
                confirm_epochs=extra,
            )
        )
    result = Result(best, len(grid_curve), len(grid_trials), fraction, runs)
    confirmed = confirmations(grid_study, winner(grid_trials))
    result.grid_confirmed, result.grid_confirmed_best, result.grid_confirm_epochs = confirmed
    return result


def format_table(result: Result) -> str:
    """The one table: the grid, each seed's search and their median; with confirmation runs,
    each run's winner's test accuracy over new seeds and, where the studies hold them, the
    confirmed winner's and the epochs confirming cost."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    def confirmed(c: Confirmed | None) -> str:
        return " - |" if c is None else f" {pct(c.mean)} ± {100 * c.std:.2f} (trial {c.trial}) |"

    runs: list[tuple[str, Confirmed | None, Confirmed | None, int]] = [
        ("grid", result.grid_confirmed, result.grid_confirmed_best, result.grid_confirm_epochs)
    ]
    runs += [
        (f"seed {r.seed}", r.confirmed, r.confirmed_best, r.confirm_epochs) for r in result.searches
    ]
    seeds = next((len(c.seeds) for _, c, _, _ in runs if c is not None), None)
    studied = any(best is not None for _, _, best, _ in runs)
    budget = result.searches[0].budget if result.searches else 0
    head = "| run | epochs to reach | ratio to grid epochs | best val accuracy within budget |"
    rule = "|---|---:|---:|---:|"
    if seeds is not None:
        head += f" winner's test accuracy, {seeds} new seeds (mean ± std) |"
        rule += "---:|"
    if studied:
        head += " confirmed winner's test accuracy, new seeds (mean ± std) | confirmation epochs |"
        rule += "---:|---:|"

    def tail(index: int) -> str:
        _, own, best, extra = runs[index]
        return (confirmed(own) if seeds is not None else "") + (
            f"{confirmed(best)} {extra} |" if studied else ""
        )

    lines = [
        f"grid: {result.grid_points} points, {result.grid_epochs} epochs, "
        f"best val accuracy {pct(result.grid_best)}",
        f"search: TPE + Hyperband, budget {budget} epochs ({result.fraction:g} x grid); "
        f"reached = within {100 * TOLERANCE:.1f} points of the grid's best",
        "",
        head,
        rule,
        f"| grid | {result.grid_epochs} | 1.00 | {pct(result.grid_best)} |" + tail(0),
    ]
    for index, r in enumerate(result.searches, start=1):
        spent = "not reached" if r.reach is None else str(r.reach)
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| seed {r.seed} | {spent} | {ratio} | {pct(r.best)} |" + tail(index))
    m = result.to_dict()["median"]
    spent = "not reached" if m["reach"] is None else f"{m['reach']:g}"
    ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}"
    median = f"| median | {spent} | {ratio} | {pct(m['best'])} |"
    if seeds is not None:
        median += f" {pct(m['confirmed_mean'])} |"
    lines.append(median)
    return "\n".join(lines)
