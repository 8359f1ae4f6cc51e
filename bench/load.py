"""Many workers on one study: what the storage ends with, the connections held, the memory.

    .venv/bin/python bench/load.py --storage postgresql://postgres@127.0.0.1:5432/kd_load \
        --workers 8 16 32 64 --trials 200
    .venv/bin/python bench/load.py --storage postgresql://... --proxy --workers 8 16   # via gRPC
    .venv/bin/python bench/load.py --storage sqlite:////tmp/load.db --workers 4 8 16

For each N: a fresh study of tiny trials (synthetic data, a 4-channel cnn5, one epoch, no
teacher: about a second each) whose search space is a grid of ``--trials`` learning rates, so
that a point trained twice is visible, run to its budget by ``kdsearch worker --n-workers N``
(with ``--proxy``, through ``kdsearch storage-proxy`` in front of the database). While it runs,
the database's connections (``pg_stat_activity``) are sampled every half second and the
workers' summed PSS (with their forkserver) once they all train. Afterwards, from the storage:

- trials/s: finished search trials over the span from the first start to the last end;
- lost: failed trials with no finished retry; RUNNING: trials left running;
- duplicates: grid points finished by more than one trial;
- overshoot: finished search trials minus the budget (goal 0); turned away: trials pruned
  untrained because the budget was taken when they started (``over_budget``);
- from the workers' log: storage errors (lines naming an SQLAlchemy/gRPC error) and
  re-queued or resumed trials.

Each N gets its own study (``load-N-<tag>``) in the same database; the database is not dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ERRORS = re.compile(r"OperationalError|InterfaceError|DatabaseError|StorageInternalError|RpcError")
RETRIES = re.compile(r"trial \d+ re-queued|resumes trial")


def spec(trials: int) -> dict[str, Any]:
    """A study of ``trials`` tiny trials: a grid over the learning rate."""
    lrs = [round(1e-4 * (100 ** (i / max(1, trials - 1))), 8) for i in range(trials)]
    return {
        "name": "load",
        "dataset": {
            "name": "synthetic",
            "val_fraction": 0.25,
            "augment": False,
            "options": {"n_train": 64, "n_test": 32, "num_classes": 4, "noise": 150.0},
        },
        "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
        "train": {"epochs": 1, "batch_size": 64},
        "distill": {"alpha": 0.0},
        "search": {
            "n_trials": trials,
            "sampler": {"name": "grid"},
            "pruner": {"name": "none"},
            "keep_checkpoints": 1,
            "space": {"lr": {"type": "categorical", "choices": sorted(set(lrs))}},
        },
    }


def _pss_mib(pid: int) -> float:
    """A process's PSS in MiB; 0 for one that has just ended."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("Pss:")), 0.0)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Sampler(threading.Thread):
    """Samples the database's connections and, once, the workers' memory, while they run."""

    def __init__(self, url: str, parent: int, n: int) -> None:
        super().__init__(daemon=True)
        self.url, self.parent, self.n = url, parent, n
        self.done = threading.Event()
        self.connections: list[int] = []
        self.max_connections: int | None = None
        self.memory_mib: float | None = None

    def run(self) -> None:
        engine = None
        if self.url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            with engine.connect() as conn:
                self.max_connections = int(conn.exec_driver_sql("SHOW max_connections").scalar())
        while not self.done.wait(0.5):
            if engine is not None:
                with engine.connect() as conn:
                    query = (
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    self.connections.append(int(conn.exec_driver_sql(query).scalar()))
            if self.memory_mib is None:
                procs = _descendants(self.parent)
                workers = [p for p in procs if _comm(p).startswith("kdsearch-w")]
                if len(workers) == self.n and all(_trained(p) for p in workers):
                    with_server = {p for p in procs if _comm(p) == "python"} | set(workers)
                    self.memory_mib = sum(_pss_mib(p) for p in with_server)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _trained(pid: int) -> bool:
    """Whether a worker has loaded its runtime and data (its PSS has settled past start-up)."""
    return _pss_mib(pid) > 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proxy(url: str, home: Path) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    kd = [sys.executable, "-m", "kdsearch"]
    proc = subprocess.Popen(
        [*kd, "storage-proxy", "--port", str(port)],
        cwd=home,
        env={**os.environ, "KDSEARCH_STORAGE": url},  # not in argv, where `ps` shows it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"grpc://127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the storage proxy did not start within 60 s")


def run(url: str, n: int, trials: int, proxy: bool, home: Path) -> dict[str, Any]:
    """One study of ``trials`` tiny trials run by ``n`` workers; the counts from the storage."""
    import optuna

    from kdsearch import api
    from kdsearch.search import ranking
    from kdsearch.search.storage import open_storage

    name = f"load-{n}-{os.urandom(3).hex()}"
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec(trials), "name": name}))
    os.environ["KDSEARCH_HOME"] = str(home)
    api.create_study(str(path), url)
    server, worker_url = _proxy(url, home) if proxy else (None, url)
    # The URL reaches the workers in their environment, not in argv, where `ps` shows it.
    env = {**os.environ, "KDSEARCH_HOME": str(home), "KDSEARCH_STORAGE": worker_url}
    kd = [sys.executable, "-m", "kdsearch"]
    cmd = [*kd, "worker", "--study", name, "--n-workers", str(n)]
    began = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*cmd, "--devices", "cpu"], cwd=home, env=env, stderr=subprocess.PIPE, text=True
        )
        sampler = Sampler(url, proc.pid, n)
        sampler.start()
        _, log = proc.communicate()
        sampler.done.set()
        sampler.join()
    finally:
        if server is not None:
            server.kill()
            server.wait()
    wall = time.monotonic() - began
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    ts = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    finished = [t for t in ts if t.state in (state.COMPLETE, state.PRUNED)]
    counted = [t for t in finished if ranking.claims_budget(t)]
    retried = {t.system_attrs.get("failed_trial") for t in finished}
    points = Counter(t.params.get("lr") for t in counted)
    span = max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    lines = log.splitlines()
    return {
        "storage": "grpc proxy" if proxy else url.split(":", 1)[0],
        "workers": n,
        "trials": trials,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "trials_per_s": round(len(counted) / span.total_seconds(), 2),
        "finished": len(counted),
        "overshoot": len(counted) - trials,
        "turned_away": sum(ranking.OVER_BUDGET in t.user_attrs for t in ts),
        "lost": sum(t.state == state.FAIL and t.number not in retried for t in ts),
        "running": sum(t.state == state.RUNNING for t in ts),
        "duplicates": sum(c - 1 for c in points.values() if c > 1),
        "storage_errors": sum(bool(ERRORS.search(line)) for line in lines),
        "first_error": next((line[:200] for line in lines if ERRORS.search(line)), None),
        "retries": sum(bool(RETRIES.search(line)) for line in lines),
        "pg_connections_max": max(sampler.connections, default=None),
        "pg_max_connections": sampler.max_connections,
        "memory_mib_per_worker": (
            round(sampler.memory_mib / n, 1) if sampler.memory_mib is not None else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="database URL (PostgreSQL or SQLite)")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--trials", type=int, default=200, help="each study's budget")
    parser.add_argument("--proxy", action="store_true", help="workers go through the gRPC proxy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(args.storage, n, args.trials, args.proxy, Path(tmp)) for n in args.workers]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
