"""A full disk under ``models/`` (a 4 MiB tmpfs): the teacher cache or a trial's checkpoint
cannot be written. The worker says so in one line and stops with exit code 2, leaves no
partial file, re-queues the interrupted trial, and once there is space again the next worker
finishes the study with nothing lost. Decoded-image caches are written by the same
``atomic_save``. Needs root (to mount the tmpfs); skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from test_crash import trials

S = optuna.trial.TrialState
URL = "sqlite:///kd.db"


@pytest.fixture
def small_models(kd_home: Path, write_spec) -> Iterator[Path]:
    """``models/`` on a 4 MiB tmpfs holding only the teacher; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    models = kd_home / "models"
    teacher = (models / "teacher.pt").read_bytes()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(models)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (models / "teacher.pt").write_bytes(teacher)
        yield models
    finally:
        subprocess.run(["umount", "-l", str(models)], check=True)


def fill(models: Path) -> Path:
    """Take every free byte of the tmpfs; deleting the returned file gives them back."""
    filler = models / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def one_error_line(stderr: str) -> str:
    errors = [ln for ln in stderr.splitlines() if "error:" in ln or "Traceback" in ln]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def partial_files(models: Path) -> list[Path]:
    return [p for p in models.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.mark.slow
def test_disk_full_while_the_teacher_cache_is_written(cli, write_spec, small_models):
    spec = write_spec({"search": {"n_trials": 2}})
    assert cli("create-study", str(spec), "--storage", URL).returncode == 0
    filler = fill(small_models)
    full = cli("worker", "--study", "synth", "--storage", URL)
    assert full.returncode == 2, full.stderr[-3000:]
    line = one_error_line(full.stderr)
    assert "disk full" in line and "models/cache/teacher-" in line, line
    assert not partial_files(small_models) and not list(small_models.glob("cache/*.pt"))

    filler.unlink()  # space again: the next worker finishes the study
    again = cli("worker", "--study", "synth", "--storage", URL)
    assert again.returncode == 0, again.stderr[-3000:]
    states = [t.state for t in trials(URL)]
    assert states.count(S.COMPLETE) + states.count(S.PRUNED) == 2 and S.RUNNING not in states


@pytest.mark.slow
def test_disk_full_while_a_checkpoint_is_written(cli, write_spec, small_models):
    spec = write_spec({"search": {"n_trials": 3, "pruner": {"name": "none"}}})
    assert cli("create-study", str(spec), "--storage", URL).returncode == 0
    first = cli("worker", "--study", "synth", "--storage", URL, "--n-trials", "1")
    assert first.returncode == 0, first.stderr[-3000:]  # the cache and one trial on disk
    filler = fill(small_models)
    full = cli("worker", "--study", "synth", "--storage", URL)
    assert full.returncode == 2, full.stderr[-3000:]
    line = one_error_line(full.stderr)
    assert "disk full" in line and "models/studies/synth-" in line, line
    assert not partial_files(small_models)
    # The interrupted trial failed and waits, re-queued with its parameters.
    failed = [t for t in trials(URL) if t.state == S.FAIL]
    (waiting,) = [t for t in trials(URL) if t.state == S.WAITING]
    assert len(failed) == 1 and waiting.system_attrs["failed_trial"] == failed[0].number

    filler.unlink()
    again = cli("worker", "--study", "synth", "--storage", URL)
    assert again.returncode == 0, again.stderr[-3000:]
    done = [t for t in trials(URL) if t.state == S.COMPLETE]
    assert len(done) == 3 and not [t for t in trials(URL) if t.state == S.RUNNING]
    assert failed[0].params in [t.params for t in done]  # nothing lost
