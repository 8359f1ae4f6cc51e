"""A PostgreSQL restart in the middle of a 2-worker study: workers reconnect, the study ends.

The test runs its own throw-away cluster (initdb on a spare port, as the ``postgres`` user), so
the machine's own PostgreSQL service is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import free_port, start_worker

from kdsearch.search.storage import open_storage

BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        cwd="/tmp",  # the postgres user cannot enter pytest's folders
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@pytest.fixture
def cluster() -> Iterator[tuple[Path, int]]:
    if not (BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL 15 server binaries (initdb, pg_ctl) and runuser are required")
    folder = Path(tempfile.mkdtemp(prefix="kdsearch-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    as_postgres(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    start = [
        str(BIN / "pg_ctl"),
        "-D",
        str(data),
        "-w",
        "-l",
        str(folder / "log"),
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
    ]
    as_postgres(*start, "start")
    try:
        yield data, port
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(BIN / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restart_during_a_study(cli, write_spec, kd_home, cluster):
    data, port = cluster
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    spec = write_spec(
        {
            "dataset": {"options": {"n_train": 800, "n_test": 100, "num_classes": 4}},
            "train": {"epochs": 4},
            "search": {"n_trials": 10, "pruner": {"name": "none"}},
        }
    )
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    worker = start_worker(kd_home, "synth", url, n=2)
    storage = open_storage(url)

    def finished() -> int:
        study = optuna.load_study(study_name="synth", storage=storage)
        return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))

    deadline = time.monotonic() + 300
    while finished() < 2:
        assert worker.poll() is None and time.monotonic() < deadline, "no trial finished"
        time.sleep(0.5)
    storage.engine.dispose()  # the test's own connections must not keep the old server busy
    # -l: the server must not inherit our pipes, or this call would wait for it to exit.
    log = str(data.parent / "log")
    as_postgres(
        *(str(BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "restart", "-l", log),
        "-o",
        f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1",
    )
    out, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, out[-4000:]

    study = optuna.load_study(study_name="synth", storage=open_storage(url))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = states.count(optuna.trial.TrialState.COMPLETE)
    assert 10 <= done <= 11, (states, out[-4000:])
    assert optuna.trial.TrialState.RUNNING not in states
