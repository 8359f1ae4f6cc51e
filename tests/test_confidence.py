"""Confidence: configurations ranked by their mean over seeds, ties by the stated test, and
confirmation trials run by real workers (tagged, counted apart, never pruned, crash-safe)."""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path

import optuna
import pytest
from conftest import start_worker
from scipy import stats

from kdsearch.config import load
from kdsearch.results import export
from kdsearch.search import confidence, confirm
from kdsearch.search import study as studies
from kdsearch.search.ranking import CONFIRM_OF, SEED
from kdsearch.search.storage import open_storage

S = optuna.trial.TrialState
D = optuna.distributions.FloatDistribution(0.0, 1.0)


def study_with(
    runs: dict[float, list[float]],
    url: str = "sqlite:///ranks.db",
    study: optuna.Study | None = None,
) -> optuna.Study:
    """A real stored study (``study``, else a plain Optuna one): one search trial per key (its
    alpha), its first value the search trial's, the rest confirmation trials of it."""
    study = study or optuna.create_study(storage=url, direction="maximize")
    for alpha, values in runs.items():
        first = optuna.trial.create_trial(
            params={"alpha": alpha}, distributions={"alpha": D}, value=values[0]
        )
        study.add_trial(first)
        number = study.get_trials()[-1].number
        for seed, value in enumerate(values[1:], start=1):
            attrs = {CONFIRM_OF: number, SEED: seed}
            again = optuna.trial.create_trial(
                params={"alpha": alpha}, distributions={"alpha": D}, value=value, user_attrs=attrs
            )
            study.add_trial(again)
    return study


def in_memory() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def order(ranked: confidence.Ranking) -> list[float]:
    return [r.configuration.trial.params["alpha"] for r in ranked.rows]


def test_a_better_single_seed_with_a_worse_mean_is_not_first(kd_home: Path) -> None:
    study = study_with(
        {
            0.1: [0.90, 0.80, 0.81],  # the luckiest first seed, the worst mean
            0.2: [0.88, 0.87, 0.875],
            0.3: [0.86],  # never confirmed: its one seed beats 0.1's mean, yet ranks last
        }
    )
    ranked = confidence.rank(study)
    assert order(ranked) == [0.2, 0.1, 0.3]
    top = ranked.rows[0].configuration
    assert top.n == 3 and top.mean == pytest.approx((0.88 + 0.87 + 0.875) / 3)
    assert top.std == pytest.approx(stats.tstd([0.88, 0.87, 0.875]))


@pytest.mark.parametrize(
    ("other", "tied"),
    [([0.845, 0.86, 0.85], True), ([0.80, 0.81, 0.805], False)],
)
def test_ties_are_a_one_sided_pooled_t_test_at_5_percent(
    kd_home: Path, other: list[float], tied: bool
) -> None:
    winner = [0.86, 0.85, 0.87]
    ranked = confidence.rank(study_with({0.5: winner, 0.6: other}))
    row = ranked.rows[1]
    # With two configurations the pooled variance is Student's two-sample test's own.
    expected = stats.ttest_ind(winner, other, equal_var=True, alternative="greater").pvalue
    assert row.p_value == pytest.approx(expected)
    assert row.tied is tied and ranked.ties == int(tied)
    assert [r.rank for r in ranked.rows] == [1, 2] and ranked.rows[0].p_value is None
    assert row.ci95 == pytest.approx(stats.t.ppf(0.975, 4) * ranked.noise / math.sqrt(3))
    assert ranked.noise == pytest.approx(math.sqrt((stats.tvar(winner) + stats.tvar(other)) / 2))
    lsd = stats.t.ppf(0.95, 4) * ranked.noise * math.sqrt(2 / 3)
    assert ranked.resolution == pytest.approx(lsd)
    own = 100 * stats.tstd(winner)
    assert ranked.summary() == (
        f"seed noise {100 * ranked.noise:.2f} points (pooled std, 4 degrees of freedom, the "
        f"winner's own {own:.2f}); differences under {100 * lsd:.2f} points between "
        f"configurations of 3 seeds are not resolved by this study; {int(tied)} of 1 other "
        "configurations tied with the winner (one-sided pooled t-test, 5%)"
    )


def test_unconfirmed_configurations_are_tested_with_the_pooled_noise(kd_home: Path) -> None:
    ranked = confidence.rank(study_with({0.1: [0.86, 0.85, 0.87], 0.2: [0.855], 0.3: [0.70]}))
    near, far = ranked.rows[1], ranked.rows[2]
    assert near.tied and not far.tied
    se = ranked.noise * math.sqrt(1 / 3 + 1)
    assert near.p_value == pytest.approx(stats.t.sf((0.86 - 0.855) / se, 2))


def test_a_single_seed_study_keeps_its_order_and_says_it_is_untested(kd_home: Path) -> None:
    ranked = confidence.rank(study_with({0.1: [0.80], 0.2: [0.85], 0.3: [0.83]}))
    assert order(ranked) == [0.2, 0.3, 0.1]
    assert not ranked.tested and ranked.ties == 0 and ranked.resolution is None
    assert "not tested" in ranked.summary()


def test_the_summary_says_why_the_order_is_untested() -> None:
    """One seed each, repeats that all agree (even one repeat: df 1), or nothing at all: each
    its own sentence, so a reader knows what would make the order tested."""
    single = confidence.rank(study_with({0.1: [0.80], 0.2: [0.85]}, study=in_memory()))
    assert single.df == 0 and single.summary().startswith("single seed per configuration")
    agree = confidence.rank(study_with({0.1: [0.90, 0.90], 0.2: [0.85]}, study=in_memory()))
    assert agree.df == 1 and agree.noise is None and not agree.tested
    assert agree.summary().startswith("every repeated configuration scored the same")
    assert all(r.p_value is None and r.ci95 is None for r in agree.rows)
    assert confidence.assess([]).summary() == "no complete trial yet"


def test_a_configuration_counts_each_seed_once_and_only_its_complete_runs() -> None:
    study = study_with({0.1: [0.90, 0.80], 0.2: [0.85, 0.86]}, study=in_memory())
    again = {CONFIRM_OF: 0, SEED: 1}  # a raced duplicate of seed 1: the first one counts
    study.add_trial(optuna.trial.create_trial(value=0.10, user_attrs=again))
    failed = {CONFIRM_OF: 0, SEED: 2}
    study.add_trial(optuna.trial.create_trial(state=S.FAIL, user_attrs=failed))
    configs = confidence.configurations(study)
    assert [c.trial.params["alpha"] for c in configs] == [0.1, 0.2]
    assert [c.values for c in configs] == [[0.90, 0.80], [0.85, 0.86]]
    assert configs[0].seeds == [None, 1]


def test_rank_within_budgets_keeps_a_trial_at_the_budget_and_drops_an_unmeasured_one() -> None:
    study = in_memory()
    for alpha, value, params in [(0.1, 0.95, 5000), (0.2, 0.90, 1000), (0.3, 0.85, None)]:
        attrs = {} if params is None else {"student_params": params}
        trial = optuna.trial.create_trial(
            params={"alpha": alpha}, distributions={"alpha": D}, value=value, user_attrs=attrs
        )
        study.add_trial(trial)
    assert order(confidence.rank(study, {"student_params": 1000})) == [0.2]
    assert order(confidence.rank(study)) == [0.1, 0.2, 0.3]


def test_two_seeds_confirm_and_one_repeat_is_enough_to_test() -> None:
    ranked = confidence.rank(study_with({0.1: [0.80, 0.82], 0.2: [0.85]}, study=in_memory()))
    assert order(ranked) == [0.1, 0.2]  # confirmed first, though 0.2's one seed is higher
    assert ranked.df == 1 and ranked.tested
    low = optuna.create_study(direction="minimize")
    assert order(confidence.rank(study_with({0.1: [0.30], 0.2: [0.10]}, study=low))) == [0.2, 0.1]


def test_seeds_that_all_agree_leave_the_order_untested(write_spec, kd_home: Path) -> None:
    """Seen in the container check: two confirmed configurations, each the same on both
    seeds (one validation image apart): noise 0 would make the one-image lead "real"."""
    url = f"sqlite:///{kd_home / 'kd.db'}"
    created = studies.create(load(write_spec()), open_storage(url), "synth", False)
    study = study_with({0.1: [1.0, 1.0], 0.2: [0.9931, 0.9931], 0.3: [0.97]}, study=created)
    ranked = confidence.rank(study)
    assert order(ranked) == [0.1, 0.2, 0.3]
    assert not ranked.tested and ranked.ties == 0 and ranked.resolution is None
    assert all(r.p_value is None for r in ranked.rows)
    assert "noise cannot be estimated" in ranked.summary()
    # The table is still one row per configuration (n = 2), with no verdict but "best".
    table = export.table("synth", url)
    assert list(table["n"]) == [2, 2, 1]
    assert list(table["vs_best"]) == ["best", "untested", "untested"]


#: Four search trials that are never pruned (n_startup_trials), then confirmation trials that
#: a 99th-percentile pruner would stop at their first epoch if they were not exempt.
CONFIRMED = {
    "train": {"epochs": 3},
    "search": {
        "n_trials": 4,
        "pruner": {"name": "percentile", "percentile": 99.0, "n_startup_trials": 4},
        "confirm": {"top": 2, "seeds": 2},
    },
}


@pytest.mark.slow
def test_a_study_with_confirm_ends_confirmed_and_every_reader_shows_it(
    cli, write_spec, kd_home: Path
) -> None:
    url = "sqlite:///kd.db"
    assert cli("create-study", str(write_spec(CONFIRMED)), "--storage", url).returncode == 0
    worker = cli("worker", "--study", "synth", "--storage", url, "--devices", "cpu")
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert "confirmation trials queued" in worker.stderr
    trials = optuna.load_study(study_name="synth", storage=open_storage(url)).get_trials()
    search = [t for t in trials if CONFIRM_OF not in t.user_attrs]
    again = [t for t in trials if CONFIRM_OF in t.user_attrs]
    assert len(search) == 4  # the budget counts search trials only
    assert len(again) == 4 and all(t.state == S.COMPLETE for t in again)
    assert all(len(t.intermediate_values) == 3 for t in again)  # never pruned
    top2 = sorted(search, key=lambda t: -t.value)[:2]
    assert {(t.user_attrs[CONFIRM_OF], t.user_attrs[SEED]) for t in again} == {
        (t.number, seed) for t in top2 for seed in (1, 2)
    }
    for t in again:
        assert t.params == trials[t.user_attrs[CONFIRM_OF]].params

    status = json.loads(cli("status", "--study", "synth", "--storage", url, "--json").stdout)[0]
    assert status["finished"] == 4
    assert status["confirm"] == {"runs": 4, "complete": 4, "running": 0, "waiting": 0, "failed": 0}
    best = status["best"]
    assert best["n"] == 3 and best["tested"] and best["number"] in {t.number for t in top2}
    mean = (
        sum(t.value for t in trials if best["number"] in (t.number, t.user_attrs.get(CONFIRM_OF)))
        / 3
    )
    assert best["value"] == pytest.approx(mean)

    table = cli("export-table", "--study", "synth", "--storage", url, "--format", "csv")
    assert table.returncode == 0, table.stderr
    head, *rows = table.stdout.splitlines()
    assert head.startswith("rank,trial,n,val_mean,val_std,val_ci95,test_mean,test_std,vs_best")
    assert [r.split(",")[2] for r in rows] == ["3", "3", "1", "1"]
    assert rows[0].split(",")[8] == "best"
    assert "seed noise" in table.stderr

    result = cli("best", "--study", "synth", "--storage", url)
    assert result.returncode == 0, result.stderr
    assert "over 3 seeds val" in result.stdout and "differences under" in result.stdout
    # The winner's own checkpoint deleted, as search.keep_checkpoints does to a trial whose one
    # seed ranked low before confirmation runs lifted its configuration: best still answers,
    # with the test accuracy that trial measured on it.
    winner = trials[best["number"]]
    shutil.rmtree(Path(winner.user_attrs["checkpoint"]).parent)
    pruned = cli("best", "--study", "synth", "--storage", url, "--json")
    assert pruned.returncode == 0, pruned.stderr
    answer = json.loads(pruned.stdout)
    assert answer["mode"] == "recorded" and answer["trial"] == winner.number
    assert answer["test_accuracies"] == [winner.user_attrs["test_accuracy"]]

    report = cli("report", "--study", "synth", "--storage", url, "--no-baseline", "-o", "rep")
    assert report.returncode == 0, report.stderr
    md = (kd_home / "rep" / "report.md").read_text()
    assert "Confidence: seed noise" in md and "vs_best" in md
    assert (kd_home / "rep" / "confidence.png").is_file()


@pytest.mark.slow
def test_confirm_on_demand_mid_search_runs_beside_the_budget(cli, write_spec, kd_home) -> None:
    """Confirmation queued while the search runs: the workers run it first, and the search
    still gets all of its trials; asking again queues only the missing seeds."""
    url = "sqlite:///kd.db"
    spec = write_spec(
        {"train": {"epochs": 2}, "search": {"n_trials": 3, "pruner": {"name": "none"}}}
    )
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    assert cli("worker", "--study", "synth", "--storage", url, "--n-trials", "2").returncode == 0
    first = cli("confirm", "--study", "synth", "--storage", url, "--top", "1", "--seeds", "1")
    assert first.returncode == 0 and "queued 1 confirmation trials" in first.stdout
    more = cli("confirm", "--study", "synth", "--storage", url, "--top", "1", "--seeds", "2")
    assert "queued 1 confirmation trials" in more.stdout  # seed 1 is already queued
    again = cli("confirm", "--study", "synth", "--storage", url, "--top", "1", "--seeds", "2")
    assert "every asked confirmation run is queued, running or done" in again.stdout
    assert cli("worker", "--study", "synth", "--storage", url).returncode == 0
    study = optuna.load_study(study_name="synth", storage=open_storage(url))
    trials = study.get_trials()
    assert sum(CONFIRM_OF not in t.user_attrs for t in trials) == 3  # the whole budget
    assert confirm.progress(study)["complete"] == 2


@pytest.mark.slow
def test_a_sigkilled_confirmation_trial_is_retried(cli, write_spec, kd_home: Path) -> None:
    """The worker dies in a confirmation trial; the next worker fails it by its heartbeat,
    retries it with the same seed from its epoch checkpoint, and leaves nothing RUNNING."""
    url = "sqlite:///kd.db"
    slow = {"n_train": 1200, "n_test": 100, "num_classes": 4, "noise": 150.0}
    spec = write_spec(
        {
            "dataset": {"options": slow},
            "train": {"epochs": 6},
            "search": {
                "n_trials": 1,
                "pruner": {"name": "none"},
                "confirm": {"top": 1, "seeds": 1},
            },
        }
    )
    assert cli("create-study", str(spec), "--storage", url).returncode == 0
    worker = start_worker(kd_home, "synth", url)
    study = optuna.load_study(study_name="synth", storage=open_storage(url))

    def confirming() -> list[optuna.trial.FrozenTrial]:
        return [
            t
            for t in study.get_trials()
            if CONFIRM_OF in t.user_attrs
            and t.state == S.RUNNING
            and len(t.intermediate_values) >= 2
        ]

    from test_crash import wait_for

    killed = wait_for(confirming, 300, "a confirmation trial at epoch 2", [worker])[0]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again = cli("worker", "--study", "synth", "--storage", url, "--devices", "cpu")
    assert again.returncode == 0, again.stderr[-3000:]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed.number].state == S.FAIL
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE
    assert retry[0].user_attrs[SEED] == killed.user_attrs[SEED]
    assert retry[0].user_attrs[CONFIRM_OF] == killed.user_attrs[CONFIRM_OF]
    assert retry[0].user_attrs["resumed_from_epoch"] >= 2
    assert not [t for t in trials.values() if t.state == S.RUNNING]
    assert confirm.progress(study) == {
        "runs": 1,
        "complete": 1,
        "running": 0,
        "waiting": 0,
        "failed": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--top", "0"), "--top 0 must be at least 1"),
        (("--seeds", "0"), "--seeds 0 must be at least 1"),
        ((), "has no complete trial to confirm"),
    ],
)
def test_confirm_refuses_bad_input_in_one_line(cli, write_spec, kd_home, args, message) -> None:
    url = "sqlite:///kd.db"
    assert cli("create-study", str(write_spec()), "--storage", url).returncode == 0
    before = (kd_home / "kd.db").read_bytes()
    out = cli("confirm", "--study", "synth", "--storage", url, *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
    assert (kd_home / "kd.db").read_bytes() == before


def test_a_confirm_spec_with_zero_seeds_is_one_line(cli, write_spec) -> None:
    out = cli("validate", str(write_spec({"search": {"confirm": {"top": 2, "seeds": 0}}})))
    assert out.returncode == 2 and "search.confirm.seeds: 0 must be at least 1" in out.stderr


def test_a_multi_objective_study_confirms_its_most_accurate_front_members(kd_home: Path) -> None:
    study = optuna.create_study(storage="sqlite:///multi.db", directions=["maximize", "minimize"])
    points = {0.1: (0.90, 5000), 0.2: (0.85, 1000), 0.3: (0.84, 3000), 0.4: (0.80, 500)}
    for alpha, (acc, params) in points.items():
        trial = optuna.trial.create_trial(
            params={"alpha": alpha},
            distributions={"alpha": D},
            values=[acc, params],
            user_attrs={"student_params": params},
        )
        study.add_trial(trial)
    # 0.3 is dominated by 0.2 (less accurate and larger): never confirmed, however many asked.
    chosen = confirm.candidates(study, 3)
    assert [t.params["alpha"] for t in chosen] == [0.1, 0.2, 0.4]
    within = confirm.candidates(study, 3, {"student_params": 2000})
    assert [t.params["alpha"] for t in within] == [0.2, 0.4]
