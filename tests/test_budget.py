"""search.n_trials is a global, exact budget: however many workers, the study ends with exactly
that many finished search trials; one started beyond it by a simultaneous ask is turned away."""

from __future__ import annotations

import optuna
import pytest

from kdsearch import api
from kdsearch.search import ranking
from kdsearch.search.objective import Objective
from kdsearch.search.storage import open_storage
from kdsearch.training.experiment import Context

S = optuna.trial.TrialState


@pytest.mark.slow
def test_three_workers_finish_exactly_the_budget(cli, write_spec, kd_home):
    """Before: each worker that was mid-trial when the budget was met finished its trial too,
    so 3 workers on a 4-trial study ended with 5 or 6."""
    spec = write_spec({"search": {"n_trials": 4, "pruner": {"name": "none"}}})
    url = "sqlite:///kd.db"
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    done = cli("worker", "--study", "synth", "--storage", url, "--n-workers", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(
        study_name="synth", storage=open_storage(f"sqlite:///{kd_home}/kd.db")
    )
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if ranking.claims_budget(t)]
    assert len(counted) == 4 and all(t.state == S.COMPLETE for t in counted), trials
    assert not [t for t in trials if t.state == S.RUNNING]
    # Workers stop asking once every slot is taken: a trial is turned away only when workers
    # asked for the last slot at the same moment (at most one per losing worker, which then
    # sees the budget taken), not again and again while the others finish.
    assert sum(ranking.OVER_BUDGET in t.user_attrs for t in trials) <= 2, trials


def test_a_trial_started_beyond_the_budget_is_pruned_untrained(write_spec, kd_home, monkeypatch):
    monkeypatch.chdir(kd_home)
    monkeypatch.setenv("KDSEARCH_HOME", str(kd_home))
    spec = api.validate(write_spec({"search": {"n_trials": 2, "pruner": {"name": "none"}}}))
    study = api.create_study(spec, f"sqlite:///{kd_home}/kd.db")
    objective = Objective(Context.load(spec, "cpu"), study)
    first, _second, third = study.ask(), study.ask(), study.ask()  # three workers asked at once
    with pytest.raises(optuna.TrialPruned):
        objective(third)
    turned_away = study.trials[third.number]
    assert turned_away.user_attrs[ranking.OVER_BUDGET] is True
    assert turned_away.params == {}  # nothing sampled, nothing trained
    assert "epochs_run" in turned_away.user_attrs and turned_away.user_attrs["epochs_run"] == 0
    # A failed trial gives its slot back: the next one runs.
    study.tell(first, state=S.FAIL)
    fourth = study.ask()
    assert 0 <= objective(fourth) <= 1
    assert ranking.OVER_BUDGET not in study.trials[fourth.number].user_attrs


def test_what_takes_a_place_in_the_budget():
    """A search trial, finished or pruned, takes one; a failed trial (its retry takes its place),
    a confirmation run and a trial turned away over budget do not."""
    study = optuna.create_study()

    def trial(state: S, **attrs: object) -> optuna.trial.FrozenTrial:
        value = 0.5 if state == S.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs=attrs))
        return study.trials[-1]

    assert ranking.claims_budget(trial(S.COMPLETE))
    assert ranking.claims_budget(trial(S.PRUNED))
    assert not ranking.claims_budget(trial(S.FAIL))
    assert not ranking.claims_budget(trial(S.COMPLETE, **{ranking.CONFIRM_OF: 0, ranking.SEED: 1}))
    assert not ranking.claims_budget(trial(S.PRUNED, **{ranking.OVER_BUDGET: True}))


def test_n_trials_bounds_queued_confirmations_too(write_spec, kd_home, monkeypatch):
    """``worker --n-trials 1`` runs one trial even when more are queued: confirmations (and
    retries) are run one at a time by the worker's waiting paths, which must count them."""
    monkeypatch.chdir(kd_home)
    url = f"sqlite:///{kd_home}/kd.db"
    search = {"n_trials": 1, "confirm": {"top": 1, "seeds": 3}, "pruner": {"name": "none"}}
    api.create_study(str(write_spec({"train": {"epochs": 1}, "search": search})), url)

    def complete() -> list[optuna.trial.FrozenTrial]:
        trials = optuna.load_study(study_name="synth", storage=url).trials
        return [t for t in trials if t.state == S.COMPLETE]

    for runs in (1, 2, 3, 4):
        assert api.run_workers("synth", url, n_trials=1, devices="cpu") == 0
        assert len(complete()) == runs  # the search trial, then one confirmation per call
    assert sum(ranking.is_confirmation(t) for t in complete()) == 3
