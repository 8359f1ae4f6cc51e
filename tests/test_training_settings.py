"""What a trial trains on: the settings a spec names are the ones used.

The cached teacher trains the same student as the online one; the cache key follows the
training images; optimizer, schedule, sampler scales and augmentation come from the spec; the
best checkpoint is the best epoch, not the last. Each test was written against a hand-made
mutation (distillation switched off, logits read by batch position, the cache key ignoring the
images, optimizer and schedule settings ignored) and fails under it.
"""

from __future__ import annotations

import math
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


def spec_of(**over: object):
    return from_dict(merge(SYNTHETIC_SPEC, dict(over)))


# --- the best checkpoint ------------------------------------------------------------------


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
