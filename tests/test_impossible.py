"""Specs that can never produce a value: refused up front, or stopped after a few trials.

A failed trial does not count toward the budget, so a study whose every trial fails would keep
its workers training and failing for ever. ``validate`` and ``create-study`` refuse what they
can see (one line, exit 2, nothing written); a worker that still meets the same failure three
trials in a row stops with that failure on one line.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import SYNTHETIC_SPEC

from kdsearch.config.spec import from_dict, merge
from kdsearch.search import study as studies
from kdsearch.search.storage import open_storage
from kdsearch.search.worker import REPEATED_FAILURES

S = optuna.trial.TrialState


def one_line_error(out) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsearch: error: "), out.stderr
    return lines[0]


def files(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", ["validate", "create-study"])
def test_no_validation_split_is_refused_for_a_search(cli, write_spec, kd_home, command):
    spec = write_spec({"dataset": {"val_fraction": 0}})
    before = files(kd_home)
    args = [command, str(spec)] + (
        ["--storage", "sqlite:///kd.db"] if command != "validate" else []
    )
    line = one_line_error(cli(*args))
    assert "dataset.val_fraction: 0 leaves no validation images" in line
    assert files(kd_home) == before, "no database file, nothing written"


@pytest.mark.postgres
def test_no_validation_split_creates_no_study_on_postgres(cli, write_spec, pg_url):
    spec = write_spec({"dataset": {"val_fraction": 0}})
    one_line_error(cli("create-study", str(spec), "--storage", pg_url))
    assert optuna.get_all_study_summaries(open_storage(pg_url)) == []


def test_a_validation_split_of_zero_images_is_refused(cli, write_spec, kd_home):
    """0.001 of 320 training images rounds to no image: refused where the data are split."""
    spec = write_spec({"dataset": {"val_fraction": 0.001}})
    before = files(kd_home)
    line = one_line_error(cli("train", str(spec), "--out", "models/s.pt", "--device", "cpu"))
    assert "0.001 of 320 training images is 0 validation images" in line
    assert files(kd_home) == before


@pytest.mark.slow
def test_worker_stops_after_repeated_identical_failures(cli, write_spec, kd_home):
    """A study whose trials all fail (made without create-study's check, as by an older
    kdsearch): the worker stops after three failures instead of looping."""
    spec = from_dict(
        merge(
            SYNTHETIC_SPEC,
            {
                "dataset": {"val_fraction": 0, "options": {"n_train": 64, "n_test": 32}},
                "train": {"epochs": 1},
                "search": {"n_trials": 2},
            },
        )
    )
    studies.create(spec, open_storage("sqlite:///kd.db"), "synth", load_if_exists=False)
    out = cli("worker", "--study", "synth", "--storage", "sqlite:///kd.db", timeout=120)
    line = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2, out.stderr[-3000:]
    assert line == (
        f"kdsearch: error: {REPEATED_FAILURES} trials in a row failed with the same error "
        "(validation accuracy is nan); this worker stops: fix the spec or its cause, "
        "then start the worker again"
    )
    states = [
        t.state
        for t in optuna.load_study(
            study_name="synth", storage=open_storage("sqlite:///kd.db")
        ).get_trials()
    ]
    assert states == [S.FAIL] * REPEATED_FAILURES
