"""Image-folder data sets: a tree of your own images, decoded once, classes by folder name.

These run on a tiny tree the test writes (PNG and JPEG files of several sizes and modes), so
they need nothing beside the checkout.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pytest
import yaml
from PIL import Image

from kdsearch.config import spec as specs
from kdsearch.data import datasets as data
from kdsearch.errors import KDSearchError

CLI = Callable[..., CompletedProcess[str]]
CLASSES = ("cat", "dog", "ship")  # written out of order below; the index follows sorted names


def _pixels(label: int, i: int, size: int = 32) -> np.ndarray:
    """A distinct, label-dependent RGB image."""
    rng = np.random.default_rng(100 * label + i)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    img[..., label] = 200  # one bright channel per class, so a net can learn it
    return img


def write_tree(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """``root/{train,test}/<class>/`` with PNG (exact) and JPEG files, one gray and one big."""
    per_class = per_class or {"train": 6, "test": 2}
    for split, count in per_class.items():
        for label, name in reversed(list(enumerate(CLASSES))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_pixels(label, i)).save(folder / f"{i:04d}.png")
            Image.fromarray(_pixels(label, 99, 48)).save(folder / "big.jpg", quality=95)
            Image.fromarray(_pixels(label, 98)[..., 0]).save(folder / "gray.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def _spec(root: Path, **dataset: object) -> specs.DatasetSpec:
    return specs.DatasetSpec(name="imagefolder", root=str(root), **dataset)


def test_tree_loads_with_sorted_classes_rgb_and_resizing(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    raw = data.load_raw(_spec(root))
    assert raw.classes == CLASSES and raw.num_classes == 3
    assert raw.train.x.dtype.is_floating_point is False and raw.train.x.shape == (3 * 8, 3, 32, 32)
    assert len(raw.test) == 3 * 4
    # ImageFolder order: sorted classes, sorted file names (0000.png ... big.jpg, gray.png).
    names = ["0000.png", "0001.png", "0002.png", "0003.png", "0004.png", "0005.png"]
    assert raw.train.y.tolist() == [c for c in range(3) for _ in range(len(names) + 2)]
    for label in range(3):
        first = raw.train.x[label * 8].permute(1, 2, 0).numpy()
        assert np.array_equal(first, _pixels(label, 0))  # PNG is lossless: exact pixels
        gray = raw.train.x[label * 8 + 7]
        assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # L converted to RGB
    # Normalization comes from the training images.
    x = raw.train.x.double() / 255
    assert raw.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert raw.std == pytest.approx(x.std((0, 2, 3)).tolist(), abs=1e-9)


def test_image_size_option_resizes(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    raw = data.load_raw(_spec(root, options={"image_size": 16}))
    assert raw.train.x.shape[1:] == (3, 16, 16)


def test_spec_normalization_replaces_the_computed_one(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    raw = data.load_raw(_spec(root, normalization="cifar10"))
    assert (raw.mean, raw.std) == data.NORMALIZATION["cifar10"]
    raw = data.load_raw(_spec(root, normalization="0.5,0.5,0.5/0.25,0.25,0.25"))
    assert (raw.mean, raw.std) == ((0.5,) * 3, (0.25,) * 3)


def test_mismatched_class_folders_is_one_clear_error(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    (root / "test" / "ship").rename(root / "test" / "shipp")
    with pytest.raises(KDSearchError) as err:
        data.load_raw(_spec(root))
    msg = str(err.value)
    assert "different class folders" in msg and "'ship'" in msg and "'shipp'" in msg
    assert "\n" not in msg


def test_missing_split_folder_names_the_layout(kd_home: Path) -> None:
    root = kd_home / "pics"
    (root / "train" / "cat").mkdir(parents=True)
    with pytest.raises(KDSearchError, match=r"train: Found no valid file for the classes cat"):
        data.load_raw(_spec(root))
    Image.fromarray(_pixels(0, 0)).save(root / "train" / "cat" / "a.png")
    with pytest.raises(KDSearchError, match=r"test is not a folder.*train/<class>/"):
        data.load_raw(_spec(root))


def test_decoded_images_are_cached_and_refreshed_when_files_change(
    kd_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tree(kd_home / "pics")
    with caplog.at_level(logging.INFO, logger="kdsearch.data.imagefolder"):
        first = data.load_raw(_spec(root))
    assert sum("decoding" in r.getMessage() for r in caplog.records) == 1
    cached = sorted((kd_home / "models" / "cache").glob("images-*.pt"))
    assert len(cached) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdsearch.data.imagefolder"):
        again = data.load_raw(_spec(root))
    assert not any("decoding" in r.getMessage() for r in caplog.records)
    assert (again.train.x == first.train.x).all() and (again.test.y == first.test.y).all()
    # Another image in place of one file: other size and time, so it is decoded afresh.
    path = root / "train" / "dog" / "0000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    changed = data.load_raw(_spec(root))
    assert len(list((kd_home / "models" / "cache").glob("images-*.pt"))) == 2
    assert changed.train.x[8].sum() == 0 and first.train.x[8].sum() > 0


def test_corrupt_image_is_named(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    (root / "test" / "dog" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(KDSearchError, match=r"dog/0000.png is not a readable image"):
        data.load_raw(_spec(root))


@pytest.mark.slow
def test_processes_decode_once_under_the_lock(kd_home: Path) -> None:
    """Two processes load the same new tree at once: one decodes, the other waits and reads."""
    root = write_tree(kd_home / "pics", {"train": 150, "test": 20})
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO);"
        "from kdsearch.config import spec; from kdsearch.data import datasets as data;"
        f"raw = data.load_raw(spec.DatasetSpec(name='imagefolder', root={str(root)!r}));"
        "print(int(raw.train.x.sum()), len(raw.train))"
    )
    env = {**os.environ, "KDSEARCH_HOME": str(kd_home), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert outs[0][0] == outs[1][0]
    assert sum("decoding the images" in err for _, err in outs) == 1, [err for _, err in outs]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_train_and_evaluate_report_class_names(kd_home: Path, cli: CLI) -> None:
    """A student trained on a folder tree: its checkpoint and `evaluate` name the classes."""
    write_tree(kd_home / "pics")
    spec = kd_home / "pics.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "dataset": {"name": "imagefolder", "root": "pics", "val_fraction": 0.25},
                "student": {"arch": "cnn5", "kwargs": {"num_channels": 4}},
                "train": {"epochs": 2, "batch_size": 8, "device": "cpu"},
            }
        )
    )
    out = kd_home / "models" / "pics.pt"
    proc = cli("train", str(spec), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    from kdsearch.training.model_files import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt["classes"] == list(CLASSES)
    assert ckpt["dataset"] == {"name": "imagefolder", "options": {}, "root": "pics"}
    proc = cli("evaluate", str(out))  # the checkpoint's own data set: the same folder
    assert proc.returncode == 0, proc.stderr
    assert "per-class accuracy: cat:" in proc.stdout and " dog:" in proc.stdout
    assert "on imagefolder test set (12 images)" in proc.stdout
