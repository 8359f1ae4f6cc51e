"""Placing worker processes on devices: round-robin, several per GPU, CPU threads split."""

from __future__ import annotations

import os

from kdsearch.search.worker import plan


def test_round_robin_over_gpus_with_several_workers_per_gpu():
    placed = plan(5, ["cuda:0", "cuda:3"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in placed] == ["0", "3", "0", "3", "0"]
    # Inside each process the one visible GPU is simply "cuda".
    assert {device for device, _ in placed} == {"cuda"}


def test_cpu_workers_split_the_cores():
    cores = os.cpu_count() or 1
    placed = plan(2, ["cpu"])
    threads = [int(env["KDSEARCH_THREADS"]) for _, env in placed]
    assert threads == [max(1, cores // 2)] * 2
    assert all("CUDA_VISIBLE_DEVICES" not in env for _, env in placed)


def test_cpu_threads_count_only_cpu_workers():
    cores = os.cpu_count() or 1
    placed = plan(2, ["cuda:0", "cpu"])
    assert int(placed[1][1]["KDSEARCH_THREADS"]) == cores
