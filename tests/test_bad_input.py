"""Bad input, table-driven: exit code 2, one line naming the problem, nothing written.

Each case runs the real CLI in a scratch home that already holds a valid spec, a teacher and a
study database, and compares every file (name, size, content hash) before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import SYNTHETIC_SPEC, run_cli

from kdsearch import nets
from kdsearch.config.spec import merge
from kdsearch.search.storage import open_storage
from kdsearch.training.model_files import save_model

DB = "sqlite:///kd.db"


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory, teacher_checkpoint: Path) -> Path:
    """kd.db holding study "synth" of the synthetic spec, as ``create-study`` writes it. Made
    once: each case starts from a copy, which saves a CLI run (a torch import and the data and
    teacher checks) per case."""
    home = tmp_path_factory.mktemp("study")
    (home / "models").mkdir()
    shutil.copy(teacher_checkpoint, home / "models" / "teacher.pt")
    (home / "synth.yaml").write_text(yaml.safe_dump(merge(SYNTHETIC_SPEC, {"name": "synth"})))
    proc = run_cli("create-study", "synth.yaml", "--storage", DB, cwd=home)
    assert proc.returncode == 0, proc.stderr
    return home / "kd.db"


def snapshot(home: Path) -> dict[str, str]:
    """Every file's content hash; a SQLite database by its logical dump (WAL checkpoints move
    bytes between files without changing data)."""

    def digest(p: Path) -> str:
        if p.suffix == ".db":
            with sqlite3.connect(p) as conn:
                return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
        return hashlib.sha256(p.read_bytes()).hexdigest()

    return {
        str(p.relative_to(home)): digest(p)
        for p in sorted(home.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def spec_with(write_spec, **sections: Any) -> list[str]:
    return ["validate", str(write_spec(sections, name="bad"))]


def raw_spec(home: Path, text: str) -> list[str]:
    (home / "raw.yaml").write_text(text)
    return ["create-study", "raw.yaml", "--storage", DB]


def other_checkpoint(home: Path, arch: str, num_classes: int, kwargs: dict) -> None:
    model = nets.create(arch, num_classes=num_classes, **kwargs)
    save_model(
        home / "models" / "other.pt",
        model,
        arch=arch,
        kwargs=kwargs,
        num_classes=num_classes,
        dataset={"name": "synthetic"},
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
    )


#: Sockets the "busy port" case listens on until the test session ends.
_LISTENING: list[socket.socket] = []


def busy_port() -> int:
    sock = socket.create_server(("127.0.0.1", 0))
    _LISTENING.append(sock)
    return sock.getsockname()[1]


def raw_bytes(home: Path, data: bytes) -> list[str]:
    (home / "raw.yaml").write_bytes(data)
    return ["validate", "raw.yaml"]


CASES = {
    "malformed yaml": (lambda h, w: raw_spec(h, "name: x\ndataset: {name: [\n"), "line 3"),
    "unknown key": (lambda h, w: spec_with(w, trian={"epochs": 3}), "did you mean 'train'"),
    "nested unknown key": (
        lambda h, w: spec_with(w, dataset={"val_fracton": 0.1}),
        "dataset.val_fracton",
    ),
    "wrong type": (lambda h, w: spec_with(w, train={"epochs": "ten"}), "train.epochs"),
    "low >= high": (
        lambda h, w: spec_with(w, search={"space": {"lr": {"low": 0.1, "high": 0.01}}}),
        "search.space.lr.low",
    ),
    "log with low <= 0": (
        lambda h, w: spec_with(w, search={"space": {"temperature": {"low": 0, "log": True}}}),
        "must be > 0 when log",
    ),
    "alpha outside [0, 1]": (
        lambda h, w: spec_with(w, distill={"alpha": 1.5}),
        "distill.alpha: 1.5 is outside [0, 1]",
    ),
    "searched alpha outside [0, 1]": (
        lambda h, w: spec_with(w, search={"space": {"alpha": {"high": 1.5}}}),
        "search.space.alpha.high: 1.5 is outside [0, 1]",
    ),
    "unknown arch": (lambda h, w: spec_with(w, student={"arch": "resnet19"}), "student.arch"),
    "unknown dataset": (lambda h, w: spec_with(w, dataset={"name": "cifar11"}), "dataset.name"),
    "unknown sampler": (
        lambda h, w: [
            "create-study",
            str(w({"search": {"sampler": {"name": "tpee"}}}, name="bad")),
            "--storage",
            DB,
        ],
        "search.sampler.name",
    ),
    "unknown pruner": (
        lambda h, w: [
            "create-study",
            str(w({"search": {"pruner": {"name": "medain"}}}, name="bad")),
            "--storage",
            DB,
        ],
        "did you mean 'median'",
    ),
    "missing spec file": (lambda h, w: ["validate", "studies/nope.yaml"], "no such spec file"),
    "missing teacher checkpoint": (
        lambda h, w: [
            "train",
            str(w({"teacher": {"checkpoint": "models/gone.pt"}}, name="bad")),
            "--out",
            "models/s.pt",
        ],
        "teacher.checkpoint",
    ),
    "checkpoint of another arch": (
        lambda h, w: (
            other_checkpoint(h, "preresnet110", 4, {}),
            [
                "train",
                str(w({"teacher": {"checkpoint": "models/other.pt"}}, name="bad")),
                "--out",
                "models/s.pt",
            ],
        )[1],
        "holds a preresnet110",
    ),
    "checkpoint with other class count": (
        lambda h, w: (
            other_checkpoint(h, "cnn5", 10, {"num_channels": 8}),
            [
                "train",
                str(w({"teacher": {"checkpoint": "models/other.pt"}}, name="bad")),
                "--out",
                "models/s.pt",
            ],
        )[1],
        "has 10 classes",
    ),
    "missing data folder": (
        lambda h, w: [
            "train",
            str(w({"dataset": {"name": "cifar10", "root": "nodata", "options": {}}}, name="bad")),
            "--out",
            "models/s.pt",
        ],
        "cifar-10-batches-py",
    ),
    "unknown study": (lambda h, w: ["worker", "--study", "nope", "--storage", DB], "'nope'"),
    "incompatible study version": (
        lambda h, w: (
            optuna.load_study(study_name="synth", storage=open_storage(DB)).set_user_attr(
                "kdsearch_spec_version", 99
            ),
            ["worker", "--study", "synth", "--storage", DB],
        )[1],
        "incompatible kdsearch",
    ),
    "unreachable database": (
        lambda h, w: [
            "export-table",
            "--study",
            "synth",
            "--storage",
            "postgresql://kd:pw@127.0.0.1:9/kd",
        ],
        "127.0.0.1:9",
    ),
    "gRPC proxy without a host": (
        lambda h, w: ["status", "--storage", "grpc://:13000"],
        "grpc://:13000 names no host; use grpc://HOST:PORT",
    ),
    "not a checkpoint": (
        lambda h, w: ((h / "junk.pt").write_bytes(b"not a zip"), ["evaluate", "junk.pt"])[1],
        "junk.pt",
    ),
    "bad --set": (
        lambda h, w: ["train", str(w(name="bad")), "--set", "train.epochz=3"],
        "train.epochz",
    ),
    "non-UTF-8 spec": (lambda h, w: raw_bytes(h, b"name: caf\xe9\n"), "not UTF-8"),
    "duplicate key": (
        lambda h, w: raw_spec(h, "name: x\ntrain: {epochs: 3}\ntrain: {epochs: 4}\n"),
        "key 'train' appears twice (lines 2 and 3)",
    ),
    "spec is a folder": (lambda h, w: ["validate", "models"], "is a folder"),
    "cache-teacher without a spec": (lambda h, w: ["cache-teacher"], "give a SPEC or --study"),
    "int parameter with fractional bounds": (
        lambda h, w: spec_with(
            w, search={"space": {"train.epochs": {"type": "int", "low": 1.5, "high": 3.7}}}
        ),
        "search.space.train.epochs.low: 1.5 is not an integer",
    ),
    "unknown device": (
        lambda h, w: ["worker", "--study", "synth", "--storage", DB, "--devices", "gpu0"],
        "--devices: 'gpu0'",
    ),
    "no workers": (
        lambda h, w: ["worker", "--study", "synth", "--storage", DB, "--n-workers", "0"],
        "--n-workers 0: must be >= 1",
    ),
    "bench-search without jobs": (
        lambda h, w: ["bench-search", str(w()), "--storage", DB, "--jobs", "0"],
        "--jobs 0: must be >= 1",
    ),
    "no trials": (
        lambda h, w: ["worker", "--study", "synth", "--storage", DB, "--n-trials", "0"],
        "--n-trials 0: must be >= 1",
    ),
    "negative --top": (
        lambda h, w: ["export-table", "--study", "synth", "--storage", DB, "--top", "-1"],
        "--top -1: must be >= 1",
    ),
    "dashboard on an impossible port": (
        lambda h, w: ["dashboard", "--storage", DB, "--port", "70000"],
        "not a TCP port",
    ),
    "dashboard on a busy port": (
        lambda h, w: ["dashboard", "--storage", DB, "--port", str(busy_port())],
        "cannot listen there",
    ),
    "evaluate with another data set's class count": (
        lambda h, w: (
            other_checkpoint(h, "cnn5", 100, {"num_channels": 4}),
            ["evaluate", "models/other.pt", "--spec", str(w(name="bad"))],
        )[1],
        "the model has 100 classes, the data set synthetic has 4",
    ),
    "export-table on a mistyped database": (
        lambda h, w: ["export-table", "--study", "synth", "--storage", "sqlite:///kd2.db"],
        "no such database file kd2.db",
    ),
    "best on a mistyped database": (
        lambda h, w: ["best", "--study", "synth", "--storage", "sqlite:///kd2.db"],
        "no such database file kd2.db",
    ),
    "report on a mistyped database": (
        lambda h, w: ["report", "--study", "synth", "--storage", "sqlite:///kd2.db"],
        "no such database file kd2.db",
    ),
    "worker on a mistyped database": (
        lambda h, w: ["worker", "--study", "synth", "--storage", "sqlite:///kd2.db"],
        "no such database file kd2.db",
    ),
    "create-study without its teacher": (
        lambda h, w: [
            "create-study",
            str(w({"teacher": {"checkpoint": "models/gone.pt"}}, name="bad")),
            "--storage",
            DB,
        ],
        "teacher.checkpoint",
    ),
    "create-study without its data": (
        lambda h, w: [
            "create-study",
            str(w({"dataset": {"name": "cifar10", "root": "nodata", "options": {}}}, name="bad")),
            "--storage",
            DB,
        ],
        "cifar-10-batches-py",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, cli, write_spec, kd_home, study_db):
    write_spec()
    shutil.copy(study_db, kd_home / "kd.db")
    make_args, expected = CASES[case]
    args = make_args(kd_home, write_spec)
    before = snapshot(kd_home)
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsearch: error: "), out.stderr
    assert expected in lines[0]
    assert "Traceback" not in out.stderr and "pw@" not in out.stderr
    assert snapshot(kd_home) == before, "a failed command wrote or changed files"


def test_train_teacher_keeps_an_existing_teacher(cli, write_spec, kd_home):
    """An existing teacher is not written over without --force, and the refusal comes before
    any training (which could take hours): a 1000-epoch spec is refused at once."""
    teacher = kd_home / "models" / "teacher.pt"
    spec = str(write_spec({"teacher_train": {"epochs": 1000}}, name="bad"))
    before = snapshot(kd_home)
    out = cli("train-teacher", spec, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsearch: error: "), out.stderr
    assert "pass --force" in lines[0] and "--out" in lines[0]
    assert snapshot(kd_home) == before
    quick = str(write_spec({"teacher_train": {"epochs": 1}}, name="quick"))
    assert cli("train-teacher", quick, "--force").returncode == 0
    assert snapshot(kd_home)["models/teacher.pt"] != before["models/teacher.pt"]
    assert sorted(p.name for p in teacher.parent.iterdir()) == ["teacher.pt"]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` unwritable for this process: by permissions for a user, by the immutable flag
    for root (whom permissions do not stop; chattr needs a file system that has the flag)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root, and chattr +i is not available here to make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["file", "folder"])
@pytest.mark.parametrize("command", ["create-study", "export-table"])
def test_read_only_database(what, command, cli, write_spec, kd_home):
    """A database (or its folder) the user cannot write: one line, exit 2, even to read."""
    (kd_home / "db").mkdir()
    url = "sqlite:///db/kd.db"
    assert cli("create-study", str(write_spec()), "--storage", url).returncode == 0
    for leftover in (kd_home / "db").glob("kd.db-*"):
        leftover.unlink()
    target = kd_home / "db" / ("kd.db" if what == "file" else "")
    args = {
        "create-study": ["create-study", str(write_spec(name="other")), "--storage", url],
        "export-table": ["export-table", "--study", "synth", "--storage", url],
    }[command]
    with read_only(target):
        out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "writable" in out.stderr


@pytest.mark.postgres
def test_no_free_connection_is_one_line_naming_the_fix(cli, write_spec, pg_url):
    """A database whose connection slots are all taken (here a role limited to one, which it
    holds): one line naming max_connections and the proxy, not psycopg's own error."""
    import uuid

    import psycopg
    import sqlalchemy
    from conftest import PG_ADMIN

    role = f"kd_limited_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1"))
    url = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        with psycopg.connect(url):
            out = cli("create-study", str(write_spec()), "--storage", url)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP ROLE {role}"))
        admin.dispose()
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "max_connections" in out.stderr and "storage-proxy" in out.stderr, out.stderr


@pytest.mark.parametrize("command", ["validate", "nets"])
def test_reader_that_leaves_gets_no_traceback(command, write_spec, kd_home):
    """`kdsearch validate spec | head -1`: when the reader has gone, kdsearch stops quietly,
    whether a write fails while the command runs or only the flush at its end."""
    import os
    import subprocess
    import sys

    spec = write_spec()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
    # Buffered as in a user's shell, so that a short output fails only at the final flush.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with os.fdopen(write, "w") as stdout:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "kdsearch",
                command,
                *([str(spec)] if command == "validate" else []),
            ],
            cwd=kd_home,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    assert out.stderr == "" and out.returncode == 141, out.stderr


def test_nothing_imports_torch_for_help():
    """`kdsearch --help` (and every command's) answers without importing torch."""
    import subprocess
    import sys

    code = (
        "import sys; from kdsearch.cli import COMMANDS, build_parser\n"
        "p = build_parser()\n"
        "for cmd in [[]] + [[c.name] for c in COMMANDS]:\n"
        "    try: p.parse_args(cmd + ['--help'])\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'optuna' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_interrupted_train_teacher_leaves_no_checkpoint(write_spec, kd_home):
    """Ctrl-C during train-teacher: no checkpoint at --out (a partial model looks finished),
    only the hidden resume state beside it, and one line saying how to resume."""
    import signal
    import subprocess
    import sys
    import time

    spec = write_spec({"teacher_train": {"epochs": 50}}, name="long")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdsearch", "train-teacher", str(spec), "--out", "models/new.pt"],
        cwd=kd_home,
        env={**os.environ, "KDSEARCH_HOME": str(kd_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    models = kd_home / "models"
    deadline = time.monotonic() + 120
    while not list(models.glob("*new.pt*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(models.glob("*new.pt*")), "no epoch finished in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert [p.name for p in models.glob("*new.pt*")] == [".new.pt.partial.d"]
    assert err.splitlines()[-1].startswith("kdsearch: error: SIGINT: interrupted"), err[-2000:]
