"""bench-search: the grid-to-search table on digits, its accounting redone from the studies."""

from __future__ import annotations

import datetime
from pathlib import Path

import optuna
import pytest
import yaml

from kdsearch.config.spec import ParamSpec, merge
from kdsearch.search.storage import open_storage
from kdsearch.tools import bench_search

ROOT = Path(__file__).resolve().parents[1]


def test_grid_values_become_ranges():
    rng = bench_search.search_range
    assert rng([0.0, 0.5, 0.9]) == ParamSpec(type="float", low=0.0, high=0.9, log=False)
    # max/min >= 10: log; geometric (x2 each) though max/min < 10: log too
    assert rng([1.0, 4.0, 16.0]) == ParamSpec(type="float", low=1.0, high=16.0, log=True)
    assert rng([1.0, 2.0, 4.0, 8.0]).log
    assert not rng([1.0, 2.0, 3.0, 4.0]).log
    assert rng([2, 8, 32]) == ParamSpec(type="int", low=2, high=32, log=True)
    assert rng([3.0e-3]) == ParamSpec(type="categorical", choices=[3.0e-3])
    assert rng(["hinton", "dkd"]).type == "categorical"


def test_reach_counts_epochs_until_within_tolerance():
    curve = [0.5, 0.9, 0.8, 0.968, 0.99]
    assert bench_search.reach(curve, 0.97, budget=5) == 4  # 0.968 is within 0.3 points
    assert bench_search.reach(curve, 0.99, budget=4) is None  # reached only past the budget


def test_epoch_curve_counts_pruned_trials_in_the_order_they_started():
    start = datetime.datetime(2026, 1, 1)

    def trial(
        number: int, state: str, values: list[float], minute: int
    ) -> optuna.trial.FrozenTrial:
        t = optuna.trial.create_trial(
            state=optuna.trial.TrialState[state],
            value=max(values) if state == "COMPLETE" else None,
            intermediate_values=dict(enumerate(values)),
        )
        t.number, t.datetime_start = number, start + datetime.timedelta(minutes=minute)
        return t

    trials = [
        trial(0, "COMPLETE", [0.5, 0.7, 0.9], minute=2),
        trial(1, "PRUNED", [0.2, 0.3], minute=1),
        trial(2, "COMPLETE", [0.6], minute=3),
    ]
    assert bench_search.epoch_curve(trials) == [0.2, 0.3, 0.5, 0.7, 0.9, 0.6]


def _recount(trials: list, target: float, budget: int) -> tuple[int, int | None]:
    """Epochs trained and epochs-to-reach, counted independently of bench_search: one worker
    runs trials in number order, each trial's epochs are its reported steps."""
    spent, first = 0, None
    for trial in sorted(trials, key=lambda t: t.number):
        for step in sorted(trial.intermediate_values):
            spent += 1
            if (
                first is None
                and spent <= budget
                and trial.intermediate_values[step] >= target - 0.003
            ):
                first = spent
    return spent, first


@pytest.mark.slow
def test_bench_search_on_digits_counts_epochs_from_the_trials(cli, kd_home):
    # studies/digits_bench_search.yaml, shrunk for CI: 3 epochs, a small teacher, and a grid of
    # one point listed twice, so that every search's first trial repeats the grid's training
    # (same parameters, same seed) and the grid's best is surely reached within the budget:
    # the epochs-to-reach and the ratio are then numbers to check, never "not reached".
    spec = yaml.safe_load((ROOT / "studies" / "digits_bench_search.yaml").read_text())
    spec["base"] = str(ROOT / "studies" / "base" / "digits_partial.yaml")
    spec = merge(
        spec,
        {
            "teacher": {"kwargs": {"num_channels": 8}, "checkpoint": "models/t.pt"},
            "teacher_train": {"epochs": 3},
            "train": {"epochs": 3},
            "search": {
                "space": {
                    "alpha": {"choices": [0.9]},
                    "temperature": {"choices": [4.0, 4.0]},
                }
            },
        },
    )
    (kd_home / "bench.yaml").write_text(yaml.safe_dump(spec))
    assert cli("train-teacher", "bench.yaml").returncode == 0
    url = f"sqlite:///{kd_home}/bench.db"
    args = ["bench-search", "bench.yaml", "--seeds", "0,1", "--storage", url]
    table = cli(*args, "--budget-fraction", "0.5")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["run", "grid", "seed 0", "seed 1", "median"]

    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    trials = {n: optuna.load_study(study_name=n, storage=storage).trials for n in names}
    (grid,) = [n for n in names if "-grid-" in n]
    grid_epochs, _ = _recount(trials[grid], 1.0, 0)
    assert grid_epochs == 2 * 3  # every point, every epoch
    grid_best = max(t.value for t in trials[grid])
    assert f"| grid | {grid_epochs} | 1.00 | {100 * grid_best:.2f} |" in rows

    reached = []
    for seed in (0, 1):
        (name,) = [n for n in names if f"-tpe{seed}-" in n]
        budget = grid_epochs // 2
        spent, first = _recount(trials[name], grid_best, budget)
        assert spent >= budget  # the search ran its whole budget
        assert first is not None
        row = next(r for r in rows if r.startswith(f"| seed {seed} |"))
        assert row.startswith(f"| seed {seed} | {first} | {first / grid_epochs:.2f} |")
        reached.append(first)
    median = sorted(reached)[0] + (sorted(reached)[1] - sorted(reached)[0]) / 2
    assert rows[-1].startswith(f"| median | {median:g} | {median / grid_epochs:.2f} |")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("digits_quick.yaml", "bench-search needs a grid spec"),
        ("digits_bench_search.yaml", "teacher.checkpoint:"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, kd_home, spec, message):
    url = f"sqlite:///{kd_home}/bench.db"
    proc = cli("bench-search", str(ROOT / "studies" / spec), "--storage", url)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert list(kd_home.iterdir()) == []
