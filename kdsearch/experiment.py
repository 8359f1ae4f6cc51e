"""One training run from a spec: what ``train``, ``train-teacher`` and every trial share.

A :class:`Context` holds what a process loads once (data on the device, the teacher's logits);
:func:`train_student` builds the student a spec describes, trains it with the one loop, writes
its best checkpoint and measures that checkpoint on the test set (reported, never used to
select anything).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdsearch import data as datasets
from kdsearch import nets
from kdsearch.checkpoint import load_model, save_model, update_metrics
from kdsearch.spec import Spec
from kdsearch.train import DeviceData, EpochResult, History, Run, evaluate, fit, resolve_device


@dataclass
class Context:
    """Per-process state: the data on the device and the teacher (cached or online)."""

    spec: Spec
    device: torch.device
    data: DeviceData
    teacher: Any = None
    num_classes: int = 10

    @classmethod
    def load(cls, spec: Spec, device: str | None = None, with_teacher: bool = True) -> Context:
        dev = resolve_device(device or spec.train.device)
        splits = datasets.load(spec.dataset)
        data = DeviceData.from_splits(splits, dev, spec.dataset.augment)
        teacher = None
        if with_teacher and spec.teacher is not None:
            from kdsearch.teacher import teacher_logits

            teacher = teacher_logits(spec, data)
        return cls(spec, dev, data, teacher, splits.num_classes)


@dataclass
class Outcome:
    """What a finished run reports."""

    history: History
    checkpoint: Path
    val_accuracy: float
    test_accuracy: float
    parameters: int
    extra: dict[str, Any] = field(default_factory=dict)


def train_student(
    ctx: Context,
    spec: Spec,
    out: Path,
    *,
    workdir: Path | None = None,
    on_epoch: Callable[[EpochResult, History], None] | None = None,
    on_resume: Callable[[History], None] | None = None,
    resume_tag: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    tensorboard_dir: Path | None = None,
) -> Outcome:
    """Train ``spec.student`` (distilled when ``spec.distills``) and write ``out`` (best epoch)."""
    torch.manual_seed(spec.train.seed)  # initial weights follow train.seed too
    model = nets.create(spec.student.arch, num_classes=ctx.num_classes, **spec.student.kwargs)
    parameters = nets.count_parameters(model)

    def save_best(m: torch.nn.Module, r: EpochResult) -> None:
        save_model(
            out,
            m,
            arch=spec.student.arch,
            kwargs=spec.student.kwargs,
            num_classes=ctx.num_classes,
            dataset=datasets.describe(spec.dataset),
            mean=tuple(ctx.data.mean.flatten().tolist()),
            std=tuple(ctx.data.std.flatten().tolist()),
            metrics={"val_accuracy": r.val_accuracy, "epoch": r.epoch + 1},
        )

    history = fit(
        Run(
            spec=spec,
            model=model,
            data=ctx.data,
            teacher=ctx.teacher if spec.distills else None,
            workdir=workdir,
            on_epoch=on_epoch,
            on_resume=on_resume,
            resume_tag=resume_tag,
            on_best=save_best,
            should_stop=should_stop,
            progress=progress,
            tensorboard_dir=tensorboard_dir,
        )
    )
    best = load_model(out).to(ctx.device)
    _, test_accuracy = evaluate(best, ctx.data, ctx.data.test)
    update_metrics(out, test_accuracy=test_accuracy)
    return Outcome(history, out, history.best_val, test_accuracy, parameters)
