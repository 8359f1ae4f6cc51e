"""How ``--n-workers N`` starts its processes: forked from one server that imported the runtime,
named, without the caller's main script, and with no password on a command line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import alive, start_worker, worker_processes
from test_crash import SLOW_TRIALS, wait_for

from kdsearch.search.storage import open_storage

S = optuna.trial.TrialState


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(url)).trials


@pytest.mark.slow
def test_workers_fork_from_one_runtime_and_hide_the_password(cli, write_spec, kd_home, pg_url):
    """Both workers are children of one forkserver (not of the command), so the imported
    runtime is shared; each is named kdsearch-wN; the password is in neither's command line
    nor environment."""
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
    spec = write_spec({**SLOW_TRIALS, "search": {**SLOW_TRIALS["search"], "n_trials": 2}})
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    parent = start_worker(kd_home, "synth", url, n=2)
    try:
        pids = wait_for(
            lambda: len(worker_processes(parent.pid)) == 2 and worker_processes(parent.pid),
            120,
            "two worker processes",
            [parent],
        )
        names = sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids)
        assert names == ["kdsearch-w0", "kdsearch-w1"]
        parents = {
            int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in pids
        }
        assert len(parents) == 1 and parents != {parent.pid}
        server = parents.pop()
        assert "forkserver" in Path(f"/proc/{server}/cmdline").read_text()
        for pid in [*pids, server]:
            for part in ("cmdline", "environ"):
                assert b"s3cret-pw" not in Path(f"/proc/{pid}/{part}").read_bytes()
        out, _ = parent.communicate(timeout=300)
    finally:
        parent.kill()
    assert parent.returncode == 0, out[-3000:]
    assert "s3cret-pw" not in out


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_several_workers(write_spec, kd_home):
    """multiprocessing's children re-run the caller's main script unless told otherwise: a
    script that calls run_workers at top level must not start workers from its workers."""
    spec = write_spec({"search": {"n_trials": 3}})
    script = kd_home / "search.py"
    script.write_text(
        textwrap.dedent(f"""\
        from kdsearch import api
        api.create_study({str(spec)!r}, "sqlite:///kd.db")
        print("exit", api.run_workers("synth", "sqlite:///kd.db", n_workers=2, devices="cpu"))
        """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=kd_home,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KDSEARCH_HOME": str(kd_home)},
    )
    assert proc.returncode == 0 and "exit 0" in proc.stdout, proc.stderr[-3000:]
    assert proc.stdout.count("exit") == 1, proc.stdout
    ts = _trials("sqlite:///" + str(kd_home / "kd.db"), "synth")
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in ts) >= 3
    assert not [t for t in ts if t.state == S.RUNNING]


@pytest.mark.slow
def test_workers_leave_when_the_command_is_killed(cli, write_spec, kd_home):
    """SIGKILL the `kdsearch worker` command: its forkserver leaves, and the workers, told by
    the kernel, stop after their epoch and re-queue their trials instead of training on."""
    url = "sqlite:///kd.db"
    spec = write_spec({**SLOW_TRIALS, "search": {**SLOW_TRIALS["search"], "n_trials": 20}})
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    parent = start_worker(kd_home, "synth", url, n=2)

    def both_training() -> bool:
        ts = _trials(url, "synth")
        return sum(t.state == S.RUNNING and len(t.intermediate_values) >= 1 for t in ts) == 2

    wait_for(both_training, 300, "two running trials", [parent])
    pids = worker_processes(parent.pid)
    assert len(pids) == 2
    parent.kill()
    parent.wait(timeout=10)
    wait_for(lambda: not [p for p in pids if alive(p)], 60, "the workers to leave")
    out = parent.stdout.read()  # the workers held the pipe until they left
    assert out.count("re-queued to resume") == 2, out[-3000:]
    assert out.count("command that started this worker is gone") == 2, out[-3000:]
    ts = _trials(url, "synth")
    assert not [t for t in ts if t.state == S.RUNNING]
    assert sum(t.state == S.WAITING for t in ts) == 2  # both re-queued, to resume elsewhere
