"""``export-table`` for people: per-column digits, binned pivots, an empty study, ``--top``.

Trials are written straight into a real SQLite study (no training), so each case takes the
time of one CLI call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from kdsearch.results import export

STORAGE = "sqlite:///kd.db"
FLOAT = optuna.distributions.FloatDistribution
DISTS = {
    "alpha": FLOAT(0, 1),
    "temperature": FLOAT(1, 10, log=True),
    "weight_decay": FLOAT(1e-6, 1e-3, log=True),
}

Cli = Callable[..., Any]


def ok(proc: Any) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def cells(markdown: str) -> list[list[str]]:
    """The body cells of a markdown table, stripped."""
    rows = [ln for ln in markdown.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]


def study_with(cli: Cli, write_spec: Callable[..., Path], n: int) -> optuna.Study:
    ok(cli("create-study", str(write_spec()), "--storage", STORAGE))
    study = optuna.load_study(study_name="synth", storage=STORAGE)
    for i in range(n):
        params = {"alpha": i / n, "temperature": 1 + 8 * i / n, "weight_decay": 4.43e-5 * (i + 1)}
        study.add_trial(
            optuna.trial.create_trial(
                value=0.5 + i / (3 * n),
                params=params,
                distributions=DISTS,
                user_attrs={"student_params": 1234 + i, "test_accuracy": 0.4 + i / (4 * n)},
            )
        )
    return study


def test_markdown_digits_follow_each_column(cli: Cli, write_spec: Callable[..., Path]) -> None:
    study_with(cli, write_spec, 3)
    out = ok(cli("export-table", "--study", "synth", "--storage", STORAGE))
    header = [c.strip() for c in out.splitlines()[0].strip("|").split("|")]
    best = dict(zip(header, cells(out)[0], strict=True))
    assert best["number"] == "2" and best["student_params"] == "1236"
    assert best["val_accuracy"] == "0.7222" and best["test_accuracy"] == "0.5667"
    assert best["weight_decay"] == "1.33e-04"  # not 0.0001 or 0.0000
    assert best["temperature"] == "6.333" and best["alpha"] == "0.6667"
    # --columns keeps each column's format (trial numbers were 0.0000 here once).
    out = ok(cli("export-table", "--study", "synth", "--storage", STORAGE, "--columns", "number"))
    assert [r[0] for r in cells(out)] == ["2", "1", "0"]
    # Machines get every digit: csv is not rounded.
    ok(cli("export-table", "--study", "synth", "--storage", STORAGE, "-o", "t.csv"))
    assert pd.read_csv("t.csv")["weight_decay"].max() == pytest.approx(3 * 4.43e-5, rel=1e-12)


def test_column_format_rules() -> None:
    fmt = export.column_format
    assert fmt("lr", pd.Series([1e-4, 2.5e-2]))(1e-4) == "1.00e-04"
    assert fmt("epochs_run", pd.Series([3.0, 4.0]))(4.0) == "4"
    assert fmt("duration_s", pd.Series([12.345, 150.0]))(12.345) == "12.35"
    assert fmt("test_accuracy", pd.Series([1.0]))(1.0) == "1.0000"
    latex = export.RENDERERS["latex"](pd.DataFrame({"wd": [4.43e-5], "n": [3]}), False)
    assert "4.43e-05" in latex and re.search(r"\b3\b", latex)


def test_pivot_bins_continuous_parameters(cli: Cli, write_spec: Callable[..., Path]) -> None:
    study_with(cli, write_spec, 12)
    pivot = ("--pivot", "alpha,temperature")
    args = ("export-table", "--study", "synth", "--storage", STORAGE, *pivot)
    out = ok(cli(*args))
    rows = cells(out)
    assert len(rows) == 4  # quartiles by default
    assert rows[0][0] == "0.0000–0.2292"  # ranges in the column's digits, not 17
    assert all(len(r) == 5 for r in rows)
    # alpha and temperature rise together, so the filled cells are the diagonal.
    assert [sum(c != "" for c in r[1:]) for r in rows] == [1, 1, 1, 1]
    out = ok(cli(*args, "--bins", "3", "--format", "csv"))
    table = pd.read_csv(pd.io.common.StringIO(out))
    assert len(table) == 3 and len(table.columns) == 4
    assert table.iloc[-1, -1] == pytest.approx(0.5 + 11 / 36)  # best of the top third


def test_quantile_bins_hold_equal_counts() -> None:
    values = pd.Series([0.0001 * 10 ** (i / 4) for i in range(20)], name="lr")
    binned = export.quantile_bins(values, 4)
    assert binned.value_counts().tolist() == [5, 5, 5, 5]
    assert binned.cat.categories[0].startswith("1.00e-04–")


def test_empty_study_says_so(cli: Cli, write_spec: Callable[..., Path]) -> None:
    study_with(cli, write_spec, 0)
    proc = cli("export-table", "--study", "synth", "--storage", STORAGE, "-o", "t.csv")
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr.strip() == "kdsearch: study 'synth' has no trials yet; nothing written"
    assert not Path("t.csv").exists()


@pytest.mark.parametrize(("flag", "value"), [("--top", "0"), ("--bins", "1")])
def test_bad_counts_are_one_line(
    cli: Cli, write_spec: Callable[..., Path], flag: str, value: str
) -> None:
    study_with(cli, write_spec, 1)
    proc = cli("export-table", "--study", "synth", "--storage", STORAGE, flag, value)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"kdsearch: error: {flag} {value}: must be >= {int(value) + 1}"


def test_missing_text_cells_are_blank_for_people(cli: Cli, write_spec: Callable[..., Path]) -> None:
    """A pruned trial has no checkpoint: markdown and LaTeX show an empty cell, not ``nan``;
    csv and json keep their own nulls (an empty field, ``null``)."""
    study = study_with(cli, write_spec, 1)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE,
            value=0.9,
            params={"alpha": 0.5, "temperature": 2.0, "weight_decay": 1e-4},
            distributions=DISTS,
            user_attrs={"checkpoint": "ckpt/1.pt"},
        )
    )
    out = ok(
        cli(
            "export-table",
            "--study",
            "synth",
            "--storage",
            STORAGE,
            "--columns",
            "number,checkpoint",
        )
    )
    assert cells(out) == [["1", "ckpt/1.pt"], ["0", ""]]
    df = export.trials_frame(study)[["number", "checkpoint"]]
    latex = export.render(df, "latex")
    assert "nan" not in latex.lower() and "ckpt/1.pt" in latex
    assert '"checkpoint":null' in export.render(df, "json").replace(" ", "")
    assert export.render(df, "csv").splitlines()[1:] == ["1,ckpt/1.pt", "0,"]
