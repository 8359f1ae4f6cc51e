"""The one training loop, for baselines and distillation alike.

Data lives on the training device as uint8 tensors (or, for big data sets, in a memory-mapped
store whose batches a background thread gathers and copies ahead, :mod:`kdsearch.data.batches`);
each epoch shuffles with ``randperm`` on the device, draws one augmentation view per image (a
pad-crop index or a random-resized crop box, :mod:`kdsearch.data.augment`), and crops, flips and
normalizes the batch with tensor ops (no DataLoader). The teacher is anything that meets this
module's :class:`TeacherLogits` protocol (the cached and online teachers of
:mod:`kdsearch.training.teacher`) or ``None``; with alpha = 0 it is never
asked, so the baseline is the same loop with the distillation term off: the same batches and
steps, images without labels (``dataset.labeled_fraction``) included, so at partial labels the
two arms differ by the teacher's term alone. (Trained on its labeled images only, a digits
baseline with 65 labels took one step per epoch and ended at 13–23 % test accuracy.) The method
``distill.loss`` names (:mod:`kdsearch.distill`) turns each batch into named loss terms, which
the loop sums and logs per epoch; its own parameters (a FitNets regressor) train and resume with
the student's, and the features it asks for are read by forward hooks on the student and the
online teacher.

After every epoch the loop evaluates validation accuracy over all validation images, saves a
resumable state (:class:`TrainingState`: model, method, optimizer, schedule, RNG, history) and
calls ``on_epoch``, where the Optuna objective reports and prunes. A run resumes from that state
bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kdsearch import distill
from kdsearch.config.spec import Spec
from kdsearch.data import views
from kdsearch.data.augment import Augmentation
from kdsearch.data.batches import batches
from kdsearch.data.datasets import UNLABELED, Images, Splits
from kdsearch.errors import KDSearchError
from kdsearch.files import atomic_save, safe_load
from kdsearch.meter import at_terminal

log = logging.getLogger(__name__)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite (a diverging learning rate, usually)."""


class StopRequested(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT) between two batches."""


class TeacherLogits(Protocol):
    """Where distillation targets come from: a cache of every view, or the teacher itself."""

    #: The teacher network when it runs on every batch (hooks can read its features), or None.
    model: nn.Module | None

    def draw_views(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        """A view per image (see :mod:`kdsearch.data.augment`), and a token ``logits`` needs to
        find them."""

    def logits(self, idx: torch.Tensor, token: Any, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits for images ``idx`` under the drawn views (``images``: those views as
        uint8, which the teacher normalizes with its own constants)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KDSearchError(f"train.device: {name} is not available here (use cpu or auto)")
    return device


@dataclass
class DeviceData:
    """The splits for one device, plus normalization constants shaped for broadcasting.

    Images in process memory move onto the device; images in a shared store stay there (only
    their labels move) and reach the device a batch at a time (:mod:`kdsearch.data.batches`).
    """

    train: Images
    val: Images
    test: Images
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    augment: Augmentation

    @classmethod
    def from_splits(cls, splits: Splits, device: torch.device, augment: Augmentation) -> DeviceData:
        def move(images: Images) -> Images:
            if images.shared:
                return Images(images.x, images.y.to(device), images.rows)
            return Images(images.x.to(device), images.y.to(device))

        return cls(
            train=move(splits.train),
            val=move(splits.val),
            test=move(splits.test),
            mean=torch.tensor(splits.mean, device=device).view(-1, 1, 1),
            std=torch.tensor(splits.std, device=device).view(-1, 1, 1),
            num_classes=splits.num_classes,
            augment=augment,
        )

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to the network's input: normalized float, channels-last (see place)."""
        return views.normalize(x, self.mean, self.std).contiguous(memory_format=torch.channels_last)

    def centred(self, images: Images, start: int, stop: int) -> torch.Tensor:
        """Images ``start`` to ``stop - 1`` in their evaluation view, uint8 on the device."""
        return self.augment.centre(images.chunk(start, stop)).to(self.device)


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images: int
    #: Mean of each named loss term over the epoch's images (they sum to ``train_loss``).
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class History:
    """What a run has done so far; also the part of the resume state Optuna needs."""

    epochs: list[EpochResult] = field(default_factory=list)
    best_val: float = -math.inf
    best_epoch: int = -1
    resumed_from_epoch: int | None = None

    @property
    def train_seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    @property
    def images_per_second(self) -> float:
        seconds = self.train_seconds
        return sum(e.images for e in self.epochs) / seconds if seconds else 0.0


@dataclass
class TrainingState:
    """Everything an epoch changes and a resume must restore, bit for bit: the student, the
    method's own parameters (a FitNets regressor), the optimizer, the schedule, the generator
    that shuffles and draws views, and the history. ``state_dict`` is the resume file's
    content (with torch's global RNG, which dropout uses)."""

    model: nn.Module
    method: distill.Method
    optimizer: torch.optim.Optimizer
    schedule: Any
    generator: torch.Generator
    history: History = field(default_factory=History)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epochs": [vars(e) for e in self.history.epochs],
            "best_val": self.history.best_val,
            "best_epoch": self.history.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state.get("method", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        epochs = [EpochResult(**e) for e in state["epochs"]]
        self.history = History(
            epochs, state["best_val"], state["best_epoch"], resumed_from_epoch=len(epochs)
        )


def make_optimizer(params: Iterable[nn.Parameter], spec: Spec) -> torch.optim.Optimizer:
    opt = spec.train.optimizer
    params = list(params)
    if opt.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=opt.lr,
            momentum=opt.momentum,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
        )
    return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, spec: Spec, steps_per_epoch: int) -> Any:
    """The learning-rate schedule; ``onecycle`` counts batches, the others epochs."""
    sched = spec.train.schedule
    if sched.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=spec.train.optimizer.lr,
            epochs=spec.train.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=sched.pct_start,
        )
    if sched.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, sched.step_size, sched.gamma)
    if sched.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.train.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


#: Images per forward pass without gradients, at 32 px. On a CPU, batches that fit the caches
#: win: cnn5 and ResNet-20 infer 1.5-4x faster at 256 than at 1024 (bench/RESULTS.md).
PREDICT_BATCH = {"cuda": 8192, "cpu": 256}


def predict_batch(device: torch.device, side: int) -> int:
    """:data:`PREDICT_BATCH` for ``side``-pixel images: the same pixels per batch (at least 16),
    so a 224 px batch holds what a 32 px one does."""
    base = PREDICT_BATCH["cuda" if device.type == "cuda" else "cpu"]
    return max(16, base * 32 * 32 // (side * side))


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels-last layout, which oneDNN (CPU) and cuDNN (GPU) run
    fastest: on two CPU cores, cnn5 trains 1.4x and infers 2x faster than in NCHW."""
    # Module.to takes both at once; torch's overloads list them only apart.
    return model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]


@torch.no_grad()
def predict(
    model: nn.Module, data: DeviceData, images: Images, batch: int | None = None
) -> torch.Tensor:
    """Logits for every image (un-augmented), in eval mode.

    No gradients are kept, so a GPU takes far bigger batches than training does; a batch that
    runs out of memory is halved and retried.
    """
    batch = batch or predict_batch(data.device, images.x.shape[-1])
    try:
        return _predict(model, data, images, batch)
    except torch.OutOfMemoryError:
        if batch <= 64:
            raise
        torch.cuda.empty_cache()
        return predict(model, data, images, batch // 2)


def _predict(model: nn.Module, data: DeviceData, images: Images, batch: int) -> torch.Tensor:
    was_training = model.training
    model = place(model, data.device).eval()
    out = []
    try:
        for start in range(0, len(images), batch):
            with _autocast(data.device):
                out.append(model(data.prepare(data.centred(images, start, start + batch))).float())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


def evaluate(model: nn.Module, data: DeviceData, images: Images) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over *all* images, not averaged per batch.

    NaN for an empty set (a final retrain on train+val has no validation split).
    """
    if len(images) == 0:
        return math.nan, math.nan
    logits = predict(model, data, images)
    loss = nn.functional.cross_entropy(logits, images.y).item()
    return loss, (logits.argmax(1) == images.y).float().mean().item()


def _autocast(device: torch.device) -> Any:
    # bf16 on CUDA roughly doubles throughput and needs no loss scaling; CPU stays in fp32.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class Run:
    """One training run's fixed inputs."""

    spec: Spec
    model: nn.Module
    data: DeviceData
    teacher: TeacherLogits | None = None
    workdir: Path | None = None
    on_epoch: Callable[[EpochResult, History], None] | None = None
    #: Called with the restored history when a run resumes from ``workdir/last.pt``.
    on_resume: Callable[[History], None] | None = None
    #: What the resume state must have been written for (a trial's study id and parameters):
    #: state saved with another tag, or none, is not resumed and the run starts fresh.
    resume_tag: dict[str, Any] | None = None
    #: Called with the model whenever validation accuracy improves (writes ``best.pt``).
    on_best: Callable[[nn.Module, EpochResult], None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    progress: bool = True
    tensorboard_dir: Path | None = None


def fit(run: Run) -> History:
    """Train ``run.model`` to the spec's epochs, resuming from ``workdir/last.pt`` if present."""
    spec, model, data = run.spec, run.model, run.data
    device = data.device
    torch.manual_seed(spec.train.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = place(model, device)
    d = spec.distill
    method = distill.create(d.loss, d.temperature, d.alpha, d.kwargs)
    teacher = run.teacher if d.alpha > 0 else None
    hooks = _attach_hooks(method, model, teacher, data) if teacher is not None else None
    method.to(device)
    optimizer = make_optimizer([*model.parameters(), *method.parameters()], spec)
    steps = math.ceil(_used(len(data.train), spec) / spec.train.batch_size)
    schedule = make_schedule(optimizer, spec, steps)
    gen = torch.Generator(device=device).manual_seed(spec.train.seed)
    state = TrainingState(model, method, optimizer, schedule, gen)
    saved = _resume_state(run)
    if saved is not None:
        state.load_state_dict(saved)
        if run.on_resume is not None:
            run.on_resume(state.history)
    history = state.history
    step = torch.compile(model) if spec.train.compile else model
    n = len(data.train)
    labeled = int((data.train.y != UNLABELED).sum())
    with contextlib.ExitStack() as cleanup:  # pruned, stopped and diverged runs close them too
        for h in hooks or ():
            cleanup.callback(h.remove)
        bar = cleanup.enter_context(_progress_bar(spec, steps, len(history.epochs), run.progress))
        writer = _tensorboard(run.tensorboard_dir)
        if writer is not None:
            cleanup.callback(writer.close)
        for epoch in range(len(history.epochs), spec.train.epochs):
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_loss, terms, correct, used = _train_epoch(run, step, state, hooks, epoch, bar)
            if not _per_batch(spec):
                schedule.step()
            val_loss, val_acc = evaluate(model, data, data.val)
            result = EpochResult(
                epoch=epoch,
                train_loss=train_loss,
                train_accuracy=correct / max(1, labeled),
                val_loss=val_loss,
                val_accuracy=val_acc,
                lr=lr,
                seconds=time.perf_counter() - start,
                images=used,
                terms=terms,
            )
            history.epochs.append(result)
            # Without a validation split (final retrain on train+val) the last epoch is the model.
            improved = val_acc > history.best_val or math.isnan(val_acc)
            if improved:
                history.best_val, history.best_epoch = val_acc, epoch
            if improved and run.on_best is not None:
                run.on_best(model, result)
            if run.workdir is not None:
                atomic_save({**state.state_dict(), "tag": run.resume_tag}, run.workdir / "last.pt")
            if writer is not None:
                _log_scalars(writer, result)
            bar.set_postfix_str(
                f"epoch {epoch + 1}/{spec.train.epochs} loss {train_loss:.3f} val {val_acc:.4f} "
                f"best {history.best_val:.4f} {n / result.seconds:,.0f} img/s"
            )
            if run.on_epoch is not None:
                run.on_epoch(result, history)
    return history


def _attach_hooks(
    method: distill.Method, model: nn.Module, teacher: TeacherLogits, data: DeviceData
) -> tuple[distill.FeatureHooks, distill.FeatureHooks] | None:
    """Forward hooks on the layers ``method`` reads, and its modules built from one probe.

    The probe runs both nets in eval mode without gradients on two training images, so it
    changes no batch-norm statistics and draws no random numbers.
    """
    if not method.student_layers() and not method.teacher_layers():
        return None
    student = distill.FeatureHooks(model, method.student_layers(), "student")
    teacher_net = teacher.model if teacher.model is not None else nn.Identity()
    # Layer names are the architecture's own, not those of the normalizing wrapper around it.
    named = getattr(teacher_net, "net", teacher_net)
    hooks = (student, distill.FeatureHooks(named, method.teacher_layers(), "teacher"))
    raw = data.centred(data.train, 0, 2)  # the teacher normalizes its uint8 input itself
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(data.prepare(raw))
        teacher_net(raw)
    model.train(was_training)
    method.build(hooks[0].take(), hooks[1].take())
    return hooks


def _train_epoch(
    run: Run,
    step: Callable[[torch.Tensor], torch.Tensor],
    state: TrainingState,
    hooks: tuple[distill.FeatureHooks, distill.FeatureHooks] | None,
    epoch: int,
    bar: Any,
) -> tuple[float, dict[str, float], int, int]:
    """One pass over the shuffled training set (``bar`` advances a batch at a time).

    Returns (mean loss, mean of each named term, correct labeled, images used).
    """
    spec, data = run.spec, run.data
    method, optimizer, gen = state.method, state.optimizer, state.generator
    device = data.device
    teacher = run.teacher if spec.distill.alpha > 0 else None
    n, bs = len(data.train), spec.train.batch_size
    order = torch.randperm(n, device=device, generator=gen)
    loss_sum = torch.zeros((), device=device)
    term_sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    used = _used(n, spec)
    per_batch = _per_batch(spec)
    run.model.train()
    for idx, pixels in batches(data.train, order[:used], bs, device):
        if run.should_stop():
            raise StopRequested(f"stop requested during epoch {epoch + 1}")
        if teacher is not None:
            view, token = teacher.draw_views(idx, gen)
        else:
            view, token = data.augment.draw(len(idx), gen), None
        raw = data.augment.apply(pixels, view)
        x = data.prepare(raw)
        y = data.train.y[idx]
        with _autocast(device):
            out = step(x)
            target = teacher.logits(idx, token, raw) if teacher is not None else None
            batch = distill.Batch(out.float(), target, y)
            if hooks is not None:
                batch.student_features, batch.teacher_features = hooks[0].take(), hooks[1].take()
            terms = method(batch, epoch)
            loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_batch:
            state.schedule.step()
        loss_sum += loss.detach() * len(idx)
        for name, term in terms.items():
            term_sums[name] = term_sums.get(name, 0) + term.detach() * len(idx)
        correct += ((out.argmax(1) == y) & (y != UNLABELED)).sum()
        bar.update()
    train_loss = loss_sum.item() / used
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(
            f"training loss became {train_loss} in epoch {epoch + 1} "
            f"(lr {optimizer.param_groups[0]['lr']:g}); lower the learning rate"
        )
    terms_mean = {name: total.item() / used for name, total in term_sums.items()}
    return train_loss, terms_mean, int(correct.item()), used


def _used(n: int, spec: Spec) -> int:
    """Images an epoch trains on.

    A last batch of one image would break batch norm in training mode; that image is simply
    seen in the other epochs, where the shuffle places it elsewhere.
    """
    return n - 1 if n % spec.train.batch_size == 1 and n > 1 else n


def _per_batch(spec: Spec) -> bool:
    """Whether the schedule steps after every batch (one-cycle) rather than every epoch."""
    return spec.train.schedule.name == "onecycle"


def _resume_state(run: Run) -> dict[str, Any] | None:
    """The resume state in ``workdir/last.pt`` if it was written for this run, else None.

    A state written for other parameters or another study (a folder reused after a study was
    deleted and created again) would continue someone else's weights and curve: the run
    starts from epoch 0 with a warning instead, and its first epoch overwrites that state.
    """
    path = run.workdir / "last.pt" if run.workdir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        state = safe_load(path, "resume state")
    except KDSearchError as err:  # truncated by a full disk or a crash mid-write
        # Failing would fail every retry the same way: start over, and the first epoch
        # overwrites the file.
        log.warning("%s; starting from epoch 0", err)
        return None
    if state.get("tag") == run.resume_tag:
        return state
    log.warning(
        "%s was written for %s, not for this run (%s); starting from epoch 0",
        path,
        state.get("tag", "an unknown run"),
        run.resume_tag,
    )
    return None


def _tensorboard(logdir: Path | None) -> Any:
    if logdir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir))


def _log_scalars(writer: Any, r: EpochResult) -> None:
    for name, value in (
        ("train/loss", r.train_loss),
        ("train/accuracy", r.train_accuracy),
        ("val/loss", r.val_loss),
        ("val/accuracy", r.val_accuracy),
        ("lr", r.lr),
        *((f"train/{name}", value) for name, value in r.terms.items()),
        ("images_per_second", r.images / r.seconds if r.seconds else 0.0),
    ):
        writer.add_scalar(name, value, r.epoch + 1)
    writer.flush()


def _progress_bar(spec: Spec, steps: int, done: int, enabled: bool) -> Any:
    """A bar over the run's batches, so an epoch of minutes moves too; drawn only at a
    terminal (a log gets the callers' lines per epoch instead of a bar's fragments)."""
    from tqdm import tqdm

    return tqdm(
        total=spec.train.epochs * steps,
        initial=done * steps,
        desc=spec.name,
        unit="batch",
        disable=not (enabled and at_terminal()),
    )
