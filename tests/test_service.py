"""The search service end to end: real worker processes on SQLite and PostgreSQL.

Each test runs the README's commands (create-study, worker, export-table, dashboard) as
subprocesses on the synthetic data set, then reads the study back through Optuna.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import free_port

from kdsearch.search import ranking
from kdsearch.search.storage import open_storage
from kdsearch.training.model_files import load_checkpoint

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def run_study(cli, write_spec, url: str, n_workers: int, n_trials: int) -> optuna.Study:
    spec = write_spec({"search": {"n_trials": n_trials}})
    created = cli("create-study", str(spec), "--storage", url)
    assert created.returncode == 0, created.stderr
    worked = cli("worker", "--study", "synth", "--storage", url, "--n-workers", str(n_workers))
    assert worked.returncode == 0, worked.stderr[-3000:]
    # Workers that start together on a study without a teacher cache build it once, and share.
    assert worked.stderr.count("building teacher cache") == 1, worked.stderr[-3000:]
    assert len(list(Path("models/cache").glob("teacher-*.pt"))) == 1
    return optuna.load_study(study_name="synth", storage=open_storage(url))


def check_budget(study: optuna.Study, n_workers: int, n_trials: int) -> None:
    """The budget exactly (a trial turned away over budget counts nowhere), pruning, nothing
    RUNNING, and the best keep_checkpoints (3) checkpoints kept with their metrics."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = sum(t.state in FINISHED and ranking.claims_budget(t) for t in trials)
    assert finished == n_trials, states
    assert optuna.trial.TrialState.PRUNED in states, "the median pruner pruned nothing"
    assert optuna.trial.TrialState.RUNNING not in states
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for t in complete:
        assert t.value == max(t.intermediate_values.values())  # best validation epoch
        assert t.user_attrs["epochs_run"] == 4
        assert Path(t.user_attrs["checkpoint"]).name == "best.pt"
        assert t.user_attrs["student_params"] > 0
    # The best keep_checkpoints (3) trials keep their checkpoint (of equal values, any), each
    # with its trial's metrics: a missing file fails here, it is not skipped.
    kept = [t for t in complete if Path(t.user_attrs["checkpoint"]).is_file()]
    assert len(kept) >= min(3, len(complete))
    third = sorted((t.value for t in complete), reverse=True)[:3][-1]
    assert {t.number for t in complete if t.value > third} <= {t.number for t in kept}
    for t in kept:
        metrics = load_checkpoint(Path(t.user_attrs["checkpoint"]))["metrics"]
        assert metrics["test_accuracy"] == t.user_attrs["test_accuracy"]
        assert metrics["val_accuracy"] == t.value


@pytest.mark.slow
def test_three_workers_on_sqlite(cli, write_spec, kd_home):
    study = run_study(cli, write_spec, "sqlite:///kd.db", n_workers=3, n_trials=12)
    check_budget(study, 3, 12)
    # Workers draw from different sampler seeds, so no two trials repeat parameters (a trial
    # turned away over budget samples none: it is no search trial).
    trials = [t for t in study.get_trials(deepcopy=False) if ranking.claims_budget(t)]
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_on_postgres(cli, write_spec, pg_url):
    study = run_study(cli, write_spec, pg_url, n_workers=3, n_trials=12)
    check_budget(study, 3, 12)


@pytest.mark.slow
def test_export_table_matches_the_study(cli, write_spec, kd_home):
    study = run_study(cli, write_spec, "sqlite:///kd.db", n_workers=1, n_trials=6)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = cli("export-table", "--study", "synth", "--storage", "sqlite:///kd.db", "-o", "t.csv")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(kd_home / "t.csv")
    assert sorted(df["number"]) == sorted(trials)
    for row in df.itertuples():
        t = trials[row.number]
        assert row.state == t.state.name
        assert row.temperature == pytest.approx(t.params["temperature"])
        assert row.alpha == pytest.approx(t.params["alpha"])
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert row.val_accuracy == pytest.approx(t.value)
            assert row.test_accuracy == pytest.approx(t.user_attrs["test_accuracy"])
    complete = df[df.state == "COMPLETE"].val_accuracy
    assert list(complete) == sorted(complete, reverse=True), "best first"

    md = cli("export-table", "--study", "synth", "--storage", "sqlite:///kd.db")
    assert md.returncode == 0, md.stderr
    lines = [ln for ln in md.stdout.splitlines() if ln.startswith("|")]
    assert len(lines) == len(trials) + 2  # header, rule, one row per trial
    table = pd.read_csv(io.StringIO("\n".join(lines)), sep="|", skipinitialspace=True)
    assert sorted(table.iloc[1:, 1].astype(int)) == sorted(trials)

    top = cli(
        "export-table",
        "--study",
        "synth",
        "--storage",
        "sqlite:///kd.db",
        "--top",
        "2",
        "--format",
        "json",
    )
    assert [r["number"] for r in json.loads(top.stdout)] == list(df["number"][:2])

    parquet = cli(
        "export-table", "--study", "synth", "--storage", "sqlite:///kd.db", "-o", "t.parquet"
    )
    assert parquet.returncode == 0, parquet.stderr
    assert pd.read_parquet(kd_home / "t.parquet")["number"].tolist() == df["number"].tolist()

    narrow = cli(
        "export-table",
        "--study",
        "synth",
        "--storage",
        "sqlite:///kd.db",
        "--columns",
        "number,alpha",
        "--format",
        "csv",
    )
    assert narrow.stdout.splitlines()[0] == "number,alpha"
    assert len(narrow.stdout.splitlines()) == len(trials) + 1


@pytest.mark.slow
def test_dashboard_serves_the_study(cli, write_spec, kd_home):
    spec = write_spec()
    assert cli("create-study", str(spec), "--storage", "sqlite:///kd.db").returncode == 0
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdsearch",
            "dashboard",
            "--storage",
            "sqlite:///kd.db",
            "--port",
            str(port),
        ],
        cwd=kd_home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        body, deadline = None, time.monotonic() + 60
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer on loopback"
        assert [s["study_name"] for s in body["study_summaries"]] == ["synth"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = server.stdout.read().decode()
    # Bound to loopback by default, so nothing to warn about.
    assert f"http://127.0.0.1:{port}/dashboard" in said and "warning" not in said, said


@pytest.mark.parametrize(
    ("host", "exposed"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("127.0.0.2", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.5", True),
        ("kd.example.org", True),
    ],
)
def test_dashboard_says_what_binding_beyond_loopback_exposes(host, exposed):
    from kdsearch.results.dashboard import exposure_warning

    said = exposure_warning(host)
    assert (said is not None) == exposed
    if exposed:
        assert "no login" in said and "127.0.0.1" in said and host in said


def test_unreachable_database_is_one_line(cli):
    url = "postgresql://kd:s3cret@127.0.0.1:9/kd"
    out = cli("worker", "--study", "synth", "--storage", url)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "127.0.0.1:9" in lines[0] and "s3cret" not in out.stderr + out.stdout


def test_unknown_study_is_one_line(cli, write_spec):
    spec = write_spec()
    assert cli("create-study", str(spec), "--storage", "sqlite:///kd.db").returncode == 0
    out = cli("worker", "--study", "synht", "--storage", "sqlite:///kd.db")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "'synht'" in out.stderr and "synth" in out.stderr


def test_create_study_twice(cli, write_spec):
    spec = write_spec()
    assert cli("create-study", str(spec), "--storage", "sqlite:///kd.db").returncode == 0
    again = cli("create-study", str(spec), "--storage", "sqlite:///kd.db")
    assert again.returncode == 2 and "--load-if-exists" in again.stderr
    same = cli("create-study", str(spec), "--storage", "sqlite:///kd.db", "--load-if-exists")
    assert same.returncode == 0, same.stderr
    changed = write_spec({"train": {"epochs": 7}})
    diff = cli("create-study", str(changed), "--storage", "sqlite:///kd.db", "--load-if-exists")
    assert diff.returncode == 2 and "train.epochs: 4 -> 7" in diff.stderr
