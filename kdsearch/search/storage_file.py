"""The storage URL read from a file only its owner can read: how a password reaches a worker
that a scheduler started without passing through anything the scheduler keeps.

Slurm records a job's script, its arguments and (with ``--export``) its environment, and shows
them to others (``scontrol show job -d``); a password in ``--storage`` or ``KDSEARCH_STORAGE``
would be kept there. ``KDSEARCH_STORAGE_FILE`` names a file holding the URL instead: only the
path travels with the job, and each worker reads the URL when it starts. The file must be
readable by its owner alone (``chmod 600``), like libpq's ``~/.pgpass``; one that the group or
others can read is refused, since anyone on the cluster could read the password from it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kdsearch.errors import KDSearchError

ENV = "KDSEARCH_STORAGE_FILE"


def read(path: str | Path) -> str:
    """The URL in ``path`` (its first non-blank line), refused unless only its owner can read
    it."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as err:
        raise KDSearchError(
            f"storage file {path}: cannot read it ({err.strerror}); write the database URL into "
            f"it and chmod 600 {path}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KDSearchError(
            f"storage file {path} is readable by others (mode {stat.S_IMODE(mode):04o}), and it "
            f"holds the database password; chmod 600 {path}"
        )
    url = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not url:
        raise KDSearchError(f"storage file {path} is empty; write the database URL into it")
    return url


def from_env() -> str | None:
    """The URL in the file ``KDSEARCH_STORAGE_FILE`` names; None when it is not set."""
    path = os.environ.get(ENV)
    return read(path) if path else None
