"""Shared fixtures: a scratch kdsearch home, the CLI as a subprocess, specs, PostgreSQL.

Tests run the commands a user runs (``python -m kdsearch ...``) in a temporary folder that is
``KDSEARCH_HOME``, against real SQLite files and a real PostgreSQL database on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdsearch.config.spec import merge

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# The suite runs two tests at a time (``make test``: pytest-xdist, -n 2): most of its time is
# commands starting and waiting on signals and heartbeats, not computing. On the 2 cores that
# leaves, a command started plainly trains on one thread, and threads that wait sleep instead
# of spinning (OpenMP's default, which burns the other test's core when workers share the
# cores). Measured on 4 test files: 345 s as it was, 277 s with one thread, 152 s two at a time.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_configure(config: pytest.Config) -> None:
    """Let the commands the tests start take Ctrl-C as they would at a terminal.

    A suite started in the background (``make test &``, ``nohup``) inherits SIGINT ignored,
    and every command it starts would too, so the Ctrl-C tests would see a command train on.
    A handler, unlike "ignored", is reset to the default in each program the suite starts.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


#: A small, fast study on synthetic CIFAR-shaped data: trials take well under a second.
SYNTHETIC_SPEC: dict[str, Any] = {
    "name": "synth",
    "dataset": {
        "name": "synthetic",
        "val_fraction": 0.2,
        "augment": True,
        "options": {"n_train": 320, "n_test": 100, "num_classes": 4, "noise": 150.0},
    },
    "teacher": {"arch": "cnn5", "kwargs": {"num_channels": 8}, "checkpoint": "models/teacher.pt"},
    "teacher_train": {"epochs": 3},
    "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
    "train": {"epochs": 4, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}},
    "distill": {"temperature": 4.0, "alpha": 0.5, "teacher_cache": "sampled:4"},
    "search": {
        "n_trials": 8,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "space": {
            "temperature": {"type": "float", "low": 1, "high": 10, "log": True},
            "alpha": {"type": "float", "low": 0, "high": 1},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
        "heartbeat_interval": 1,
        "grace_period": 3,
    },
}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny CPU nets run faster (and steadier on a busy 2-core box) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder that is both the working directory and ``KDSEARCH_HOME``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSEARCH_HOME", str(tmp_path))
    monkeypatch.delenv("KDSEARCH_STORAGE", raising=False)
    return tmp_path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m kdsearch ARGS`` as a user would run it; never raises on exit codes."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kdsearch", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(kd_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def call(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=kd_home, **kw)

    return call


def start_worker(home: Path, study: str, url: str, n: int = 1) -> subprocess.Popen[str]:
    """`kdsearch worker` in the background, with ``home`` as its KDSEARCH_HOME."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdsearch",
            "worker",
            "--study",
            study,
            "--storage",
            url,
            "--n-workers",
            str(n),
            "--devices",
            "cpu",
        ],
        cwd=home,
        env={**os.environ, "KDSEARCH_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn5 teacher trained once per session on the synthetic data set."""
    home = tmp_path_factory.mktemp("teacher")
    spec = home / "synth.yaml"
    spec.write_text(yaml.safe_dump(SYNTHETIC_SPEC))
    proc = run_cli("train-teacher", str(spec), cwd=home, env={"KDSEARCH_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    return home / "models" / "teacher.pt"


@pytest.fixture
def write_spec(kd_home: Path, teacher_checkpoint: Path) -> Callable[..., Path]:
    """Write the synthetic spec (deep-updated with ``overrides``) and install the teacher."""
    (kd_home / "models").mkdir(exist_ok=True)
    shutil.copy(teacher_checkpoint, kd_home / "models" / "teacher.pt")

    def write(overrides: dict[str, Any] | None = None, name: str = "synth") -> Path:
        path = kd_home / f"{name}.yaml"
        data = merge(SYNTHETIC_SPEC, {"name": name, **(overrides or {})})
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    import sqlalchemy

    name = f"kdsearch_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as err:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it): {err}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def worker_processes(parent: int, name: str = "kdsearch-w") -> list[int]:
    """The processes descending from process ``parent`` whose name starts with ``name``: the
    workers (kdsearch-wN) by default, bench-search's runs with ``kdsearch-b``, all with ``""``."""

    def ppid(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith(name):
                continue
            up = int(pid)
            while up > 1 and up != parent:
                up = ppid(up)
        except OSError:
            continue
        if up == parent:
            found.append(int(pid))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs as a worker (not a zombie, not a new process of that pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return "(kdsearch-w" in stat and stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
