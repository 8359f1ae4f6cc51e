"""The Python API (``kdsearch.create_study`` ...): a search driven from a notebook, in-process.

Real SQLite, real training on the synthetic data; the same study the CLI tests run, through
the functions the CLI itself calls.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

import kdsearch
from kdsearch import api
from kdsearch.errors import KDSearchError
from kdsearch.search import ranking

STORAGE = "sqlite:///kd.db"


def test_import_kdsearch_loads_no_torch_optuna_or_pandas() -> None:
    """``import kdsearch`` (and listing its API) stays instant: the API loads on first use."""
    code = (
        "import sys, kdsearch; names = dir(kdsearch); "
        "print(sorted(m for m in ('torch', 'optuna', 'pandas', 'kdsearch.api') "
        "if m in sys.modules), all(n in names for n in kdsearch.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"], out.stdout


def test_the_spec_and_status_modules_load_no_torch() -> None:
    """Reading specs and ``kdsearch status`` need no torch (3-4 s to import): the data
    package's registry loads on first use, not when the spec imports its normalizations."""
    code = "import sys, kdsearch.config, kdsearch.results.status; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout
    from kdsearch import data
    from kdsearch.data import datasets

    assert data.register is datasets.register and data.load is datasets.load


def test_every_api_name_is_the_api_function_even_after_the_tools_load() -> None:
    """No API name is a submodule's: importing ``kdsearch.results.best`` would otherwise replace
    ``kdsearch.results.best`` with the module."""
    from kdsearch.training import loop as train  # noqa: F401

    for name in kdsearch.__all__:
        assert getattr(kdsearch, name) is getattr(api, name), name
    with pytest.raises(AttributeError):
        kdsearch.no_such_function  # noqa: B018


def test_best_follows_the_study_direction() -> None:
    """The best complete trial, by value, in the study's direction; None without one."""
    for direction, expected in (("maximize", 3.0), ("minimize", 1.0)):
        st = optuna.create_study(direction=direction)
        assert ranking.best(st) is None
        for value in (2.0, 3.0, 1.0):
            st.add_trial(optuna.trial.create_trial(value=value))
        st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
        assert ranking.best(st).value == expected
        assert ranking.best(st, trials=st.trials).value == expected  # the pruned one is skipped
        assert ranking.best(st, trials=st.trials[:1]).value == 2.0
        assert ranking.best(st, trials=st.trials[-1:]) is None


def test_search_from_python(
    write_spec: Callable[..., Path], kd_home: Path, one_torch_thread: None
) -> None:
    """create_study -> run_workers -> trials_table -> evaluate_best -> study_status ->
    write_report, the way README's Python API section shows it."""
    spec = kdsearch.validate(write_spec({"search": {"n_trials": 2}}))
    st = kdsearch.create_study(spec, STORAGE)
    assert st.study_name == "synth"
    before = signal.getsignal(signal.SIGINT)
    # The Study remembers its storage: no URL again (the default would be kdsearch.db).
    assert kdsearch.run_workers(st, devices="cpu") == 0
    assert signal.getsignal(signal.SIGINT) is before  # the notebook's Ctrl-C is back

    df = kdsearch.trials_table(st)
    assert len(df) == 2 and set(df["state"]) <= {"COMPLETE", "PRUNED"}
    done = df[df["state"] == "COMPLETE"]
    assert list(done["val_accuracy"]) == sorted(done["val_accuracy"], reverse=True)
    assert list(kdsearch.trials_table("synth", STORAGE, columns=["number"]).columns) == ["number"]

    result = kdsearch.evaluate_best(st, device="cpu")
    assert result["trial"] == done["number"].iloc[0]
    assert result["test_accuracies"] == [pytest.approx(done["test_accuracy"].iloc[0])]

    (row,) = kdsearch.study_status(STORAGE)
    assert row["study"] == "synth" and row["finished"] == 2
    assert row["best"]["number"] == result["trial"]

    md = kdsearch.write_report(st, out=kd_home / "report", baseline=False)
    assert md == kd_home / "report" / "report.md" and f"trial {result['trial']}" in md.read_text()


def test_a_baseline_trains_without_its_teacher(
    write_spec: Callable[..., Path], kd_home: Path, one_torch_thread: None
) -> None:
    """``train`` at alpha 0 never asks the teacher: no teacher cache is built for it (on
    CIFAR-10 that is minutes of teacher inference before a baseline's first epoch)."""
    spec = write_spec({"train": {"epochs": 1}})
    cache = kd_home / "models" / "cache"
    base = kdsearch.train_student(spec, kd_home / "base.pt", overrides={"distill.alpha": 0})
    assert Path(base["checkpoint"]).is_file()
    assert not list(cache.glob("teacher-*.pt"))
    kdsearch.train_student(spec, kd_home / "kd.pt", overrides={"distill.alpha": 0.5})
    assert len(list(cache.glob("teacher-*.pt"))) == 1  # where the distilled run's cache goes


def test_a_missing_database_is_an_error_not_a_new_file(kd_home: Path) -> None:
    """Reading a study never creates the database it names (a typo would look empty)."""
    with pytest.raises(KDSearchError, match=r"no such database file kd\.db"):
        kdsearch.trials_table("nope", STORAGE)
    assert not (kd_home / "kd.db").exists()


def test_nothing_imports_the_cli() -> None:
    """The CLI is the top layer: only ``python -m kdsearch`` (``__main__``) imports it."""
    import ast

    package = Path(kdsearch.__file__).parent
    importers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if "kdsearch.cli" in names:
                importers.append(path.relative_to(package).as_posix())
    assert sorted(set(importers)) == ["__main__.py"]
