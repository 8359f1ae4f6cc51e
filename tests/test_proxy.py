"""Scale-out through Optuna's gRPC storage proxy: workers reach the study as grpc://HOST:PORT.

A real ``kdsearch storage-proxy`` process serves a SQLite study; two worker processes finish
the study through it. The result is read back from the SQLite file itself, not the proxy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import free_port
from optuna.trial import TrialState as State

STORAGE = "sqlite:///kd.db"
N_TRIALS = 6


@contextlib.contextmanager
def storage_proxy(home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``kdsearch storage-proxy`` in the background, yielded once its port accepts connections."""
    log = home / "proxy.log"
    with log.open("wb") as out:
        args = ["storage-proxy", "--storage", STORAGE, "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "kdsearch", *args],
            cwd=home,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"proxy exited {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, f"proxy not listening:\n{log.read_text()}"
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_two_workers_finish_a_study_through_the_grpc_proxy(
    cli: Callable[..., Any], write_spec: Callable[..., Path], kd_home: Path
) -> None:
    spec = write_spec({"train": {"epochs": 3}, "search": {"n_trials": N_TRIALS}})
    proc = cli("create-study", str(spec), "--storage", STORAGE)
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    with storage_proxy(kd_home, port) as proxy:
        url = f"grpc://127.0.0.1:{port}"
        proc = cli("worker", "--study", "synth", "--storage", url, "--n-workers", "2")
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log
        assert proxy.poll() is None, (kd_home / "proxy.log").read_text()
    # Both worker processes started and talked to the study (trials, or "budget reached").
    assert "worker0 INFO" in log and "worker1 INFO" in log, log

    trials = optuna.load_study(study_name="synth", storage=STORAGE).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = [s for s in states if s in (State.COMPLETE, State.PRUNED)]
    assert len(finished) == len(states), [s.name for s in states]  # none RUNNING, FAIL, WAITING
    # Each worker stops once the budget is reached; one may finish the trial it had started.
    assert N_TRIALS <= len(finished) <= N_TRIALS + 1
    done = [t for t in trials if t.state == State.COMPLETE]
    assert done
    for t in done:  # the objective's user attributes travelled through the proxy too
        assert t.user_attrs["epochs_run"] == 3 and t.value == max(t.intermediate_values.values())
        assert isinstance(t.user_attrs["test_accuracy"], float)


@pytest.mark.slow
def test_workers_survive_a_proxy_restart(
    cli: Callable[..., Any], write_spec: Callable[..., Path], kd_home: Path
) -> None:
    """The proxy is SIGKILLed while two workers are mid-trial and started again 5 s later on
    the same port: the workers say they lost it, wait, reconnect, and finish the study."""
    from conftest import start_worker
    from test_crash import SLOW_TRIALS, running_after, wait_for

    search = {**SLOW_TRIALS["search"], "n_trials": 4}
    spec = write_spec({**SLOW_TRIALS, "train": {"epochs": 8}, "search": search})
    assert cli("create-study", str(spec), "--storage", STORAGE).returncode == 0
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"

    with storage_proxy(kd_home, port) as proxy:
        worker = start_worker(kd_home, "synth", url, n=2)
        wait_for(lambda: running_after(STORAGE, 2), 300, "a trial at epoch 2", [worker])
        proxy.kill()
        proxy.wait()
    time.sleep(5)
    with storage_proxy(kd_home, port):
        out, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, out[-3000:]
    assert "storage unreachable" in out and "Traceback" not in out, out[-3000:]
    trials = optuna.load_study(study_name="synth", storage=STORAGE).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == State.COMPLETE]
    assert len(done) == 4 and not [t for t in trials if t.state == State.RUNNING]
