"""docker/check.sh for real: the worker image built, PostgreSQL, the dashboard and two CPU
worker containers run a digits study to its budget, and the host reads the study.

Runs on request (``make container-check``, which sets KDSEARCH_CONTAINER_CHECK=1: 2-5 minutes,
a 6.7 GB image, so not in every suite run), where a container engine (docker, else podman)
answers and the two images the check builds on are already on the machine: it pulls nothing, so
a host without a registry uses the local images of docker/local-images.sh
(KDSEARCH_BASE_IMAGE / KDSEARCH_POSTGRES_IMAGE name others). Skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
#: Docker Hub's images, else docker/local-images.sh's.
CANDIDATES = {
    "KDSEARCH_BASE_IMAGE": ["python:3.11-slim", "localhost/kdsearch-base:bookworm"],
    "KDSEARCH_POSTGRES_IMAGE": ["postgres:15", "localhost/kdsearch-postgres:15"],
}


def engine() -> str | None:
    for name in ("docker", "podman"):
        if (
            shutil.which(name)
            and not subprocess.run([name, "info"], capture_output=True).returncode
        ):
            return name
    return None


def present(engine: str, image: str) -> bool:
    return not subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode


@pytest.mark.slow
def test_check_script_runs_a_study_in_containers(tmp_path: Path) -> None:
    if os.environ.get("KDSEARCH_CONTAINER_CHECK") != "1":
        pytest.skip("on request: make container-check (KDSEARCH_CONTAINER_CHECK=1)")
    found = engine()
    if found is None:
        pytest.skip("no container engine answers (docs/containers.md says how to set one up)")
    env = {**os.environ, "KDSEARCH_ENGINE": found}
    for var, names in CANDIDATES.items():
        names = [os.environ[var]] if os.environ.get(var) else names
        image = next((n for n in names if present(found, n)), None)
        if image is None:
            pytest.skip(f"none of {names} is on this machine (docker/local-images.sh makes one)")
        env[var] = image
    env["KDSEARCH"] = str(Path(sys.executable).with_name("kdsearch"))
    env["KDSEARCH_CHECK_PG_PORT"] = str(free_port())
    env["KDSEARCH_CHECK_DASHBOARD_PORT"] = str(free_port())
    out = tmp_path / "check"
    proc = subprocess.run(
        ["bash", str(ROOT / "docker" / "check.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    check = json.loads((out / "check.json").read_text())
    assert check["worker_exit_codes"] == [0, 0] and check["dashboard_http"] == "200"
    assert check["files_holding_the_password"] == 0
    (status,) = check["status"]
    # The exact budget (8 search trials) and both confirmation runs, nothing left running.
    assert status["finished"] == status["n_trials"] == 8, status
    assert status["states"]["running"] == 0 and status["states"]["fail"] == 0, status
    assert status["confirm"]["complete"] == 2, status
    # The host's export-table: one row per completed configuration, confirmations joined in.
    complete = status["states"]["complete"] - status["confirm"]["complete"]
    assert check["table_rows"] == complete > 0, (check["table_rows"], status)
