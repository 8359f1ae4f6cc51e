"""Where decoded images live: each process's memory, or one memory-mapped file for all.

Four workers on 100,000 images at 224 px would hold 60 GB if each kept its own copy. A
memory-mapped store is one file under ``models/cache/`` that every process on the machine maps
(``torch.load(mmap=True)``): its pages sit once in the page cache, however many workers read
them, and batches are gathered from it by index (:mod:`kdsearch.data.batches`). Small data sets
(CIFAR-10's 180 MB) keep the simpler path, a private copy that goes whole onto the device.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from kdsearch.paths import models_dir

log = logging.getLogger(__name__)

#: ``store: auto`` maps the images when their decoded train and test parts exceed this
#: (CIFAR-10, 180 MB, stays in memory; Imagenette kept at 146 px, 857 MB, is mapped).
AUTO_LIMIT_BYTES = 512 << 20


def mapped(mode: str, nbytes: int) -> bool:
    """Whether ``store: mode`` keeps ``nbytes`` of decoded images in a mapped file."""
    if mode == "auto":
        return nbytes > AUTO_LIMIT_BYTES
    return mode == "mmap"


def digest(x: torch.Tensor, chunk: int = 1024) -> str:
    """SHA-256 of a uint8 tensor's shape and bytes, read a chunk at a time (no full copy)."""
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    for first in range(0, len(x), chunk):
        # numpy's stubs give ndarray its buffer protocol on Python 3.12+ only.
        h.update(x[first : first + chunk].contiguous().numpy())  # type: ignore[arg-type]
    return h.hexdigest()


def share(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor mapped from a file every process shares (written once, under a lock).

    For loaders that build their images in memory; image folders map their decoded cache
    directly.
    """
    from filelock import FileLock

    from kdsearch.files import atomic_save

    path = models_dir() / "cache" / f"store-{digest(x)[:24]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["x"]
            if stored.shape == x.shape:
                return stored
            reason = f"shape {tuple(stored.shape)}"
        except FileNotFoundError:
            reason = None
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
        if reason is not None:
            log.warning("image store %s is unreadable (%s); writing it again", path, reason)
        atomic_save({"x": x.contiguous()}, path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["x"]
