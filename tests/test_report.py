"""``kdsearch report``: figures and report.md from a real study in a real SQLite database.

The main test runs a short synthetic search with one worker process (pruning on), then the
report command, which trains the alpha = 0 baseline once and attaches the figures to the
study's artifact store; another builds degenerate studies directly in storage (no training)
to check that a figure that cannot be drawn is skipped with a note instead of a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from PIL import Image

from kdsearch.config import spec as specs
from kdsearch.results import dashboard, report

STORAGE = "sqlite:///kd.db"
FIGURES = {"optimization_history", "learning_curves", "param_importances", "slice", "baseline"}

Cli = Callable[..., Any]


def ok(proc: Any) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def check_report(out: Path, stdout: str) -> set[str]:
    """Every PNG is linked from report.md, opens, and is a real picture; returns their names."""
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    pngs = {p.name for p in out.glob("*.png")}
    assert sorted(links) == sorted(pngs), (links, pngs)
    for name in pngs:
        assert f"wrote {out / name}" in stdout
        path = out / name
        assert path.stat().st_size > 1000, name
        with Image.open(path) as img:
            img.load()  # decodes every row: a truncated file fails here
            assert img.format == "PNG"
            assert img.width > 200 and img.height > 200, (name, img.size)
    assert f"wrote {out / 'report.md'}" in stdout
    return {Path(n).stem for n in pngs}


@pytest.mark.slow
def test_report_of_a_finished_search(cli: Cli, write_spec: Callable[..., Path]) -> None:
    search = {"n_trials": 5, "artifact_store": "artifacts"}
    spec = write_spec({"train": {"epochs": 3}, "search": search})
    ok(cli("create-study", str(spec), "--storage", STORAGE))
    study = optuna.load_study(study_name="synth", storage=STORAGE)
    study.enqueue_trial({"alpha": 0.5, "temperature": 4.0, "lr": 3e-3})  # one complete trial
    ok(cli("worker", "--study", "synth", "--storage", STORAGE, "--n-workers", "1"))

    out = ok(cli("report", "--study", "synth", "--storage", STORAGE, "-o", "rep"))
    assert "training the alpha = 0 baseline" in out
    rep = Path("rep")
    assert check_report(rep, out) == FIGURES - {"param_importances"}  # 5 trials are too few
    md = (rep / "report.md").read_text()
    trials = study.get_trials(deepcopy=False)
    best = study.best_trial
    assert f"## Best configuration\n\n- trial {best.number}\n" in md
    assert f"- validation accuracy {best.value:.4f}\n" in md
    assert "order is not tested" in md  # one seed per configuration
    for key, value in best.params.items():
        assert f"`{key}` = {value:.6g}" in md
    n_complete = sum(t.state.name == "COMPLETE" for t in trials)
    assert f"needs at least 10 complete trials to rank parameters (have {n_complete})" in md
    # The baseline: the best trial's other hyperparameters and seed, alpha 0, in the table.
    base = optuna.load_study(study_name="synth", storage=STORAGE).user_attrs["baseline"]
    others = {k: v for k, v in best.params.items() if k != "alpha"}
    assert (base["from_trial"], base["params"], base["alpha"], base["seed"]) == (
        best.number,
        others,
        0.0,
        0,
    )
    assert Path(base["checkpoint"]).is_file()
    # It is exactly the plain student a user would train by hand with those settings.
    sets = [f"--set={k}={v!r}" for k, v in others.items()]
    by_hand = json.loads(ok(cli("train", str(spec), "--set=distill.alpha=0", *sets, "--json")))
    assert (by_hand["val_accuracy"], by_hand["test_accuracy"]) == (
        base["val_accuracy"],
        base["test_accuracy"],
    )
    row = f"| baseline, alpha = 0 (trial {best.number}'s settings) | {base['val_accuracy']:.4f} |"
    assert row in md
    assert "| teacher (cnn5) |" in md and f"| best distilled (trial {best.number}) |" in md
    assert "cnn5 {'num_channels': 4}" in md and "`temperature`: float [1, 10] log" in md
    table = md.split("## Trials (best 20)", 1)[1]
    assert "| number |" in re.sub(r" +", " ", table)
    assert len([ln for ln in table.splitlines() if re.match(r"\|\s*\d+\s+\|", ln)]) == len(trials)
    states = {t.state.name.lower() for t in trials}
    assert all(s in md.splitlines()[2] for s in states)

    # The figures and report.md are study artifacts (what optuna-dashboard shows), beside
    # the spec create-study attached; a second report trains nothing and overwrites them.
    attached = dashboard.study_artifacts(study)
    assert set(attached) == {"spec.yaml", "report.md", *(f"{n}.png" for n in FIGURES)} - {
        "param_importances.png"
    }
    stored = Path("artifacts") / attached["baseline.png"]
    assert stored.read_bytes() == (rep / "baseline.png").read_bytes()
    trained = Path(base["checkpoint"]).stat().st_mtime_ns
    again = ok(cli("report", "--study", "synth", "--storage", STORAGE, "-o", "rep"))
    assert "training" not in again
    assert dashboard.study_artifacts(study) == attached
    assert optuna.load_study(study_name="synth", storage=STORAGE).user_attrs["baseline"] == base
    shown = json.loads(
        ok(cli("best", "--study", "synth", "--storage", STORAGE, "--baseline", "--json"))
    )
    assert shown["baseline"] == base  # `best --baseline` reuses it too
    assert Path(base["checkpoint"]).stat().st_mtime_ns == trained  # never trained again


def test_report_skips_what_it_cannot_draw(cli: Cli, write_spec: Callable[..., Path]) -> None:
    """An empty study, then one with a single (hand-made) trial: notes, never a crash."""
    ok(cli("create-study", str(write_spec()), "--storage", STORAGE))
    out = ok(cli("report", "--study", "synth", "--storage", STORAGE))  # default folder
    rep = Path("reports/synth")
    assert check_report(rep, out) == set()
    md = (rep / "report.md").read_text()
    assert "no trials yet" in md
    for name in FIGURES:
        assert f"- {name}: skipped" in md
    # The spec says where the data came from, at what size and how much of it.
    data = "- data set: synthetic from `data`, image size native, subset fraction 1, labeled"
    assert data in md

    study = optuna.load_study(study_name="synth", storage=STORAGE)
    dists = {
        "temperature": optuna.distributions.FloatDistribution(1, 10, log=True),
        "alpha": optuna.distributions.FloatDistribution(0, 1),
    }
    params = {"temperature": 2.0, "alpha": 0.0}
    trial = optuna.trial.create_trial(
        value=0.5, params=params, distributions=dists, intermediate_values={0: 0.4, 1: 0.5}
    )
    study.add_trial(trial)
    # A stored baseline without `params` (what older `make demo` stored) is reused as it is.
    study.set_user_attr("baseline", {"val_accuracy": 0.25, "test_accuracy": 0.125, "parameters": 7})
    out = ok(cli("report", "--study", "synth", "--storage", STORAGE, "-o", "one"))
    assert check_report(Path("one"), out) == FIGURES - {"param_importances"}
    md = Path("one/report.md").read_text()
    assert "- param_importances: skipped, needs at least 10 complete trials to rank" in md
    assert "| baseline, alpha = 0 (stored) | 0.2500 | 0.1250 |" in md
    assert "| best distilled (trial 0) | 0.5000 | n/a |" in md
    assert "| teacher (cnn5) |" in md


def test_spec_lines_name_the_data_root_size_and_share(write_spec: Callable[..., Path]) -> None:
    """report.md's spec names the data set's root, image size and subset fraction, so a
    reader can tell a 16 px half-data study from a full-size one."""
    data = {"root": "/srv/pics", "image_size": 16, "subset_fraction": 0.5}
    spec = specs.load(write_spec({"dataset": data}))
    assert report._spec_lines(spec)[0] == (
        "- data set: synthetic from `/srv/pics`, image size 16, subset fraction 0.5, "
        "labeled fraction 1"
    )


def test_report_of_an_unknown_study_is_one_line(cli: Cli, kd_home: Path) -> None:
    optuna.create_study(study_name="other", storage=f"sqlite:///{kd_home / 'kd.db'}")
    proc = cli("report", "--study", "nope", "--storage", STORAGE)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("kdsearch: error: study: unknown 'nope'")
    assert "Traceback" not in proc.stderr
