"""One training run from a spec: what ``train``, ``train-teacher`` and every trial share.

A :class:`Context` holds what a process loads once (data on the device, the teacher's logits);
:func:`fit_student` builds the student a spec describes, trains it with the one loop, writes
its best checkpoint and measures that checkpoint on the test set (reported, never used to
select anything).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kdsearch import nets
from kdsearch.config.spec import Spec
from kdsearch.data import augment, datasets
from kdsearch.errors import KDSearchError
from kdsearch.training.loop import (
    DeviceData,
    EpochResult,
    History,
    Run,
    evaluate,
    fit,
    resolve_device,
)
from kdsearch.training.model_files import (
    input_normalization,
    load_checkpoint,
    load_model,
    model_of,
    save_model,
    update_metrics,
)

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Per-process state: the data on the device and the teacher (cached or online)."""

    spec: Spec
    device: torch.device
    data: DeviceData
    teacher: Any = None
    num_classes: int = 10
    classes: tuple[str, ...] | None = None

    @classmethod
    def load(cls, spec: Spec, device: str | None = None, with_teacher: bool = True) -> Context:
        dev = resolve_device(device or spec.train.device)
        splits = datasets.load(spec.dataset)
        data = DeviceData.from_splits(splits, dev, augment.for_dataset(spec.dataset))
        teacher = None
        if with_teacher and spec.teacher is not None:
            from kdsearch.training.teacher import teacher_logits

            teacher = teacher_logits(spec, data)
        return cls(spec, dev, data, teacher, splits.num_classes, splits.classes)


@dataclass
class Outcome:
    """What a finished run reports."""

    history: History
    checkpoint: Path
    val_accuracy: float
    test_accuracy: float
    parameters: int
    extra: dict[str, Any] = field(default_factory=dict)


def fit_student(
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
    init: Path | None = None,
) -> Outcome:
    """Train ``spec.student`` (distilled when ``spec.distills``) and write ``out`` (best epoch).

    With ``init`` (a kdsearch checkpoint of the same arch) training starts from its weights,
    with a fresh head if it was trained on another class count, and keeps its input
    normalization: fine-tuning, e.g. an imported public teacher.
    """
    torch.manual_seed(spec.train.seed)  # initial weights follow train.seed too
    data = ctx.data
    mean, std = tuple(data.mean.flatten().tolist()), tuple(data.std.flatten().tolist())
    if init is None:
        model = nets.create(spec.student.arch, num_classes=ctx.num_classes, **spec.student.kwargs)
    else:
        model, mean, std = _initial(init, spec, ctx.num_classes)
        data = replace(
            data,
            mean=torch.tensor(mean, device=ctx.device).view(-1, 1, 1),
            std=torch.tensor(std, device=ctx.device).view(-1, 1, 1),
        )
    nets.check_input_size(model, spec.dataset.input_size, spec.student.arch)
    parameters = nets.count_parameters(model)

    def save_best(m: torch.nn.Module, r: EpochResult) -> None:
        save_model(
            out,
            m,
            arch=spec.student.arch,
            kwargs=spec.student.kwargs,
            num_classes=ctx.num_classes,
            dataset=datasets.describe(spec.dataset),
            mean=mean,
            std=std,
            metrics={"val_accuracy": r.val_accuracy, "epoch": r.epoch + 1},
            classes=ctx.classes,
        )

    history = fit(
        Run(
            spec=spec,
            model=model,
            data=data,
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
    _, test_accuracy = evaluate(best, data, data.test)
    update_metrics(out, test_accuracy=test_accuracy)
    return Outcome(history, out, history.best_val, test_accuracy, parameters)


def _initial(
    path: Path, spec: Spec, num_classes: int
) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The network of checkpoint ``path`` and its normalization, checked against the spec.

    A checkpoint of the same network for another class count (an imported ImageNet model, say)
    gets a fresh head for this run's classes: that is what fine-tuning it means. The weights
    arguments (``weights``, ``pretrained``) are left out of the comparison, since the
    checkpoint's weights replace whatever they would load.
    """
    ckpt = load_checkpoint(path, "--init")
    arch = spec.student.arch
    if ckpt["arch"] != arch:
        raise KDSearchError(
            f"--init: {path} holds a {ckpt['arch']}, but this run trains a {arch}; pass a "
            "checkpoint of the same arch"
        )
    theirs, ours = (nets.without_weights(arch, k) for k in (ckpt["kwargs"], spec.student.kwargs))
    if theirs != ours:
        raise KDSearchError(
            f"--init: {path} was built with {theirs}, this run with {ours}; make the spec's "
            "kwargs match"
        )
    model = model_of(ckpt).train()
    if ckpt["num_classes"] != num_classes:
        nets.replace_head(model, ckpt["num_classes"], num_classes, f"--init: {path}")
        log.info(
            "--init: replaced the %d-class head of %s with a %d-class one",
            ckpt["num_classes"],
            arch,
            num_classes,
        )
    return model, *input_normalization(ckpt)
