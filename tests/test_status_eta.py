"""`status`'s epochs per second and time left: timed from the epochs themselves, not from
the first trial's start, and not before the pruner's cut can be estimated (issue 35).

Hand-built trials (a real SQLite storage, every number known) check the arithmetic; a real
digits search, run by three `kdsearch worker` commands one after another, checks that a
worker's start-up and the pruner do not inflate the estimate.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import run_cli

from kdsearch import api
from kdsearch.results.status import format_status, status_of
from kdsearch.search.pace import CLOCK_ATTR
from kdsearch.search.study import SPEC_ATTR

DIST = {"alpha": optuna.distributions.FloatDistribution(0, 1)}


def _study(pruner: str) -> tuple[Any, optuna.Study]:
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    spec = {"search": {"n_trials": 4, "pruner": {"name": pruner}}, "train": {"epochs": 3}}
    study.set_user_attr(SPEC_ATTR, spec)
    return storage, study


def _add(study: optuna.Study, worker: str, clock: dict[str, float], running: bool) -> None:
    """A trial of ``worker`` that trained ``clock["epochs"]`` epochs on that clock."""
    values = {step: 0.1 * (step + 1) for step in range(int(clock["epochs"]))}
    state = optuna.trial.TrialState.RUNNING if running else optuna.trial.TrialState.PRUNED
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            params={"alpha": 0.5},
            distributions=DIST,
            intermediate_values=values,
            user_attrs={"worker": worker, CLOCK_ATTR: clock},
        )
    )


def test_no_time_left_before_a_trial_ends_when_a_pruner_may_cut_trials() -> None:
    """One trial running, two epochs in 10 s after its first: the rate is known, but how many
    epochs the pruner will leave the trials is not; without a pruner it is the schedule."""
    storage, study = _study("median")
    _add(study, "host:1", {"first": 100, "last": 110, "epochs": 2}, running=True)
    s = status_of(storage, "s")
    assert s["epochs_per_second"] == pytest.approx(0.1)
    assert s["seconds_left"] is None
    assert format_status(s).splitlines()[-1] == (
        "  0.1 epochs/s, time left: estimating until a trial ends "
        "(the pruner may stop trials early)"
    )

    storage, study = _study("none")
    _add(study, "host:1", {"first": 100, "last": 110, "epochs": 2}, running=True)
    s = status_of(storage, "s")
    # 3 trials to start x 3 epochs + 1 epoch left of the running one, at 0.1 epochs/s
    assert s["seconds_left"] == pytest.approx(100)


def test_a_worker_not_yet_timed_counts_at_the_others_pace() -> None:
    """Two live workers, one with a single epoch behind it (no pace yet): twice the timed
    one's rate; with none timed, "estimating"."""
    storage, study = _study("median")
    _add(study, "host:1", {"first": 100, "last": 110, "epochs": 3}, running=True)
    _add(study, "host:2", {"first": 108, "last": 108, "epochs": 1}, running=True)
    assert status_of(storage, "s")["epochs_per_second"] == pytest.approx(2 * 0.2)

    storage, study = _study("median")
    _add(study, "host:2", {"first": 108, "last": 108, "epochs": 1}, running=True)
    s = status_of(storage, "s")
    assert s["epochs_per_second"] is None and s["seconds_left"] is None
    assert format_status(s).splitlines()[-1] == (
        "  time left: estimating, from each worker's second trained epoch"
    )


def test_a_pause_between_workers_is_not_training() -> None:
    """Nothing running: two workers that ran an hour apart, and two that overlapped, are
    timed over the spans they trained, each span counted once."""
    storage, study = _study("median")
    _add(study, "host:1", {"first": 100, "last": 110, "epochs": 3}, running=False)
    _add(study, "host:2", {"first": 3700, "last": 3710, "epochs": 3}, running=False)
    assert status_of(storage, "s")["epochs_per_second"] == pytest.approx(4 / 20)

    storage, study = _study("median")
    _add(study, "host:1", {"first": 100, "last": 110, "epochs": 3}, running=False)
    _add(study, "host:2", {"first": 105, "last": 115, "epochs": 3}, running=False)
    assert status_of(storage, "s")["epochs_per_second"] == pytest.approx(4 / 15)


GOOD, BAD = 1e-2, 1e-5  # learning rates: BAD is at chance after an epoch, so pruned there

ETA_SPEC = {
    "name": "eta",
    "dataset": {"name": "digits", "val_fraction": 0.1, "augment": False},
    "teacher": {"arch": "cnn5", "kwargs": {"num_channels": 8}, "checkpoint": "models/t.pt"},
    "teacher_train": {"epochs": 1},
    "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
    "train": {"epochs": 6, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}},
    "search": {
        "n_trials": 8,
        "sampler": {"name": "random", "seed": 0},
        # Median of the complete trials at each epoch: the first GOOD trial completes, a
        # later GOOD one repeats its curve (same seed) and completes, BAD ones are pruned.
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "heartbeat_interval": 1,
        "grace_period": 5,
        "space": {"lr": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}},
    },
}


def _worker(url: str, n_trials: int) -> list[str]:
    """The arguments of a `kdsearch worker` that runs ``n_trials`` trials, then stops."""
    return [
        "worker",
        "--study",
        "eta",
        "--storage",
        url,
        "--devices",
        "cpu",
        "--n-trials",
        str(n_trials),
    ]


@pytest.mark.slow
def test_the_time_left_of_a_real_search_is_not_inflated(kd_home: Path) -> None:
    """Digits, eight queued trials (GOOD, BAD, BAD, BAD twice: pruned ones train one epoch of
    six), three `kdsearch worker` commands one after another: 3 trials, 1, then the last 4.

    While the first worker trains its first trial, no time left is shown. After the second,
    the estimate for the last four trials is measured against the time the third worker then
    took for them (from its first trial's start: its start-up is outside, as it is for a
    search whose workers keep running). Timed from the first trial's start, the estimate
    counted the pause and the second worker's start-up (a new process: Python, torch, the
    data, the teacher cache) as training: 2.4 to 2.8 times too long without the pause. Had it
    expected the six epochs of the schedule per trial, it would be 24 / 9 times too long.
    """
    (kd_home / "eta.yaml").write_text(yaml.safe_dump(ETA_SPEC))
    url = f"sqlite:///{kd_home}/eta.db"
    api.train_teacher(kd_home / "eta.yaml", device="cpu")
    study = api.create_study(kd_home / "eta.yaml", url)
    # Queued before each worker, as many as it runs: a worker takes every queued trial
    # once they hold the whole budget, whatever its --n-trials.
    for lr in (GOOD, BAD, BAD):
        study.enqueue_trial({"lr": lr})
    log = kd_home / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "kdsearch", *_worker(url, 3)], cwd=kd_home, stderr=out
        )
        # Polled in-process, on one storage, 4 times a second: a status costs CPU that the
        # worker beside it, on a busy 2-core box, would otherwise train with.
        storage = optuna.storages.RDBStorage(url)
        before_an_end = []
        while first.poll() is None:
            s = status_of(storage, "eta")
            if s["finished"] == 0 and s["epochs_per_second"] is not None:
                before_an_end.append(s)
            time.sleep(0.25)
    assert first.returncode == 0, log.read_text()[-3000:]
    assert before_an_end, "status never saw the first trial between its 2nd epoch and its end"
    assert all(s["seconds_left"] is None for s in before_an_end), before_an_end[-1]
    assert "estimating until a trial ends" in format_status(before_an_end[-1])

    study.enqueue_trial({"lr": BAD})
    time.sleep(5)  # the second worker starts a while later (a Slurm task that waited, say)
    second = run_cli(*_worker(url, 1), cwd=kd_home)
    assert second.returncode == 0, second.stderr[-3000:]
    (s,) = api.study_status(url, "eta")
    trials = optuna.load_study(study_name="eta", storage=url).get_trials()
    done = [t.state.name for t in trials if t.state.is_finished()]
    assert done == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"], done
    assert s["finished"] == 4 and s["workers"] == []
    estimate = s["seconds_left"]

    for lr in (GOOD, BAD, BAD, BAD):
        study.enqueue_trial({"lr": lr})
    third = run_cli(*_worker(url, 4), cwd=kd_home)
    assert third.returncode == 0, third.stderr[-3000:]
    trials = optuna.load_study(study_name="eta", storage=url).get_trials()
    assert [t.state.name for t in trials[4:]] == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    took = (trials[-1].datetime_complete - trials[4].datetime_start).total_seconds()
    assert estimate < 2 * took, (estimate, took)
    assert estimate > took / 4, (estimate, took)  # and not absurdly short either
