"""bench-search: the grid-to-search table on digits, its accounting redone from the studies."""

from __future__ import annotations

import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import worker_processes

from kdsearch.benchmarks import search_efficiency
from kdsearch.config import spec as specs
from kdsearch.config.spec import ParamSpec, merge
from kdsearch.results.status import status_of
from kdsearch.search.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]


def test_grid_values_become_ranges():
    rng = search_efficiency.search_range
    assert rng([0.0, 0.5, 0.9]) == ParamSpec(type="float", low=0.0, high=0.9, log=False)
    # the scale on which the grid's median sits mid-range
    assert rng([1.0, 4.0, 16.0]) == ParamSpec(type="float", low=1.0, high=16.0, log=True)
    assert rng([1.0, 2.0, 4.0, 8.0]).log
    assert not rng([1.0, 2.0, 3.0, 4.0]).log
    # the reference's 5% subset grid: temperatures crowd the low end, alphas both ends
    assert rng([1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 20.0, 40.0]).log
    assert not rng([0.01, 0.1, 0.5, 0.95, 0.999]).log
    # two values: log when they span a factor of 10
    assert rng([1e-4, 1e-2]).log
    assert not rng([2.0, 8.0]).log
    assert rng([2, 8, 32]) == ParamSpec(type="int", low=2, high=32, log=True)
    assert rng([3.0e-3]) == ParamSpec(type="categorical", choices=[3.0e-3])
    assert rng(["hinton", "dkd"]).type == "categorical"


def test_bench_search_studies_have_no_baseline_arm():
    spec = specs.load(ROOT / "studies" / "digits_quick.yaml").with_overrides(
        {
            "search.baseline": True,
            "search.sampler": {"name": "grid"},
            "search.space": {
                "alpha": {"type": "categorical", "choices": [0.5, 0.9]},
                "lr": {"type": "categorical", "choices": [1e-3, 3e-3]},
            },
        }
    )
    assert not search_efficiency.grid_spec(spec).search.baseline
    assert not search_efficiency.search_spec(spec, 0, 8).search.baseline


def test_reach_counts_epochs_until_within_tolerance():
    curve = [0.5, 0.9, 0.8, 0.968, 0.99]
    assert search_efficiency.reach(curve, 0.97, budget=5) == 4  # 0.968 is within 0.3 points
    assert search_efficiency.reach(curve, 0.99, budget=4) is None  # reached only past the budget


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
    assert search_efficiency.epoch_curve(trials) == [0.2, 0.3, 0.5, 0.7, 0.9, 0.6]


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
    table = cli(*args, "--budget-fraction", "0.5", "--confirm-seeds", "2")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["run", "grid", "seed 0", "seed 1", "median"]
    assert "winner's test accuracy, 2 new seeds (mean ± std)" in rows[0]

    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    trials = {n: optuna.load_study(study_name=n, storage=storage).trials for n in names}
    (grid,) = [n for n in names if "-grid-" in n]
    grid_epochs, _ = _recount(trials[grid], 1.0, 0)
    assert grid_epochs == 2 * 3  # every point, every epoch
    grid_best = max(t.value for t in trials[grid])
    # The grid's winner, its first best trial, trained again with the seeds after the spec's
    # (0): the same numbers `kdsearch train` gives for that point and seed.
    first_best = min(t.number for t in trials[grid] if t.value == grid_best)
    tests = []
    for seed in (1, 2):
        point = ("--set", "distill.alpha=0.9", "--set", "distill.temperature=4.0")
        run = cli("train", "bench.yaml", *point, "--set", f"train.seed={seed}", "--json")
        assert run.returncode == 0, run.stderr
        tests.append(json.loads(run.stdout)["test_accuracy"])
    confirmed = f"{100 * statistics.fmean(tests):.2f} ± {100 * statistics.stdev(tests):.2f}"
    grid_row = f"| grid | {grid_epochs} | 1.00 | {100 * grid_best:.2f} |"
    assert f"{grid_row} {confirmed} (trial {first_best}) |" in rows, rows

    reached = []
    for seed in (0, 1):
        (name,) = [n for n in names if f"-tpe{seed}-" in n]
        budget = grid_epochs // 2
        spent, first = _recount(trials[name], grid_best, budget)
        assert spent >= budget  # the search ran its whole budget
        assert status_of(storage, name)["epoch_budget"] == budget  # status counts epochs
        assert first is not None
        row = next(r for r in rows if r.startswith(f"| seed {seed} |"))
        assert row.startswith(f"| seed {seed} | {first} | {first / grid_epochs:.2f} |")
        # Its winner: the trial that trained the best epoch within the budget, first of equals.
        epochs = [
            (t.intermediate_values[e], -i, t.number)
            for i, t in enumerate(sorted(trials[name], key=lambda t: t.datetime_start))
            for e in sorted(t.intermediate_values)
        ][:budget]
        assert row.endswith(f"(trial {max(epochs)[2]}) |"), row
        reached.append(first)
    median = sorted(reached)[0] + (sorted(reached)[1] - sorted(reached)[0]) / 2
    assert rows[-1].startswith(f"| median | {median:g} | {median / grid_epochs:.2f} |")

    # The same table from the studies alone (bench/search_table.py), after a round trip
    # through a committed JSON file (bench/study_json.py) and a confirmation run added to the
    # copy's grid study: confirmations are neither the grid's points nor the search's epochs.
    def script(*args: object) -> str:
        cmd = [sys.executable, str(ROOT / "bench" / str(args[0])), *map(str, args[1:])]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=kd_home)
        assert done.returncode == 0, done.stderr
        return done.stdout

    copy = f"sqlite:///{kd_home}/copy.db"
    script("study_json.py", "dump", url, kd_home / "studies.json")
    script("study_json.py", "load", kd_home / "studies.json", copy)
    confirm = cli("confirm", "--study", grid, "--storage", copy, "--top", "1", "--seeds", "1")
    assert confirm.returncode == 0, confirm.stderr
    assert cli("worker", "--study", grid, "--storage", copy).returncode == 0
    copied = optuna.load_study(study_name=grid, storage=open_storage(copy)).trials
    assert len(copied) == len(trials[grid]) + 1
    assert [t.intermediate_values for t in copied[:-1]] == [
        t.intermediate_values for t in trials[grid]
    ]
    # A search study is budgeted in epochs, not trials: a plain worker started on it runs its
    # confirmation and stops, rather than searching on up to its n_trials cap.
    (search,) = [n for n in names if "-tpe0-" in n]
    confirm = cli("confirm", "--study", search, "--storage", copy, "--top", "1", "--seeds", "1")
    assert confirm.returncode == 0, confirm.stderr
    assert cli("worker", "--study", search, "--storage", copy).returncode == 0
    copied = optuna.load_study(study_name=search, storage=open_storage(copy)).trials
    assert len(copied) == len(trials[search]) + 1
    assert copied[-1].user_attrs["confirm_of"] is not None
    # The table from the copy's studies: the same accounting, and what their confirmation runs
    # say (the confirmed winner's test accuracy and the epochs confirming cost), untrained.
    again = [line for line in script("search_table.py", copy).splitlines() if line[:2] == "| "]
    assert len(again) == len(rows)
    assert "confirmed winner's test accuracy, new seeds" in again[0]
    cells = {line.split("|")[1].strip(): line.split("|")[1:-1] for line in again[1:]}
    for first_run in rows[1:]:
        assert first_run.split("|")[1:5] == cells[first_run.split("|")[1].strip()][:4]
    for row, name in [("grid", grid), ("seed 0", search)]:
        run = optuna.load_study(study_name=name, storage=open_storage(copy)).trials[-1]
        test = f"{100 * run.user_attrs['test_accuracy']:.2f} ± 0.00"
        assert cells[row][-2:] == [f" {test} (trial {run.user_attrs['confirm_of']}) ", " 3 "]
    assert cells["seed 1"][-2:] == [" - ", " 0 "]


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


#: A 4-point grid on the synthetic data, 2 epochs a point: 8 grid epochs, 4 per search at 0.5.
SMALL_GRID = {
    "train": {"epochs": 2},
    "search": {
        "sampler": {"name": "grid"},
        "space": {
            "alpha": {"type": "categorical", "choices": [0.5, 0.9]},
            "temperature": {"type": "categorical", "choices": [2.0, 8.0]},
        },
    },
}


def _write_grid(write_spec, overrides: dict | None = None) -> None:
    """The synthetic spec with SMALL_GRID's space as its whole space (merge would keep lr)."""
    path = write_spec(merge(SMALL_GRID, overrides or {}), name="grid")
    data = yaml.safe_load(path.read_text())
    data["search"]["space"] = SMALL_GRID["search"]["space"]
    path.write_text(yaml.safe_dump(data))


def _search_params(url: str) -> dict[int, list[dict]]:
    storage = open_storage(url)
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        if "-tpe" in summary.study_name:
            seed = int(summary.study_name.split("-tpe")[1].split("-")[0])
            trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
            out[seed] = [t.params for t in sorted(trials, key=lambda t: t.number)]
    return out


@pytest.mark.slow
def test_bench_search_in_parallel_is_repeatable(cli, kd_home, write_spec):
    """Two runs of ``--jobs 2`` (two processes, so two pids) propose the same trials per seed:
    the searches' sampler seeds depend on the seed alone, not on who ran them. The grid's
    points are shared by two workers."""
    _write_grid(write_spec)
    runs = []
    for n in (1, 2):
        url = f"sqlite:///{kd_home}/bench{n}.db"
        args = ["--seeds", "0,1", "--budget-fraction", "0.5", "--jobs", "2", "--json"]
        proc = cli("bench-search", "grid.yaml", "--storage", url, *args)
        assert proc.returncode == 0, proc.stderr
        runs.append(_search_params(url))
        storage = open_storage(url)
        (grid,) = [s for s in optuna.get_all_study_summaries(storage) if "-grid-" in s.study_name]
        trials = optuna.load_study(study_name=grid.study_name, storage=storage).trials
        trained = [t for t in trials if t.intermediate_values]
        assert len(trained) == 4  # a worker handed a point already running skips it untrained
        assert len({t.user_attrs["worker"] for t in trained}) == 2, "the grid ran on one worker"
    assert runs[0].keys() == {0, 1}
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]  # and the seeds differ from each other


def _studies(url: str) -> dict[str, int]:
    """Each study in the storage and its number of trials."""
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    return {n: len(optuna.load_study(study_name=n, storage=storage).trials) for n in names}


@pytest.mark.slow
def test_bench_search_against_a_finished_grid_runs_only_the_searches(cli, kd_home, write_spec):
    """``--grid`` reuses a finished grid (e.g. a committed one): the same table as running it,
    no trial added to it, the searches named with its tag; a grid that is not this spec's,
    not finished or not there is one line, exit 2, and nothing written."""
    _write_grid(write_spec)
    args = ["bench-search", "grid.yaml", "--seeds", "0", "--budget-fraction", "0.5", "--json"]
    first = cli(*args, "--storage", f"sqlite:///{kd_home}/a.db")
    assert first.returncode == 0, first.stderr
    (grid,) = [n for n in _studies(f"sqlite:///{kd_home}/a.db") if "-grid-" in n]
    (kd_home / "b.db").write_bytes((kd_home / "a.db").read_bytes())
    copy = f"sqlite:///{kd_home}/b.db"
    (search,) = [n for n in _studies(copy) if "-tpe0-" in n]
    optuna.delete_study(study_name=search, storage=open_storage(copy))

    again = cli(*args, "--storage", copy, "--grid", grid)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert _studies(copy) == _studies(f"sqlite:///{kd_home}/a.db")  # the grid is not rerun

    from kdsearch import api
    from kdsearch.search import study as studies

    unfinished = search_efficiency.grid_spec(api.validate(str(kd_home / "grid.yaml")))
    studies.create(unfinished, open_storage(copy), "half-grid", load_if_exists=False)
    untouched = _studies(copy)

    def files() -> list[str]:  # SQLite's -wal and -shm files come and go with connections
        return sorted(p.name for p in kd_home.iterdir() if not p.name.endswith(("-wal", "-shm")))

    before = files()
    for extra, message in [
        (["--grid", grid], "already exists in this storage"),
        (["--grid", "half-grid", "--seeds", "1"], "0 of its 4 points are complete"),
        (["--grid", "nothing", "--seeds", "1"], "--grid nothing: study: unknown 'nothing'"),
    ]:
        refused = cli(*args, "--storage", copy, *extra)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and message in refused.stderr, refused.stderr
    assert _studies(copy) == untouched
    _write_grid(write_spec, {"train": {"epochs": 3}})
    other = cli(*args, "--storage", copy, "--grid", grid, "--seeds", "1")
    assert other.returncode == 2
    assert "train.epochs: 2 -> 3" in other.stderr and other.stderr.count("\n") == 1
    no_storage = cli(*args, "--grid", grid)
    assert no_storage.returncode == 2 and "pass --storage" in no_storage.stderr
    assert _studies(copy) == untouched and files() == before


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_all_leave(pids: list[int]) -> None:
    """Within a minute every one of ``pids`` has exited; any left are killed, then reported."""
    deadline = time.monotonic() + 60
    while any(_alive(c) for c in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = [c for c in pids if _alive(c)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"pool processes {alive} outlived their parent"


@pytest.mark.slow
def test_bench_search_pool_leaves_when_its_parent_dies(kd_home, write_spec):
    """SIGKILL the bench-search process mid-grid: its pool's workers stop after their epoch
    and exit, instead of training on or waiting for work forever."""
    _write_grid(write_spec, {"train": {"epochs": 2000}})
    url = f"sqlite:///{kd_home}/bench.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["bench-search", "grid.yaml", "--jobs", "2", "--seeds", "0", "--storage", url]
    parent = subprocess.Popen(
        [sys.executable, "-m", "kdsearch", *args],
        cwd=kd_home,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        epochs = 0
        for line in parent.stderr:  # training has begun: two epoch lines
            epochs += " epoch " in line
            if epochs >= 2:
                break
        children = worker_processes(parent.pid, "")  # the pool's forkserver, tracker and runs
        assert len(worker_processes(parent.pid, "kdsearch-b")) == 2, "no pool processes found"
    finally:
        parent.kill()
        parent.wait()
    _assert_all_leave(children)


@pytest.mark.slow
def test_bench_search_pool_leaves_when_its_parent_dies_while_they_start(kd_home, write_spec):
    """SIGKILL the bench-search process the moment its pool processes exist, before they could
    ask for a signal on its death: they must still leave, not wait for work forever."""
    _write_grid(write_spec, {"train": {"epochs": 2000}})
    url = f"sqlite:///{kd_home}/bench.db"
    args = ["bench-search", "grid.yaml", "--jobs", "2", "--seeds", "0", "--storage", url]
    parent = subprocess.Popen([sys.executable, "-m", "kdsearch", *args], cwd=kd_home)
    try:
        deadline = time.monotonic() + 120
        pool: list[int] = []
        while len(pool) < 2 and parent.poll() is None and time.monotonic() < deadline:
            pool = worker_processes(parent.pid, "kdsearch-b")
            time.sleep(0.01)
        assert len(pool) == 2, "the pool's two processes did not start"
    finally:
        parent.kill()
        parent.wait()
    _assert_all_leave(pool)


#: Linux's exit(2) system call number, which ends the calling thread alone.
SYS_EXIT = {"x86_64": 60, "aarch64": 93}

#: bench-search whose main thread ends (the rest of the process lives on) on SIGUSR1.
MAIN_THREAD_EXITS = """
import ctypes, signal, sys
from kdsearch.cli import main
libc = ctypes.CDLL(None)
signal.signal(signal.SIGUSR1, lambda *_: libc.syscall({nr}, 0))
sys.argv = ["kdsearch", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.slow
def test_bench_search_pool_leaves_when_its_parents_main_thread_dies_first(kd_home, write_spec):
    """A SIGKILLed parent's threads end one by one. Ending the parent's main thread alone
    replays that first step (the one that starts the pool's processes and hands out the
    tasks): the pool must leave, not train on or take the next task."""
    import platform

    if platform.machine() not in SYS_EXIT:
        pytest.skip(f"no exit(2) number known for {platform.machine()}")
    _write_grid(write_spec, {"train": {"epochs": 2000}})
    url = f"sqlite:///{kd_home}/bench.db"
    script = MAIN_THREAD_EXITS.format(nr=SYS_EXIT[platform.machine()])
    args = ["bench-search", "grid.yaml", "--jobs", "2", "--seeds", "0", "--storage", url]
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=kd_home,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in parent.stderr:
            if " epoch " in line:
                break
        pool = worker_processes(parent.pid, "kdsearch-b")
        assert len(pool) == 2, "the pool's two processes did not start"
        parent.send_signal(signal.SIGUSR1)
        _assert_all_leave(pool)
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.slow
def test_one_ctrl_c_ends_bench_search_in_its_search_phase(kd_home, write_spec):
    """A search is a loop of worker calls: Ctrl-C must end the loop, not only its current
    worker (which would leave the next one training on to the budget)."""
    _write_grid(write_spec, {"train": {"epochs": 300}})
    data = yaml.safe_load((kd_home / "grid.yaml").read_text())
    data["search"]["space"] = {"alpha": {"type": "categorical", "choices": [0.5]}}
    (kd_home / "grid.yaml").write_text(yaml.safe_dump(data))
    args = ["bench-search", "grid.yaml", "--seeds", "0", "--budget-fraction", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdsearch", *args, "--storage", f"sqlite:///{kd_home}/b.db"],
        cwd=kd_home,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = 0
        for line in proc.stderr:  # the grid's trial 0, then the search's
            started += "trial 0 started" in line
            if started == 2 and " epoch " in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a search that ignored the signal must not train on after the test
        proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
