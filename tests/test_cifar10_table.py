"""bench/cifar10_table.py: its cells are valid overrides of the CIFAR-10 spec, and its table
is computed from the runs it finds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import kdsearch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import cifar10_table  # noqa: E402


@pytest.mark.parametrize("cell", list(cifar10_table.CELLS))
def test_each_cell_is_the_spec_with_its_overrides(cell: str) -> None:
    """A misspelled key or a value out of range is refused here, not 40 minutes into a run."""
    overrides = {**cifar10_table.CELLS[cell], "train.seed": 2}
    spec = kdsearch.validate(ROOT / cifar10_table.SPEC, overrides)
    assert spec.distill.alpha == overrides["distill.alpha"]
    assert spec.student.kwargs["dropout"] == overrides["student.kwargs.dropout"]
    assert spec.dataset.labeled_fraction == overrides.get("dataset.labeled_fraction", 1.0)
    assert spec.train.seed == 2
    cmd = cifar10_table.command(cell, 2, [], None)
    assert cmd[:3] == ["kdsearch", "train", cifar10_table.SPEC] and "--set=train.seed=2" in cmd
    assert "--device" not in cmd  # the spec's device
    gpu = cifar10_table.command(cell, 2, ["distill.teacher_cache=all_views"], "cuda")
    assert "--set=distill.teacher_cache=all_views" in gpu
    assert gpu[gpu.index("--device") + 1] == "cuda"
    kdsearch.validate(
        ROOT / cifar10_table.SPEC, {**overrides, "distill.teacher_cache": "all_views"}
    )


def test_table_is_the_mean_and_spread_of_the_runs_found(tmp_path: Path) -> None:
    for seed, test in ((0, 0.80), (2, 0.82)):
        run = {"test_accuracy": test, "val_accuracy": 0.81, "wall_seconds": 600.0 * (seed + 1)}
        (tmp_path / f"d0-kd-s{seed}.json").write_text(json.dumps(run))
    (tmp_path / "part-base-s1.json").write_text(
        json.dumps({"test_accuracy": 0.5, "val_accuracy": 0.49, "wall_seconds": 60.0})
    )
    rows = cifar10_table.table(cifar10_table.load(tmp_path)).splitlines()[2:]
    assert rows == [
        "| d0-kd | 0, 2 | 80.00, 82.00 | 81.00 ± 1.41 | 81.00, 81.00 | 10, 30 |",
        "| part-base | 1 | 50.00 | 50.00 | 49.00 | 1 |",
    ]
