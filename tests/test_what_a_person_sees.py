"""What a person sees: worker lines under a terminal, `status`, `extend`, `delete`, the help.

The slow tests run real workers: a 2-worker digits study under a pseudo-terminal (`script`),
with `status --json` read while it runs and after it finished; and a synthetic study whose
budget is raised with `extend` and which `delete` then removes with its files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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
from kdsearch.search import study as studies
from kdsearch.search.progress import fmt, fmt_params

STATUS_KEYS = {
    "study",
    "direction",
    "n_trials",
    "epoch_budget",
    "epochs_trained",
    "finished",
    "states",
    "best",
    "confirm",
    "workers",
    "epochs_per_second",
    "seconds_left",
    "gain",
    "slurm_jobs",
}

DIGITS_SPEC = {
    "name": "digits_face",
    "dataset": {"name": "digits", "val_fraction": 0.1, "augment": False},
    "teacher": {"arch": "cnn5", "kwargs": {"num_channels": 8}, "checkpoint": "models/t.pt"},
    "teacher_train": {"epochs": 1},
    "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}},
    "search": {
        "n_trials": 2,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "heartbeat_interval": 1,
        "grace_period": 5,
        "space": {
            "alpha": {"type": "float", "low": 0, "high": 1},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
    },
}


def status_json(cli, url: str, *extra: str) -> list[dict]:
    proc = cli("status", "--storage", url, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("script"), reason="needs util-linux `script` for a pty")
def test_two_workers_under_a_terminal_and_status(cli, kd_home):
    (kd_home / "d.yaml").write_text(yaml.safe_dump(DIGITS_SPEC))
    url = f"sqlite:///{kd_home}/s.db"
    assert cli("train-teacher", "d.yaml").returncode == 0
    assert cli("create-study", "d.yaml", "--storage", url).returncode == 0
    worker = f"{shlex.quote(sys.executable)} -m kdsearch worker --study digits_face "
    worker += f"--storage {url} --n-workers 2 --devices cpu"
    # A pty has no size until someone sets it; tqdm draws nothing in 0 columns.
    proc = subprocess.Popen(
        ["script", "-qec", f"stty cols 120 rows 40; {worker}", "/dev/null"],
        cwd=kd_home,
        env={**os.environ, "KDSEARCH_HOME": str(kd_home)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Polled in-process: a `kdsearch status` process takes longer to start, under load, than
    # these trials take to run, and missed them on a busy CI box. The CLI's JSON is checked below.
    running = None
    while proc.poll() is None and running is None:
        (row,) = api.study_status(url, "digits_face")
        if row["workers"]:
            running = row
        time.sleep(0.1)
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert running is not None, "status never saw a live worker"
    assert set(running) == STATUS_KEYS and running["n_trials"] == 2
    assert running["states"]["running"] >= 1
    assert {"trial", "worker", "epoch", "epochs"} <= set(running["workers"][0])
    assert running["workers"][0]["epochs"] == 2

    # One line per epoch and per trial, from both workers, then the study's summary.
    for n in (0, 1):
        assert f"trial {n} epoch 1/2: val " in out and f"trial {n} epoch 2/2: val " in out, out
        assert f"trial {n} complete: val " in out
    assert "worker0 INFO" in out and "worker1 INFO" in out
    assert "summary of study digits_face:" in out and "best: trial" in out
    assert "%|" in out  # the tqdm bar, drawn because stderr is a terminal
    assert "finished with value" not in out  # Optuna's duplicate line is quiet by default

    (done,) = status_json(cli, url)
    assert set(done) == STATUS_KEYS
    assert done["finished"] >= 2 and done["workers"] == [] and done["seconds_left"] == 0
    assert done["best"]["test_accuracy"] > 0.1 and set(done["best"]["params"]) == {"alpha", "lr"}
    assert done["epochs_per_second"] > 0
    text = cli("status", "--storage", url)
    assert text.returncode == 0 and "digits_face: " in text.stdout and "best: trial" in text.stdout


@pytest.mark.slow
def test_extend_then_delete(cli, write_spec, kd_home):
    spec = write_spec({"search": {"n_trials": 1}, "train": {"epochs": 2}})
    url = f"sqlite:///{kd_home}/s.db"
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    assert cli("worker", "--study", "synth", "--storage", url).returncode == 0
    assert status_json(cli, url)[0]["finished"] == 1
    again = cli("worker", "--study", "synth", "--storage", url)
    assert "reached its budget" in again.stderr  # a finished study runs nothing more

    grown = cli("extend", "--study", "synth", "--storage", url, "--n-trials", "2")
    assert grown.returncode == 0 and "1 -> 2" in grown.stdout, grown.stderr
    assert cli("worker", "--study", "synth", "--storage", url).returncode == 0
    (row,) = status_json(cli, url)
    assert row["n_trials"] == 2 and row["finished"] == 2

    folder = studies.folder(optuna.load_study(study_name="synth", storage=url))
    assert folder.is_dir()
    caches = list((kd_home / "models" / "cache").iterdir())
    no_tty = cli("delete", "--study", "synth", "--storage", url)
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    assert len(no_tty.stderr.strip().splitlines()) == 1
    gone = cli("delete", "--study", "synth", "--storage", url, "--yes")
    assert gone.returncode == 0, gone.stderr
    assert not folder.exists()
    assert list((kd_home / "models" / "cache").iterdir()) == caches  # shared teacher cache
    assert status_json(cli, url) == []


def test_budget_errors(cli, write_spec, kd_home):
    spec = write_spec({"search": {"n_trials": 2}})
    url = f"sqlite:///{kd_home}/s.db"
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    bigger = write_spec({"search": {"n_trials": 5}})
    again = cli("create-study", str(bigger), "--storage", url, "--load-if-exists")
    assert again.returncode == 2
    assert "kdsearch extend --study synth --n-trials 5" in again.stderr
    lower = cli("extend", "--study", "synth", "--storage", url, "--n-trials", "2")
    assert lower.returncode == 2 and "larger than the current budget 2" in lower.stderr
    zero = cli("worker", "--study", "synth", "--storage", url, "--n-trials", "0")
    assert zero.returncode == 2 and "--n-trials 0: must be >= 1" in zero.stderr
    unknown = cli("delete", "--study", "nope", "--storage", url, "--yes")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1


def test_help_order_version_and_defaults():
    top = run_cli("--help")
    listed = re.findall(r"^    (\S+)", top.stdout, re.MULTILINE)
    assert listed[:14] == [
        "init",
        "validate",
        "train-teacher",
        "import-checkpoint",
        "create-study",
        "worker",
        "status",
        "extend",
        "confirm",
        "export-table",
        "best",
        "report",
        "dashboard",
        "delete",
    ]
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("kdsearch ")
    from kdsearch.cli import build_parser

    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
    worker = " ".join(run_cli("worker", "--help").stdout.split())  # undo line wrapping
    assert "(default: 1)" in worker and "(default: all GPUs, else cpu)" in worker
    assert "(default: 8080)" in run_cli("dashboard", "--help").stdout


def test_validate_prints_the_resolved_spec_as_yaml(cli, write_spec):
    proc = cli("validate", str(write_spec()))
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["name"] == "synth" and resolved["train"]["epochs"] == 4
    assert resolved == json.loads(cli("validate", str(write_spec()), "--json").stdout)


def test_number_formatting():
    assert fmt(0.3183953097177885) == "0.3184" and fmt(4.43e-5) == "4.43e-05"
    assert fmt(12) == "12" and fmt("sgd") == "sgd" and fmt(True) == "True"
    assert fmt_params({"lr": 0.00018942427118022082, "alpha": 0.5}) == "alpha=0.5 lr=0.0001894"


@pytest.mark.slow
def test_quiet_worker_prints_no_progress(cli, write_spec, kd_home):
    spec = write_spec({"search": {"n_trials": 1}, "train": {"epochs": 1}})
    url = f"sqlite:///{kd_home}/s.db"
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    quiet = cli("worker", "--study", "synth", "--storage", url, "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert "epoch 1/1" not in quiet.stderr and "summary" not in quiet.stderr
    assert Path(kd_home / "s.db").exists()


def _hand_built_study(pruner: str = "median", running: bool = True) -> Any:
    """Study "s" (budget 4 trials of 2 epochs): two complete trials and (``running``) one
    running, all on worker host:1, their epochs trained 10 s apart from t = 100 s, so every
    status number is known."""
    from kdsearch.search.pace import CLOCK_ATTR
    from kdsearch.search.study import SPEC_ATTR

    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    spec = {"search": {"n_trials": 4, "pruner": {"name": pruner}}, "train": {"epochs": 2}}
    study.set_user_attr(SPEC_ATTR, spec)
    dist = {"alpha": optuna.distributions.FloatDistribution(0, 1)}
    for i, value in enumerate((0.5, 0.75)):
        clock = {"first": 100 + 20 * i, "last": 110 + 20 * i, "epochs": 2}
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={"alpha": 0.1 * (i + 1)},
                distributions=dist,
                intermediate_values={0: value / 2, 1: value},
                user_attrs={"test_accuracy": value - 0.01, "worker": "host:1", CLOCK_ATTR: clock},
            )
        )
    if running:
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING,
                params={"alpha": 0.3},
                distributions=dist,
                intermediate_values={0: 0.2},
                user_attrs={
                    "worker": "host:1",
                    CLOCK_ATTR: {"first": 140, "last": 140, "epochs": 1},
                },
            )
        )
    return storage


def test_status_counts_rate_and_time_left():
    """Rate = epochs a worker trained after its first / the time from its first to its latest
    epoch; time left from the mean epochs of finished trials (hand-built trials, so every
    number is known)."""
    from kdsearch.results.status import format_status, status_of

    s = status_of(_hand_built_study(), "s")
    assert s["states"]["complete"] == 2 and s["states"]["running"] == 1 and s["finished"] == 2
    best = {"number": 1, "value": 0.75, "params": {"alpha": 0.2}, "test_accuracy": 0.74}
    assert {k: s["best"][k] for k in best} == best
    # One seed per configuration: n 1, no spread, and the order is not tested.
    assert (s["best"]["n"], s["best"]["std"], s["best"]["tested"]) == (1, None, False)
    assert s["confirm"] == {"runs": 0, "complete": 0, "running": 0, "waiting": 0, "failed": 0}
    assert s["workers"] == [{"trial": 2, "worker": "host:1", "epoch": 1, "epochs": 2}]
    # 5 epochs, the first (before t = 100) not timed: 4 in 40 s
    assert s["epochs_per_second"] == pytest.approx(0.1)
    # one trial still to start (4 - 2 finished - 1 running) x 2 epochs + 1 epoch left, at 0.1/s
    assert s["seconds_left"] == pytest.approx(30)
    assert format_status(s).splitlines()[-1] == "  0.1 epochs/s, about 30s left"


def test_status_of_a_search_budgeted_in_epochs():
    """A bench-search search spends an epoch budget (its n_trials only caps it): status
    counts epochs against that budget and the time left is the epochs left at the rate."""
    from kdsearch.results.status import format_status, status_of
    from kdsearch.search.study import EPOCH_BUDGET_ATTR

    storage = _hand_built_study()
    optuna.load_study(study_name="s", storage=storage).set_user_attr(EPOCH_BUDGET_ATTR, 20)
    s = status_of(storage, "s")
    assert (s["epoch_budget"], s["epochs_trained"]) == (20, 5)
    assert s["seconds_left"] == pytest.approx((20 - 5) / 0.1)
    assert format_status(s).splitlines()[0] == (
        "s: 5/20 epochs trained, 2 trials finished (1 running, 2 complete)"
    )


@pytest.mark.parametrize("verbosity", [0, 1])
def test_other_libraries_log_warnings_only(verbosity):
    """kdsearch's lines follow the verbosity; another library's INFO or DEBUG line (matplotlib
    building its font cache on a new machine) never reaches stderr, its warnings do."""
    code = (
        "import logging; from kdsearch.search import progress;"
        f"progress.configure({verbosity});"
        "logging.getLogger('matplotlib.font_manager').info('generated new fontManager');"
        "logging.getLogger('matplotlib.font_manager').debug('findfont');"
        "logging.getLogger('kdsearch.search.worker').info('ours');"
        "logging.getLogger('kdsearch.search.worker').debug('our detail');"
        "logging.getLogger('PIL').warning('theirs, a warning')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    messages = [line.split(": ", 1)[1] for line in proc.stderr.splitlines()]
    assert messages == [*["ours", "our detail"][: 1 + verbosity], "theirs, a warning"]
