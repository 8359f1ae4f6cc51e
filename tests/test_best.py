"""``kdsearch best``: the final test number of a finished search, stored on the study.

A real search (worker processes, SQLite) on the synthetic data, then ``best`` as a user runs
it: testing the best trial's checkpoint must reproduce the test accuracy the trial measured,
and ``--retrain`` must train one final model per seed on train+val and store all of them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import optuna
import pytest
import torch

from kdsearch.search import study as studies
from kdsearch.training.model_files import load_checkpoint

CLI = Callable[..., CompletedProcess[str]]
STORAGE = "sqlite:///kd.db"


@pytest.fixture
def searched(cli: CLI, write_spec: Callable[..., Path]) -> optuna.Study:
    """The synthetic study after a two-trial search (seconds alone, minutes on a busy host)."""
    spec = write_spec({"search": {"n_trials": 2}})
    proc = cli("create-study", str(spec), "--storage", STORAGE)
    assert proc.returncode == 0, proc.stderr
    proc = cli(
        "worker",
        *("--study", "synth", "--storage", STORAGE, "--n-workers", "1", "--devices", "cpu"),
        timeout=590,
    )
    assert proc.returncode == 0, proc.stderr
    return optuna.load_study(study_name="synth", storage=STORAGE)


def _best(cli: CLI, *extra: str) -> dict:
    proc = cli("best", "--study", "synth", "--storage", STORAGE, "--device", "cpu", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_best_tests_the_best_trials_checkpoint(cli: CLI, searched: optuna.Study) -> None:
    trial = searched.best_trial
    result = _best(cli, "--json")
    assert result["mode"] == "checkpoint"
    assert result["trial"] == trial.number
    assert result["params"] == trial.params
    assert result["val_accuracy"] == trial.value
    assert result["test_accuracies"] == [trial.user_attrs["test_accuracy"]]
    assert result["mean"] == trial.user_attrs["test_accuracy"] and result["std"] == 0.0
    stored = optuna.load_study(study_name="synth", storage=STORAGE).user_attrs["final"]
    assert stored == result

    text = cli("best", "--study", "synth", "--storage", STORAGE, "--device", "cpu").stdout
    assert f"test accuracy {trial.user_attrs['test_accuracy']:.4f}" in text


def test_best_retrain_trains_one_final_model_per_seed(
    cli: CLI, searched: optuna.Study, kd_home: Path
) -> None:
    result = _best(cli, "--retrain", "--seeds", "0,1", "--json")
    stored = optuna.load_study(study_name="synth", storage=STORAGE).user_attrs["final"]
    assert stored == result
    assert result["mode"] == "retrain"
    assert result["seeds"] == [0, 1]
    assert result["params"] == searched.best_trial.params
    # Final models live in the study's own folder, named by its id, not by its bare name.
    sid = studies.study_id(searched)
    assert sid and all(f"synth-{sid}/final/seed-" in p for p in result["checkpoints"])
    accuracies = result["test_accuracies"]
    # Each number is its checkpoint's own test accuracy (checked below). The searched
    # hyperparameters differ from run to run (each worker's sampler seed includes its pid), and
    # one seed of a 4-epoch synthetic run can land near chance (0.25): at least one beats it.
    assert len(accuracies) == 2 and max(accuracies) > 0.4
    assert math.isclose(result["mean"], statistics.fmean(accuracies))
    assert math.isclose(result["std"], statistics.stdev(accuracies))
    ckpts = [load_checkpoint(kd_home / p) for p in result["checkpoints"]]
    for ckpt, accuracy in zip(ckpts, accuracies, strict=True):
        # No validation split: the last of the 4 epochs is the model, tested once.
        assert ckpt["metrics"]["epoch"] == 4
        assert math.isnan(ckpt["metrics"]["val_accuracy"])
        assert ckpt["metrics"]["test_accuracy"] == accuracy
    first, second = (c["state_dict"] for c in ckpts)
    assert any(not torch.equal(first[k], second[k]) for k in first), "seeds trained alike"


def test_best_rejects_bad_seeds_before_any_work(cli: CLI) -> None:
    proc = cli("best", "--study", "synth", "--storage", STORAGE, "--retrain", "--seeds", "0,x")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kdsearch: error: --seeds '0,x': 'x' is not an integer (use e.g. 0,1,2)"
    ]
    assert not Path("kd.db").exists()


def test_best_without_a_complete_trial_says_what_to_run(
    cli: CLI, write_spec: Callable[..., Path]
) -> None:
    assert cli("create-study", str(write_spec()), "--storage", STORAGE).returncode == 0
    proc = cli("best", "--study", "synth", "--storage", STORAGE)
    assert proc.returncode == 2
    assert "has no complete trial yet; run `kdsearch worker --study synth`" in proc.stderr
