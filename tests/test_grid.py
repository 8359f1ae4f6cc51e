"""Grid studies on several workers: each point trained once."""

from __future__ import annotations

import optuna
import yaml

from kdsearch.search import study as studies
from kdsearch.search.objective import GRID_DUPLICATE
from kdsearch.search.storage import open_storage

ONE_POINT = {
    "train": {"epochs": 2},
    "search": {"n_trials": 1, "sampler": {"name": "grid"}},
}


def test_a_point_already_running_elsewhere_is_skipped_untrained(cli, kd_home, write_spec):
    """Once every point has started, Optuna's grid sampler hands a worker a point still
    running on another (in case that one died). kdsearch retries dead workers' trials from
    their checkpoints instead, so the worker must skip the point, not train it twice."""
    path = write_spec(ONE_POINT, name="grid")
    data = yaml.safe_load(path.read_text())
    data["search"]["space"] = {"alpha": {"type": "categorical", "choices": [0.5]}}
    # A budget above the grid's size, so the worker asks at all: with the budget at the
    # grid's size, the holder's slot is the whole budget and the worker waits for it instead.
    data["search"]["n_trials"] = 2
    path.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{kd_home}/grid.db"
    assert cli("create-study", "grid.yaml", "--storage", url).returncode == 0
    storage = open_storage(url)
    spec = studies.load_spec(storage, "grid")
    study = optuna.load_study(
        study_name="grid", storage=storage, sampler=studies.make_sampler(spec)
    )
    holder = study.ask()  # another worker, still training the only point
    holder.suggest_categorical("alpha", [0.5])

    proc = cli("worker", "--study", "grid", "--storage", url, "--n-trials", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr
    (skipped,) = [t for t in study.get_trials() if t.number != holder.number]
    assert skipped.state == optuna.trial.TrialState.PRUNED
    assert skipped.user_attrs[GRID_DUPLICATE] == holder.number
    assert skipped.intermediate_values == {}
    assert f"already trained by trial {holder.number}" in proc.stderr
