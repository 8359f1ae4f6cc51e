"""Fast, in-process guards of the science: what a search trains on, how it ranks, what it keeps.

Each test here was written against a hand-made mutation of the code (distillation switched
off, logits read by batch position, trials ranked by test accuracy, ``best.pt`` rewritten
every epoch, the teacher-cache key ignoring the images, checkpoint pruning reversed, optimizer
and schedule settings ignored) and fails under it.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import optuna
import pytest
import torch
from conftest import SYNTHETIC_SPEC

from kdsearch import nets
from kdsearch.config.spec import from_dict, merge
from kdsearch.data import datasets
from kdsearch.data.augment import PadCrop, for_dataset
from kdsearch.data.datasets import Images
from kdsearch.results import best, export
from kdsearch.search import storage, study, worker
from kdsearch.search.objective import suggest
from kdsearch.training.experiment import Context, fit_student
from kdsearch.training.loop import DeviceData, make_optimizer, make_schedule
from kdsearch.training.model_files import load_checkpoint
from kdsearch.training.teacher import (
    CachedTeacher,
    OnlineTeacher,
    TeacherNet,
    cache_path,
    compute_logits,
    slot_views,
)

S = optuna.trial.TrialState

#: A study without a teacher: five 3-epoch trials on synthetic data, two checkpoints kept.
FIXTURE_SPEC = merge(
    SYNTHETIC_SPEC,
    {
        "name": "guarded",
        "teacher": None,
        "dataset": {"options": {"n_train": 256, "n_test": 100, "noise": 400.0}},
        "train": {"epochs": 4},
        "distill": {"alpha": 0.0},
        "search": {
            "n_trials": 5,
            "keep_checkpoints": 2,
            "pruner": {"name": "none"},
            "space": {
                "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                "train.optimizer.weight_decay": {"type": "float", "low": 0.0, "high": 0.01},
            },
        },
    },
)


POINTS = [(0.1, 0.0), (0.03, 0.005), (0.01, 0.0), (0.003, 0.01), (0.001, 0.002)]


def spec_of(**over: object):
    return from_dict(merge(SYNTHETIC_SPEC, dict(over)))


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """A finished five-trial study run by the real worker loop in this process, on SQLite."""
    home = tmp_path_factory.mktemp("guarded")
    url = f"sqlite:///{home / 'kd.db'}"
    old_home = os.environ.get("KDSEARCH_HOME")
    os.environ["KDSEARCH_HOME"] = str(home)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        spec = from_dict(FIXTURE_SPEC)
        created = study.create(spec, storage.open_storage(url), "guarded", False)
        for lr, wd in POINTS:  # fixed points: the worker's sampler seed varies by process
            created.enqueue_trial({"lr": lr, "train.optimizer.weight_decay": wd})
        study.create(spec, storage.open_storage(url), "empty", False)
        torch.set_num_threads(1)
        assert worker.run("guarded", 0, "cpu", None, None, url) == 0
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if old_home is None:
            os.environ.pop("KDSEARCH_HOME", None)
        else:
            os.environ["KDSEARCH_HOME"] = old_home
    loaded = optuna.load_study(study_name="guarded", storage=storage.open_storage(url))
    return url, loaded


def complete(st: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return st.get_trials(states=(S.COMPLETE,))


def exported(url: str, study: str = "guarded", **options: object) -> list[dict]:
    """What ``export-table --format json`` prints for these options."""
    compare, pivot = options.pop("compare", None), options.pop("pivot", None)
    if compare:
        df = export.compare_table(compare, url)
    else:
        cells = tuple(pivot.split(",")) if pivot else None
        df = export.table(study, url, pivot=cells, **options)
    return json.loads(export.render(df, "json")) if len(df) else []


# --- ranking, best.pt, pruning, export, best ------------------------------------------------


def test_value_is_the_best_reported_validation_accuracy(finished):
    """A trial's value is the best of its per-epoch validation accuracies (not test)."""
    _, st = finished
    done = complete(st)
    assert len(done) == 5
    for t in done:
        reported = list(t.intermediate_values.values())
        assert len(reported) == 4
        assert t.value == max(reported)
        assert t.user_attrs["best_epoch"] == reported.index(max(reported)) + 1
    # Validation and test differ on this data, so a ranking by test would show.
    assert any(t.value != t.user_attrs["test_accuracy"] for t in done)


def test_best_checkpoint_holds_the_best_epoch(finished):
    """``best.pt`` is written at the best epoch, not every epoch."""
    _, st = finished
    kept = [t for t in complete(st) if Path(t.user_attrs["checkpoint"]).is_file()]
    assert kept
    for t in kept:
        metrics = load_checkpoint(Path(t.user_attrs["checkpoint"]))["metrics"]
        assert metrics["epoch"] == t.user_attrs["best_epoch"]
        assert metrics["val_accuracy"] == t.value
        assert metrics["test_accuracy"] == t.user_attrs["test_accuracy"]


def test_best_checkpoint_is_not_the_last_epoch(tmp_path, one_torch_thread):
    """With validation labels shuffled, accuracy wanders; ``best.pt`` still holds its peak."""
    spec = spec_of(teacher=None, distill={"alpha": 0.0}, train={"epochs": 5})
    ctx = _context(spec, None)
    gen = torch.Generator().manual_seed(0)
    val = ctx.data.val
    ctx.data.val = Images(val.x, val.y[torch.randperm(len(val.y), generator=gen)])
    outcome = fit_student(ctx, spec, tmp_path / "best.pt", progress=False)
    curve = [e.val_accuracy for e in outcome.history.epochs]
    best_epoch = curve.index(max(curve))
    assert best_epoch < len(curve) - 1, curve  # the case this test is about
    metrics = load_checkpoint(tmp_path / "best.pt")["metrics"]
    assert metrics["epoch"] == best_epoch + 1 and metrics["val_accuracy"] == max(curve)


def test_pruning_keeps_the_best_checkpoints(finished):
    """After more trials than keep_checkpoints, exactly the best trials keep their files."""
    _, st = finished
    ranked = sorted(complete(st), key=lambda t: t.value, reverse=True)
    exists = [Path(t.user_attrs["checkpoint"]).is_file() for t in ranked]
    assert exists[:2] == [True, True] and not any(exists[2:]), exists
    assert st.best_trial.number == ranked[0].number


def test_best_command_tests_the_best_trial(finished):
    url, st = finished
    result = best.evaluate_best("guarded", url, device="cpu")
    top = st.best_trial
    assert result["trial"] == top.number and result["val_accuracy"] == top.value
    assert result["test_accuracies"] == [pytest.approx(top.user_attrs["test_accuracy"])]


def test_export_is_ranked_by_validation(finished):
    url, st = finished
    rows = exported(url)
    assert [r["number"] for r in rows][:1] == [st.best_trial.number]
    values = [r["val_accuracy"] for r in rows if r["state"] == "COMPLETE"]
    assert values == sorted(values, reverse=True)


def test_export_state_filters(finished):
    url, st = finished
    rows = exported(url, state="complete")
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in complete(st))
    assert exported(url, state="pruned") == []


def test_export_pivot_is_the_best_value_per_cell(finished):
    url, st = finished
    rows = exported(url, pivot="lr,train.optimizer.weight_decay")
    cells = [v for r in rows for k, v in r.items() if k != "lr" and v is not None]
    assert len(rows) >= 2 and max(cells) == pytest.approx(st.best_value)
    assert len(cells) == len(complete(st))  # five distinct points, one cell each


def test_export_compare_one_row_per_study(finished):
    url, st = finished
    rows = exported(url, compare=["guarded", "empty"])
    assert [r["study"] for r in rows] == ["guarded", "empty"]
    assert rows[0]["trials"] == 5 and rows[0]["val_accuracy"] == pytest.approx(st.best_value)
    assert rows[0]["test_accuracy"] == pytest.approx(st.best_trial.user_attrs["test_accuracy"])
    assert rows[0]["teacher"] == "-" and rows[1]["trials"] == 0
    assert rows[1]["val_accuracy"] is None  # NaN in JSON


def made_up_study() -> optuna.Study:
    """In memory: two trials per (lr, wd) cell, test accuracy ranking opposite to validation."""
    st = optuna.create_study(direction="maximize")
    dists = {
        "lr": optuna.distributions.CategoricalDistribution([0.01, 0.1]),
        "wd": optuna.distributions.CategoricalDistribution([0.0, 0.01]),
    }
    for i, (lr, wd) in enumerate([(a, b) for a in (0.01, 0.1) for b in (0.0, 0.01)] * 2):
        value = 0.5 + 0.05 * i
        st.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "wd": wd},
                distributions=dists,
                value=value,
                intermediate_values={0: value - 0.1, 1: value},
                user_attrs={"test_accuracy": 1.0 - value},
            )
        )
    st.add_trial(
        optuna.trial.create_trial(
            params={"lr": 0.1, "wd": 0.0},
            distributions=dists,
            state=S.PRUNED,
            intermediate_values={0: 0.99},
        )
    )
    return st


def test_trials_table_ranks_by_validation_not_test():
    df = export.trials_frame(made_up_study())
    assert df["number"].tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 8]
    assert df["test_accuracy"].iloc[0] == pytest.approx(0.15)


def test_pivot_takes_the_best_trial_of_each_cell():
    table = export.pivot_table(export.trials_frame(made_up_study()), "lr", "wd")
    # Trials 4..7 are the second, better visit of each cell; the pruned trial is no value.
    assert table.loc[0.01, 0.0] == pytest.approx(0.70) and table.loc[0.1, 0.01] == pytest.approx(
        0.85
    )


# --- distillation: cache versus online teacher ---------------------------------------------


def _context(spec, teacher) -> Context:
    splits = datasets.load(spec.dataset)
    data = DeviceData.from_splits(splits, torch.device("cpu"), for_dataset(spec.dataset))
    return Context(spec, torch.device("cpu"), data, teacher, splits.num_classes)


class _Fp16(torch.nn.Module):
    """The teacher's logits rounded to fp16, as the cache stores them."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).half().float()


def _student_weights(ctx: Context, spec, out: Path) -> torch.Tensor:
    fit_student(ctx, spec, out, progress=False)
    state = load_checkpoint(out)["state_dict"]
    return torch.cat([v.flatten().float() for v in state.values()])


def test_all_views_cache_trains_like_the_online_teacher(tmp_path, one_torch_thread):
    """Two epochs through the exact cache give the online teacher's student; alpha matters."""
    spec = spec_of(
        train={"epochs": 2},
        distill={"alpha": 0.9, "teacher_cache": "all_views"},
        dataset={"options": {"n_train": 96, "n_test": 32}},
    )
    torch.manual_seed(1)
    net = nets.create("cnn5", num_classes=4, num_channels=8)
    ctx = _context(spec, None)
    # Like a loaded teacher: uint8 views in, normalized with its own (here the data's) constants.
    mean, std = (tuple(v.flatten().tolist()) for v in (ctx.data.mean, ctx.data.std))
    teacher = TeacherNet(net, mean, std).eval()
    table = compute_logits(teacher, ctx.data, slot_views(ctx.data, None, 0))
    ctx.teacher = CachedTeacher(table, slot_views(ctx.data, None, 0))
    cached = _student_weights(ctx, spec, tmp_path / "cached.pt")
    ctx.teacher = OnlineTeacher(_Fp16(teacher), ctx.data.augment)
    online = _student_weights(ctx, spec, tmp_path / "online.pt")
    baseline = _student_weights(ctx, spec.with_overrides({"alpha": 0.0}), tmp_path / "baseline.pt")
    assert torch.allclose(cached, online, atol=1e-5), (cached - online).abs().max()
    assert (baseline - online).abs().max() > 1e-2


# --- the teacher cache key follows the training images -------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"val_fraction": 0.3}, {"subset_fraction": 0.5}],
    ids=lambda c: next(iter(c)),
)
def test_cache_path_changes_with_the_training_images(change, kd_home):
    teacher = nets.create("cnn5", num_classes=4, num_channels=8)

    def path(dataset: dict) -> Path:
        spec = spec_of(dataset={**SYNTHETIC_SPEC["dataset"], **dataset})
        data = DeviceData.from_splits(
            datasets.load(spec.dataset), torch.device("cpu"), PadCrop(True)
        )
        return cache_path(teacher, data, spec)

    assert path({}) == path({})
    assert path(change) != path({})


# --- optimizer, schedule, sampler, augmentation settings are used --------------------------


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizer_settings_are_used(name):
    spec = spec_of(
        train={"optimizer": {"name": name, "lr": 0.05, "momentum": 0.7, "weight_decay": 0.003}}
    )
    group = make_optimizer(torch.nn.Linear(2, 2).parameters(), spec).param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.003
    if name == "sgd":
        assert group["momentum"] == 0.7


def test_cosine_schedule_spans_the_epochs():
    spec = spec_of(train={"epochs": 10, "schedule": {"name": "cosine"}})
    opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), spec)
    sched = make_schedule(opt, spec, 1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lr0 = spec.train.optimizer.lr
    assert lrs[5] == pytest.approx(lr0 / 2)  # half way down at half the epochs
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_sampler_uses_log_scale():
    space = spec_of(
        search={
            "space": {
                "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "train.batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
                "alpha": {"type": "float", "low": 0.1, "high": 0.9},
            }
        }
    ).search.space
    trial = optuna.create_study().ask()
    suggest(trial, space)
    dists = trial.distributions
    assert dists["lr"].log and dists["train.batch_size"].log and not dists["alpha"].log
    # And the draws follow it: log-uniform puts about half below the geometric mid-point.
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lrs = [suggest(st.ask(), {"lr": space["lr"]})["lr"] for _ in range(400)]
    below = sum(v < math.sqrt(1e-4 * 1e-1) for v in lrs) / len(lrs)
    assert 0.4 < below < 0.6


def test_augment_false_trains_on_the_plain_images():
    spec = spec_of(teacher=None, dataset={"augment": False}, distill={"alpha": 0.0})
    ctx = Context.load(spec, "cpu", with_teacher=False)
    assert ctx.data.augment.all_views().tolist() == [views_identity()]
    augmented = Context.load(spec_of(teacher=None), "cpu", with_teacher=False).data.augment
    assert len(augmented.all_views()) > 1


def views_identity() -> int:
    from kdsearch.data import views

    return int(views.view_set(False)[0])


# --- reporting and retry glue ---------------------------------------------------------------


def test_report_names_the_best_trial(finished, tmp_path):
    from kdsearch.results.report import write_report

    _, st = finished
    written = write_report(st, from_dict(FIXTURE_SPEC), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert tmp_path / "report.md" in written
    assert f"trial {st.best_trial.number}" in text and f"{st.best_value:.4f}" in text


def test_a_stopped_trial_is_requeued_with_its_parameters(tmp_path):
    """What a worker does on SIGTERM/SIGINT mid-trial: FAIL the trial, queue the same params."""
    from types import SimpleNamespace

    from kdsearch.training.loop import StopRequested

    st = optuna.create_study(storage=storage.open_storage(f"sqlite:///{tmp_path / 'kd.db'}"))
    trial = st.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    worker._requeue(st, SimpleNamespace(current=trial), 2, StopRequested("stop"))
    failed, retry = st.get_trials()
    assert failed.state == S.FAIL and retry.state == S.WAITING
    assert retry.params == failed.params and retry.system_attrs["failed_trial"] == 0
