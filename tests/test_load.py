"""bench/load.py at N = 16 on PostgreSQL: the budget exact, nothing lost, RUNNING or trained
twice, and the connections bounded, counted from the storage after a real run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402

#: Connections one worker may hold (SQLAlchemy's pool and the heartbeat thread), documented in
#: docs/scale-out.md; a leak per trial would pass it within a few trials.
CONNECTIONS_PER_WORKER = 3


@pytest.mark.slow
def test_sixteen_workers_on_postgresql(pg_url, tmp_path):
    row = load.run(pg_url, 16, 48, proxy=False, home=tmp_path)
    assert row["exit_code"] == 0
    assert (row["finished"], row["overshoot"]) == (48, 0)
    assert (row["lost"], row["running"], row["duplicates"]) == (0, 0, 0)
    assert row["storage_errors"] == 0
    assert 16 <= row["pg_connections_max"] <= 16 * CONNECTIONS_PER_WORKER
