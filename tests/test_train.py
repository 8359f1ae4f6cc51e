"""The training loop on the synthetic data set: it learns, resumes bit for bit, and fails loudly."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SYNTHETIC_SPEC

from kdsearch import nets
from kdsearch.config.spec import Spec, from_dict, merge
from kdsearch.data import datasets
from kdsearch.data.augment import for_dataset
from kdsearch.data.datasets import Images
from kdsearch.files import safe_load
from kdsearch.training.loop import (
    DeviceData,
    EpochResult,
    History,
    NonFiniteLoss,
    Run,
    StopRequested,
    evaluate,
    fit,
)
from kdsearch.training.teacher import OnlineTeacher, TeacherNet

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(overrides: dict[str, Any] | None = None) -> tuple[Spec, DeviceData]:
    """A spec (no teacher: the plain loop) and its synthetic data on the CPU."""
    spec = from_dict(merge(SYNTHETIC_SPEC, {"teacher": None, **(overrides or {})}))
    splits = datasets.load(spec.dataset)
    return spec, DeviceData.from_splits(splits, CPU, for_dataset(spec.dataset))


def _model(spec: Spec, data_: DeviceData, init_seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(init_seed)
    return nets.create(spec.student.arch, num_classes=data_.num_classes, **spec.student.kwargs)


class Interrupt(Exception):
    """Raised from a callback to simulate a killed run."""


def test_learns_well_above_chance() -> None:
    """A few epochs on 4-class synthetic data lift validation accuracy far above 25% chance."""
    spec, d = _setup(
        {
            "dataset": {"options": {"noise": 60.0}},
            "student": {"kwargs": {"num_channels": 8}},
            "train": {"epochs": 5, "batch_size": 32},
        }
    )
    seen: list[int] = []
    history = fit(
        Run(spec, _model(spec, d), d, progress=False, on_epoch=lambda r, h: seen.append(r.epoch))
    )
    assert seen == [0, 1, 2, 3, 4]
    assert len(history.epochs) == 5
    assert history.epochs[-1].val_accuracy >= 0.7, [e.val_accuracy for e in history.epochs]
    assert history.best_val == max(e.val_accuracy for e in history.epochs)
    assert history.epochs[history.best_epoch].val_accuracy == history.best_val
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert all(e.images == len(d.train) for e in history.epochs)


RESUME = {
    "dataset": {"options": {"n_train": 200}},
    "student": {"kwargs": {"num_channels": 4, "dropout": 0.3}},  # dropout uses torch's RNG
    "train": {"epochs": 4, "batch_size": 32, "schedule": {"name": "cosine"}},
}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different}"


def _interrupt_after_two_epochs(spec: Any, d: Any, workdir: Path) -> None:
    """A run stopped by an exception after its second epoch, its resume state in ``workdir``."""

    def stop_after_two(result: EpochResult, history: History) -> None:
        if result.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(Run(spec, _model(spec, d), d, workdir=workdir, on_epoch=stop_after_two, progress=False))


def test_resume_after_epoch_equals_straight_run(tmp_path: Path) -> None:
    """Interrupted after epoch 2 and resumed by a new ``fit``: identical final weights."""
    spec, d = _setup(RESUME)
    straight_model = _model(spec, d)
    straight = fit(Run(spec, straight_model, d, progress=False))

    _interrupt_after_two_epochs(spec, d, tmp_path)
    assert (tmp_path / "last.pt").is_file()

    resumed_with: list[tuple[int, int | None]] = []
    later: list[int] = []
    # A differently initialized model: everything must come from the saved state.
    resumed_model = _model(spec, d, init_seed=123)
    resumed = fit(
        Run(
            spec,
            resumed_model,
            d,
            workdir=tmp_path,
            on_resume=lambda h: resumed_with.append((len(h.epochs), h.resumed_from_epoch)),
            on_epoch=lambda r, h: later.append(r.epoch),
            progress=False,
        )
    )
    assert resumed_with == [(2, 2)]
    assert later == [2, 3]
    _assert_same_weights(_weights(straight_model), _weights(resumed_model))
    assert [e.val_accuracy for e in resumed.epochs] == [e.val_accuracy for e in straight.epochs]
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in straight.epochs]
    assert [e.lr for e in resumed.epochs] == [e.lr for e in straight.epochs]
    assert (resumed.best_val, resumed.best_epoch) == (straight.best_val, straight.best_epoch)


def test_resume_after_stop_mid_epoch_equals_straight_run(tmp_path: Path) -> None:
    """A stop requested mid-epoch 3 loses that epoch only; the resumed run still matches."""
    spec, d = _setup(RESUME)
    straight_model = _model(spec, d)
    fit(Run(spec, straight_model, d, progress=False))

    calls = {"n": 0}
    batches = math.ceil(len(d.train) / spec.train.batch_size)

    def stop_in_epoch_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 2 * batches + 2

    with pytest.raises(StopRequested, match="epoch 3"):
        fit(
            Run(
                spec,
                _model(spec, d),
                d,
                workdir=tmp_path,
                should_stop=stop_in_epoch_three,
                progress=False,
            )
        )
    resumed_at: list[int] = []
    resumed_model = _model(spec, d, init_seed=7)
    fit(
        Run(
            spec,
            resumed_model,
            d,
            workdir=tmp_path,
            on_resume=lambda h: resumed_at.append(len(h.epochs)),
            progress=False,
        )
    )
    assert resumed_at == [2]
    _assert_same_weights(_weights(straight_model), _weights(resumed_model))


def test_finished_run_does_not_train_again(tmp_path: Path) -> None:
    """Resuming a run that already did every epoch changes nothing and trains no epoch."""
    spec, d = _setup({**RESUME, "train": {**RESUME["train"], "epochs": 1}})
    model = _model(spec, d)
    fit(Run(spec, model, d, workdir=tmp_path, progress=False))
    again = _model(spec, d, init_seed=5)
    epochs: list[int] = []
    history = fit(
        Run(
            spec, again, d, workdir=tmp_path, on_epoch=lambda r, h: epochs.append(1), progress=False
        )
    )
    assert epochs == [] and len(history.epochs) == 1
    _assert_same_weights(_weights(model), _weights(again))


def test_diverging_lr_raises_non_finite_loss() -> None:
    """SGD with lr 1e8 makes the loss NaN/inf: NonFiniteLoss names the epoch and the lr."""
    spec, d = _setup(
        {"train": {"epochs": 3, "optimizer": {"name": "sgd", "lr": 1e8}}},
    )
    epochs: list[int] = []
    with pytest.raises(NonFiniteLoss, match=r"epoch 1 .*lr 1e\+08"):
        fit(Run(spec, _model(spec, d), d, on_epoch=lambda r, h: epochs.append(1), progress=False))
    assert epochs == []  # raised before any epoch was reported as if it were fine


def test_accuracy_counts_every_example() -> None:
    """``evaluate`` averages over all images, not per batch (1,030 = 1,024 + 6)."""
    spec, d = _setup({"dataset": {"options": {"n_test": 1030}}})
    model = _model(spec, d).eval()
    x = d.test.x
    assert len(x) == 1030
    mean, std = d.mean.double(), d.std.double()
    with torch.no_grad():
        logits = model(((x.double() / 255 - mean) / std).float())
    pred = logits.argmax(1)
    # Right on the first 1,024 images, wrong on the 6 of the last, partial batch.
    y = torch.cat([pred[:1024], (pred[1024:] + 1) % d.num_classes])
    loss, accuracy = evaluate(model, d, Images(x, y))
    assert accuracy == pytest.approx(1024 / 1030, abs=1e-6)  # a mean of batch means: 0.5
    expected_loss = torch.nn.functional.cross_entropy(logits.double(), y).item()
    assert loss == pytest.approx(expected_loss, rel=1e-4)


def test_empty_validation_set_gives_nan() -> None:
    """Without validation images (final retrain on train+val), evaluate gives NaN, not 0."""
    spec, d = _setup()
    empty = Images(d.val.x[:0], d.val.y[:0])
    loss, accuracy = evaluate(_model(spec, d), d, empty)
    assert math.isnan(loss) and math.isnan(accuracy)


def test_a_last_batch_of_one_image_is_skipped() -> None:
    """257 training images in batches of 64 leave one image over; batch norm cannot train on a
    batch of one, so that batch is skipped and 256 images count for the epoch."""
    spec, d = _setup(
        {
            "dataset": {"val_fraction": 0.0, "options": {"n_train": 257}},
            "train": {"epochs": 1, "batch_size": 64},
        }
    )
    assert len(d.train) == 257
    history = fit(Run(spec, _model(spec, d), d, progress=False))
    assert history.epochs[0].images == 256 and math.isfinite(history.epochs[0].train_loss)


def _training_batch_sizes(model: torch.nn.Module) -> list[int]:
    """The sizes of the batches ``model`` will see in training mode, filled in as it trains."""
    sizes: list[int] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            sizes.append(len(args[0]))

    model.register_forward_pre_hook(record)
    return sizes


def test_with_few_labels_the_baseline_takes_the_distilled_runs_batches() -> None:
    """At 25 % of the labels (64 of 256 images) the baseline (alpha 0 or no teacher) trains on
    the same batches as a distilled run: all 256 images in four batches of 64 per epoch, its
    cross-entropy over the labeled ones. The arms then differ by the teacher's term alone; a
    baseline on its labeled images only would take a quarter of the steps (at 5 % of the digits
    labels: one step per epoch, and 13–23 % test accuracy)."""
    spec, d = _setup(
        {
            "dataset": {"val_fraction": 0.0, "labeled_fraction": 0.25, "options": {"n_train": 256}},
            "train": {"epochs": 2, "batch_size": 64},
        }
    )
    assert len(d.train) == 256 and int((d.train.y >= 0).sum()) == 64
    teacher = OnlineTeacher(TeacherNet(_model(spec, d), (0.5,) * 3, (0.25,) * 3), d.augment)
    for run_teacher, alpha in ((None, 0.5), (teacher, 0.0), (teacher, 0.5)):
        run_spec = from_dict(merge(spec.to_dict(), {"distill": {"alpha": alpha}}))
        model = _model(run_spec, d)
        seen = _training_batch_sizes(model)
        history = fit(Run(run_spec, model, d, teacher=run_teacher, progress=False))
        assert [e.images for e in history.epochs] == [256] * 2, (run_teacher, alpha)
        assert seen == [64] * 8, (run_teacher, alpha)


def test_resume_state_written_for_another_run_is_not_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume state is resumed only by a run with the tag it was written for: another study's
    id, other parameters or no tag at all (an older kdsearch) start fresh with a warning."""
    spec, d = _setup({**RESUME, "train": {**RESUME["train"], "epochs": 1}})
    tag = {"study_id": "0a1b2c3d", "trial": 0, "params": {"lr": 0.01}}
    first = tmp_path / "first"
    fit(Run(spec, _model(spec, d), d, workdir=first, resume_tag=tag, progress=False))
    others = [{**tag, "study_id": "ffffffff"}, {**tag, "params": {"lr": 0.02}}, None]
    for i, other in enumerate(others):
        workdir = tmp_path / f"other{i}"
        workdir.mkdir()
        shutil.copy(first / "last.pt", workdir / "last.pt")
        caplog.clear()
        resumed: list[History] = []
        history = fit(
            Run(
                spec,
                _model(spec, d),
                d,
                workdir=workdir,
                resume_tag=other,
                on_resume=resumed.append,
                progress=False,
            )
        )
        assert resumed == [] and history.resumed_from_epoch is None, other
        assert len(history.epochs) == 1, "trained from epoch 0"
        assert "starting from epoch 0" in caplog.text
        assert safe_load(workdir / "last.pt")["tag"] == other, "its own state replaced it"
    # The run it was written for resumes it (nothing left to train).
    same = fit(Run(spec, _model(spec, d), d, workdir=first, resume_tag=dict(tag), progress=False))
    assert same.resumed_from_epoch == 1


def test_onecycle_steps_every_batch() -> None:
    """``onecycle`` follows torch's OneCycleLR batch by batch: 4 batches per epoch here."""
    spec, d = _setup(
        {
            "train": {
                "epochs": 3,
                "optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True},
                "schedule": {"name": "onecycle"},
            }
        }
    )
    assert len(d.train) == 256 and spec.train.batch_size == 64
    history = fit(Run(spec, _model(spec, d), d, progress=False))
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    cycle = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.1, total_steps=12)
    expected = []
    for _ in range(3):
        expected.append(reference.param_groups[0]["lr"])
        for _ in range(4):
            reference.step()
            cycle.step()
    assert [e.lr for e in history.epochs] == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.1 / 25)


def test_trains_and_predicts_in_channels_last_layout_on_the_cpu() -> None:
    """Channels-last is what makes oneDNN fast on a CPU (bench/layout.py: cnn5 trains ~1.6x
    and infers ~3x faster): the student must train in it, whatever layout it arrived in."""
    spec, d = _setup({"train": {"epochs": 1}})
    model = _model(spec, d)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not convs[1].is_contiguous(memory_format=torch.channels_last)
    fit(Run(spec, model, d, progress=False))
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert d.prepare(d.val.x[:4]).is_contiguous(memory_format=torch.channels_last)


def test_truncated_resume_state_restarts_from_epoch_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``last.pt`` cut short (a full disk, a copy that died) is not a crash on every retry:
    the run says so and starts over, and its first epoch writes a whole file again."""
    spec, d = _setup(RESUME)

    _interrupt_after_two_epochs(spec, d, tmp_path)
    state = tmp_path / "last.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    epochs: list[int] = []
    with caplog.at_level("WARNING", logger="kdsearch.training.loop"):
        history = fit(
            Run(
                spec,
                _model(spec, d),
                d,
                workdir=tmp_path,
                progress=False,
                on_epoch=lambda r, h: epochs.append(r.epoch),
            )
        )
    assert epochs == list(range(spec.train.epochs))  # from epoch 0, every epoch
    assert history.resumed_from_epoch is None
    assert "last.pt is not a loadable weights file" in caplog.text
    assert "starting from epoch 0" in caplog.text
    torch.load(state, weights_only=True)  # whole again
