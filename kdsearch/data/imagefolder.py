"""A folder tree of images (torchvision's ImageFolder layout) as uint8 arrays, decoded once.

Layout. ``ROOT/train/<class>/*`` is the training split. The held-out split is
``ROOT/test/<class>/*`` or, where there is no ``test/``, ``ROOT/val/<class>/*`` (ImageNet's
layout, whose ``val/`` is its held-out set). A root with both uses ``test/`` and ignores
``val/`` with a warning: kdsearch's own validation split for model selection is always held out
of ``train/`` (``dataset.val_fraction``), so a third folder has no role, and training on it
silently would change what the numbers mean. Any format Pillow reads.

Classes. The class index is the sorted training class folder names. The held-out split may lack
a training class (a warning: that class is simply not measured) but may not add one (an error:
a net cannot predict a class it never saw); its labels are looked up by class name.

Pixels. Each image is converted to RGB (palette and greyscale expanded, 16-bit greyscale scaled
down, transparency composited onto white, as a browser shows it on a white page), then its
shorter side is resized to ``storage_size`` and the centre ``storage_size²`` square kept: the
long side's edges are cut, as torchvision's ``Resize(S) + CenterCrop(S)`` eval transform does,
so shapes are not distorted. ``squash=True`` resizes the whole image to ``S×S`` instead. The
filter is Pillow's BILINEAR, which widens its support when shrinking (antialiased), the same
filter torchvision's ``Resize`` uses by default, so a teacher pretrained through torchvision sees
the kind of pixels it was trained on. A JPEG far larger than needed is decoded at a reduced DCT
scale first (``Image.draft``, kept at least twice the target size, as ``Image.thumbnail``
does), which makes big photos several times faster to decode at little cost in quality. An
image already ``S×S`` is copied as is.

Cache. Decoding tens of thousands of files takes a minute, and every worker of a study needs the
same pixels, so the decoded ``N×3×S×S`` uint8 arrays are saved under ``models/cache/`` keyed by
the file names, sizes and modification times and by every option that changes the pixels. One
process decodes under a file lock, the others wait and load the result; with ``mmap=True`` they
map the file instead of reading it, so processes on one machine share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kdsearch.data.scan import layout, unreadable_error
from kdsearch.errors import KDSearchError
from kdsearch.meter import meter
from kdsearch.paths import models_dir

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
#: Bumped whenever the pixels or the blob layout of the cache change, so old caches are unused.
FORMAT = 2
#: Where an image has transparency, this shows through.
BACKGROUND = (255, 255, 255)
#: Pillow releases the GIL while it decodes and resizes, so threads decode in parallel.
THREADS = min(4, os.cpu_count() or 1)

Parts = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Folder:
    """One split's files (path, training class index), in ImageFolder's sorted order."""

    path: Path
    classes: tuple[str, ...]
    samples: list[tuple[str, int]]


def scan(root: Path) -> dict[str, Folder]:
    """The training folder and the held-out folder of ``root`` (``test/``, else ``val/``),
    listed and checked by :func:`kdsearch.data.scan.layout`."""
    found = layout(root)
    if found.unused:
        log.warning(
            "%s has both test/ and val/: test/ is the held-out split and val/ is not used "
            "(kdsearch holds its validation split out of train/, see dataset.val_fraction)",
            root,
        )
    if found.unmeasured:
        log.warning(
            "%s has no folder for the training classes %s; their test accuracy is not measured",
            found.held.path,
            ", ".join(map(repr, found.unmeasured)),
        )
    index = {name: i for i, name in enumerate(found.classes)}
    return {
        split: Folder(
            part.path,
            tuple(part.images),
            [(path, index[name]) for name, files in part.images.items() for path in files],
        )
        for split, part in (("train", found.train), ("test", found.held))
    }


def cache_key(
    root: Path, folders: dict[str, Folder], storage_size: int, squash: bool, skip_unreadable: bool
) -> str:
    """Hash of every file's relative name, label, size and time, and of the pixel options."""
    h = hashlib.sha256(repr((FORMAT, storage_size, squash, skip_unreadable)).encode())
    for split in SPLITS:
        for path, label in folders[split].samples:
            st = os.stat(path)
            h.update(
                f"{os.path.relpath(path, root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()[:24]


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` in RGB: 16-bit grey scaled to 8 bits, transparency composited onto white."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" from some decoders)
        grey = np.asarray(img, dtype=np.int64).clip(0, 65535) >> 8
        img = Image.fromarray(grey.astype(np.uint8))
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def fit(img: Image.Image, size: int, squash: bool) -> Image.Image:
    """``img`` as ``size×size``: shorter side to ``size`` and the centre kept, or squashed."""
    from PIL import Image

    if img.size == (size, size):
        return img
    if squash:
        return img.resize((size, size), Image.Resampling.BILINEAR)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    # Resampling only the centre square (box) is resizing the whole and cropping, minus the work.
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def read(path: str, size: int, squash: bool) -> np.ndarray:
    """One file as ``3×size×size`` uint8; OSError and kin where it cannot be decoded."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft(None, (2 * size, 2 * size))  # JPEG only; a no-op for other formats
        img.load()  # Pillow decodes lazily: a truncated file fails here, not on open
        return np.asarray(fit(to_rgb(img), size, squash)).transpose(2, 0, 1)


def decode(
    root: Path, split: str, samples: list[tuple[str, int]], size: int, squash: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """``N×3×S×S`` uint8 pixels and N labels of the readable files, and (path, reason) of
    every file that cannot be decoded, all of them: the caller refuses or skips them.

    Decoding a big folder takes minutes, so it reports progress from the first image
    (:mod:`kdsearch.meter`)."""
    from PIL import Image

    def one(i: int) -> tuple[str, str] | None:
        path = samples[i][0]
        try:
            x[i] = read(path, size, squash)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return path, str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        return None

    x = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    y = np.asarray([label for _, label in samples], dtype=np.int64)
    pool = ThreadPoolExecutor(THREADS)
    failed: list[tuple[str, str] | None] = []
    try:
        with meter(len(samples), f"{split} split", "images decoded") as tick:
            for item in pool.map(one, range(len(samples))):
                failed.append(item)
                tick()
    finally:  # on an error, the files not yet started are not decoded in vain
        pool.shutdown(cancel_futures=True)
    if any(failed):
        keep = np.asarray([item is None for item in failed])
        x, y = x[keep], y[keep]
    return x, y, [item for item in failed if item is not None]


def load(
    root: Path,
    storage_size: int,
    squash: bool = False,
    skip_unreadable: bool = False,
    mmap: bool = False,
) -> tuple[Parts, tuple[str, ...], dict[str, list[str]]]:
    """``{split: (uint8 images, labels)}``, the class names, and the files skipped per split
    (relative to ``root``), from the cache when valid; ``mmap`` maps the cache file."""
    from filelock import FileLock

    folders = scan(root)
    key = cache_key(root, folders, storage_size, squash, skip_unreadable)
    path = models_dir() / "cache" / f"images-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        blob = _read(path, storage_size, mmap)
        if blob is None:
            log.info("decoding the images of %s into %s", root, path)
            blob = {"format": FORMAT, "skipped": {}}
            unreadable = []
            for split in SPLITS:
                x, y, bad = decode(root, split, folders[split].samples, storage_size, squash)
                unreadable += bad
                if len(y) == 0 and skip_unreadable:
                    raise KDSearchError(
                        f"dataset.root: none of the {len(bad)} images in "
                        f"{folders[split].path} is readable; check that they are image files"
                    )
                blob[split] = (torch.from_numpy(x), torch.from_numpy(y))
                blob["skipped"][split] = [os.path.relpath(path, root) for path, _ in bad]
            if unreadable and not skip_unreadable:  # every file at once: one run fixes them all
                raise unreadable_error(unreadable)
            for file, reason in unreadable:  # not `path`: that names the cache written below
                log.info("skipping %s: not a readable image (%s)", file, reason)
            from kdsearch.files import atomic_save

            atomic_save(blob, path)
            if mmap:  # return the file's shared pages, not this process's decoded copy
                # (that copy when the file cannot be mapped back: _read logged why)
                blob = _read(path, storage_size, mmap) or blob
    parts = {split: blob[split] for split in SPLITS}
    return parts, folders["train"].classes, {s: list(blob["skipped"][s]) for s in SPLITS}


def _read(path: Path, size: int, mmap: bool) -> dict[str, Any] | None:
    """The cached blob, or None where there is none or it is unreadable (to be decoded again)."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if blob["format"] != FORMAT:
            raise ValueError(f"format {blob['format']}, expected {FORMAT}")
        for split in SPLITS:
            x, y = blob[split]
            if x.shape[1:] != (3, size, size) or len(x) != len(y) or split not in blob["skipped"]:
                raise ValueError(f"{split} images of shape {tuple(x.shape)}, {len(y)} labels")
        return blob
    except Exception as err:
        log.warning("image cache %s is unreadable (%s); decoding again", path, err)
        return None
