"""bench/workers.py: throughput from the trials' own images and times, for 1 worker and N."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import workers  # noqa: E402


@pytest.mark.slow
def test_one_worker_against_two_on_real_processes(
    write_spec: Callable[..., Path], kd_home: Path
) -> None:
    spec = write_spec({"train": {"epochs": 2}})
    result = workers.bench(str(spec), {}, "cpu", 2, 1, kd_home)
    one, two = result["workers-1"], result["workers-2"]
    assert (one["trials"], two["trials"]) == (1, 2)
    # 320 synthetic images, a fifth held out: 256 trained per epoch, 2 epochs a trial. The count
    # comes from each trial's rounded rate and seconds, so it is exact to about 1 %.
    assert one["images"] == pytest.approx(2 * 256, rel=0.01)
    assert two["images"] == pytest.approx(2 * 2 * 256, rel=0.01)
    for figures in (one, two):
        rate = figures["images"] / figures["span_s"]
        assert figures["aggregate_img_s"] == pytest.approx(rate, rel=0.005)
        assert figures["train_s_median"] <= figures["trial_s_median"] <= figures["span_s"]
    assert result["ratio"] == round(two["aggregate_img_s"] / one["aggregate_img_s"], 2)
