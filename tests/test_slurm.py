"""`kdsearch submit --slurm` on a real one-node Slurm (.ci/slurm.sh): digits studies run as
job arrays reach their budget exactly, survive scancel with their trials resumed, and leave
no password in anything Slurm keeps.

Slurm must be installed (Debian's slurm-wlm and munge) and the tests run as root, which
starts the cluster; elsewhere they skip, except in CI (CI=true), where .ci/run installs it and
a missing Slurm is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, free_port, run_cli

from kdsearch.search.storage import open_storage

S = optuna.trial.TrialState
STATE_DIR = Path("/var/lib/slurm/slurmctld")  # .ci/slurm.sh's StateSaveLocation


@pytest.fixture(scope="module")
def slurm() -> None:
    """The local Slurm, started (idempotently) by .ci/slurm.sh."""
    missing = None
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        missing = "Slurm is not installed (apt-get install slurm-wlm munge, or .ci/run)"
    elif os.geteuid() != 0:
        missing = "starting the local Slurm (.ci/slurm.sh) needs root"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must run the Slurm tests")
        pytest.skip(missing)
    started = subprocess.run(
        [str(ROOT / ".ci" / "slurm.sh"), "start"], capture_output=True, text=True, timeout=600
    )
    assert started.returncode == 0, started.stdout + started.stderr


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits teacher (cnn5, 2 epochs: ~98 % validation accuracy), trained once."""
    home = tmp_path_factory.mktemp("digits-teacher")
    spec = home / "t.yaml"
    spec.write_text(yaml.safe_dump(digits_spec("t", 1, 1)))
    proc = run_cli("train-teacher", str(spec), cwd=home, env={"KDSEARCH_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home / "models" / "t.pt"


def digits_spec(name: str, n_trials: int, epochs: int) -> dict:
    """digits_quick.yaml's task, small: a narrow teacher, short trials, no pruning, no
    confirmation runs, heartbeats fast enough for a killed task's trial to be retried soon."""
    return {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.1, "labeled_fraction": 0.05,
                    "augment": False, "seed": 0},
        "teacher": {"arch": "cnn5", "kwargs": {"num_channels": 8}, "checkpoint": "models/t.pt"},
        "teacher_train": {"epochs": 2},
        "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
        "train": {"epochs": epochs, "batch_size": 64, "device": "cpu", "seed": 0,
                  "optimizer": {"name": "adam", "lr": 3.0e-3}},
        "distill": {"temperature": 4, "alpha": 0.9},
        "search": {
            "n_trials": n_trials,
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
            "heartbeat_interval": 2,
            "grace_period": 6,
            "space": {
                "alpha": {"type": "float", "low": 0, "high": 1},
                "lr": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
            },
        },
    }  # fmt: skip


@pytest.fixture
def study(cli, kd_home: Path, digits_teacher: Path, slurm: None):
    """Create a digits study (unique name, so the tests' Slurm jobs never mix) in ``url``."""

    def create(url: str, n_trials: int, epochs: int) -> str:
        name = f"slurm{uuid.uuid4().hex[:6]}"
        (kd_home / "models").mkdir(exist_ok=True)
        shutil.copy(digits_teacher, kd_home / "models" / "t.pt")
        spec = kd_home / f"{name}.yaml"
        spec.write_text(yaml.safe_dump(digits_spec(name, n_trials, epochs)))
        made = cli("create-study", str(spec), "--storage", url)
        assert made.returncode == 0, made.stderr
        return name

    return create


def squeue(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", f"--name=kdsearch-{name}", "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def wait_until_gone(name: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while squeue(name):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", f"--name=kdsearch-{name}"], check=False)
            raise AssertionError(f"the Slurm jobs of {name} did not end in {timeout} s")
        time.sleep(2)


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def submit(cli, name: str, *args: str, env: dict[str, str] | None = None) -> str:
    out = cli("submit", "--study", name, "--slurm", "--time", "20:00", *args, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def output_dir(kd_home: Path, name: str) -> Path:
    (folder,) = (kd_home / "models" / "studies").glob(f"{name}-*")
    return folder / "slurm"


def assert_nothing_lost(found: list[optuna.trial.FrozenTrial], budget: int) -> None:
    """The budget, exactly, in complete trials; nothing RUNNING or WAITING; every failed
    trial (a stopped or killed one) replaced by a complete retry of the same parameters."""
    by_number = {t.number: t for t in found}
    assert sum(t.state == S.COMPLETE for t in found) == budget
    assert not [t for t in found if t.state in (S.RUNNING, S.WAITING)]
    for failed in (t for t in found if t.state == S.FAIL):
        retries = [t for t in found if t.system_attrs.get("failed_trial") == failed.number]
        assert [r.state for r in retries] == [S.COMPLETE], failed.number
        assert retries[0].params == by_number[failed.number].params


@pytest.mark.slow
def test_a_4_task_array_reaches_the_budget_exactly(cli, kd_home, study):
    url = f"sqlite:///{kd_home}/kd.db"
    name = study(url, n_trials=6, epochs=3)
    dry = submit(cli, name, "--storage", url, "--tasks", "4", "--dry-run")
    assert squeue(name) == [] and not list(kd_home.glob("models/studies/*/slurm"))
    for line in ("#SBATCH --array=0-3", "#SBATCH --export=NONE", "#SBATCH --signal=B:TERM@120"):
        assert f"\n{line}\n" in dry
    assert f"\nexec {sys.executable} -m kdsearch worker --study {name} --n-workers 1" in dry
    job = submit(cli, name, "--storage", url, "--tasks", "4")
    assert job.isdigit()
    shown = json.loads(cli("status", "--study", name, "--storage", url, "--json").stdout)
    assert {j["job"].split("_")[0] for j in shown[0]["slurm_jobs"]} == {job}
    assert f"slurm: job {job}_" in cli("status", "--study", name, "--storage", url).stdout
    wait_until_gone(name)

    assert_nothing_lost(trials(url, name), budget=6)
    (row,) = json.loads(cli("status", "--study", name, "--storage", url, "--json").stdout)
    assert row["finished"] == 6 and row["slurm_jobs"] == []
    outputs = sorted(p.name for p in output_dir(kd_home, name).iterdir())
    assert outputs == [f"{job}.sh", *(f"{job}_{i}.out" for i in range(4))]


@pytest.mark.slow
def test_scancel_mid_trial_then_submit_again_resumes_the_trial(cli, kd_home, study):
    url = f"sqlite:///{kd_home}/kd.db"
    name = study(url, n_trials=3, epochs=6)
    submit(cli, name, "--storage", url, "--tasks", "2")
    deadline = time.monotonic() + 600
    while not [t for t in trials(url, name) if len(t.intermediate_values) >= 2]:
        assert time.monotonic() < deadline, "no trial reached epoch 2"
        time.sleep(0.5)
    subprocess.run(["scancel", f"--name=kdsearch-{name}"], check=True)
    wait_until_gone(name)
    stopped = [t for t in trials(url, name) if t.state == S.FAIL]
    assert stopped, "scancel's SIGTERM stopped no trial"
    assert not [t for t in trials(url, name) if t.state == S.RUNNING]

    submit(cli, name, "--storage", url, "--tasks", "2")
    wait_until_gone(name)
    found = trials(url, name)
    assert_nothing_lost(found, budget=3)
    # The trial that reached epoch 2 resumes from its last epoch; the other task's trial may
    # have been stopped before its first epoch ended, and then has nothing to resume from.
    assert max(len(t.intermediate_values) for t in stopped) >= 2
    for interrupted in stopped:
        (retry,) = [t for t in found if t.system_attrs.get("failed_trial") == interrupted.number]
        epochs_done = len(interrupted.intermediate_values)
        assert retry.user_attrs.get("resumed_from_epoch", 0) == epochs_done, epochs_done
        assert len(retry.intermediate_values) == 6


def grep_tree(root: Path, secret: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.mark.slow
def test_no_password_in_anything_slurm_keeps(cli, kd_home, study, pg_url):
    password = uuid.uuid4().hex
    # The server trusts 127.0.0.1, so any password connects: enough to track where it goes.
    url = pg_url.replace("postgres@", f"postgres:{password}@")
    name = study(url, n_trials=2, epochs=2)
    secret_file = kd_home / "storage.url"
    secret_file.write_text(url + "\n")
    secret_file.chmod(0o600)
    # The submitter's own environment holds the password too: --export=NONE keeps it out.
    job = submit(
        cli, name, "--storage-file", str(secret_file), "--tasks", "2",
        env={"KDSEARCH_STORAGE": url},
    )  # fmt: skip
    shown = subprocess.run(["scontrol", "show", "job", "-d", job], capture_output=True, text=True)
    script = subprocess.run(
        ["scontrol", "write", "batch_script", job, "-"], capture_output=True, text=True
    )
    kept = list(STATE_DIR.glob(f"hash.*/job.{job}"))
    assert kept, "no state folder for the job: where does Slurm keep it?"
    state_hits = grep_tree(STATE_DIR, password)  # script and environment, as Slurm keeps them
    wait_until_gone(name)

    assert "kdsearch worker" in shown.stdout + script.stdout
    assert password not in shown.stdout + shown.stderr + script.stdout + script.stderr
    assert state_hits == []
    outputs = output_dir(kd_home, name)
    assert len(list(outputs.glob("*.out"))) == 2
    assert grep_tree(outputs, password) == []
    # The workers read the URL from the file: the study ran to its budget.
    assert_nothing_lost(trials(url, name), budget=2)

    # A URL with a password given plainly, or a file others can read: refused, nothing sent.
    plain = cli("submit", "--study", name, "--slurm", "--tasks", "1", "--storage", url)
    secret_file.chmod(0o644)
    readable = cli(
        "submit", "--study", name, "--slurm", "--tasks", "1", "--storage-file", str(secret_file)
    )
    for refused, hint in ((plain, "--storage-file"), (readable, "chmod 600")):
        assert refused.returncode == 2
        assert len(refused.stderr.splitlines()) == 1 and hint in refused.stderr
        assert password not in refused.stdout + refused.stderr
    assert squeue(name) == []
    assert len(list(outputs.glob("*.sh"))) == 1


def one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("kdsearch: error: ")
    for word in words:
        assert word in out.stderr, out.stderr


def test_bad_input_is_one_line_and_submits_nothing(cli, kd_home, slurm):
    url = f"sqlite:///{kd_home}/kd.db"
    optuna.create_study(study_name="other", storage=open_storage(url))
    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    base = ("submit", "--slurm", "--storage", url)

    one_line_error(cli(*base, "--study", "nope", "--tasks", "2"), "'nope'", "other")
    one_line_error(cli(*base, "--study", "other", "--tasks", "0"), "--tasks 0", ">= 1")
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/kd"
    one_line_error(
        cli("submit", "--slurm", "--storage", down, "--study", "s", "--tasks", "2"),
        "cannot reach the database",
    )
    # No Slurm on this machine: no sbatch on PATH (python itself called by its full path).
    no_slurm = cli(*base, "--study", "other", "--tasks", "2", env={"PATH": "/nonexistent"})
    one_line_error(no_slurm, "no sbatch", ".ci/slurm.sh start")

    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == before
    assert not (kd_home / "models").exists()
