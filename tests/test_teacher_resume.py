"""``train-teacher`` resumes like a trial: killed mid-run, the same command goes on from the
last finished epoch to the checkpoint an uninterrupted run writes (issue 35)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EPOCHS = 6


def _start(home: Path, spec: Path, out: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kdsearch", "train-teacher", str(spec), "--out", out],
        cwd=home,
        env={**os.environ, "KDSEARCH_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop_after(proc: subprocess.Popen[str], epoch: int, sig: int) -> str:
    """Send ``sig`` once the run logs epoch ``epoch``; the run's whole output."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"epoch {epoch}/{EPOCHS}:" in line:
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=120)
    return "".join(seen) + rest


def _finish(home: Path, spec: Path, out: str) -> str:
    proc = _start(home, spec, out)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-2000:]
    return output


def _epochs_run(output: str) -> list[int]:
    return [int(n) for n in re.findall(rf"epoch (\d+)/{EPOCHS}:", output)]


def _same_model(a: Path, b: Path) -> None:
    ours, theirs = (torch.load(p, weights_only=True) for p in (a, b))
    assert ours["metrics"] == theirs["metrics"]
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for name, tensor in ours["state_dict"].items():
        assert torch.equal(tensor, theirs["state_dict"][name]), name


@pytest.mark.slow
def test_killed_teacher_resumes_to_the_uninterrupted_result(write_spec, kd_home):
    """SIGKILL after epoch 2, SIGTERM later, each time the same command goes on from the last
    finished epoch; the final checkpoint equals an uninterrupted run's, bit for bit, and the
    resume state is gone."""
    spec = write_spec({"teacher_train": {"epochs": EPOCHS}}, name="resume")
    models = kd_home / "models"
    state = models / ".resumed.pt.partial.d"

    killed = _stop_after(_start(kd_home, spec, "models/resumed.pt"), 2, signal.SIGKILL)
    assert not (models / "resumed.pt").exists()
    assert (state / "last.pt").is_file(), killed[-2000:]
    done = len(torch.load(state / "last.pt", weights_only=True)["epochs"])
    assert 2 <= done < EPOCHS

    proc = _start(kd_home, spec, "models/resumed.pt")
    stopped = _stop_after(proc, done + 1, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, stopped[-2000:]
    assert f"resuming from models/.resumed.pt.partial.d: {done} of {EPOCHS} epochs done" in stopped
    assert _epochs_run(stopped)[0] == done + 1
    errors = [line for line in stopped.splitlines() if line.startswith("kdsearch: error")]
    assert len(errors) == 1 and "run the same command to resume" in errors[0], stopped[-2000:]
    after = int(re.search(r"interrupted after epoch (\d+)", errors[0]).group(1))
    assert done < after < EPOCHS and not (models / "resumed.pt").exists()

    finished = _finish(kd_home, spec, "models/resumed.pt")
    assert _epochs_run(finished) == list(range(after + 1, EPOCHS + 1))
    assert not state.exists()

    _finish(kd_home, spec, "models/whole.pt")
    _same_model(models / "resumed.pt", models / "whole.pt")
    # Piped, the runs wrote lines, not a progress bar's fragments ("37%|███▋ | 11/30").
    assert "%|" not in killed + stopped + finished


def test_the_students_subset_is_said_not_to_apply_to_the_teacher(write_spec, kd_home):
    """A spec whose students see 5 % of the images trains its teacher on all of them, and one
    line says so (a user who set it to make the teacher quicker would otherwise not know)."""
    spec = write_spec(
        {"dataset": {"subset_fraction": 0.05}, "teacher_train": {"epochs": 1}}, name="subset"
    )
    output = _finish(kd_home, spec, "models/t.pt")
    said = [line for line in output.splitlines() if "for the students only" in line]
    assert len(said) == 1, output[-2000:]
    assert (
        "dataset.subset_fraction 0.05 is for the students only: the teacher trains on every"
        in said[0]
    )


@pytest.mark.slow
def test_a_changed_spec_does_not_resume_the_old_state(write_spec, kd_home):
    """State left by one spec is not continued by another (another seed): one line says so and
    the run starts from epoch 0."""
    spec = write_spec({"teacher_train": {"epochs": EPOCHS}}, name="first")
    _stop_after(_start(kd_home, spec, "models/t.pt"), 1, signal.SIGKILL)
    assert (kd_home / "models" / ".t.pt.partial.d" / "last.pt").is_file()

    other = write_spec({"teacher_train": {"epochs": EPOCHS, "seed": 1}}, name="first")
    output = _finish(kd_home, other, "models/t.pt")
    assert "not for this run" in output and "starting from epoch 0" in output
    assert _epochs_run(output) == list(range(1, EPOCHS + 1))
