"""What optuna-dashboard shows of a new study, read through the dashboard's own HTTP API.

``kdsearch dashboard`` runs as a real server process on a free port; the test reads the URL it
prints and asks the API what a browser would see: the metric's name, the spec as a note, the
teacher as attributes and the spec file as an artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import free_port

STORAGE = "sqlite:///kd.db"


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


@pytest.fixture
def server(kd_home: Path) -> Iterator[Callable[[], tuple[str, str]]]:
    """Starts ``kdsearch dashboard`` on a free port; returns (first line printed, base URL)."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[str, str]:
        port = free_port()
        cmd = [sys.executable, "-m", "kdsearch", "dashboard", "--storage", STORAGE]
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            cwd=kd_home,
            env={**os.environ, "KDSEARCH_HOME": str(kd_home), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline().strip()
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):  # the line is printed just before the server binds
            try:
                get(base + "/api/studies")
                break
            except OSError:
                time.sleep(0.1)
        return line, base

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_names_the_metric_and_shows_the_spec(
    cli: Callable[..., Any], write_spec: Callable[..., Path], server: Any
) -> None:
    spec = write_spec({"search": {"artifact_store": "artifacts"}})
    proc = cli("create-study", str(spec), "--storage", STORAGE)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="synth", storage=STORAGE)
    assert study.metric_names == ["val_accuracy"]

    line, base = server()
    assert line.startswith(f"optuna-dashboard on {base}/dashboard for {STORAGE}")
    assert line.endswith(", artifacts in artifacts")  # found in the study's spec
    status, page = get(f"{base}/dashboard")
    assert status == 200 and b"<html" in page.lower()

    _, body = get(f"{base}/api/studies/{study._study_id}")
    shown = json.loads(body)
    assert shown["objective_names"] == ["val_accuracy"]
    note = shown["note"]["body"]
    assert "```yaml" in note
    stored = yaml.safe_load(note.split("```yaml", 1)[1].split("```", 1)[0])
    assert stored == study.user_attrs["kdsearch_spec"]  # the whole spec, readable
    attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
    assert attrs["teacher_arch"] == "cnn5"
    assert attrs["teacher_checkpoint"] == str(Path.cwd() / "models" / "teacher.pt")
    assert 0 < float(attrs["teacher_test_accuracy"]) <= 1
    assert [a["filename"] for a in shown["artifacts"]] == ["spec.yaml"]
    artifact = shown["artifacts"][0]["artifact_id"]
    _, content = get(f"{base}/artifacts/{study._study_id}/{artifact}")
    assert yaml.safe_load(content) == study.user_attrs["kdsearch_spec"]
