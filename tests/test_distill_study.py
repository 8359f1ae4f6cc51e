"""A digits study (5% labels) that searches the method itself: hinton or dkd, and dkd's beta."""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest
import yaml

from kdsearch.search.storage import open_storage

SPEC = {
    "name": "methods",
    "dataset": {"name": "digits", "val_fraction": 0.1, "labeled_fraction": 0.05, "augment": False},
    "teacher": {"arch": "cnn5", "kwargs": {"num_channels": 8}, "checkpoint": "models/t.pt"},
    "teacher_train": {"epochs": 3},
    "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}},
    "distill": {"temperature": 4.0, "alpha": 0.9, "kwargs": {"warmup": 1}},
    "search": {
        "n_trials": 4,
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "space": {
            "distill.loss": {"type": "categorical", "choices": ["hinton", "dkd"]},
            "distill.kwargs.beta": {"type": "float", "low": 2.0, "high": 8.0, "step": 6.0},
        },
        "heartbeat_interval": 1,
        "grace_period": 3,
    },
}


@pytest.mark.slow
def test_two_workers_search_hinton_and_dkd_on_digits(cli, kd_home):
    (kd_home / "methods.yaml").write_text(yaml.safe_dump(SPEC))
    url = "sqlite:///kd.db"
    trained = cli("train-teacher", "methods.yaml")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert cli("create-study", "methods.yaml", "--storage", url).returncode == 0
    worked = cli("worker", "--study", "methods", "--storage", url, "--n-workers", "2")
    assert worked.returncode == 0, worked.stderr[-3000:]

    study = optuna.load_study(study_name="methods", storage=open_storage(url))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    # The grid's 4 points, each trained once: a worker handed a point that is still running
    # on the other skips it untrained (a PRUNED trial with its reason), though with an exact
    # budget a worker rarely asks for a fifth trial at all.
    assert {(t.params["distill.loss"], t.params["distill.kwargs.beta"]) for t in complete} == {
        ("hinton", 2.0),
        ("hinton", 8.0),
        ("dkd", 2.0),
        ("dkd", 8.0),
    }
    assert len(complete) == 4
    for t in complete:
        terms = t.user_attrs["loss_terms"]
        expected = {"ce", "kd"} if t.params["distill.loss"] == "hinton" else {"ce", "tckd", "nckd"}
        assert set(terms) == expected and all(len(v) == 2 for v in terms.values())
        assert t.user_attrs["student_params"] > 0 and t.user_attrs["latency_ms_b256"] > 0

    out = cli("export-table", "--study", "methods", "--storage", url, "--format", "csv")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(io.StringIO(out.stdout))
    # Rows: the 4 trained points, plus any trial pruned untrained with its reason (a grid point
    # another worker held, or one asked for beyond the budget at the same moment).
    pruned = table["prune_reason"].notna().sum() if "prune_reason" in table else 0
    assert len(table) - pruned == len(complete)
    assert set(zip(table["distill.loss"], table["distill.kwargs.beta"], strict=True)) == {
        ("hinton", 2.0),
        ("hinton", 8.0),
        ("dkd", 2.0),
        ("dkd", 8.0),
    }
    assert {"student_flops", "latency_ms_b1", "latency_ms_b256"} <= set(table.columns)
