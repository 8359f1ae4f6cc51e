"""Study identity: two studies of one name never read or overwrite each other's files.

Every study gets an id at creation and keeps its files under ``models/studies/<name>-<id>``.
Two studies named alike, on SQLite and on PostgreSQL, run at once; the SQLite one is killed
mid-trial, deleted and created again, and its successor runs: nobody resumes the killed
trial's state, and every trial's checkpoint still holds that trial's model.
"""

from __future__ import annotations

import hashlib
import signal

import optuna
import pytest
from conftest import start_worker
from test_crash import SLOW_TRIALS, running_after, trials, wait_for

from kdsearch.config.spec import load
from kdsearch.search import study as studies
from kdsearch.search.objective import Objective
from kdsearch.search.storage import open_storage
from kdsearch.training.experiment import Context, fit_student
from kdsearch.training.model_files import load_checkpoint

S = optuna.trial.TrialState
SQLITE = "sqlite:///kd.db"


def study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="synth", storage=open_storage(url))


def assert_own_files(url: str) -> None:
    """Each complete trial's checkpoint is in its study's folder and holds that trial."""
    s = study(url)
    done = [t for t in s.get_trials() if t.state == S.COMPLETE]
    assert done
    for t in done:
        path = t.user_attrs["checkpoint"]
        assert f"models/studies/synth-{studies.study_id(s)}/trial-" in path, path
        assert load_checkpoint(path)["metrics"]["val_accuracy"] == t.value, path
        assert "resumed_from_epoch" not in t.user_attrs, "resumed another study's state"


@pytest.mark.slow
@pytest.mark.postgres
def test_studies_of_one_name_keep_their_own_files(cli, write_spec, kd_home, pg_url):
    spec = write_spec({**SLOW_TRIALS, "search": {**SLOW_TRIALS["search"], "n_trials": 2}})
    for url in (SQLITE, pg_url):
        assert cli("create-study", str(spec), "--storage", url).returncode == 0
    first = study(SQLITE)
    folders = {studies.folder(first), studies.folder(study(pg_url))}
    assert len(folders) == 2 and all(f.name.startswith("synth-") for f in folders)

    # At once: both studies train; the SQLite one's worker is killed mid-trial.
    victim, other = (start_worker(kd_home, "synth", url) for url in (SQLITE, pg_url))
    killed = wait_for(lambda: running_after(SQLITE, 2), 300, "epoch 2", [victim, other])[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = studies.folder(first) / f"trial-{killed.number:05d}" / "last.pt"
    digest = hashlib.sha256(state.read_bytes()).hexdigest()
    out, _ = other.communicate(timeout=600)
    assert other.returncode == 0, out[-3000:]

    # One after the other: the killed study is deleted and created again under its name.
    optuna.delete_study(study_name="synth", storage=open_storage(SQLITE))
    assert cli("create-study", str(spec), "--storage", SQLITE).returncode == 0
    again = cli("worker", "--study", "synth", "--storage", SQLITE, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert studies.folder(study(SQLITE)) not in folders

    assert hashlib.sha256(state.read_bytes()).hexdigest() == digest, "killed state touched"
    for url in (SQLITE, pg_url):
        assert_own_files(url)
        assert not [t for t in trials(url) if t.state == S.RUNNING]


def test_a_trial_resumes_only_state_written_for_it(write_spec, kd_home, caplog, one_torch_thread):
    """In process: a resume state in the trial's folder is resumed only if it was written for
    this study and these parameters; otherwise the trial starts fresh with a warning."""
    spec = load(write_spec({"train": {"epochs": 2}}))
    study = studies.create(spec, open_storage(f"sqlite:///{kd_home / 'kd.db'}"), "synth", False)
    ctx = Context.load(spec, "cpu")
    params = {"temperature": 2.0, "alpha": 0.5, "lr": 0.003}
    one_epoch = spec.with_overrides({"train.epochs": 1, **params})
    for number, (change, resumes) in enumerate(
        [
            ({"study_id": "0123abcd"}, False),
            ({"params": {**params, "lr": 0.001}}, False),
            ({}, True),
        ]
    ):
        mine = {"study_id": studies.study_id(study), "trial": number, "params": params}
        tag = {**mine, **change}
        workdir = studies.folder(study) / f"trial-{number:05d}"
        fit_student(ctx, one_epoch, kd_home / "x.pt", workdir=workdir, resume_tag=tag)
        caplog.clear()
        study.enqueue_trial(params)
        study.optimize(Objective(ctx, study), n_trials=1)
        trial = study.get_trials()[number]
        assert trial.state == S.COMPLETE and trial.params == params
        assert trial.user_attrs.get("resumed_from_epoch") == (1 if resumes else None), tag
        assert ("starting from epoch 0" in caplog.text) != resumes, caplog.text
