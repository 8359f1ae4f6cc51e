"""Placing worker processes on devices: round-robin, several per GPU, CPU threads split."""

from __future__ import annotations

import os

import pytest

from kdsearch.search.worker import plan


def test_round_robin_over_gpus_with_several_workers_per_gpu():
    placed = plan(5, ["cuda:0", "cuda:3"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in placed] == ["0", "3", "0", "3", "0"]
    # Inside each process the one visible GPU is simply "cuda".
    assert {device for device, _ in placed} == {"cuda"}


def test_cpu_workers_split_the_cores():
    cores = len(os.sched_getaffinity(0))
    placed = plan(2, ["cpu"])
    threads = [int(env["KDSEARCH_THREADS"]) for _, env in placed]
    assert threads == [max(1, cores // 2)] * 2
    assert all("CUDA_VISIBLE_DEVICES" not in env for _, env in placed)


def test_cpu_threads_count_only_cpu_workers():
    cores = len(os.sched_getaffinity(0))
    placed = plan(2, ["cuda:0", "cpu"])
    assert int(placed[1][1]["KDSEARCH_THREADS"]) == cores


def test_cpu_threads_split_only_the_cores_this_process_may_use():
    """A container limited by --cpuset-cpus (here: taskset to one core) sees one core."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        threads = int(plan(1, ["cpu"])[0][1]["KDSEARCH_THREADS"])
    finally:
        os.sched_setaffinity(0, allowed)
    assert threads == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell apart")
def test_threads_the_user_set_win(monkeypatch):
    """Two worker containers on a 2-core host: KDSEARCH_THREADS=1 in each, not 2 threads each."""
    monkeypatch.setenv("KDSEARCH_THREADS", "1")
    assert [env["OMP_NUM_THREADS"] for _, env in plan(1, ["cpu"])] == ["1"]
