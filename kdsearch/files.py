"""Tensor files on disk: written atomically, read back with ``weights_only`` and one-line errors.

Checkpoints, resume states, teacher caches and decoded-image caches all go through these two
functions, so a killed process never leaves half a file, and a broken file is a one-line error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdsearch.errors import KDSearchError


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
