"""One thread knob for every command: ``kdsearch --threads N`` or ``KDSEARCH_THREADS``.

``evaluate --json`` reports the CPU threads torch ran with; the machine has at least two
cores, so a count of 1 is the knob at work, not the default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import run_cli

from kdsearch import api
from kdsearch.errors import KDSearchError


def threads_used(checkpoint: Path, home: Path, *before: str, env: dict[str, str]) -> int:
    proc = run_cli(
        *before, "evaluate", str(checkpoint), "--json", "--device", "cpu", cwd=home, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["threads"])


def test_threads_flag_and_variable_reach_torch(teacher_checkpoint: Path, kd_home: Path) -> None:
    assert len(os.sched_getaffinity(0)) >= 2, "needs two cores to tell 1 thread from the default"
    plain = {"KDSEARCH_THREADS": "", "OMP_NUM_THREADS": "", "KDSEARCH_HOME": str(kd_home)}
    assert threads_used(teacher_checkpoint, kd_home, "--threads", "1", env=plain) == 1
    assert threads_used(teacher_checkpoint, kd_home, env={**plain, "KDSEARCH_THREADS": "1"}) == 1


@pytest.mark.parametrize(
    ("before", "env", "says"),
    [
        (("--threads", "0"), {}, "--threads '0'"),
        (("--threads", "-1"), {}, "--threads '-1'"),
        ((), {"KDSEARCH_THREADS": "many"}, "KDSEARCH_THREADS 'many'"),
    ],
)
def test_a_bad_thread_count_is_one_line(
    kd_home: Path, before: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    proc = run_cli(*before, "status", "--storage", "sqlite:///kd.db", cwd=kd_home, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"kdsearch: error: {says}: a thread count is a whole number >= 1, e.g. 2"
    )
    assert not (kd_home / "kd.db").exists()


def test_a_torch_imported_already_is_resized(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` called from Python after torch was imported: its pool is resized too."""
    import torch

    from kdsearch import threads

    monkeypatch.setenv("KDSEARCH_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # both restored afterwards
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.configure(None) == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_a_bad_thread_count_stops_workers_started_from_python(
    write_spec: Callable[..., Path], kd_home: Path, monkeypatch: pytest.MonkeyPatch, n_workers: int
) -> None:
    """``api.run_workers`` has no CLI to parse ``KDSEARCH_THREADS`` first: the worker (one, in
    this process) and the plan of worker processes (two) say the same one line, and no trial
    starts."""
    url = f"sqlite:///{kd_home}/kd.db"
    api.create_study(api.validate(write_spec()), url)
    monkeypatch.setenv("KDSEARCH_THREADS", "many")
    with pytest.raises(KDSearchError) as raised:
        api.run_workers("synth", url, n_workers=n_workers, devices="cpu")
    assert str(raised.value) == (
        "KDSEARCH_THREADS 'many': a thread count is a whole number >= 1, e.g. 2"
    )
    assert optuna.load_study(study_name="synth", storage=url).trials == []


def test_a_bad_thread_count_stops_the_worker_command(
    write_spec: Callable[..., Path], kd_home: Path
) -> None:
    url = f"sqlite:///{kd_home}/kd.db"
    api.create_study(api.validate(write_spec()), url)
    proc = run_cli(
        "worker", "--study", "synth", "--storage", url, cwd=kd_home, env={"KDSEARCH_THREADS": "0"}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "kdsearch: error: KDSEARCH_THREADS '0': a thread count is a whole number >= 1, e.g. 2"
    )
    assert optuna.load_study(study_name="synth", storage=url).trials == []
