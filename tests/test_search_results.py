"""What a finished search ranks and keeps: in-process checks on a real five-trial study.

A study run to its end by the real worker loop (on SQLite, synthetic data): its value is the
best validation epoch, ``best.pt`` holds that epoch, pruning keeps the best checkpoints,
``best``, ``export-table`` and ``report`` rank by validation, never test; a stopped trial is
re-queued with its parameters. Each test was written against a hand-made mutation (trials
ranked by test accuracy, ``best.pt`` rewritten every epoch, checkpoint pruning reversed) and
fails under it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest
import torch
from conftest import SYNTHETIC_SPEC

from kdsearch.config.spec import from_dict, merge
from kdsearch.results import best, export
from kdsearch.search import storage, worker
from kdsearch.search import study as studies
from kdsearch.training.model_files import load_checkpoint

S = optuna.trial.TrialState

#: A study without a teacher: five 3-epoch trials on synthetic data, two checkpoints kept.
FIXTURE_SPEC = merge(
    SYNTHETIC_SPEC,
    {
        "name": "guarded",
        "teacher": None,
        "dataset": {"options": {"n_train": 256, "n_test": 100, "noise": 400.0}},
        "train": {"epochs": 4},
        "distill": {"alpha": 0.0},
        "search": {
            "n_trials": 5,
            "keep_checkpoints": 2,
            "pruner": {"name": "none"},
            "space": {
                "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                "train.optimizer.weight_decay": {"type": "float", "low": 0.0, "high": 0.01},
            },
        },
    },
)


POINTS = [(0.1, 0.0), (0.03, 0.005), (0.01, 0.0), (0.003, 0.01), (0.001, 0.002)]


def run_study(home: Path, spec_dict: dict, points: list[tuple[float, float]]) -> str:
    """Run study ``spec_dict["name"]`` at ``points`` to its end by the real worker loop in this
    process, on SQLite in ``home``; returns the storage URL."""
    url = f"sqlite:///{home / 'kd.db'}"
    name = spec_dict["name"]
    old_home = os.environ.get("KDSEARCH_HOME")
    os.environ["KDSEARCH_HOME"] = str(home)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        spec = from_dict(spec_dict)
        created = studies.create(spec, storage.open_storage(url), name, False)
        for lr, wd in points:  # fixed points: the worker's sampler seed varies by process
            created.enqueue_trial({"lr": lr, "train.optimizer.weight_decay": wd})
        studies.create(spec, storage.open_storage(url), "empty", False)
        torch.set_num_threads(1)
        assert worker.run(name, 0, "cpu", None, None, url) == 0
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if old_home is None:
            os.environ.pop("KDSEARCH_HOME", None)
        else:
            os.environ["KDSEARCH_HOME"] = old_home
    return url


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """A finished five-trial study run by the real worker loop in this process, on SQLite."""
    url = run_study(tmp_path_factory.mktemp("guarded"), FIXTURE_SPEC, POINTS)
    loaded = optuna.load_study(study_name="guarded", storage=storage.open_storage(url))
    return url, loaded


def complete(st: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return st.get_trials(states=(S.COMPLETE,))


def exported(url: str, study: str = "guarded", **options: object) -> list[dict]:
    """What ``export-table --format json`` prints for these options."""
    compare, pivot = options.pop("compare", None), options.pop("pivot", None)
    if compare:
        df = export.compare_table(compare, url)
    else:
        cells = tuple(pivot.split(",")) if pivot else None
        df = export.table(study, url, pivot=cells, **options)
    return json.loads(export.render(df, "json")) if len(df) else []


# --- ranking, best.pt, pruning, export, best ------------------------------------------------


def test_value_is_the_best_reported_validation_accuracy(finished):
    """A trial's value is the best of its per-epoch validation accuracies (not test)."""
    _, st = finished
    done = complete(st)
    assert len(done) == 5
    for t in done:
        reported = list(t.intermediate_values.values())
        assert len(reported) == 4
        assert t.value == max(reported)
        assert t.user_attrs["best_epoch"] == reported.index(max(reported)) + 1
    # Validation and test differ on this data, so a ranking by test would show.
    assert any(t.value != t.user_attrs["test_accuracy"] for t in done)


def test_best_checkpoint_holds_the_best_epoch(tmp_path_factory: pytest.TempPathFactory):
    """``best.pt`` is written at the best epoch, not every epoch: on labels so noisy that
    validation accuracy wanders, every checkpoint kept, some trial's best epoch is not its
    last (checked first: else rewriting ``best.pt`` every epoch would pass unseen)."""
    spec = merge(
        FIXTURE_SPEC,
        {
            "name": "wandering",
            "dataset": {"options": {"noise": 2000.0}},
            "search": {"n_trials": 3, "keep_checkpoints": 3},
        },
    )
    url = run_study(
        tmp_path_factory.mktemp("wandering"), spec, [(0.3, 0.0), (0.1, 0.0), (0.03, 0.0)]
    )
    st = optuna.load_study(study_name="wandering", storage=storage.open_storage(url))
    kept = complete(st)
    assert len(kept) == 3 and all(Path(t.user_attrs["checkpoint"]).is_file() for t in kept)
    assert any(t.user_attrs["best_epoch"] < t.user_attrs["epochs_run"] for t in kept)
    for t in kept:
        metrics = load_checkpoint(Path(t.user_attrs["checkpoint"]))["metrics"]
        assert metrics["epoch"] == t.user_attrs["best_epoch"]
        assert metrics["val_accuracy"] == t.value
        assert metrics["test_accuracy"] == t.user_attrs["test_accuracy"]


def test_pruning_keeps_the_best_checkpoints(finished):
    """After more trials than keep_checkpoints, exactly the best trials keep their files."""
    _, st = finished
    ranked = sorted(complete(st), key=lambda t: t.value, reverse=True)
    exists = [Path(t.user_attrs["checkpoint"]).is_file() for t in ranked]
    assert exists[:2] == [True, True] and not any(exists[2:]), exists
    assert st.best_trial.number == ranked[0].number


def test_best_command_tests_the_best_trial(finished):
    url, st = finished
    result = best.evaluate_best("guarded", url, device="cpu")
    top = st.best_trial
    assert result["trial"] == top.number and result["val_accuracy"] == top.value
    assert result["test_accuracies"] == [pytest.approx(top.user_attrs["test_accuracy"])]


def test_export_is_ranked_by_validation(finished):
    url, st = finished
    rows = exported(url)
    assert [r["number"] for r in rows][:1] == [st.best_trial.number]
    values = [r["val_accuracy"] for r in rows if r["state"] == "COMPLETE"]
    assert values == sorted(values, reverse=True)


def test_export_state_filters(finished):
    url, st = finished
    rows = exported(url, state="complete")
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in complete(st))
    assert exported(url, state="pruned") == []


def test_export_pivot_is_the_best_value_per_cell(finished):
    url, st = finished
    rows = exported(url, pivot="lr,train.optimizer.weight_decay")
    cells = [v for r in rows for k, v in r.items() if k != "lr" and v is not None]
    assert len(rows) >= 2 and max(cells) == pytest.approx(st.best_value)
    assert len(cells) == len(complete(st))  # five distinct points, one cell each


def test_export_compare_one_row_per_study(finished):
    url, st = finished
    rows = exported(url, compare=["guarded", "empty"])
    assert [r["study"] for r in rows] == ["guarded", "empty"]
    assert rows[0]["trials"] == 5 and rows[0]["val_accuracy"] == pytest.approx(st.best_value)
    assert rows[0]["test_accuracy"] == pytest.approx(st.best_trial.user_attrs["test_accuracy"])
    assert rows[0]["teacher"] == "-" and rows[1]["trials"] == 0
    assert rows[1]["val_accuracy"] is None  # NaN in JSON


def made_up_study() -> optuna.Study:
    """In memory: two trials per (lr, wd) cell, test accuracy ranking opposite to validation."""
    st = optuna.create_study(direction="maximize")
    dists = {
        "lr": optuna.distributions.CategoricalDistribution([0.01, 0.1]),
        "wd": optuna.distributions.CategoricalDistribution([0.0, 0.01]),
    }
    for i, (lr, wd) in enumerate([(a, b) for a in (0.01, 0.1) for b in (0.0, 0.01)] * 2):
        value = 0.5 + 0.05 * i
        st.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "wd": wd},
                distributions=dists,
                value=value,
                intermediate_values={0: value - 0.1, 1: value},
                user_attrs={"test_accuracy": 1.0 - value},
            )
        )
    st.add_trial(
        optuna.trial.create_trial(
            params={"lr": 0.1, "wd": 0.0},
            distributions=dists,
            state=S.PRUNED,
            intermediate_values={0: 0.99},
        )
    )
    return st


def test_trials_table_ranks_by_validation_not_test():
    df = export.trials_frame(made_up_study())
    assert df["number"].tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 8]
    assert df["test_accuracy"].iloc[0] == pytest.approx(0.15)


def test_pivot_takes_the_best_trial_of_each_cell():
    table = export.pivot_table(export.trials_frame(made_up_study()), "lr", "wd")
    # Trials 4..7 are the second, better visit of each cell; the pruned trial is no value.
    assert table.loc[0.01, 0.0] == pytest.approx(0.70) and table.loc[0.1, 0.01] == pytest.approx(
        0.85
    )


# --- reporting and retry glue ---------------------------------------------------------------


def test_report_names_the_best_trial(finished, tmp_path):
    from kdsearch.results.report import write_report

    _, st = finished
    written = write_report(st, from_dict(FIXTURE_SPEC), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert tmp_path / "report.md" in written
    assert f"trial {st.best_trial.number}" in text and f"{st.best_value:.4f}" in text


def test_a_stopped_trial_is_requeued_with_its_parameters(tmp_path):
    """What a worker does on SIGTERM/SIGINT mid-trial: FAIL the trial, queue the same params."""
    from types import SimpleNamespace

    from kdsearch.training.loop import StopRequested

    st = optuna.create_study(storage=storage.open_storage(f"sqlite:///{tmp_path / 'kd.db'}"))
    trial = st.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    worker._requeue(st, SimpleNamespace(current=trial), 2, StopRequested("stop"))
    failed, retry = st.get_trials()
    assert failed.state == S.FAIL and retry.state == S.WAITING
    assert retry.params == failed.params and retry.system_attrs["failed_trial"] == 0
