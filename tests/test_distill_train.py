"""Each distillation method in the one training loop, its spec errors, and the student's cost.

Real training on the synthetic data set with a real (untrained, fixed) cnn5 teacher, either
cached (logit methods) or online (fitnets, which reads features through forward hooks).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from conftest import SYNTHETIC_SPEC
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdsearch import nets
from kdsearch.config.spec import Spec, from_dict, merge
from kdsearch.data import datasets
from kdsearch.data.augment import for_dataset
from kdsearch.errors import KDSearchError
from kdsearch.search.objective import Objective
from kdsearch.training.experiment import Context
from kdsearch.training.loop import DeviceData, Run, fit
from kdsearch.training.teacher import (
    CachedTeacher,
    OnlineTeacher,
    TeacherNet,
    compute_logits,
    slot_views,
)

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "dataset": {"options": {"n_train": 160, "n_test": 40}},
    "train": {"epochs": 2, "batch_size": 32},
    "distill": {"alpha": 0.8, "teacher_cache": "none"},
    "search": {"space": {}},
}
FITNETS = {"student_layer": "conv3", "teacher_layer": "conv3"}
TERMS = {
    "hinton": {"ce", "kd"},
    "dkd": {"ce", "tckd", "nckd"},
    "dist": {"ce", "inter", "intra"},
    "fitnets": {"ce", "kd", "hint"},
}


def _spec(overrides: dict[str, Any] | None = None) -> Spec:
    return from_dict(merge(merge(SYNTHETIC_SPEC, FAST), overrides or {}))


def _run(
    spec: Spec,
    online: bool,
    workdir: Path | None = None,
    epochs: int | None = None,
    tensorboard: Path | None = None,
):
    """Train the spec's student against a fixed random cnn5 teacher; returns the history."""
    if epochs is not None:
        spec = spec.with_overrides({"train.epochs": epochs})
    d = DeviceData.from_splits(datasets.load(spec.dataset), CPU, for_dataset(spec.dataset))
    torch.manual_seed(123)
    net = nets.create("cnn5", num_classes=d.num_classes, num_channels=8)
    # Like a loaded teacher: uint8 in, normalized with its own (here the data's) constants.
    teacher_net = TeacherNet(net, tuple(d.mean.flatten().tolist()), tuple(d.std.flatten().tolist()))
    teacher_net.eval()
    if online:
        teacher = OnlineTeacher(teacher_net, d.augment)
    else:
        slots = slot_views(d, 4, 0)
        teacher = CachedTeacher(compute_logits(teacher_net, d, slots), slots)
    torch.manual_seed(0)
    student = nets.create("cnn5", num_classes=d.num_classes, num_channels=4)
    run = Run(spec, student, d, teacher, workdir, progress=False, tensorboard_dir=tensorboard)
    history = fit(run)
    return history, student


@pytest.mark.parametrize("method", ["hinton", "dkd", "dist", "fitnets"])
def test_each_method_trains_and_logs_its_terms(method: str, tmp_path: Path) -> None:
    kwargs = {"fitnets": FITNETS, "dkd": {"warmup": 2}}.get(method, {})
    spec = _spec({"distill": {"loss": method, "kwargs": kwargs}})
    history, _ = _run(spec, online=method == "fitnets", tensorboard=tmp_path)
    assert len(history.epochs) == 2
    for e in history.epochs:
        assert set(e.terms) == TERMS[method]
        assert all(v == v and v != 0 for v in e.terms.values()), e.terms  # finite, non-zero
        assert sum(e.terms.values()) == pytest.approx(e.train_loss, rel=1e-4)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {f"train/{name}" for name in TERMS[method]} <= set(events.Tags()["scalars"])


def test_cached_and_online_teachers_give_the_same_dkd_terms() -> None:
    """The teacher cache path serves the logit methods: same views, same terms."""
    spec = _spec({"distill": {"loss": "dkd", "teacher_cache": "all_views"}})
    spec = spec.with_overrides({"dataset.augment": False})
    cached, _ = _run(spec, online=False)
    online, _ = _run(spec, online=True)
    for a, b in zip(cached.epochs, online.epochs, strict=True):
        assert a.terms == pytest.approx(b.terms, rel=1e-2)


def test_the_loop_passes_the_epoch_for_dkd_warmup() -> None:
    """With a frozen student (lr ~ 0, one full batch, no augmentation) the DKD terms of epoch 2
    are exactly twice epoch 1's: warm-up weights 1/2 then 2/2."""
    spec = _spec(
        {
            "distill": {"loss": "dkd", "kwargs": {"warmup": 2}},
            "train": {"batch_size": 128, "optimizer": {"lr": 1e-12}},
            "dataset": {"augment": False},
        }
    )
    history, _ = _run(spec, online=True)
    first, second = (e.terms for e in history.epochs)
    assert second["ce"] == pytest.approx(first["ce"], rel=1e-5)
    for name in ("tckd", "nckd"):
        assert second[name] == pytest.approx(2 * first[name], rel=1e-4)


def test_alpha_zero_is_the_baseline_for_every_method() -> None:
    for method in ("hinton", "dkd"):
        spec = _spec({"distill": {"loss": method, "alpha": 0.0}})
        history, _ = _run(spec, online=True)
        assert all(set(e.terms) == {"ce"} for e in history.epochs)


def test_fitnets_regressor_trains_and_resumes(tmp_path: Path) -> None:
    """The regressor's parameters are in the optimizer, change, and survive a resume."""
    spec = _spec({"distill": {"loss": "fitnets", "kwargs": FITNETS}})
    _run(spec, online=True, workdir=tmp_path / "a", epochs=1)
    first = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    student_params = sum(1 for _ in nets.create("cnn5", num_classes=4, num_channels=4).parameters())
    assert len(first["optimizer"]["param_groups"][0]["params"]) == student_params + 2
    assert set(first["method"]) == {"regressor.weight", "regressor.bias"}
    assert first["method"]["regressor.weight"].shape == (32, 16, 1, 1)  # conv3: 16 -> 32 ch

    _run(spec, online=True, workdir=tmp_path / "a", epochs=2)  # resumes from epoch 1
    resumed = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert not torch.equal(
        resumed["method"]["regressor.weight"], first["method"]["regressor.weight"]
    )
    _run(spec, online=True, workdir=tmp_path / "b", epochs=2)
    straight = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    torch.testing.assert_close(resumed["method"], straight["method"], rtol=0, atol=0)
    torch.testing.assert_close(resumed["model"], straight["model"], rtol=0, atol=0)


def _error(overrides: dict[str, Any]) -> str:
    with pytest.raises(KDSearchError) as err:
        _spec(overrides)
    return str(err.value)


def test_unknown_kwarg_names_the_nearest() -> None:
    msg = _error({"distill": {"loss": "dkd", "kwargs": {"betta": 2.0}}})
    assert msg.startswith("distill.kwargs.betta: no method takes it; did you mean 'beta'?")
    assert "\n" not in msg


def test_kwarg_of_a_method_the_study_never_runs_is_refused() -> None:
    msg = _error({"distill": {"loss": "hinton", "kwargs": {"beta": 2.0}}})
    assert "distill.kwargs.beta: no method takes it" in msg and "hinton: standardize" in msg


def test_kwarg_values_are_checked_per_method() -> None:
    assert "distill.kwargs.beta: -1.0 is outside" in _error(
        {"distill": {"loss": "dkd", "kwargs": {"beta": -1.0}}}
    )
    assert "distill.kwargs.warmup: expected an integer" in _error(
        {"distill": {"loss": "dkd", "kwargs": {"warmup": "soon"}}}
    )
    assert "distill.kwargs.student_layer: missing" in _error(
        {"distill": {"loss": "fitnets", "kwargs": {"teacher_layer": "conv3"}}}
    )


def test_fitnets_with_a_logit_cache_is_refused() -> None:
    msg = _error({"distill": {"loss": "fitnets", "kwargs": FITNETS, "teacher_cache": "sampled:4"}})
    assert msg.startswith("distill.loss: fitnets reads the teacher's intermediate features")
    assert "teacher_cache: none" in msg
    searched = {"distill.loss": {"type": "categorical", "choices": ["hinton", "fitnets"]}}
    assert "fitnets reads" in _error(
        {
            "distill": {"kwargs": FITNETS, "teacher_cache": "all_views"},
            "search": {"space": searched},
        }
    )


def test_searched_loss_accepts_each_choices_kwargs_and_checks_them() -> None:
    space = {
        "distill.loss": {"type": "categorical", "choices": ["hinton", "dkd"]},
        "distill.kwargs.beta": {"type": "float", "low": 1.0, "high": 8.0},
    }
    spec = _spec({"search": {"space": space}})
    trial = spec.with_overrides({"distill.loss": "hinton", "distill.kwargs.beta": 3.0})
    assert trial.distill.kwargs == {"beta": 3.0}  # kept, ignored by hinton
    space["distill.kwargs.beta"]["low"] = -2.0
    assert "distill.kwargs.beta: -2.0 is outside" in _error({"search": {"space": space}})
    space["distill.kwargs.beta"]["low"] = 1.0
    space["distill.kwargs.gama"] = {"type": "float", "low": 1.0, "high": 2.0}
    assert "distill.kwargs.gama: no method takes it" in _error({"search": {"space": space}})
    bad = {"distill.loss": {"type": "categorical", "choices": ["hinton", "dkdd"]}}
    assert "did you mean 'dkd'" in _error({"search": {"space": bad}})
    bad = {"distill.loss": {"type": "float", "low": 0, "high": 1}}
    assert "searched as a categorical" in _error({"search": {"space": bad}})


def test_teacher_spec_drops_the_students_method() -> None:
    """train-teacher trains without distillation: no method options leak into its spec."""
    space = {"distill.loss": {"type": "categorical", "choices": ["hinton", "fitnets"]}}
    spec = _spec(
        {"distill": {"kwargs": FITNETS, "teacher_cache": "none"}, "search": {"space": space}}
    )
    teacher = spec.teacher_spec()
    assert (teacher.distill.loss, teacher.distill.kwargs, teacher.distill.alpha) == (
        "hinton",
        {},
        0,
    )


def test_validate_prints_one_line_for_a_bad_kwarg(
    cli: Callable[..., subprocess.CompletedProcess[str]], kd_home: Path
) -> None:
    spec = merge(SYNTHETIC_SPEC, {"distill": {"loss": "dkd", "kwargs": {"betta": 2}}})
    (kd_home / "s.yaml").write_text(yaml.safe_dump(spec))
    out = cli("validate", "s.yaml")
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "did you mean 'beta'" in out.stderr


def _cnn5_params(c: int, k: int) -> int:
    """cnn5's parameters counted by hand: 3 convs, 3 BNs, fc1, its BN, fc2."""
    convs = (3 * c * 9 + c) + (c * 2 * c * 9 + 2 * c) + (2 * c * 4 * c * 9 + 4 * c)
    bns = 2 * (c + 2 * c + 4 * c) + 2 * 4 * c
    fcs = (16 * 4 * c * 4 * c + 4 * c) + (4 * c * k + k)
    return convs + bns + fcs


def _cnn5_flops(c: int, k: int) -> int:
    """2 × multiply-adds of the convs (32², 16², 8² outputs) and the linear layers."""
    convs = 32 * 32 * c * 3 * 9 + 16 * 16 * 2 * c * c * 9 + 8 * 8 * 4 * c * 2 * c * 9
    return 2 * (convs + 16 * 4 * c * 4 * c + 4 * c * k)


@pytest.mark.parametrize("channels", [4, 16])
def test_cost_matches_an_independent_count(channels: int) -> None:
    model = nets.create("cnn5", num_classes=10, num_channels=channels)
    cost = nets.measure(model, (3, 32, 32), CPU, runs=2)
    assert cost.student_params == _cnn5_params(channels, 10)
    assert cost.student_flops == _cnn5_flops(channels, 10)
    assert 0 < cost.latency_ms_b1 < cost.latency_ms_b256
    assert cost.latency_device == "cpu"


@pytest.mark.parametrize(("budget_s", "calls"), [(float("inf"), 1 + 5), (0.0, 1 + 1)])
def test_latency_warms_up_then_times_runs_within_a_budget(budget_s: float, calls: int) -> None:
    """One warm-up pass, then 5 timed passes, or only one when the time budget is spent."""
    model = nets.create("cnn5", num_classes=10, num_channels=2).eval()
    seen: list[int] = []
    model.register_forward_hook(lambda m, a, o: seen.append(len(o)))
    ms = nets.cost.latency_ms(model, (8, 3, 32, 32), CPU, runs=5, warmup=1, budget_s=budget_s)
    assert ms > 0 and seen == [8] * calls


def test_every_trial_stores_its_cost_and_loss_terms(kd_home: Path) -> None:
    """A trial's user attributes hold params, FLOPs, both latencies and the per-epoch terms."""
    space = {"student.kwargs.num_channels": {"type": "categorical", "choices": [2, 6]}}
    spec = _spec({"teacher": None, "search": {"space": space}})
    ctx = Context.load(spec, "cpu")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"student.kwargs.num_channels": 2})
    study.enqueue_trial({"student.kwargs.num_channels": 6})
    study.optimize(Objective(ctx, study), n_trials=2)
    for trial, c in zip(study.trials, (2, 6), strict=True):
        attrs = trial.user_attrs
        assert attrs["student_params"] == _cnn5_params(c, 4)
        assert attrs["student_flops"] == _cnn5_flops(c, 4)
        assert attrs["latency_ms_b1"] > 0 and attrs["latency_ms_b256"] > 0
        assert attrs["latency_device"] == "cpu"
        assert list(attrs["loss_terms"]) == ["ce"] and len(attrs["loss_terms"]["ce"]) == 2
