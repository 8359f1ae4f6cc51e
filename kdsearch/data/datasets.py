"""Data sets as uint8 tensors, and the train/validation/test splits of a spec.

Every data set is decoded once to ``N×3×S×S`` uint8 at the spec's stored size. A small one
(CIFAR-10 is 150 MB) is loaded whole into memory, so that training can keep it on the device
and augment with batched tensor ops (see :mod:`kdsearch.data.augment`); a big one stays in a
memory-mapped file that every process shares (:mod:`kdsearch.data.store`). A registry maps
``dataset.name`` to a loader; adding a data set is one decorated function.

Validation is a seeded split held out of the *training* set; the test set is only ever used for
final numbers, never for model selection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kdsearch.data import normalization
from kdsearch.data.normalization import NAMED as NORMALIZATION
from kdsearch.errors import KDSearchError
from kdsearch.paths import resolve
from kdsearch.registry import Registry

if TYPE_CHECKING:  # the spec only types arguments here; config sits above data
    from kdsearch.config.spec import DatasetSpec

#: Label of a training image whose label is withheld (``labeled_fraction``); the
#: cross-entropy term ignores it, the distillation term still learns from the image.
UNLABELED = -100


@dataclass(frozen=True)
class Images:
    """Images (uint8, N×3×S×S) with integer labels (``UNLABELED`` where withheld).

    With ``rows`` set, ``x`` is a store shared by every process (a memory-mapped file) and
    image ``i`` is ``x[rows[i]]``: subsets and splits select rows instead of copying pixels,
    which would give each worker a private copy of the data set.
    """

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shared(self) -> bool:
        """Whether the pixels stay in the shared store (gathered per batch, never copied)."""
        return self.rows is not None

    def subset(self, idx: np.ndarray | torch.Tensor) -> Images:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.rows is not None:
            return Images(self.x, self.y[idx], self.rows[idx])
        return Images(self.x[idx], self.y[idx])

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The pixels of images ``idx`` (a copy for a shared store, on the store's device)."""
        if self.rows is None:
            return self.x[idx]
        return self.x.index_select(0, self.rows[idx.cpu()])

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """The pixels of images ``start`` to ``stop - 1``."""
        if self.rows is None:
            return self.x[start:stop]
        return self.take(torch.arange(start, min(stop, len(self))))

    def materialized(self) -> Images:
        """The same images in this process's own memory (the small-data path)."""
        if self.rows is None:
            return self
        return Images(self.take(torch.arange(len(self))), self.y)


@dataclass(frozen=True)
class RawDataset:
    """What a registered loader returns: the data set's own train and test parts."""

    train: Images
    test: Images
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Class names by index (for reports); None where the data set has none.
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Splits:
    """The splits a run uses: ``train`` (maybe partly unlabeled), ``val`` and ``test``."""

    train: Images
    val: Images
    test: Images
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None


Loader = Callable[..., RawDataset]
_LOADERS: Registry[Loader] = Registry("dataset.name")

#: Register ``fn(root: Path, download: bool, **options) -> RawDataset`` under a name.
register = _LOADERS.register
names = _LOADERS.names


def load_raw(spec: DatasetSpec) -> RawDataset:
    """The data set's train and test parts, at the spec's stored size and in its store;
    ``dataset.normalization`` replaces its constants."""
    loader = _LOADERS.get(spec.name)
    options = dict(spec.options)
    folder = spec.name == "imagefolder"
    if folder:  # decoded once at the stored size, into a cache file that can be mapped
        options.update(
            storage_size=spec.stored_size,
            squash=spec.squash,
            skip_unreadable=spec.skip_unreadable,
            mmap=True,
        )
    try:
        raw = loader(resolve(spec.root), spec.download, **options)
    except TypeError as err:
        raise KDSearchError(f"dataset.options: {err} (for data set {spec.name!r})") from None
    if not folder:
        raw = replace(
            raw,
            train=_resized(raw.train, spec.stored_size),
            test=_resized(raw.test, spec.stored_size),
        )
    raw = _stored(raw, spec.store, already_mapped=folder)
    if spec.normalization is not None:
        mean, std = normalization.parse(spec.normalization, "dataset.normalization")
        raw = replace(raw, mean=mean, std=std)
    return raw


def _resized(images: Images, side: int) -> Images:
    """``images`` resized to ``side``² (antialiased bilinear), for a built-in data set whose
    own size differs from the spec's ``image_size``."""
    if images.x.shape[-1] == side and images.x.shape[-2] == side:
        return images
    out = torch.empty((len(images), images.x.shape[1], side, side), dtype=torch.uint8)
    for first in range(0, len(images), 1024):
        part = images.x[first : first + 1024].float()
        part = torch.nn.functional.interpolate(
            part, size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )
        out[first : first + 1024] = part.round().clamp(0, 255).to(torch.uint8)
    return Images(out, images.y)


def _stored(raw: RawDataset, mode: str, already_mapped: bool) -> RawDataset:
    """Train and test images in the store ``dataset.store`` names (see :mod:`store`).

    ``already_mapped``: the loader returned tensors mapped from its own cache file.
    """
    from kdsearch.data import store

    nbytes = raw.train.x.numel() + raw.test.x.numel()
    if store.mapped(mode, nbytes):

        def keep(images: Images) -> Images:
            x = images.x if already_mapped else store.share(images.x)
            return Images(x, images.y, torch.arange(len(images)))

    else:

        def keep(images: Images) -> Images:
            # Both copied: a label tensor left on the file would keep all of it mapped.
            return Images(images.x.clone(), images.y.clone()) if already_mapped else images

    return replace(raw, train=keep(raw.train), test=keep(raw.test))


def split(raw: RawDataset, spec: DatasetSpec) -> Splits:
    """Hold out validation, take the training subset, withhold labels: all seeded."""
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(raw.train))
    n_val = round(len(order) * spec.val_fraction)
    if spec.val_fraction > 0 and n_val == 0:
        raise KDSearchError(
            f"dataset.val_fraction: {spec.val_fraction} of {len(order)} training images is "
            f"0 validation images; raise it to at least {1 / len(order):.2g}"
        )
    val, rest = order[:n_val], order[n_val:]
    rest = rest[: max(1, round(len(rest) * spec.subset_fraction))]
    train = raw.train.subset(np.sort(rest))
    if spec.labeled_fraction < 1.0:
        n_labeled = max(1, round(len(train) * spec.labeled_fraction))
        hidden = rng.permutation(len(train))[n_labeled:]
        y = train.y.clone()
        y[torch.as_tensor(hidden, dtype=torch.long)] = UNLABELED
        train = replace(train, y=y)
    return Splits(
        train=train,
        val=raw.train.subset(np.sort(val)),
        test=raw.test,
        num_classes=raw.num_classes,
        mean=raw.mean,
        std=raw.std,
        classes=raw.classes,
    )


def load(spec: DatasetSpec) -> Splits:
    """The splits of ``dataset`` in a spec."""
    return split(load_raw(spec), spec)


def _from_hwc(data: np.ndarray, labels: list[int] | np.ndarray) -> Images:
    x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
    return Images(x, torch.as_tensor(np.asarray(labels), dtype=torch.long))


def _cifar(
    cls_name: str, folder: str, root: Path, download: bool
) -> tuple[Images, Images, tuple[str, ...]]:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        raise KDSearchError(
            f"dataset.root: no valid {cls_name} data in {root / folder} ({err}); copy the "
            f"extracted {folder} folder there, or set dataset.download: true where there is "
            "internet"
        ) from None
    train_images = _from_hwc(train.data, train.targets)
    return train_images, _from_hwc(test.data, test.targets), tuple(train.classes)


@register("cifar10")
def cifar10(root: Path, download: bool) -> RawDataset:
    train, test, classes = _cifar("CIFAR10", "cifar-10-batches-py", root, download)
    return RawDataset(train, test, 10, *NORMALIZATION["cifar10"], classes)


@register("cifar100")
def cifar100(root: Path, download: bool) -> RawDataset:
    train, test, classes = _cifar("CIFAR100", "cifar-100-python", root, download)
    return RawDataset(train, test, 100, *NORMALIZATION["cifar100"], classes)


@register("imagefolder")
def imagefolder(
    root: Path,
    download: bool,
    storage_size: int = 32,
    squash: bool = False,
    skip_unreadable: bool = False,
    mmap: bool = False,
) -> RawDataset:
    """Your own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``).

    Stored at ``storage_size`` pixels square (see :mod:`kdsearch.data.imagefolder`).
    Normalization constants are the training images' own (unless the spec gives them).
    """
    import logging

    from kdsearch.data import imagefolder as folders

    parts, classes, skipped = folders.load(root, storage_size, squash, skip_unreadable, mmap)
    if any(skipped.values()):
        logging.getLogger(__name__).warning(
            "skipped unreadable images in %s: %s",
            root,
            ", ".join(f"{len(names)} of {split}" for split, names in skipped.items()),
        )
    train, test = (Images(*parts[split]) for split in folders.SPLITS)
    return RawDataset(train, test, len(classes), *_stats_in_chunks(train.x), classes)


@register("digits")
def digits(root: Path, download: bool, test_fraction: float = 0.2) -> RawDataset:
    """scikit-learn's bundled 8×8 digits (1,797 images), as 32×32 RGB so CIFAR nets run as-is.

    The test part is a fixed seeded 20% that does not depend on ``dataset.seed``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    order = np.random.default_rng(12345).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    all_images = Images(x, y)
    mean, std = _stats(x)
    return RawDataset(
        all_images.subset(np.sort(order[n_test:])),
        all_images.subset(np.sort(order[:n_test])),
        10,
        mean,
        std,
    )


@register("synthetic")
def synthetic(
    root: Path,
    download: bool,
    n_train: int = 2000,
    n_test: int = 500,
    num_classes: int = 10,
    noise: float = 60.0,
    seed: int = 0,
) -> RawDataset:
    """Seeded CIFAR-shaped images: a smooth per-class pattern plus noise.

    For tests and benchmarks, where no real data can be downloaded.
    """
    gen = torch.Generator().manual_seed(seed)
    # Smooth (4×4 upsampled) class patterns survive the 4-pixel crops of augmentation.
    coarse = torch.rand(num_classes, 3, 4, 4, generator=gen) * 255
    prototypes = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")

    def draw(n: int) -> Images:
        y = torch.randint(num_classes, (n,), generator=gen)
        x = prototypes[y] + noise * torch.randn(n, 3, 32, 32, generator=gen)
        return Images(x.clamp(0, 255).round().to(torch.uint8), y)

    train, test = draw(n_train), draw(n_test)
    mean, std = _stats(train.x)
    return RawDataset(train, test, num_classes, mean, std)


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float() / 255
    return tuple(xf.mean((0, 2, 3)).tolist()), tuple(xf.std((0, 2, 3)).clamp_min(1e-3).tolist())


def _stats_in_chunks(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`_stats` for big image sets (50,000 CIFAR images as float32 take 600 MB): float64
    sums over chunks of about 4 million pixels (32 MB), whatever the image size."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    step = max(1, (1 << 22) // max(1, x[0].numel()))
    for first in range(0, len(x), step):
        chunk = x[first : first + step].double() / 255
        total += chunk.sum((0, 2, 3))
        squares += chunk.square().sum((0, 2, 3))
    n = x.numel() // 3
    mean = total / n
    std = ((squares - n * mean.square()) / (n - 1)).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


#: The settings that decide what a network sees at evaluation, stored with a checkpoint.
SIZE_KEYS = ("image_size", "storage_size", "squash", "crop")


def describe(spec: DatasetSpec) -> dict[str, Any]:
    """The identity of a data set as stored in checkpoint metadata (with its sizes and crop
    where they are not the defaults, so `evaluate` sees what training evaluated on)."""
    out: dict[str, Any] = {"name": spec.name, "options": dict(spec.options)}
    if spec.name == "imagefolder":
        out["root"] = spec.root
    if spec.image_size is not None or spec.storage_size is not None or spec.squash:
        out.update(
            image_size=spec.input_size,
            storage_size=spec.stored_size,
            squash=spec.squash,
            crop=spec.crop_mode,
        )
    return out
