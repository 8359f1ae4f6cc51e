"""``kdsearch bench`` end to end, at a size that runs in seconds.

Only the shape of the output is checked: timings depend on the machine and on whatever else
runs on it, so the speed goals are measured and recorded in ``bench/RESULTS.md``, never asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable

import pytest

from kdsearch import api

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.slow
def test_bench_json(cli: CLI) -> None:
    proc = cli("bench", "--device", "cpu", "--images", "256", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout holds the one JSON object and nothing else
    for key in (
        "reference_img_s",
        "kdsearch_img_s",
        "student_only_img_s",
        "cache_build_s",
        "cache_bytes",
        "kdsearch_vs_reference",
        "kdsearch_vs_student_only",
    ):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["device"] == "cpu"
    assert result["images"] == 256
    assert result["cache_mode"] == "sampled:1"
    # 256 images x 1 view x 10 classes of fp16 logits
    assert result["cache_bytes"] == 256 * 1 * 10 * 2
    # The text table is drawn from the same figures, one row per timed variant.
    variants = [t["variant"] for t in result["timings"]]
    assert len(variants) == 3 and result["timings"][0]["images"] == 256
    text = api.loop_benchmark_text(result).splitlines()
    rows = [line for line in text if line.startswith(tuple(variants))]
    assert len(rows) == 3 and rows[0].endswith("1.0x"), text


def test_bench_rejects_a_last_batch_of_one(cli: CLI) -> None:
    proc = cli("bench", "--images", "129")
    assert proc.returncode == 2
    assert "--images: 129" in proc.stderr and "use 130" in proc.stderr
