"""``kdsearch bench``: the 2018 reference's way of distilling against kdsearch's, measured.

A speed-up claim is only worth what its measurement is, so all three loops run in one process,
on the same synthetic CIFAR-shaped images, with the same cnn5 student, resnet18 teacher
(random weights: speed does not depend on them), batch size, optimizer and loss settings:

(a) reference-style: a DataLoader with per-image PIL transforms, the teacher run on every
    batch, the reference's loss (``nn.KLDivLoss()`` with its default reduction), and
    per-batch numpy accuracy;
(b) kdsearch's trial loop (:func:`kdsearch.training.loop.fit`) distilling from the teacher cache;
(c) the same loop with no distillation at all: the upper bound for (b).

Only training is timed, after a warm-up, as images per second; the cache is built once per
study and shared by every trial and epoch, so its build time is reported on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch import nets
from kdsearch.config.spec import Spec, from_dict
from kdsearch.data.augment import PadCrop
from kdsearch.data.datasets import Images, load
from kdsearch.errors import KDSearchError
from kdsearch.training.loop import DeviceData, Run, fit, resolve_device
from kdsearch.training.teacher import CachedTeacher, TeacherNet, compute_logits, slot_views

BATCH = 128
TEMPERATURE = 4.0
ALPHA = 0.9
VAL_IMAGES = 64  # fit validates every epoch; a small split keeps that out of the figures
WARMUP_BATCHES = 2  # for (a); (b) and (c) warm up with one untimed round
ROUNDS = 5  # timed one-epoch rounds of (b) and (c), interleaved so load drift hits both
#: Training images and teacher-cache mode per device: sized so ``make bench`` on a 2-core
#: CPU stays under 5 minutes; on a GPU the CIFAR-10 training set and the exact cache.
DEFAULTS = {"cpu": (2560, "sampled:1"), "cuda": (45_000, "all_views")}


@dataclass
class Timing:
    variant: str
    images: int
    seconds: float

    @property
    def img_s(self) -> float:
        return self.images / self.seconds


def _spec(images: int, alpha: float, cache_mode: str) -> Spec:
    """One epoch over ``images`` training images (plus a small validation split)."""
    return from_dict(
        {
            "name": "bench",
            "dataset": {
                "name": "synthetic",
                "val_fraction": VAL_IMAGES / (images + VAL_IMAGES),
                "options": {"n_train": images + VAL_IMAGES, "n_test": 1, "num_classes": 10},
            },
            "student": {"arch": "cnn5"},
            "teacher": {"arch": "resnet18"},
            "train": {"epochs": 1, "batch_size": BATCH, "optimizer": {"name": "adam"}},
            "distill": {"temperature": TEMPERATURE, "alpha": alpha, "teacher_cache": cache_mode},
        }
    )


def _student() -> nn.Module:
    torch.manual_seed(0)  # every variant starts from the same weights
    return nets.create("cnn5")


class _ReferenceImages(torch.utils.data.Dataset):
    """CIFAR as torchvision serves it: HWC uint8 arrays, one PIL image per item."""

    def __init__(self, images: Images, transform: Any) -> None:
        self.x = images.x.permute(0, 2, 3, 1).cpu().numpy()
        self.y = images.y.cpu().numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_style(data: DeviceData, teacher: nn.Module, device: torch.device) -> Timing:
    """(a): the 2018 reference's ``train_kd`` epoch, timed after a few warm-up batches."""
    import torchvision.transforms as T

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(data.mean.flatten().tolist(), data.std.flatten().tolist()),
        ]
    )
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _ReferenceImages(data.train, transform),
        batch_size=BATCH,
        shuffle=True,
        num_workers=min(4, os.cpu_count() or 1) if cuda else 0,
        pin_memory=cuda,
        generator=torch.Generator().manual_seed(0),
    )
    student, teacher = _student().to(device).train(), teacher.to(device).eval()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    kl = nn.KLDivLoss()  # the reference's default "mean" reduction, kept for fidelity

    def epoch(limit: int | None) -> None:
        accuracy = []  # the reference's per-batch metric summaries
        for i, (x, y) in enumerate(loader):
            if i == limit:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = student(x)
            with torch.no_grad():
                target = teacher(x)
            loss = kl(
                F.log_softmax(out / TEMPERATURE, dim=1), F.softmax(target / TEMPERATURE, dim=1)
            ) * (ALPHA * TEMPERATURE**2) + F.cross_entropy(out, y) * (1.0 - ALPHA)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            predicted = np.argmax(out.detach().cpu().numpy(), axis=1)
            accuracy.append(np.sum(predicted == y.cpu().numpy()) / float(len(y)))
            loss.item()  # the reference's running loss average syncs every batch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="reduction: 'mean'")
        epoch(WARMUP_BATCHES)
        start = time.perf_counter()
        epoch(None)
        seconds = time.perf_counter() - start
    return Timing("(a) reference-style KD loop", len(data.train), seconds)


def build_cache(
    teacher: nn.Module, data: DeviceData, spec: Spec
) -> tuple[CachedTeacher, float, int]:
    """The teacher cache as a study builds it (in memory, no file): table, seconds, bytes."""
    device = data.device
    start = time.perf_counter()
    slots = slot_views(data, spec.distill.cache_views(), spec.train.seed)
    net = TeacherNet(
        teacher, tuple(data.mean.flatten().tolist()), tuple(data.std.flatten().tolist())
    )
    logits = compute_logits(net.to(device), data, slots)
    cache = CachedTeacher(logits.to(device), slots.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return cache, seconds, logits.numel() * logits.element_size()


def kdsearch_loops(
    data: DeviceData, distill: Spec, plain: Spec, cache: CachedTeacher
) -> tuple[Timing, Timing]:
    """(b) and (c): ``fit`` one epoch at a time, alternating, after one untimed round."""
    runs = {
        "b": Run(distill, _student(), data, teacher=cache, progress=False),
        "c": Run(plain, _student(), data, teacher=None, progress=False),
    }
    seconds = dict.fromkeys(runs, 0.0)
    for round_ in range(ROUNDS + 1):
        for name, run in runs.items():
            elapsed = fit(run).train_seconds
            if round_:
                seconds[name] += elapsed
    images = ROUNDS * len(data.train)
    return (
        Timing("(b) kdsearch, cached teacher", images, seconds["b"]),
        Timing("(c) student only (upper bound)", images, seconds["c"]),
    )


def _device_name(device: torch.device) -> str:
    """The card, or the CPU model and thread count: figures mean little without them."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model} ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads)"


def format_table(r: dict[str, Any]) -> str:
    """The timings for a reader: one row per variant, ratios against the reference loop."""
    timings = [Timing(**t) for t in r["timings"]]
    lines = [
        f"kdsearch bench: {r['device_name']}, torch {r['torch_version']}, load average "
        f"{r['load_average']:.2f} at start",
        f"{r['images']:,} synthetic 32x32 training images, batch {BATCH}, cnn5 student, "
        f"resnet18 teacher, teacher cache {r['cache_mode']}\n",
        f"{'variant':<32}{'images':>9}{'seconds':>10}{'img/s':>10}{'vs (a)':>9}",
    ]
    for t in timings:
        ratio = t.img_s / timings[0].img_s
        lines.append(
            f"{t.variant:<32}{t.images:>9,}{t.seconds:>10.1f}{t.img_s:>10,.0f}{ratio:>8.1f}x"
        )
    lines += [
        f"\n(a): one epoch after {WARMUP_BATCHES} warm-up batches; (b), (c): {ROUNDS} epochs, "
        "alternating, after one untimed epoch each",
        f"teacher cache: built once in {r['cache_build_s']:.1f} s, "
        f"{r['cache_bytes'] / 1e6:.2f} MB of fp16 logits",
        f"b/a = {r['kdsearch_vs_reference']:.1f}x   b/c = {r['kdsearch_vs_student_only']:.2f}x",
    ]
    return "\n".join(lines)


def run(device_name: str = "cpu", images: int | None = None) -> dict[str, Any]:
    """Run (a), the cache build, (b) and (c): the figures, JSON-ready, each variant's timing
    under ``timings``."""
    device = resolve_device(device_name)
    load_average = os.getloadavg()[0]
    default_images, cache_mode = DEFAULTS[device.type]
    images = default_images if images is None else images
    if images < 2 or images % BATCH == 1:
        raise KDSearchError(
            f"--images: {images} leaves fewer than 2 images in a batch, which BatchNorm cannot "
            f"train on; use {max(2, images + 1)}"
        )
    distill, plain = _spec(images, ALPHA, cache_mode), _spec(images, 0.0, cache_mode)
    data = DeviceData.from_splits(load(distill.dataset), device, PadCrop(augment=True))
    torch.manual_seed(0)
    teacher = nets.create("resnet18").eval()
    say = functools.partial(print, "bench:", file=sys.stderr, flush=True)
    say(f"(a) reference-style loop, {images:,} images on {device}")
    reference = reference_style(data, teacher, device)
    say(f"teacher cache, {cache_mode}")
    cache, cache_seconds, cache_bytes = build_cache(teacher, data, distill)
    say(f"(b) and (c), {ROUNDS + 1} epochs each")
    cached, student_only = kdsearch_loops(data, distill, plain, cache)
    timings = [reference, cached, student_only]
    result = {
        "device": device.type,
        "device_name": _device_name(device),
        "torch_version": torch.__version__,
        "load_average": load_average,
        "images": images,
        "batch_size": BATCH,
        "cache_mode": cache_mode,
        "reference_img_s": reference.img_s,
        "kdsearch_img_s": cached.img_s,
        "student_only_img_s": student_only.img_s,
        "kdsearch_vs_reference": cached.img_s / reference.img_s,
        "kdsearch_vs_student_only": cached.img_s / student_only.img_s,
        "cache_build_s": cache_seconds,
        "cache_bytes": cache_bytes,
        "timings": [dataclasses.asdict(t) for t in timings],
    }
    return result
