"""A user's own image folder: ``kdsearch init`` writes a spec from it, and ``validate`` checks
the data (quickly by default, every image with ``--data``), one line and the fix per problem.

The folder is real: CIFAR-10 JPEG files from ../shared/data laid out as ImageNet's
train/<class>/ and val/<class>/ (:mod:`image_folders`); a truncated JPEG is a real one's first
200 bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from image_folders import own_images
from PIL import Image

from kdsearch.config import starter
from kdsearch.config.spec import DatasetSpec
from kdsearch.data import datasets
from kdsearch.errors import KDSearchError

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def real_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of real JPEG files, read from the archive once per session."""
    return own_images(tmp_path_factory.mktemp("own") / "pets", classes=3, train=12, val=4)


@pytest.fixture
def pets(kd_home: Path, real_folder: Path) -> Path:
    """A copy of :func:`real_folder` in this test's home, free to break."""
    return Path(shutil.copytree(real_folder, kd_home / "pets"))


def _spec(home: Path, root: str = "pets", **dataset: object) -> Path:
    path = home / "pets.yaml"
    data = {
        "name": "pets",
        "dataset": {"name": "imagefolder", "root": root, **dataset},
        "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_two_unreadable_images_are_both_named_by_validate_data(pets: Path, cli: CLI) -> None:
    _truncate(pets / "train" / "bird" / "0003.jpg")
    (pets / "val" / "airplane" / "0001.jpg").write_bytes(b"not a jpeg")
    spec = _spec(pets.parent)
    quick = cli("validate", str(spec))  # lists files, decodes none: passes
    assert quick.returncode == 0, quick.stderr
    assert "# data: " in quick.stdout and "3 classes, 36 in train/, 12 in val/" in quick.stdout
    line = _one_line_error(cli("validate", str(spec), "--data"))
    assert "2 files are not readable images" in line
    assert "pets/train/bird/0003.jpg (" in line
    assert "val/airplane/0001.jpg (cannot identify image file" in line
    assert "replace or delete them, or set dataset.skip_unreadable: true" in line


def test_training_data_names_every_unreadable_image_at_once(pets: Path) -> None:
    """What create-study, train and the workers open: both files in one error, not the first."""
    _truncate(pets / "train" / "bird" / "0003.jpg")
    _truncate(pets / "val" / "automobile" / "0000.jpg")
    with pytest.raises(KDSearchError) as err:
        datasets.load_raw(DatasetSpec(name="imagefolder", root=str(pets)))
    msg = str(err.value)
    assert "2 files are not readable images" in msg and "\n" not in msg
    assert "pets/train/bird/0003.jpg (" in msg and "pets/val/automobile/0000.jpg (" in msg


def test_skip_unreadable_lets_validate_data_pass_and_count_them(pets: Path, cli: CLI) -> None:
    _truncate(pets / "train" / "bird" / "0003.jpg")
    grey = pets / "train" / "automobile" / "0000.jpg"
    Image.open(grey).convert("L").save(grey)
    (pets / "train" / "automobile" / "notes.txt").write_text("not an image")
    (pets / "val" / "labels.csv").write_text("not an image either")
    proc = cli("validate", str(_spec(pets.parent, skip_unreadable=True)), "--data")
    assert proc.returncode == 0, proc.stderr
    assert "2 non-image files ignored" in proc.stdout
    assert "# images: 47 decoded, 1 unreadable (skipped), 1 greyscale" in proc.stdout


def test_empty_class_fails_validate_with_the_fix(pets: Path, cli: CLI) -> None:
    (pets / "train" / "beagle").mkdir()
    (pets / "train" / "beagle" / "Thumbs.db").write_bytes(b"\0")
    line = _one_line_error(cli("validate", str(_spec(pets.parent))))
    assert "dataset.root: class 'beagle' has no images in train/" in line
    assert "pets/train/beagle holds no jpg/jpeg/png" in line
    assert line.endswith("add images or remove the folder")


def test_class_missing_from_train_fails_validate_with_the_fix(pets: Path, cli: CLI) -> None:
    (pets / "train" / "bird").rename(pets / "train" / "birds")
    line = _one_line_error(cli("validate", str(_spec(pets.parent))))
    assert "dataset.root: class 'bird' is in val/ but not in train/" in line
    assert "add " in line and "pets/train/bird/ with images or remove " in line
    assert line.endswith("pets/val/bird")


def test_missing_folder_fails_validate_with_the_fix(kd_home: Path, cli: CLI) -> None:
    line = _one_line_error(cli("validate", str(_spec(kd_home, root="data/dogs"))))
    assert f"dataset.root: {kd_home}/data/dogs does not exist" in line
    assert "set dataset.root to the folder that holds train/<class>/" in line


def test_teacher_with_another_class_count_fails_validate(
    pets: Path, cli: CLI, teacher_checkpoint: Path
) -> None:
    """The session's teacher has 4 classes, the folder 3: refused before any study exists."""
    spec = _spec(pets.parent)
    data = yaml.safe_load(spec.read_text())
    data["teacher"] = {"arch": "cnn5", "kwargs": {"num_channels": 8}, "checkpoint": "t.pt"}
    data["distill"] = {"teacher_cache": "all_views"}
    spec.write_text(yaml.safe_dump(data))
    before = cli("validate", str(spec))
    assert before.returncode == 0, before.stderr
    assert "t.pt does not exist yet: make it with `kdsearch train-teacher SPEC`" in before.stdout
    shutil.copy(teacher_checkpoint, pets.parent / "t.pt")
    line = _one_line_error(cli("validate", str(spec)))
    assert "t.pt has 4 classes, the data set imagefolder has 3" in line


def test_init_writes_a_commented_spec_that_validates(pets: Path, cli: CLI) -> None:
    _truncate(pets / "val" / "bird" / "0002.jpg")
    (pets / "train" / "automobile" / "notes.txt").write_text("not an image")
    args = ("init", "--data", "pets", "--teacher", "torchvision:resnet18")
    proc = cli(*args, "--student", "timm:mobilenetv3_small_050")
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    assert "3 classes; 36 images in train/, 12 images in val/" in out
    assert "1 non-image files ignored" in out and "image_size 32" in out
    assert "1 files cannot be decoded" in out and "val/bird/0002.jpg" in out
    spec = pets.parent / "studies" / "pets.yaml"
    text = spec.read_text()
    assert "image_size: 32  # the side the nets see" in text
    assert "# Median shorter side of the images: 32 px." in text
    assert "skip_unreadable: true" in text and "1 files cannot be decoded" in text
    data = yaml.safe_load(text)
    assert data["dataset"]["root"] == "pets" and data["student"]["arch"].startswith("timm:")
    checked = cli("validate", str(spec), "--data")
    assert checked.returncode == 0, checked.stderr
    assert "1 unreadable (skipped)" in checked.stdout
    again = cli(*args, "--student", "cnn5")
    assert "studies/pets.yaml already exists; pass --force" in _one_line_error(again)
    assert spec.read_text() == text
    assert cli(*args, "--student", "cnn5", "--force").returncode == 0
    assert "arch: cnn5" in spec.read_text()


def test_init_sizes_the_search_from_epochs_and_trials(pets: Path, cli: CLI) -> None:
    """12 trials of 10 epochs and a teacher of 15 by default; ``--epochs 4 --trials 6`` give
    4 per trial, 6 for the teacher, a budget of 6 and, at 96 px (random-resized crops), a
    teacher cache of one sampled view per epoch; ``--epochs 0`` is one line, nothing written."""
    for path in pets.rglob("*.jpg"):
        with Image.open(path) as img:
            bigger = img.resize((112, 112))
        bigger.save(path)
    args = ("init", "--data", "pets", "--teacher", "resnet20", "--student", "cnn5")
    assert cli(*args).returncode == 0
    spec = pets.parent / "studies" / "pets.yaml"
    plain = yaml.safe_load(spec.read_text())
    assert (plain["train"]["epochs"], plain["teacher_train"]["epochs"]) == (10, 15)
    assert plain["search"]["n_trials"] == 12 and plain["distill"]["teacher_cache"] == "sampled:10"

    proc = cli(*args, "--epochs", "4", "--trials", "6", "--force")
    assert proc.returncode == 0, proc.stderr
    text = spec.read_text()
    assert text.startswith(
        "# Written by `kdsearch init --data pets --teacher resnet20 --student cnn5 "
        "--epochs 4 --trials 6`."
    )
    short = yaml.safe_load(text)
    assert short["dataset"]["image_size"] == 96
    assert (short["train"]["epochs"], short["teacher_train"]["epochs"]) == (4, 6)
    assert short["search"]["n_trials"] == 6 and short["distill"]["teacher_cache"] == "sampled:4"

    for option in ("--epochs", "--trials"):
        line = _one_line_error(cli(*args, option, "0", "--force"))
        assert line == f"kdsearch: error: {option} 0: must be >= 1"
    assert spec.read_text() == text


def test_init_refuses_an_unknown_arch_and_writes_nothing(pets: Path, cli: CLI) -> None:
    proc = cli("init", "--data", "pets", "--teacher", "resnet19", "--student", "cnn5")
    line = _one_line_error(proc)
    assert line.startswith("kdsearch: error: --teacher: unknown 'resnet19'; did you mean")
    assert not (pets.parent / "studies").exists()


@pytest.mark.parametrize(
    ("short_side", "size"), [(32, 32), (36, 32), (160, 128), (256, 224), (600, 224)]
)
def test_proposed_image_size_keeps_the_median_image_from_being_enlarged(
    short_side: int, size: int
) -> None:
    assert starter.propose_size(short_side) == size
