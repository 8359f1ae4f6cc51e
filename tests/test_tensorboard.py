"""``train.tensorboard: true``: each trial writes its own TensorBoard run, read back here.

One worker process runs a short real search; the event files under
``models/studies/<study>-<id>/tensorboard/trial-NNNNN`` must hold one point per epoch the trial ran
for each scalar, and the validation curve must equal what the trial reported to Optuna.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdsearch.search import study as studies

STORAGE = "sqlite:///kd.db"
SCALARS = {"val/accuracy", "train/loss", "lr"}


@pytest.mark.slow
def test_each_trial_writes_its_scalars(
    cli: Callable[..., Any], write_spec: Callable[..., Path], kd_home: Path
) -> None:
    spec = write_spec({"train": {"epochs": 3, "tensorboard": True}, "search": {"n_trials": 3}})
    for args in (
        ("create-study", str(spec), "--storage", STORAGE),
        ("worker", "--study", "synth", "--storage", STORAGE, "--n-workers", "1"),
    ):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    study = optuna.load_study(study_name="synth", storage=STORAGE)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) >= 3
    root = studies.folder(study) / "tensorboard"
    assert root.parent.name == f"synth-{studies.study_id(study)}"
    runs = sorted(p.name for p in root.glob("trial-*"))
    assert runs == [f"trial-{t.number:05d}" for t in trials]
    for t in trials:
        folder = root / f"trial-{t.number:05d}"
        assert list(folder.glob("events.out.tfevents.*")), folder
        events = EventAccumulator(str(folder))
        events.Reload()
        assert set(events.Tags()["scalars"]) >= SCALARS, events.Tags()
        epochs = len(t.intermediate_values)
        assert epochs >= 1
        for tag in SCALARS:
            steps = [e.step for e in events.Scalars(tag)]
            assert steps == list(range(1, epochs + 1)), (t.number, tag, steps)
        # TensorBoard step k is the epoch Optuna knows as step k - 1 (float32 on disk).
        val = {e.step - 1: e.value for e in events.Scalars("val/accuracy")}
        assert val == pytest.approx(t.intermediate_values, abs=1e-6)
        # No schedule in the spec: the learning rate logged is the trial's searched one.
        for e in events.Scalars("lr"):
            assert e.value == pytest.approx(t.params["lr"], rel=1e-6)
        assert all(e.value > 0 for e in events.Scalars("train/loss"))
