"""The shipped studies under ``studies/``: each one a user may run must validate as shipped.

Shared settings live in ``studies/base/`` and reach a study only through ``base:``, so these
tests read every study the way the CLI does, merged, and check what the merge must produce.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import optuna
import pytest
from PIL import Image

from kdsearch.config import spec as specs
from kdsearch.search import study as studies
from kdsearch.search.objective import suggest

STUDIES = Path(__file__).resolve().parents[1] / "studies"
SPECS = sorted(STUDIES.glob("*.yaml"))
RESNET18_DISTILL = sorted(STUDIES.glob("resnet18_distill_*.yaml"))

#: Grid studies and the grid points they must visit (the whole product of their choices).
GRIDS = {
    "cnn_distill_grid": 5 * 8,
    "cnn_distill_grid_dropout": 5 * 5,
    "cnn_distill_grid_dropout_extra": 2 * 2,
    "cnn_partial_05_grid": 5 * 9,
    "cnn_partial_05": 2,
    "cnn_partial_20": 2,
    "cnn_partial_100": 2,
    "digits_partial_05": 2,
    "digits_partial_20": 2,
    "digits_partial_100": 2,
}


def test_the_studies_exist() -> None:
    names = {p.stem for p in SPECS}
    assert set(GRIDS) <= names
    assert {"base_cnn", "base_cnn_nodropout", "base_resnet18", "cnn_distill"} <= names
    assert {"cifar10_jpg"} <= names
    assert len(RESNET18_DISTILL) == 4


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_study_validates_through_the_cli(
    path: Path, cli: Callable[..., CompletedProcess[str]], kd_home: Path
) -> None:
    dataset = specs.load(path).dataset
    if dataset.name == "imagefolder":  # validate lists the folder: give it one, as unpacked
        for split in ("train", "val"):
            (kd_home / dataset.root / split / "a").mkdir(parents=True)
            Image.new("RGB", (40, 30)).save(kd_home / dataset.root / split / "a" / "0.png")
    proc = cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    # A study inherits nothing of its base's identity: its name is its file's.
    assert f"(study {path.stem}," in proc.stdout


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_grid_study_visits_every_point_once(name: str) -> None:
    spec = specs.load(STUDIES / f"{name}.yaml")
    assert spec.search.sampler["name"] == "grid"
    study = optuna.create_study(sampler=studies.make_sampler(spec))
    # Optuna's GridSampler stops the study once every point has run.
    study.optimize(lambda t: float(len(suggest(t, spec.search.space))), n_trials=10 * GRIDS[name])
    points = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(study.trials) == len(points) == GRIDS[name]
    assert spec.search.n_trials == GRIDS[name]


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_grid_is_one_grid_for_every_worker(name: str) -> None:
    """Workers (and a restarted worker) get different sampler seeds, yet share one grid.

    A grid point is recorded by its index, so every worker must map an index to the same
    values; otherwise one worker's visited index is another's unvisited point, and a search
    repeats some points and never trains others.
    """
    spec = specs.load(STUDIES / f"{name}.yaml")
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name=name)
    for trial in range(GRIDS[name]):
        # Each trial taken by another worker with its own seed (studies.worker_seed differs per
        # worker and process), as with several workers or a resumed search.
        sampler = studies.make_sampler(spec, seed=trial)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        study.optimize(lambda t: float(len(suggest(t, spec.search.space))), n_trials=1)
    points = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(points) == GRIDS[name], f"{GRIDS[name] - len(points)} grid points never ran"


@pytest.mark.parametrize("name", [n for n in GRIDS if "partial" in n and "grid" not in n])
def test_partial_study_compares_baseline_with_distillation_only(name: str) -> None:
    spec = specs.load(STUDIES / f"{name}.yaml")
    # CIFAR-10: the reference's 5% experiment (alpha 0.95, T 2, 50 epochs, dropout 0).
    cifar = name.startswith("cnn")
    assert spec.search.space["alpha"].choices == [0.0, 0.95 if cifar else 0.9]
    if cifar:
        assert (spec.distill.temperature, spec.train.epochs) == (2.0, 50)
        assert spec.student.kwargs["dropout"] == 0.0
    # Anything else in the space (inherited from a TPE base) is pinned to one value.
    assert all(len(p.choices) == 1 for k, p in spec.search.space.items() if k != "alpha")
    fraction = name.rsplit("_", 1)[1]
    key = "labeled_fraction" if name.startswith("digits") else "subset_fraction"
    assert getattr(spec.dataset, key) == float(f"0.{fraction}" if fraction != "100" else 1)


def test_digits_partial_keeps_digits_quick_training() -> None:
    quick = specs.load(STUDIES / "digits_quick.yaml")
    partial = specs.load(STUDIES / "digits_partial_20.yaml")
    assert partial.train == quick.train
    assert partial.teacher == quick.teacher
    assert partial.student == quick.student
    assert partial.distill.temperature == quick.distill.temperature == 4


@pytest.mark.parametrize("path", RESNET18_DISTILL, ids=[p.stem for p in RESNET18_DISTILL])
def test_resnet18_distill_uses_the_reference_sgd_recipe(path: Path) -> None:
    spec = specs.load(path)
    opt = spec.train.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert not opt.nesterov
    # The reference's epochs per teacher, its step 150 and its fixed point (alpha 0.95, T 6).
    epochs = {"wrn28_10": 170, "preresnet110": 170, "resnext29_8x64d": 175, "densenet100": 200}
    assert spec.teacher is not None and spec.train.epochs == epochs[spec.teacher.arch]
    assert (spec.train.schedule.name, spec.train.schedule.step_size) == ("step", 150)
    assert (spec.distill.alpha, spec.distill.temperature) == (0.95, 6.0)
    assert spec.student.arch == "resnet18"
    assert spec.teacher is not None
    assert spec.teacher.checkpoint == f"models/{spec.teacher.arch}-cifar10.pt"
    # The recipe is fixed: only distillation is searched.
    assert set(spec.search.space) == {"alpha", "temperature"}


def test_reference_settings_that_were_checked() -> None:
    """The reference's exact settings (params.json, train.py history and logs)."""
    baseline = specs.load(STUDIES / "base_resnet18.yaml").train.schedule
    assert (baseline.name, baseline.step_size, baseline.gamma) == ("step", 100, 0.1)
    assert specs.load(STUDIES / "cnn_distill_grid.yaml").student.kwargs["dropout"] == 0.0
    dropout = specs.load(STUDIES / "cnn_distill_grid_dropout.yaml")
    assert dropout.student.kwargs["dropout"] == 0.5
    assert specs.load(STUDIES / "cnn_distill.yaml").distill.temperature == 20.0
    wrn = specs.load(STUDIES / "resnet18_distill_wrn.yaml").teacher
    assert wrn is not None and wrn.kwargs == {"dropout": 0.3}
