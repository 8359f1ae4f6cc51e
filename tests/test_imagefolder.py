"""Image-folder data sets: a tree of your own images, decoded once, classes by folder name.

These run on a tiny tree the test writes (PNG and JPEG files of several sizes and modes), so
they need nothing beside the checkout.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kdsearch.config import spec as specs
from kdsearch.data import datasets
from kdsearch.data import imagefolder as folders
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
    raw = datasets.load_raw(_spec(root))
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


def test_storage_size_is_part_of_the_cache_key(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    assert datasets.imagefolder(root, False).train.x.shape[1:] == (3, 32, 32)
    assert datasets.imagefolder(root, False, storage_size=16).train.x.shape[1:] == (3, 16, 16)
    assert len(list((kd_home / "models" / "cache").glob("images-*.pt"))) == 2


def test_spec_normalization_replaces_the_computed_one(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    raw = datasets.load_raw(_spec(root, normalization="cifar10"))
    assert (raw.mean, raw.std) == datasets.NORMALIZATION["cifar10"]
    raw = datasets.load_raw(_spec(root, normalization="0.5,0.5,0.5/0.25,0.25,0.25"))
    assert (raw.mean, raw.std) == ((0.5,) * 3, (0.25,) * 3)


def test_held_out_class_missing_from_training_is_one_clear_error(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    (root / "test" / "ship").rename(root / "test" / "shipp")
    with pytest.raises(KDSearchError) as err:
        datasets.load_raw(_spec(root))
    msg = str(err.value)
    assert "class 'shipp' is in test/ but not in train/" in msg
    assert "add " in msg and "pics/train/shipp/ with images or remove" in msg and "\n" not in msg


def test_held_out_labels_follow_class_names_when_it_lacks_a_class(
    kd_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No test/cat: dog and ship keep their training indices 1 and 2, not their own 0 and 1."""
    root = write_tree(kd_home / "pics", {"train": 2, "test": 2})
    shutil.rmtree(root / "test" / "cat")
    with caplog.at_level(logging.WARNING, logger="kdsearch.data.imagefolder"):
        raw = datasets.load_raw(_spec(root))
    assert raw.classes == CLASSES
    assert raw.test.y.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    for i in (0, 1, 4, 5):  # the PNG files: the class's bright channel is exactly 200
        assert (raw.test.x[i, raw.test.y[i]] == 200).all()
    assert any("training classes 'cat'" in r.getMessage() for r in caplog.records)


def test_val_is_the_held_out_split_where_there_is_no_test(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics", {"train": 2, "val": 1})
    raw = datasets.load_raw(_spec(root))
    assert len(raw.train) == 3 * 4 and len(raw.test) == 3 * 3
    assert raw.test.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_with_test_and_val_test_is_held_out_and_val_ignored(
    kd_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tree(kd_home / "pics", {"train": 2, "test": 1, "val": 3})
    with caplog.at_level(logging.WARNING, logger="kdsearch.data.imagefolder"):
        raw = datasets.load_raw(_spec(root))
    assert len(raw.test) == 3 * 3  # test/'s 3 files per class, not val/'s 5
    assert any("val/ is not used" in r.getMessage() for r in caplog.records)


def test_missing_split_folder_names_both_layouts(kd_home: Path) -> None:
    root = kd_home / "pics"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "val").mkdir()
    with pytest.raises(KDSearchError, match=r"class 'cat' has no images in train/ \("):
        datasets.load_raw(_spec(root))
    Image.fromarray(_pixels(0, 0)).save(root / "train" / "cat" / "a.png")
    (root / "val").rmdir()
    with pytest.raises(KDSearchError) as err:
        datasets.load_raw(_spec(root))
    msg = str(err.value)
    assert "has no test or val folder" in msg and "pics/test/<class>/" in msg
    assert "pics/val/<class>/" in msg and "\n" not in msg


def _bands(width: int, height: int) -> np.ndarray:
    """A ``width×height`` image: green outer quarters, red and blue centre quarters."""
    quarter = width // 4
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :quarter, 1] = img[:, 3 * quarter :, 1] = 255
    img[:, quarter : 2 * quarter, 0] = 255
    img[:, 2 * quarter : 3 * quarter, 2] = 255
    return img


def _colour(column: torch.Tensor) -> str:
    """The one saturated colour of a ``3×n`` strip of pixels, or "mixed"."""
    for name, rgb in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        if (column.int() - torch.tensor(rgb)[:, None]).abs().max() <= 8:
            return name
    return "mixed"


def test_shorter_side_resized_and_centre_kept_or_squashed(kd_home: Path) -> None:
    """40×20 and 20×40 stored at 16: the centre 20×20 square, or with squash all of it."""
    root = kd_home / "pics"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(_bands(40, 20)).save(root / split / "a" / "wide.png")
        Image.fromarray(_bands(40, 20).transpose(1, 0, 2)).save(root / split / "a" / "tall.png")
    crop = folders.load(root, 16)[0]["train"][0]
    squash = folders.load(root, 16, squash=True)[0]["train"][0]
    assert crop.shape == squash.shape == (2, 3, 16, 16)
    tall, wide = crop[0], crop[1]  # sorted file names
    cropped = ["red"] * 7 + ["mixed"] * 2 + ["blue"] * 7
    assert [_colour(wide[:, :, c]) for c in range(16)][1:-1] == cropped[1:-1]
    assert [_colour(tall[:, r, :]) for r in range(16)][1:-1] == cropped[1:-1]
    whole = [_colour(squash[1][:, :, c]) for c in range(16)]
    assert whole[:3] == ["green"] * 3 and whole[-3:] == ["green"] * 3
    assert "red" in whole and "blue" in whole


def test_image_modes_become_rgb_with_transparency_on_white(kd_home: Path) -> None:
    folder = kd_home / "pics" / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (4, 4), 77).save(folder / "1-grey.png")
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(folder / "2-grey16.png")
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)  # blue, opaque; the rest red and transparent
    palette.save(folder / "3-palette.png", transparency=0)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, transparent ...
    rgba[0, 0] = (0, 0, 255, 255)  # ... but one opaque blue pixel
    rgba[0, 1] = (0, 0, 0, 128)  # and one half-transparent black one
    Image.fromarray(rgba, "RGBA").save(folder / "4-rgba.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(folder / "5-cmyk.tif")
    shutil.copytree(folder.parent, kd_home / "pics" / "test")
    x = folders.load(kd_home / "pics", 4)[0]["train"][0].permute(0, 2, 3, 1)
    grey, grey16, pal, rgba_, cmyk = x.tolist()
    assert grey[1][1] == [77, 77, 77] and grey16[1][1] == [156, 156, 156]  # 40000 / 256
    assert pal[0][0] == [0, 0, 255] and pal[1][1] == [255, 255, 255]
    assert rgba_[0][0] == [0, 0, 255] and rgba_[1][1] == [255, 255, 255]
    assert rgba_[0][1] == pytest.approx([127, 127, 127], abs=1)
    assert cmyk[1][1] == [255, 0, 0]


def test_decoded_images_are_cached_and_refreshed_when_files_change(
    kd_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tree(kd_home / "pics")
    with caplog.at_level(logging.INFO, logger="kdsearch.data.imagefolder"):
        first = datasets.load_raw(_spec(root))
    assert sum("decoding" in r.getMessage() for r in caplog.records) == 1
    cached = sorted((kd_home / "models" / "cache").glob("images-*.pt"))
    assert len(cached) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdsearch.data.imagefolder"):
        again = datasets.load_raw(_spec(root))
    assert not any("decoding" in r.getMessage() for r in caplog.records)
    assert (again.train.x == first.train.x).all() and (again.test.y == first.test.y).all()
    # Another image in place of one file: other size and time, so it is decoded afresh.
    path = root / "train" / "dog" / "0000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    changed = datasets.load_raw(_spec(root))
    assert len(list((kd_home / "models" / "cache").glob("images-*.pt"))) == 2
    assert changed.train.x[8].sum() == 0 and first.train.x[8].sum() > 0


def test_corrupt_image_is_named(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    (root / "test" / "dog" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(KDSearchError, match=r"dog/0000.png is not a readable image"):
        datasets.load_raw(_spec(root))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_one_line_naming_the_file_and_the_fix(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    _truncate(root / "train" / "dog" / "big.jpg")
    with pytest.raises(KDSearchError) as err:
        datasets.imagefolder(root, False)
    msg = str(err.value)
    assert "dog/big.jpg is not a readable image (image file is truncated" in msg
    assert "dataset.skip_unreadable: true" in msg and "\n" not in msg


def test_skip_unreadable_skips_counts_and_lists_the_files(
    kd_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tree(kd_home / "pics", {"train": 2, "test": 2})
    _truncate(root / "train" / "dog" / "big.jpg")
    (root / "test" / "cat" / "0001.png").write_bytes(b"not a png")
    _truncate(root / "test" / "ship" / "0000.png")
    bad = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING, logger="kdsearch.data"):
        raw = datasets.imagefolder(root, False, skip_unreadable=True)
    # The decoded pixels went to the cache, and no image file was written over.
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == bad
    assert len(list((kd_home / "models" / "cache").glob("images-*.pt"))) == 1
    assert any("1 of train, 2 of test" in r.getMessage() for r in caplog.records)
    assert len(raw.train) == 3 * 4 - 1 and len(raw.test) == 3 * 4 - 2
    assert raw.train.y.tolist() == [0] * 4 + [1] * 3 + [2] * 4
    assert (raw.train.x[6] == raw.train.x[6, 0]).all()  # dog's gray.png, moved up one row
    skipped = folders.load(root, 32, skip_unreadable=True)[2]
    assert skipped == {
        "train": ["train/dog/big.jpg"],
        "test": ["test/cat/0001.png", "test/ship/0000.png"],
    }


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory map holds ``t``'s pixels (Linux), or None for private memory."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(v, 16) for v in fields[0].split("-"))
        if low <= ptr < high:
            return fields[5] if len(fields) > 5 and fields[5].startswith("/") else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_mmap_load_maps_the_cache_file_and_equals_a_plain_load(kd_home: Path) -> None:
    root = write_tree(kd_home / "pics")
    first = folders.load(root, 32, mmap=True)[0]  # decoded, then mapped from the new file
    plain = folders.load(root, 32)[0]
    mapped = folders.load(root, 32, mmap=True)[0]
    (cache,) = (kd_home / "models" / "cache").glob("images-*.pt")
    for split in folders.SPLITS:
        for a, b, c in zip(first[split], plain[split], mapped[split], strict=True):
            assert torch.equal(a, b) and torch.equal(b, c)
        assert _mapped_file(plain[split][0]) is None
        assert _mapped_file(first[split][0]) == _mapped_file(mapped[split][0]) == str(cache)


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_cache_file_is_rebuilt_with_a_warning(
    kd_home: Path, caplog: pytest.LogCaptureFixture, mmap: bool
) -> None:
    root = write_tree(kd_home / "pics")
    first = folders.load(root, 32)[0]
    (cache,) = (kd_home / "models" / "cache").glob("images-*.pt")
    _truncate(cache)
    with caplog.at_level(logging.INFO, logger="kdsearch.data.imagefolder"):
        again = folders.load(root, 32, mmap=mmap)[0]
    assert any("is unreadable" in r.getMessage() for r in caplog.records)
    assert any("decoding the images" in r.getMessage() for r in caplog.records)
    assert torch.equal(again["train"][0], first["train"][0])
    assert torch.load(cache, weights_only=True, mmap=True)["format"] == folders.FORMAT


@pytest.mark.slow
def test_processes_decode_once_under_the_lock(kd_home: Path) -> None:
    """Two processes load the same new tree at once: one decodes, the other waits and reads."""
    root = write_tree(kd_home / "pics", {"train": 150, "test": 20})
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO);"
        "from kdsearch.config import spec; from kdsearch.data import datasets;"
        f"raw = datasets.load_raw(spec.DatasetSpec(name='imagefolder', root={str(root)!r}));"
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


def test_decoding_reports_progress_from_the_first_image_in_a_log(
    kd_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Piped (no terminal), decoding says so before the first image and when each split is
    done, in plain lines: a job's log shows progress from the first second (issue 35)."""
    root = write_tree(kd_home / "pics")
    n_train = len(folders.scan(root)["train"].samples)
    with caplog.at_level(logging.INFO, logger="kdsearch"):
        datasets.load_raw(_spec(root))
    said = [r.getMessage() for r in caplog.records if r.name == "kdsearch.meter"]
    assert said[0] == f"train split: 0/{n_train} images decoded"
    assert said[1].startswith(f"train split: {n_train} images decoded in ")
    assert said[2].startswith("test split: 0/")


def test_progress_lines_come_between_the_first_and_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past ``every`` seconds, a line with the count, the share and the time left; none after
    the last item (the closing line says it)."""
    from kdsearch.meter import meter

    with caplog.at_level(logging.INFO, logger="kdsearch.meter"), meter(4, "x", "items", 0) as tick:
        for _ in range(4):
            tick()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "x: 0/4 items"
    assert said[1].startswith("x: 1/4 items (25%), ") and said[1].endswith(" left")
    assert said[2].startswith("x: 2/4 items (50%), ") and said[3].startswith("x: 3/4 items (75%)")
    assert said[4].startswith("x: 4 items in ") and len(said) == 5
