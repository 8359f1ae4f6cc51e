"""``search.baseline``: the student searched alone as a sibling study, with the same budget,
and the gain of distilling stated with its interval (issue 36).

The search runs on real digits with a real digits teacher and two real worker processes; the
spec checks and the arms' shared life (extend, delete) are in-process and train nothing.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState as S
from optuna_dashboard._note import get_note

from kdsearch import api
from kdsearch.errors import KDSearchError
from kdsearch.search import ranking

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "studies" / "digits_quick.yaml"


def _digits_spec(home: Path) -> Path:
    spec = home / "d.yaml"
    data = {
        "base": str(DIGITS),
        "name": "d",
        "teacher": {"checkpoint": "models/d-teacher.pt"},
        "teacher_train": {"epochs": 2},
        "train": {"epochs": 3},
        "search": {
            "n_trials": 4,
            "baseline": True,
            "confirm": {"top": 2, "seeds": 2},
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
        },
    }
    spec.write_text(yaml.safe_dump(data))
    return spec


def _arm_mean(study: optuna.Study, number: int) -> float:
    """Mean validation accuracy of trial ``number``'s configuration, read from the storage."""
    runs = [
        t.values[0]
        for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,))
        if t.number == number or t.user_attrs.get(ranking.CONFIRM_OF) == number
    ]
    assert len(runs) == 3, runs  # the search trial and its two confirmation seeds
    return statistics.fmean(runs)


@pytest.mark.slow
def test_both_arms_searched_alike_and_the_gain_stated(kd_home, monkeypatch):
    monkeypatch.chdir(kd_home)
    spec = _digits_spec(kd_home)
    url = f"sqlite:///{kd_home}/kd.db"
    api.train_teacher(str(spec))
    api.create_study(str(spec), url)
    assert api.run_workers("d", url, n_workers=2, devices="cpu") == 0

    distilled = optuna.load_study(study_name="d", storage=url)
    baseline = optuna.load_study(study_name="d-baseline", storage=url)
    for study in (distilled, baseline):
        trials = study.get_trials(deepcopy=False)
        search = [t for t in trials if ranking.claims_budget(t) and t.state == S.COMPLETE]
        confirm = [t for t in trials if ranking.is_confirmation(t) and t.state == S.COMPLETE]
        assert (len(search), len(confirm)) == (4, 4), [(t.number, t.state) for t in trials]

    stored = baseline.user_attrs["kdsearch_spec"]
    assert stored["teacher"] is None and stored["distill"]["alpha"] == 0.0
    assert (
        stored["search"]["n_trials"] == distilled.user_attrs["kdsearch_spec"]["search"]["n_trials"]
    )
    for t in baseline.get_trials(deepcopy=False, states=(S.COMPLETE,)):
        assert set(t.params) <= {"dropout", "lr"}, t.params  # nothing to distill, nothing searched
        assert set(t.user_attrs["loss_terms"]) == {"ce"}, t.user_attrs["loss_terms"]
    assert all(
        "kd" in t.user_attrs["loss_terms"]
        for t in distilled.get_trials(deepcopy=False, states=(S.COMPLETE,))
        if t.params.get("alpha", 1) > 0
    )

    table = api.trials_table("d", url)
    written = json.loads(api.table_text(table, "json"))
    gain = written["gain"]
    assert written["rows"] and gain["distilled"]["study"] == "d"
    assert gain["baseline"]["study"] == "d-baseline"
    d_mean = _arm_mean(distilled, gain["distilled"]["trial"])
    b_mean = _arm_mean(baseline, gain["baseline"]["trial"])
    assert gain["val_gain"] == pytest.approx(d_mean - b_mean)
    assert gain["val_ci95"] > 0 and gain["resolved"] == (abs(gain["val_gain"]) > gain["val_ci95"])

    (row,) = api.study_status(url, "d")
    assert row["gain"] == gain
    points = f"{100 * gain['val_gain']:+.2f} val points ± {100 * gain['val_ci95']:.2f}"
    assert f"gain over d-baseline: {points}" in api.status_text(row)

    report = Path(api.write_report("d", url, out=kd_home / "report")).read_text()
    section = report.split("## Gain over the tuned baseline", 1)[1].split("## ", 1)[0]
    assert f"| validation accuracy | {100 * gain['val_gain']:+.2f} |" in section
    assert f"± {100 * gain['val_ci95']:.2f}" in section
    assert "tuned baseline (d-baseline trial" in report
    assert gain["summary"] in get_note(distilled)  # the dashboard's note, after the workers


def test_the_baseline_arm_is_made_with_the_study_and_lives_with_it(kd_home, write_spec):
    url = f"sqlite:///{kd_home}/kd.db"
    spec = write_spec({"search": {"baseline": True, "confirm": {"top": 2, "seeds": 2}}})
    api.create_study(str(spec), url)
    made = {s.study_name: s for s in optuna.get_all_study_summaries(url)}
    assert set(made) == {"synth", "synth-baseline"}
    arm = optuna.load_study(study_name="synth-baseline", storage=url)
    assert arm.user_attrs["kdsearch_baseline_of"] == "synth"
    assert set(arm.user_attrs["kdsearch_spec"]["search"]["space"]) == {"lr"}

    with pytest.raises(KDSearchError, match="already exists"):
        api.create_study(str(spec), url)
    api.create_study(str(spec), url, load_if_exists=True)  # both arms reopened, as they were
    assert len(optuna.get_all_study_summaries(url)) == 2

    with pytest.raises(KDSearchError, match="baseline arm of 'synth': extend synth"):
        api.extend_study("synth-baseline", 20, url)
    assert api.extend_study("synth", 20, url) == 8
    for name in ("synth", "synth-baseline"):
        stored = optuna.load_study(study_name=name, storage=url).user_attrs["kdsearch_spec"]
        assert stored["search"]["n_trials"] == 20

    with pytest.raises(KDSearchError, match="baseline arm of 'synth': delete synth"):
        api.delete_study("synth-baseline", url)
    asked: list[str] = []
    api.delete_study("synth", url, ask=lambda q: asked.append(q) or True)
    assert "and its baseline arm synth-baseline" in asked[0]
    assert optuna.get_all_study_summaries(url) == []


def test_a_baseline_that_cannot_compare_is_refused(kd_home, write_spec):
    several = {"objectives": ["val_accuracy", "student_params"], "pruner": {"name": "none"}}
    spec = write_spec({"search": {"baseline": True, **several}})
    with pytest.raises(KDSearchError, match=r"^search\.baseline: .* several objectives do not"):
        api.validate(str(spec))
    data = yaml.safe_load(write_spec({"search": {"baseline": True}}).read_text())
    data["search"]["space"] = {"alpha": {"type": "float", "low": 0, "high": 1}}
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(KDSearchError, match=r"^search\.baseline: .* nothing to search \(alpha\)"):
        api.validate(str(spec))


def test_a_baseline_without_a_teacher_is_refused(kd_home, write_spec):
    spec = write_spec({"teacher": None, "search": {"baseline": True}})
    with pytest.raises(KDSearchError, match="no teacher, so every trial already is the baseline"):
        api.validate(str(spec))
