"""The teacher: loading its checkpoint, and its logits, cached once per study or computed online.

The teacher is fixed during a search, yet the reference recomputed its forward pass for every
batch of every epoch of every trial. Here the teacher's logits for every training image under
every augmentation view (162 for crop+flip) are computed once and stored in fp16 under
``models/cache/``, keyed by a hash of the teacher weights, the training images (which covers
data set and split) and the view mode. Every trial and every study with the same teacher and
data shares the file. Temperature is applied at loss time, so one cache serves every
temperature; with ``teacher_cache: all_views`` cached distillation is exactly online
distillation with teacher and student seeing the same view.

Several workers needing the same missing cache take a file lock: one builds it (to a temporary
file renamed into place), the others wait and then load it. A cache whose checksum does not
match is rebuilt with a warning, never used.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch import nets
from kdsearch.config.spec import Spec
from kdsearch.data import views
from kdsearch.data.augment import Augmentation
from kdsearch.errors import KDSearchError
from kdsearch.paths import models_dir, resolve
from kdsearch.training.loop import DeviceData, place, predict_batch
from kdsearch.training.model_files import (
    atomic_save,
    input_normalization,
    load_checkpoint,
    model_of,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 3


class TeacherNet(nn.Module):
    """A network that takes uint8 images and normalizes them with its own constants."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = views.normalize(x, self.mean, self.std)
        if out.is_cuda:
            out = out.contiguous(memory_format=torch.channels_last)
        return self.net(out)


def load_teacher(spec: Spec, num_classes: int) -> TeacherNet:
    """The spec's teacher, checked against the spec's arch and the data's class count."""
    teacher = spec.teacher
    if teacher is None:
        raise KDSearchError("teacher: the spec has no teacher section")
    if not teacher.checkpoint:
        raise KDSearchError("teacher.checkpoint: not set; name the teacher's .pt file")
    path = resolve(teacher.checkpoint)
    if not path.is_file():
        raise KDSearchError(
            f"teacher.checkpoint: {path} does not exist; train it with "
            f"`kdsearch train-teacher SPEC` or convert one with `kdsearch import-checkpoint`"
        )
    ckpt = teacher_checkpoint(spec, path, num_classes)
    return TeacherNet(model_of(ckpt), *input_normalization(ckpt)).eval()


def teacher_checkpoint(spec: Spec, path: Path, num_classes: int | None) -> dict[str, Any]:
    """The teacher's checkpoint at ``path``, refused unless it holds ``teacher.arch`` with a
    head of ``num_classes`` (unchecked when None: a data set not yet opened) and a usable input
    normalization (three means, three positive deviations: the teacher normalizes with its own
    constants, whatever the student's are)."""
    assert spec.teacher is not None
    ckpt = load_checkpoint(path, "teacher.checkpoint")
    if ckpt["arch"] != spec.teacher.arch:
        raise KDSearchError(
            f"teacher.checkpoint: {path} holds a {ckpt['arch']}, but teacher.arch is "
            f"{spec.teacher.arch}; fix teacher.arch or point to the right checkpoint"
        )
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise KDSearchError(
            f"teacher.checkpoint: {path} has {ckpt['num_classes']} classes, the data set "
            f"{spec.dataset.name} has {num_classes}; use a teacher trained on this data set"
        )
    mean, std = input_normalization(ckpt)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise KDSearchError(
            f"teacher.checkpoint: {path} stores the input normalization mean {list(mean)}, std "
            f"{list(std)} (three means and three positive deviations expected); import the "
            "teacher again with `kdsearch import-checkpoint --normalization`"
        )
    return ckpt


class CachedTeacher:
    """Teacher logits looked up per (image, view) from a precomputed table on the device."""

    #: No network runs, so no intermediate features exist (methods that need them are refused).
    model: nn.Module | None = None

    def __init__(self, logits: torch.Tensor, view_ids: torch.Tensor) -> None:
        # logits: N×V×C fp16; view_ids: N×V, the view each slot holds.
        self.table = logits
        self.view_ids = view_ids

    def draw_views(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        slot = torch.randint(self.table.shape[1], (len(idx),), device=idx.device, generator=gen)
        return self.view_ids[idx, slot], slot

    def logits(self, idx: torch.Tensor, token: Any, images: torch.Tensor) -> torch.Tensor:
        return self.table[idx, token].float()


class OnlineTeacher:
    """The teacher run on every batch: for features, or views no cache holds."""

    def __init__(self, model: TeacherNet, augment: Augmentation) -> None:
        self.model = model.eval()
        self.augment = augment

    def draw_views(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        return self.augment.draw(len(idx), gen), None

    @torch.no_grad()
    def logits(self, idx: torch.Tensor, token: Any, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float()


def cache_key(model: TeacherNet, data: DeviceData, spec: Spec) -> str:
    """Hash of teacher weights and normalization (its buffers), training images, view mode."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for first in range(0, len(data.train), 4096):  # a chunk at a time: no copy of a big store
        # numpy's stubs give ndarray its buffer protocol on Python 3.12+ only.
        h.update(data.train.chunk(first, first + 4096).cpu().contiguous().numpy())  # type: ignore[arg-type]
    per_image = spec.distill.cache_views()
    seed = spec.train.seed if per_image else None  # only sampled views depend on the seed
    h.update(repr((data.augment.describe(), per_image, seed)).encode())
    h.update(str(CACHE_FORMAT).encode())
    return h.hexdigest()[:24]


def slot_views(data: DeviceData, per_image: int | None, seed: int) -> torch.Tensor:
    """The views each image's slots hold: N×V view indices (every view, or ``per_image``
    distinct seeded ones) for enumerable views, N×V×5 seeded boxes for random-resized crops."""
    n, augment = len(data.train), data.augment
    gen = torch.Generator().manual_seed(seed)
    if not augment.enumerable:
        if per_image is None:  # refused with the spec; kept as a guard for direct callers
            raise KDSearchError("distill.teacher_cache: all_views needs enumerable views")
        return augment.draw(n * per_image, gen).view(n, per_image, -1)
    view_set = augment.all_views()
    if per_image is None or per_image >= len(view_set):
        return view_set.expand(n, -1).clone()
    keys = torch.rand(n, len(view_set), generator=gen)
    return view_set[keys.argsort(dim=1)[:, :per_image]]


@torch.no_grad()
def compute_logits(
    model: TeacherNet, data: DeviceData, slot_views: torch.Tensor, batch: int | None = None
) -> torch.Tensor:
    """Teacher logits (fp16, N×V×C on the CPU) for every image under every slot's view."""
    device = data.device
    batch = batch or predict_batch(device, data.train.x.shape[-1])
    net = place(model, device).eval()
    n, v = slot_views.shape[:2]
    out = torch.empty(n, v, data.num_classes, dtype=torch.float16)
    slot_views = slot_views.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for first in range(0, n, batch):
        idx = torch.arange(first, min(n, first + batch), device=device)
        pixels = data.train.chunk(first, first + batch).to(device)
        for j in range(v):
            x = data.augment.apply(pixels, slot_views[idx, j])
            with autocast:
                out[first : first + len(idx), j] = net(x).float().cpu().half()
    return out


def _checksum(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _read(path: Path) -> dict[str, Any] | None:
    """The cache at ``path`` if it is complete and its checksum holds; None if absent."""
    if not path.exists():
        return None
    try:
        # Mapped, not read: every worker on the machine shares one copy through the page cache.
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        logits, view_ids = blob["logits"], blob["view_ids"]
        if (
            blob["format"] == CACHE_FORMAT
            and _checksum(logits, view_ids) == blob["checksum"]
            and logits.shape[:2] == view_ids.shape[:2]
        ):
            return blob
        reason = "checksum mismatch"
    except Exception as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
    log.warning("teacher cache %s is corrupt (%s); rebuilding it", path, reason)
    return None


def cache_path(model: TeacherNet, data: DeviceData, spec: Spec) -> Path:
    return models_dir() / "cache" / f"teacher-{cache_key(model, data, spec)}.pt"


def build_or_load(model: TeacherNet, data: DeviceData, spec: Spec) -> tuple[CachedTeacher, Path]:
    """The study's teacher cache: loaded if valid, else built by exactly one process."""
    from filelock import FileLock

    path = cache_path(model, data, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        blob = _read(path)
        if blob is None:
            slots = slot_views(data, spec.distill.cache_views(), spec.train.seed)
            n, views = slots.shape[:2]  # random-resized crops add a box per view
            log.info("building teacher cache %s (%d images x %d views)", path, n, views)
            logits = compute_logits(model, data, slots)
            blob = {
                "format": CACHE_FORMAT,
                "logits": logits,
                "view_ids": slots,
                "checksum": _checksum(logits, slots),
            }
            atomic_save(blob, path)
    device = data.device
    return CachedTeacher(blob["logits"].to(device), blob["view_ids"].to(device)), path


def teacher_logits(spec: Spec, data: DeviceData) -> CachedTeacher | OnlineTeacher | None:
    """What the training loop distills from, per ``distill.teacher_cache``; None without one."""
    if spec.teacher is None:
        return None
    model = load_teacher(spec, data.num_classes).to(data.device)
    nets.check_input_size(model.net, spec.dataset.input_size, f"the teacher {spec.teacher.arch}")
    per_image = spec.distill.cache_views()
    if per_image == 0:
        return OnlineTeacher(model, data.augment)
    n_views = len(data.augment.all_views()) if data.augment.enumerable else math.inf
    if per_image is not None and per_image < min(n_views, spec.train.epochs):
        # A distilled student can only train on views whose teacher outputs are stored, while
        # a baseline trains on all of them. With fewer stored views than epochs the two no
        # longer see the same augmentation; with at least as many (sampled:32 for 30 epochs)
        # the loss went away on CIFAR-10.
        log.warning(
            "distill.teacher_cache sampled:%d: distilled students train on %d of the %d "
            "augmented views of each image over %d epochs, baselines on all of them, which cost "
            "up to 2 points on CIFAR-10 (docs/cifar10.md); use sampled:K with K at least "
            "train.epochs, all_views or none",
            per_image,
            per_image,
            n_views,
            spec.train.epochs,
        )
    return build_or_load(model, data, spec)[0]
