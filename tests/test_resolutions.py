"""Real resolutions end to end: library networks searched on random-resized crops, evaluation
on the centre crop a checkpoint was trained for, and an input size the network cannot take."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SYNTHETIC_SPEC

from kdsearch.config.spec import merge

CLI = Callable[..., subprocess.CompletedProcess[str]]

#: 32 px random-resized crops of synthetic images kept at 40 px.
CROPS: dict[str, Any] = {"image_size": 32, "storage_size": 40, "crop": "random_resized"}


def _write(home: Path, overrides: dict[str, Any], name: str = "res") -> str:
    data = merge(SYNTHETIC_SPEC, {"name": name, **overrides})
    (home / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return f"{name}.yaml"


@pytest.mark.slow
def test_a_torchvision_teacher_and_timm_students_search_on_random_resized_crops(
    cli: CLI, kd_home: Path
) -> None:
    """The issue's first promise: a spec naming a torchvision teacher and timm students (one
    searched as a categorical against a torchvision one) trains its teacher, builds a sampled
    crop cache and completes its trials, each with its student's cost at ``image_size``."""
    spec = _write(
        kd_home,
        {
            "dataset": CROPS,
            "teacher": {
                "arch": "torchvision:resnet18",
                "kwargs": None,
                "checkpoint": "models/tv-teacher.pt",
            },
            "teacher_train": {"epochs": 1},
            "student": {"arch": "timm:test_resnet", "kwargs": None},
            "train": {"epochs": 2},
            "distill": {"teacher_cache": "sampled:2"},
            "search": {
                "n_trials": 3,
                "pruner": {"name": "none"},
                "space": {
                    "student.arch": {
                        "type": "categorical",
                        "choices": ["timm:test_resnet", "torchvision:mobilenet_v3_small"],
                    },
                    "alpha": {"type": "float", "low": 0.1, "high": 0.9},
                },
            },
        },
    )
    for args in (
        ("train-teacher", spec),
        ("create-study", spec, "--storage", "sqlite:///kd.db"),
        ("worker", "--study", "res", "--storage", "sqlite:///kd.db", "--n-workers", "1"),
    ):
        proc = cli(*args, timeout=600)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    assert list((kd_home / "models" / "cache").glob("teacher-*.pt"))
    proc = cli("export-table", "--study", "res", "--storage", "sqlite:///kd.db", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in json.loads(proc.stdout) if r["state"] == "COMPLETE"]
    assert len(rows) == 3
    from kdsearch import nets

    for row in rows:
        arch = row.get("student.arch") or row.get("params_student.arch")
        model = nets.create(arch, num_classes=4)
        assert row["student_flops"] == nets.forward_flops(model, 32), arch


def test_evaluate_tests_on_the_centre_crop_the_checkpoint_was_trained_for(
    cli: CLI, kd_home: Path, teacher_checkpoint: Path
) -> None:
    """A cnn5 trained on 32 px crops of 40 px images only takes 32 px input: `evaluate`
    without a spec must rebuild that view from the checkpoint, and agree with training's own
    test figure."""
    spec = _write(kd_home, {"dataset": CROPS, "teacher": None, "distill": {"alpha": 0.0}})
    proc = cli("train", spec, "--out", "models/s.pt", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = json.loads(proc.stdout)
    proc = cli("evaluate", "models/s.pt", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    ("net", "size"),
    [({"arch": "cnn5", "kwargs": {"num_channels": 4}}, 16)],
)
def test_an_image_size_the_network_cannot_take_is_one_line(
    cli: CLI, kd_home: Path, net: dict[str, Any], size: int
) -> None:
    spec = _write(
        kd_home,
        {"dataset": {"image_size": size}, "student": net, "teacher": None, "distill": {"alpha": 0}},
    )
    proc = cli("train", spec, "--out", "models/s.pt")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"dataset.image_size: {size} px does not fit cnn5" in lines[0]
    assert not (kd_home / "models" / "s.pt").exists()
