"""What an image folder holds, checked before anything trains on it.

Two depths, because a user runs them at different moments. :func:`layout` only lists folders
and file names (seconds, even for ImageNet): the split folders, the classes of each, images and
ignored files per class, and every problem a listing can show (no such folder, an empty class,
a class only in the held-out split), each refused with the fix. :func:`inspect` opens every
image, so it finds every file that cannot be decoded at once, with a count, rather than one per
run; it also measures sizes and counts greyscale images, which ``kdsearch init`` proposes
``image_size`` from.

The listing is the one :mod:`kdsearch.data.imagefolder` trains on: torchvision ImageFolder's
rules (classes are the sorted subfolders, images found recursively by extension, sorted), so
what ``validate`` counts is what a worker decodes. Hidden folders (``.ipynb_checkpoints``) are
not classes. This module imports neither torch nor numpy.
"""

from __future__ import annotations

import logging
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kdsearch.errors import KDSearchError

log = logging.getLogger(__name__)

#: torchvision ImageFolder's extensions (``IMG_EXTENSIONS``), matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Held-out folder names, in order of preference.
HELD_OUT = ("test", "val")
#: Pillow modes with one channel of grey (1-bit, 8-bit, 16/32-bit and float).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
#: Pillow releases the GIL while it decodes, so threads decode in parallel.
THREADS = min(4, os.cpu_count() or 1)
#: Unreadable files named in one error line; the rest are counted.
LISTED = 20


@dataclass(frozen=True)
class Split:
    """One split folder: its image files per class (sorted, as ImageFolder lists them) and how
    many other files it holds (not images by extension; ImageFolder skips them silently)."""

    path: Path
    images: dict[str, list[str]]
    ignored: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def count(self) -> int:
        return sum(len(files) for files in self.images.values())


@dataclass(frozen=True)
class Layout:
    """An ImageNet-style folder: ``train/`` and the held-out ``test/`` (else ``val/``)."""

    root: Path
    train: Split
    held: Split
    #: ``val`` where the root also has ``test/``: that folder is not used.
    unused: str | None

    @property
    def classes(self) -> tuple[str, ...]:
        """The class index: the sorted training class folders."""
        return tuple(self.train.images)

    @property
    def unmeasured(self) -> list[str]:
        """Training classes the held-out split lacks: their test accuracy is not measured."""
        return [name for name in self.classes if name not in self.held.images]

    def summary(self) -> dict[str, object]:
        """Plain data for ``validate --json`` and ``init``'s report."""
        return {
            "root": str(self.root),
            "classes": len(self.classes),
            "held_out": self.held.name,
            "images": {split.name: split.count for split in (self.train, self.held)},
            "ignored_files": self.train.ignored + self.held.ignored,
            "unmeasured_classes": self.unmeasured,
        }


@dataclass(frozen=True)
class Contents:
    """What decoding every image of a layout found."""

    #: (width, height) of every readable image.
    sizes: list[tuple[int, int]]
    greyscale: int
    #: (path, reason) of every file that cannot be decoded.
    unreadable: list[tuple[str, str]]

    @property
    def median_short_side(self) -> int:
        return round(statistics.median(min(size) for size in self.sizes)) if self.sizes else 0

    def summary(self) -> dict[str, object]:
        shorts = sorted(min(size) for size in self.sizes)
        return {
            "readable": len(self.sizes),
            "unreadable": len(self.unreadable),
            "unreadable_files": [name for name, _ in self.unreadable],
            "greyscale": self.greyscale,
            "short_side": {
                "min": shorts[0] if shorts else 0,
                "median": self.median_short_side,
                "max": shorts[-1] if shorts else 0,
            },
        }


def layout(root: Path) -> Layout:
    """List ``root``'s splits and classes; refuse, with the fix, what training would trip on."""
    if not root.exists():
        raise KDSearchError(
            f"dataset.root: {root} does not exist; set dataset.root to the folder that holds "
            "train/<class>/ and val/<class>/ (or test/<class>/), relative to KDSEARCH_HOME or "
            "the current folder"
        )
    if not root.is_dir():
        raise KDSearchError(f"dataset.root: {root} is a file; name the folder that holds train/")
    held = [name for name in HELD_OUT if (root / name).is_dir()]
    if not (root / "train").is_dir() or not held:
        missing = "train" if not (root / "train").is_dir() else "test or val"
        raise KDSearchError(
            f"dataset.root: {root} has no {missing} folder; an imagefolder data set needs "
            f"{root}/train/<class>/ and {root}/test/<class>/ (or ImageNet's {root}/val/<class>/), "
            "image files inside"
        )
    found = Layout(root, _split(root / "train"), _split(root / held[0]), next(iter(held[1:]), None))
    extra = [name for name in found.held.images if name not in found.train.images]
    if extra:
        name, more = _first_and_more(extra)
        raise KDSearchError(
            f"dataset.root: class {name!r}{more} is in {found.held.name}/ but not in train/ (a net "
            f"cannot learn a class it never saw); add {root}/train/{name}/ with images or remove "
            f"{found.held.path}/{name}"
        )
    return found


def _first_and_more(names: list[str]) -> tuple[str, str]:
    """The first of ``names``, and " (and 'b', 'c')" for the rest, for a one-line error."""
    more = f" (and {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""
    return names[0], more


def _split(path: Path) -> Split:
    """``path``'s classes and their image files, listed as torchvision's ImageFolder does."""
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise KDSearchError(
            f"dataset.root: {path} has no class folders; sort its images into {path}/<class>/ "
            "(ImageNet's flat val/ needs its labels file to do that)"
        )
    ignored = sum(1 for e in os.scandir(path) if not e.is_dir())
    images: dict[str, list[str]] = {}
    for name in classes:
        files = []
        for folder, _, names in sorted(os.walk(path / name, followlinks=True)):
            for file in sorted(names):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(folder, file))
                else:
                    ignored += 1
        images[name] = files
    empty = [name for name, files in images.items() if not files]
    if empty:
        name, more = _first_and_more(empty)
        raise KDSearchError(
            f"dataset.root: class {name!r}{more} has no images in {path.name}/ ({path / name} "
            f"holds no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} file); add images or remove "
            "the folder"
        )
    return Split(path, images, ignored)


def inspect(found: Layout) -> Contents:
    """Open and decode every image of both splits (a truncated file fails only when decoded)."""
    from PIL import Image

    def one(path: str) -> tuple[tuple[int, int] | None, bool, str | None]:
        try:
            with Image.open(path) as img:
                size, grey = img.size, img.mode in GREY_MODES
                img.draft(None, (64, 64))  # JPEG: every block still read, at an eighth the work
                img.load()
            return size, grey, None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return None, False, str(err).splitlines()[0] if str(err).strip() else type(err).__name__

    paths = [p for split in (found.train, found.held) for fs in split.images.values() for p in fs]
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(one, paths))
    sizes = [size for size, _, _ in results if size is not None]
    bad = [(path, reason) for path, (_, _, reason) in zip(paths, results, strict=True) if reason]
    return Contents(sizes, sum(grey for _, grey, _ in results), bad)


def unreadable_error(unreadable: list[tuple[str, str]]) -> KDSearchError:
    """One line naming every file that cannot be decoded (the first :data:`LISTED`, and a count
    of the rest), and the two ways out."""
    fix = "replace or delete {}, or set dataset.skip_unreadable: true to skip such files"
    if len(unreadable) == 1:
        name, reason = unreadable[0]
        return KDSearchError(
            f"dataset.root: {name} is not a readable image ({reason}); " + fix.format("it")
        )
    listed = ", ".join(f"{name} ({reason})" for name, reason in unreadable[:LISTED])
    rest = f", and {len(unreadable) - LISTED} more" if len(unreadable) > LISTED else ""
    return KDSearchError(
        f"dataset.root: {len(unreadable)} files are not readable images: {listed}{rest}; "
        + fix.format("them")
    )
