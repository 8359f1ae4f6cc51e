"""A folder tree of images (torchvision's ImageFolder layout) as uint8 arrays, decoded once.

``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, class index = sorted folder names, any
format Pillow reads. Decoding tens of thousands of small files takes seconds to minutes, and
every worker of a study needs the same pixels, so the decoded ``N×3×S×S`` uint8 array is saved
under ``models/cache/`` keyed by the file names, sizes and modification times (and the image
size): one process decodes under a file lock, the others wait and load the result.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsearch.errors import KDSearchError
from kdsearch.paths import models_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Folder:
    """One split's files (path, class index), in ImageFolder's sorted order."""

    classes: tuple[str, ...]
    samples: list[tuple[str, int]]


def scan(root: Path) -> dict[str, Folder]:
    """The train and test folders of ``root``, checked to have the same class folders."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folders = {}
    for split in SPLITS:
        path = root / split
        if not path.is_dir():
            raise KDSearchError(
                f"dataset.root: {path} is not a folder; an imagefolder data set needs "
                f"{root}/train/<class>/ and {root}/test/<class>/ (image files inside)"
            )
        try:
            classes, to_idx = find_classes(str(path))
            samples = make_dataset(str(path), to_idx, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, RuntimeError) as err:
            raise KDSearchError(f"dataset.root: {path}: {err}".splitlines()[0]) from None
        folders[split] = Folder(tuple(classes), samples)
    train, test = folders["train"].classes, folders["test"].classes
    if train != test:
        only_train = sorted(set(train) - set(test)) or "-"
        only_test = sorted(set(test) - set(train)) or "-"
        raise KDSearchError(
            f"dataset.root: {root}/train and {root}/test have different class folders "
            f"(only in train: {only_train}; only in test: {only_test}); "
            "give both splits the same folders"
        )
    return folders


def cache_key(root: Path, folders: dict[str, Folder], image_size: int) -> str:
    """Hash of every file's relative name, size and modification time, and the image size."""
    h = hashlib.sha256(repr(image_size).encode())
    for split in SPLITS:
        for path, label in folders[split].samples:
            st = os.stat(path)
            h.update(
                f"{os.path.relpath(path, root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()[:24]


def decode(samples: list[tuple[str, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """N×3×S×S uint8 pixels (RGB, resized only where the size differs) and N labels."""
    from PIL import Image

    x = np.empty((len(samples), 3, image_size, image_size), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                x[i] = np.asarray(img).transpose(2, 0, 1)
        except OSError as err:
            raise KDSearchError(f"dataset.root: {path} is not a readable image ({err})") from None
    return x, np.asarray([label for _, label in samples], dtype=np.int64)


def load(
    root: Path, image_size: int = 32
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple[str, ...]]:
    """``{split: (uint8 images, labels)}`` and the class names, from the cache when valid."""
    from filelock import FileLock

    folders = scan(root)
    path = models_dir() / "cache" / f"images-{cache_key(root, folders, image_size)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        blob = _read(path)
        if blob is None:
            log.info("decoding the images of %s into %s", root, path)
            blob = {}
            for split in SPLITS:
                x, y = decode(folders[split].samples, image_size)
                blob[split] = (torch.from_numpy(x), torch.from_numpy(y))
            from kdsearch.files import atomic_save

            atomic_save(blob, path)
    return blob, folders["train"].classes


def _read(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return {split: (blob[split][0], blob[split][1]) for split in SPLITS}
    except Exception as err:
        log.warning("image cache %s is unreadable (%s); decoding again", path, err)
        return None
