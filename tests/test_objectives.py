"""The student's cost as an objective or a constraint: spec, ranking, and digits studies."""

from __future__ import annotations

import io
import json

import optuna
import pandas as pd
import pytest
import yaml
from conftest import SYNTHETIC_SPEC

from kdsearch import nets
from kdsearch.config import spec as specs
from kdsearch.config.spec import merge
from kdsearch.errors import KDSearchError
from kdsearch.results import export
from kdsearch.search import ranking
from kdsearch.search import study as studies
from kdsearch.search.storage import open_storage

WIDTHS = [1, 2, 4, 8]
#: No teacher (nothing to train first); the search varies only the student's width.
DIGITS = {
    "name": "widths",
    "dataset": {"name": "digits", "val_fraction": 0.2, "subset_fraction": 0.4, "augment": False},
    "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
    "train": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adam", "lr": 3e-3}},
    "distill": {"alpha": 0.0},
    "search": {
        "n_trials": len(WIDTHS),
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "objectives": ["val_accuracy", "student_params"],
        "space": {
            "student.kwargs.num_channels": {"type": "categorical", "choices": WIDTHS},
        },
        "heartbeat_interval": 1,
        "grace_period": 3,
    },
}


def params_of(width: int) -> int:
    """A digits cnn5's parameter count, as the worker measures it."""
    return nets.count_parameters(nets.create("cnn5", num_classes=10, num_channels=width))


def synth(search: dict) -> specs.Spec:
    spec = specs.from_dict(merge(SYNTHETIC_SPEC, {"search": search}))
    studies.check(spec)
    return spec


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"objectives": ["val_accuracy", "params"]}, "unknown 'params'; did you mean"),
        ({"objectives": ["student_params"]}, "must start with val_accuracy"),
        ({"objectives": ["val_accuracy", "flops", "flops"], "pruner": {"name": "none"}}, "twice"),
        ({"objectives": ["val_accuracy", "flops"]}, "cannot prune a study with several"),
        (
            {"objectives": ["val_accuracy", "flops"], "pruner": {"name": "none"}},
            "",
        ),
        ({"constraints": {"params": {"max": 5}}}, "search.constraints: unknown 'params'"),
        ({"constraints": {"val_accuracy": {"max": 5}}}, "search.constraints: unknown"),
        ({"constraints": {"flops": {"min": 5}}}, "must be {max: N}"),
        ({"constraints": {"flops": {"max": 0}}}, "must be a finite number > 0"),
        (
            {"space": {"student.arch": {"type": "categorical", "choices": ["cnn5", "resnet18"]}}},
            "student.kwargs.num_channels: resnet18 takes no argument",
        ),
        ({"space": {"student.arch": {"type": "float", "low": 1, "high": 2}}}, "categorical"),
    ],
)
def test_spec_refuses_bad_objectives_and_constraints(search, message):
    if not message:  # the valid contrast: directions follow the objectives
        spec = synth(search)
        assert spec.search.directions == ["maximize", "minimize"]
        return
    with pytest.raises(KDSearchError, match=message.replace("{", r"\{").replace("}", r"\}")):
        synth(search)


def test_searched_architectures_are_checked_per_choice():
    search = {"space": {"student.arch": {"type": "categorical", "choices": ["cnn5", "resnet18"]}}}
    spec = specs.from_dict(merge(SYNTHETIC_SPEC, {"student": {"kwargs": None}, "search": search}))
    assert spec.with_overrides({"student.arch": "resnet18"}).student.arch == "resnet18"
    with pytest.raises(KDSearchError, match="unknown 'resnet19'"):
        bad = {"space": {"student.arch": {"type": "categorical", "choices": ["resnet19"]}}}
        specs.from_dict(merge(SYNTHETIC_SPEC, {"student": {"kwargs": None}, "search": bad}))


def test_validate_prints_one_line_for_a_pruned_multi_objective_spec(cli, kd_home):
    data = merge(DIGITS, {"search": {"pruner": {"name": "median"}}})
    (kd_home / "bad.yaml").write_text(yaml.safe_dump(data))
    out = cli("validate", "bad.yaml")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "search.pruner: Optuna cannot prune" in out.stderr


def _add(study: optuna.Study, values: list[float], params: int, over: float | None = None) -> None:
    trial = optuna.trial.create_trial(
        values=values if len(study.directions) > 1 else None,
        value=values[0] if len(study.directions) == 1 else None,
        user_attrs={"student_params": params},
        system_attrs={} if over is None else {"constraints:student_params": over},
    )
    study.add_trial(trial)


def test_ranking_picks_within_budgets_and_never_an_infeasible_trial():
    multi = optuna.create_study(directions=["maximize", "minimize"])
    multi.set_metric_names(["val_accuracy", "student_params"])
    for acc, size in [(0.90, 1000), (0.80, 100), (0.70, 10), (0.60, 500), (0.95, 5000)]:
        _add(multi, [acc, size], size)
    assert [t.values[0] for t in ranking.pareto(multi)] == [0.95, 0.90, 0.80, 0.70]
    assert ranking.best(multi).values[0] == 0.95
    assert ranking.best(multi, {"student_params": 999}).values[0] == 0.80
    assert ranking.best(multi, {"student_params": 9}) is None
    table = export.pareto_rows(multi, export.trials_frame(multi))
    assert list(table.columns[:3]) == ["number", "val_accuracy", "student_params"]
    assert sorted(table["val_accuracy"]) == [0.70, 0.80, 0.90, 0.95]  # not the dominated 0.60

    single = optuna.create_study(direction="maximize")
    _add(single, [0.99], 5000, over=4000.0)  # over its limit, yet the highest value
    _add(single, [0.90], 1000, over=0.0)
    assert ranking.best(single).values[0] == 0.90
    assert [t.values[0] for t in ranking.ranked(single)] == [0.90]


def test_ranking_at_the_edges_of_its_rules():
    """A trial exactly at a budget is within it; a trial a fraction over its ceiling is out; a
    trial as accurate as another but larger is off the front; a pruned trial is never ranked,
    however high its last value; a minimized first objective ranks lowest first."""
    multi = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size in [(0.90, 1000), (0.90, 500), (0.80, 100)]:
        _add(multi, [acc, size], size)
    assert [t.values for t in ranking.pareto(multi)] == [[0.90, 500], [0.80, 100]]
    assert ranking.best(multi, {"student_params": 100}).values == [0.80, 100]
    assert ranking.multi(multi) and ranking.sign(multi) == 1

    single = optuna.create_study(direction="maximize")
    _add(single, [0.99], 5000, over=0.5)  # half a parameter over its ceiling
    _add(single, [0.90], 1000, over=0.0)  # exactly at it
    single.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, value=0.995))
    single.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert [t.values[0] for t in ranking.ranked(single)] == [0.90]
    assert ranking.accuracy(single.trials[-1]) is None
    assert not ranking.multi(single)

    low = optuna.create_study(direction="minimize")
    for value in (0.3, 0.1, 0.2):
        low.add_trial(optuna.trial.create_trial(value=value))
    assert ranking.sign(low) == -1
    assert [t.value for t in ranking.ranked(low)] == [0.1, 0.2, 0.3]


def test_constraint_excess_and_the_first_violation_in_words():
    limits = {"student_params": {"max": 1000.0}, "flops": {"max": 5e6}}
    within = {"student_params": 1000, "student_flops": 4e6}
    assert ranking.excess(within, limits) == {"student_params": 0.0, "flops": -1e6}
    assert ranking.violation(within, limits) == ""
    over = {"student_params": 1000, "student_flops": 6e6}
    assert ranking.violation(over, limits) == (
        "flops 6e+06 is over the limit 5e+06 (search.constraints)"
    )
    both = {"student_params": 1001, "student_flops": 6e6}
    assert ranking.violation(both, limits).startswith("student_params 1001 is over the limit")
    assert ranking.describe_budgets({"student_params": 1e5, "flops": 2.5e6}) == (
        "student_params <= 100000, flops <= 2.5e+06"
    )


def _front_is_non_dominated(table: pd.DataFrame) -> bool:
    rows = list(zip(table["val_accuracy"], table["student_params"], strict=True))
    return not any(
        a2 >= a1 and p2 <= p1 and (a2, p2) != (a1, p1) for a1, p1 in rows for a2, p2 in rows
    )


@pytest.mark.slow
def test_accuracy_against_size_gives_a_front_a_plot_and_budgeted_best(cli, kd_home):
    (kd_home / "widths.yaml").write_text(yaml.safe_dump(DIGITS))
    url = "sqlite:///kd.db"
    assert cli("create-study", "widths.yaml", "--storage", url).returncode == 0
    worked = cli("worker", "--study", "widths", "--storage", url)
    assert worked.returncode == 0, worked.stderr[-3000:]
    study = optuna.load_study(study_name="widths", storage=open_storage(url))
    assert study.metric_names == ["val_accuracy", "student_params"]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.values[1] for t in done) == [params_of(w) for w in WIDTHS]

    out = cli("export-table", "--study", "widths", "--storage", url, "--pareto", "--format", "csv")
    assert out.returncode == 0, out.stderr
    front = pd.read_csv(io.StringIO(out.stdout))
    assert list(front.columns[:3]) == ["number", "val_accuracy", "student_params"]
    assert len(front) >= 3 and _front_is_non_dominated(front)
    assert set(front["number"]) == {t.number for t in study.best_trials}

    reported = cli("report", "--study", "widths", "--storage", url, "-o", "rep")
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert (kd_home / "rep" / "pareto_front.png").stat().st_size > 10_000
    assert "![pareto_front](pareto_front.png)" in (kd_home / "rep" / "report.md").read_text()

    budget = params_of(4)
    best = cli("best", "--study", "widths", "--storage", url, "--max-params", str(budget), "--json")
    assert best.returncode == 0, best.stderr[-3000:]
    picked = json.loads(best.stdout)
    within = [t for t in done if t.values[1] <= budget]
    assert picked["trial"] == max(within, key=lambda t: t.values[0]).number
    assert picked["costs"]["student_params"] <= budget

    none = cli("best", "--study", "widths", "--storage", url, "--max-params", "10")
    assert none.returncode == 2 and none.stderr.count("\n") == 1
    assert "no complete trial within student_params <= 10" in none.stderr


@pytest.mark.slow
def test_trials_over_a_size_limit_are_pruned_untrained_and_never_best(cli, kd_home):
    limit = params_of(4)
    data = merge(
        DIGITS,
        {
            "name": "capped",
            "search": {
                "objectives": ["val_accuracy"],
                "pruner": {"name": "median", "n_startup_trials": 1},
                "constraints": {"student_params": {"max": limit}},
            },
        },
    )
    (kd_home / "capped.yaml").write_text(yaml.safe_dump(data))
    url = "sqlite:///kd.db"
    assert cli("create-study", "capped.yaml", "--storage", url).returncode == 0
    worked = cli("worker", "--study", "capped", "--storage", url)
    assert worked.returncode == 0, worked.stderr[-3000:]
    study = optuna.load_study(study_name="capped", storage=open_storage(url))
    over = [t for t in study.trials if t.user_attrs["student_params"] > limit]
    assert {t.params["student.kwargs.num_channels"] for t in over} == {8}
    for t in over:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["prune_reason"].startswith("student_params ")
        assert "over the limit" in t.user_attrs["prune_reason"]
        assert t.user_attrs["epochs_run"] == 0 and not t.intermediate_values
        assert "checkpoint" not in t.user_attrs and t.constraints["student_params"] > 0
    under = [t for t in study.trials if t.user_attrs["student_params"] <= limit]
    assert len(under) == 3 and any(t.state.name == "COMPLETE" for t in under)
    # The median pruner still works on the trials within the limit (it may stop one).
    assert all("over the limit" not in t.user_attrs.get("prune_reason", "") for t in under)

    out = cli("export-table", "--study", "capped", "--storage", url, "--format", "csv")
    table = pd.read_csv(io.StringIO(out.stdout))
    assert table["student_params"].iloc[0] <= limit
    status = cli("status", "--study", "capped", "--storage", url, "--json")
    assert json.loads(status.stdout)[0]["best"]["number"] in {t.number for t in under}
    best = cli("best", "--study", "capped", "--storage", url, "--json")
    assert json.loads(best.stdout)["costs"]["student_params"] <= limit
