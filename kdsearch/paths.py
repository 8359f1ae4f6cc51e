"""Where relative paths in a spec point.

A spec stored on a study is read by workers on many machines, so its relative paths (data
root, teacher checkpoint, checkpoints, caches) resolve against ``KDSEARCH_HOME`` when it is
set, else the current directory: run every worker from a checkout with the same layout, or set
``KDSEARCH_HOME`` to the shared folder that holds ``data/`` and ``models/``.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("KDSEARCH_HOME", ".")).expanduser()


def resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else home() / path


def models_dir() -> Path:
    return resolve("models")
