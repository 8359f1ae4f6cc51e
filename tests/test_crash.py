"""Crash safety with real processes and signals: SIGKILL, SIGTERM, many writers, NaN loss.

A killed trial must be failed by the heartbeat, retried with the same parameters, and resume
from its last epoch checkpoint; a stopped worker must leave nothing RUNNING. With the default
heartbeat (10 s, grace 30 s) the other worker meets the budget long before the grace period
ends: it must wait, fail the killed trial and run its retry before it leaves.
"""

from __future__ import annotations

import shutil
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import alive, start_worker, worker_processes
from optuna.artifacts import get_all_artifact_meta

from kdsearch.config.spec import SearchSpec
from kdsearch.search.storage import open_storage

S = optuna.trial.TrialState

#: Trials long enough (6 epochs of ~0.3 s) to be killed in the middle.
SLOW_TRIALS = {
    "dataset": {"options": {"n_train": 1200, "n_test": 100, "num_classes": 4, "noise": 150.0}},
    "train": {"epochs": 6},
    "search": {"pruner": {"name": "none"}},
}


def wait_for(
    pred: Callable[[], object], timeout: float, what: str, procs: list | None = None
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    for p in procs or []:
        p.kill()
        print(p.communicate()[0][-3000:])
    raise AssertionError(f"timed out waiting for {what}")


def trials(url: str, study: str = "synth") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials()


def running_after(url: str, epochs: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials(url) if t.state == S.RUNNING and len(t.intermediate_values) >= epochs]


#: The heartbeat settings a user gets without setting any.
DEFAULT_HEARTBEAT = {
    "heartbeat_interval": SearchSpec.heartbeat_interval,
    "grace_period": SearchSpec.grace_period,
}


def kill_one_of_two(
    cli,
    write_spec,
    kd_home: Path,
    url: str,
    machines: bool = False,
    n_trials: int = 6,
    heartbeat: dict | None = None,
) -> str:
    """SIGKILL one of two workers mid-trial; with ``machines``, each worker has its own
    KDSEARCH_HOME (its own local checkpoints) and only the artifact store is shared."""
    search = {**SLOW_TRIALS["search"], "n_trials": n_trials, **(heartbeat or {})}
    if machines:
        search["artifact_store"] = str(kd_home / "shared-artifacts")
    spec = write_spec({**SLOW_TRIALS, "search": search})
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    homes = [kd_home / f"machine{i}" for i in range(2)] if machines else [kd_home] * 2
    for home in homes:
        (home / "models").mkdir(parents=True, exist_ok=True)
        if home != kd_home:
            shutil.copy(kd_home / "models" / "teacher.pt", home / "models" / "teacher.pt")
    workers = [start_worker(home, "synth", url) for home in homes]
    victim_trial = wait_for(lambda: running_after(url, 2), 300, "a trial at epoch 2", workers)[0]
    host_pid = int(victim_trial.user_attrs["worker"].rsplit(":", 1)[1])
    victim = next(w for w in workers if w.pid == host_pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = next(w for w in workers if w is not victim)
    out, _ = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, out[-3000:]

    by_number = {t.number: t for t in trials(url)}
    killed = by_number[victim_trial.number]
    assert killed.state == S.FAIL
    retries = [t for t in by_number.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == S.COMPLETE
    retry = retries[0]
    assert retry.params == killed.params
    # It resumed from the epoch checkpoint: at least the 2 epochs seen before the kill.
    assert retry.user_attrs["resumed_from_epoch"] >= 2
    assert f"resumes trial {killed.number} from epoch" in out
    assert len(retry.intermediate_values) == 6
    finished = [t for t in by_number.values() if t.state in (S.COMPLETE, S.PRUNED)]
    # Two workers overlap by at most one trial; a retry run after the budget adds one.
    assert n_trials <= len(finished) <= n_trials + 2
    assert not [t for t in by_number.values() if t.state == S.RUNNING]
    return out


@pytest.mark.slow
def test_sigkill_mid_trial_resumes_on_sqlite(cli, write_spec, kd_home):
    """Default heartbeat, and a budget (one trial) the survivor meets with the trial it is in,
    long before the grace period ends: it must wait, fail the killed trial and retry it."""
    out = kill_one_of_two(
        cli, write_spec, kd_home, "sqlite:///kd.db", n_trials=1, heartbeat=DEFAULT_HEARTBEAT
    )
    assert "running the retry of a trial whose worker died" in out


@pytest.mark.slow
def test_retry_on_another_machine_resumes_from_the_artifact_store(cli, write_spec, kd_home):
    url = f"sqlite:///{kd_home / 'kd.db'}"
    out = kill_one_of_two(cli, write_spec, kd_home, url, machines=True)
    # Both files: a retry whose epochs do not beat the killed attempt's best needs its best.pt.
    assert "downloaded last.pt of trial" in out and "downloaded best.pt of trial" in out
    # Only the kept trials' best models remain uploaded; superseded resume states are gone.
    st = optuna.load_study(study_name="synth", storage=open_storage(url))
    done = sorted(st.get_trials(states=(S.COMPLETE,)), key=lambda t: t.value, reverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        metas = {t.number: get_all_artifact_meta(t, storage=st._storage) for t in done}
        # The study's own files (spec.yaml for the dashboard) are not trial checkpoints.
        own = {m.artifact_id for m in get_all_artifact_meta(st, storage=st._storage)}
    files = [p for p in (kd_home / "shared-artifacts").rglob("*") if p.is_file()]
    files = [p for p in files if p.name not in own]
    uploaded = {p.name for p in files}
    # Metadata outlives removed uploads, so look at which of each trial's uploads still exist.
    alive = {n: [m.filename for m in ms if m.artifact_id in uploaded] for n, ms in metas.items()}
    kept = min(3, len(done))  # keep_checkpoints
    assert [alive[t.number] for t in done] == [["best.pt"]] * kept + [[]] * (len(done) - kept)
    assert uploaded <= {m.artifact_id for ms in metas.values() for m in ms}
    # Under the study's own folder name, so another study's uploads never mix with them.
    assert {p.parent.name for p in files} == {f"synth-{st.user_attrs['kdsearch_study_id']}"}


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_mid_trial_resumes_on_postgres(cli, write_spec, kd_home, pg_url):
    """As on SQLite, with the tests' short heartbeat (1 s, grace 3 s): the default one's 30 s
    wait is the SQLite test's, and the storage is what differs here."""
    out = kill_one_of_two(cli, write_spec, kd_home, pg_url, n_trials=1)
    assert "running the retry of a trial whose worker died" in out


@pytest.mark.slow
def test_a_worker_paused_past_the_grace_period_leaves_its_retry_alone(cli, write_spec, kd_home):
    """SIGSTOP one of two workers mid-trial until the other has failed its trial (heartbeat
    1 s, grace 3 s) and finished the retry, then SIGCONT: the late epochs it trains on must not
    touch the retry's files, and it must say so in one line and go on, not crash."""
    from kdsearch.search import study as studies
    from kdsearch.training.model_files import load_checkpoint

    url = "sqlite:///kd.db"
    spec = write_spec({**SLOW_TRIALS, "search": {**SLOW_TRIALS["search"], "n_trials": 2}})
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    workers = [start_worker(kd_home, "synth", url) for _ in range(2)]
    paused = wait_for(lambda: running_after(url, 2), 300, "a trial at epoch 2", workers)[0]
    pid = int(paused.user_attrs["worker"].rsplit(":", 1)[1])
    victim = next(w for w in workers if w.pid == pid)
    other = next(w for w in workers if w is not victim)
    victim.send_signal(signal.SIGSTOP)

    def retry_complete() -> list[optuna.trial.FrozenTrial]:
        ts = trials(url)
        return [
            t
            for t in ts
            if t.system_attrs.get("failed_trial") == paused.number and t.state == S.COMPLETE
        ]

    try:
        (retry,) = wait_for(retry_complete, 300, "the retry to complete", [other])
        other_out, _ = other.communicate(timeout=300)
    finally:
        victim.send_signal(signal.SIGCONT)
    out, _ = victim.communicate(timeout=300)
    assert other.returncode == 0, other_out[-3000:]
    assert victim.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert f"trial {paused.number} was failed and retried by another worker" in out, out[-3000:]

    by_number = {t.number: t for t in trials(url)}
    assert by_number[paused.number].state == S.FAIL
    assert retry.user_attrs["resumed_from_epoch"] >= 2 and len(retry.intermediate_values) == 6
    # The retry's checkpoint is the retry's own: its metrics, not the paused attempt's.
    metrics = load_checkpoint(Path(retry.user_attrs["checkpoint"]))["metrics"]
    assert metrics["test_accuracy"] == retry.user_attrs["test_accuracy"]
    assert metrics["val_accuracy"] == retry.value
    # Nothing left behind: no resume state, no folder of the failed attempt.
    folder = studies.folder(optuna.load_study(study_name="synth", storage=open_storage(url)))
    assert not list(folder.rglob("last.pt")), sorted(folder.rglob("*"))
    assert not (folder / f"trial-{paused.number:05d}").exists()
    assert not [t for t in by_number.values() if t.state == S.RUNNING]


@pytest.mark.slow
def test_ctrl_c_stops_every_child_and_requeues(cli, write_spec, kd_home):
    url = "sqlite:///kd.db"
    spec = write_spec({**SLOW_TRIALS, "name": "sigterm_study"}, name="sigterm_study")
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    parent = start_worker(kd_home, "sigterm_study", url, n=2)

    def both_running() -> bool:
        ts = trials(url, "sigterm_study")
        return sum(t.state == S.RUNNING and len(t.intermediate_values) >= 2 for t in ts) == 2

    wait_for(both_running, 300, "two running trials", [parent])
    children = worker_processes(parent.pid)
    assert len(children) == 2
    sent = time.monotonic()
    parent.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = parent.communicate(timeout=60)
    assert time.monotonic() - sent < 30, out[-3000:]
    assert parent.returncode == 130, out[-3000:]  # stopped, not done: as a shell reports Ctrl-C
    # One line per worker, no tracebacks.
    assert "Traceback" not in out and "StopRequested" not in out, out[-3000:]
    assert out.count("stopped: trial") == 2, out[-3000:]
    assert not [pid for pid in children if alive(pid)]
    ts = trials(url, "sigterm_study")
    assert not [t for t in ts if t.state == S.RUNNING]
    failed = [t for t in ts if t.state == S.FAIL]
    waiting = [t for t in ts if t.state == S.WAITING]
    assert len(failed) == 2 and len(waiting) == 2
    assert {t.system_attrs["failed_trial"] for t in waiting} == {t.number for t in failed}

    # The next worker picks the re-queued trials up and resumes them.
    again = cli("worker", "--study", "sigterm_study", "--storage", url, "--n-trials", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [t for t in trials(url, "sigterm_study") if "resumed_from_epoch" in t.user_attrs]
    assert len(resumed) == 2 and all(t.user_attrs["resumed_from_epoch"] >= 2 for t in resumed)


@pytest.mark.slow
def test_a_single_worker_stopped_by_sigterm_exits_143(cli, write_spec, kd_home):
    """``--n-workers 1`` runs the worker in the command's own process (what a Slurm task or a
    Kubernetes pod runs): SIGTERM re-queues its trial and ends it with 128 + 15, so a
    scheduler does not take the stop for work done (exit 0)."""
    url = "sqlite:///kd.db"
    assert cli("create-study", str(write_spec(SLOW_TRIALS)), "--storage", url).returncode == 0
    worker = start_worker(kd_home, "synth", url, n=1)
    wait_for(lambda: bool(running_after(url, 1)), 300, "a running trial", [worker])
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 143, out[-3000:]
    assert "Traceback" not in out and "stopped: trial" in out, out[-3000:]
    assert [t.state for t in trials(url)].count(S.WAITING) == 1


@pytest.mark.slow
def test_eight_workers_on_one_sqlite_file(cli, write_spec, kd_home):
    """8 processes × 20 one-epoch trials on one SQLite file: no storage errors."""
    spec = write_spec(
        {
            "dataset": {"options": {"n_train": 64, "n_test": 32, "num_classes": 4}},
            "train": {"epochs": 1},
            "search": {"n_trials": 160, "pruner": {"name": "none"}},
        }
    )
    url = "sqlite:///kd.db"
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    out = cli(
        "worker",
        "--study",
        "synth",
        "--storage",
        url,
        "--n-workers",
        "8",
        "--devices",
        "cpu",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "database is locked" not in out.stderr
    states = [t.state for t in trials(url)]
    assert S.FAIL not in states and S.RUNNING not in states
    assert states.count(S.COMPLETE) == 160  # the budget is exact


@pytest.mark.slow
def test_nan_loss_prunes_and_the_worker_goes_on(cli, write_spec, kd_home):
    spec = write_spec(
        {
            # Batch norm keeps lr 1e6 finite for a few steps (NaN at step 4 here); 16 steps an
            # epoch leave room, where 4 let the first epoch end finite on another box.
            "train": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 1e6}},
            # Only alpha is searched (null drops the inherited entries), so lr stays huge.
            "search": {"n_trials": 3, "space": {"temperature": None, "lr": None}},
        }
    )
    url = "sqlite:///kd.db"
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    out = cli("worker", "--study", "synth", "--storage", url)
    assert out.returncode == 0, out.stderr[-3000:]
    ts = trials(url)
    assert len(ts) == 3 and all(t.state == S.PRUNED for t in ts)
    assert all("lower the learning rate" in t.user_attrs["prune_reason"] for t in ts)
    assert all(len(t.intermediate_values) == 0 for t in ts), "pruned in the first epoch"
