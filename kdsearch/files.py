"""Tensor files on disk: written atomically, read back with ``weights_only`` and one-line errors.

Checkpoints, resume states, teacher caches and decoded-image caches all go through these two
functions, so a killed process never leaves half a file, a full disk is a one-line error that
leaves nothing behind, and a broken file is a one-line error.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdsearch.errors import KDSearchError


class DiskFull(KDSearchError):
    """No space left where kdsearch writes: nothing was written; a worker re-queues its trial
    (it resumes from its last epoch once there is space) and stops."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        _raise_if_full(err, path)
        raise
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        _raise_if_full(err, path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


#: torch.save reports a full disk as an opaque RuntimeError ("unexpected pos ..."); a failed
#: write with less than this much space left on the disk is taken for a full disk.
NEARLY_FULL = 1 << 20


def _raise_if_full(err: Exception, path: Path) -> None:
    """Raise :class:`DiskFull` if ``err`` is a write that failed for want of space."""
    if isinstance(err, OSError):
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    else:
        full = not path.parent.exists() or shutil.disk_usage(path.parent).free < NEARLY_FULL
    if not full:
        return
    raise DiskFull(
        f"disk full: no space left to write {path}; free space on that disk (or set "
        "KDSEARCH_HOME to a larger one) and run the command again"
    ) from err


def safe_load(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise KDSearchError(f"{what}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KDSearchError(
            f"{what}: {path} is not a loadable weights file ({reason}); "
            "re-create it or import it with `kdsearch import-checkpoint`"
        ) from None
