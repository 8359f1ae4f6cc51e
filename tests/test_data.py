"""Data sets and splits: seeded, disjoint validation; subsets; withheld labels; real loaders."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from kdsearch.config.spec import DatasetSpec
from kdsearch.data import datasets
from kdsearch.data.datasets import UNLABELED, Images, RawDataset
from kdsearch.errors import KDSearchError

N = 500


def _indexed_raw(n: int = N, n_test: int = 37, classes: int = 10) -> RawDataset:
    """Images whose first two pixels spell their index, so splits can be traced back."""
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx // 256).to(torch.uint8), (idx % 256).to(torch.uint8)
    y = (idx * 7) % classes
    test = Images(torch.full((n_test, 3, 32, 32), 9, dtype=torch.uint8), torch.arange(n_test) % 10)
    return RawDataset(Images(x, y), test, classes, (0.5,) * 3, (0.25,) * 3)


def _ids(images: Images) -> np.ndarray:
    return (images.x[:, 0, 0, 0].long() * 256 + images.x[:, 0, 0, 1].long()).numpy()


def test_splits_are_disjoint_and_cover_the_training_set() -> None:
    """Validation and training are disjoint and together are every training image, once."""
    raw = _indexed_raw()
    s = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2, seed=3))
    train, val = _ids(s.train), _ids(s.val)
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(N))
    # Labels travel with their images; the test set is the data set's own, untouched.
    assert torch.equal(s.train.y, torch.as_tensor((train * 7) % 10))
    assert torch.equal(s.val.y, torch.as_tensor((val * 7) % 10))
    assert s.test is raw.test or torch.equal(s.test.x, raw.test.x)
    assert (s.num_classes, s.mean, s.std) == (10, raw.mean, raw.std)


@pytest.mark.parametrize(("fraction", "n_val"), [(0.1, 50), (0.2, 100), (0.0, 0), (0.3, 150)])
def test_val_fraction_size(fraction: float, n_val: int) -> None:
    """``val_fraction`` holds out round(N·fraction) images; the rest are training images."""
    s = datasets.split(_indexed_raw(), DatasetSpec(name="synthetic", val_fraction=fraction))
    assert (len(s.val), len(s.train)) == (n_val, N - n_val)


def test_split_reproducible_from_dataset_seed() -> None:
    """The same ``dataset.seed`` gives the same split; another seed gives another one."""
    raw = _indexed_raw()
    a = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2, seed=0))
    b = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2, seed=0))
    c = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2, seed=1))
    assert np.array_equal(_ids(a.val), _ids(b.val))
    assert np.array_equal(_ids(a.train), _ids(b.train))
    assert set(_ids(a.val)) != set(_ids(c.val))


def test_subset_fraction_keeps_validation_fixed() -> None:
    """``subset_fraction`` shrinks only the training part, to a subset of the full one."""
    raw = _indexed_raw()
    full = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2))
    half = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2, subset_fraction=0.5))
    tiny = datasets.split(
        raw, DatasetSpec(name="synthetic", val_fraction=0.2, subset_fraction=1e-9)
    )
    assert len(half.train) == 200
    assert len(tiny.train) == 1  # never an empty training set
    assert set(_ids(half.train)) < set(_ids(full.train))
    assert np.array_equal(_ids(half.val), _ids(full.val))


def test_labeled_fraction_withholds_labels() -> None:
    """``labeled_fraction`` keeps round(n·f) labels, hides the rest as -100, seeded; val intact."""
    raw = _indexed_raw()
    spec = DatasetSpec(name="synthetic", val_fraction=0.2, labeled_fraction=0.05, seed=0)
    s = datasets.split(raw, spec)
    full = datasets.split(raw, DatasetSpec(name="synthetic", val_fraction=0.2, seed=0))
    assert len(s.train) == 400
    labeled = s.train.y != UNLABELED
    assert int(labeled.sum()) == 20
    assert set(s.train.y[~labeled].tolist()) == {UNLABELED}
    # Same images as with every label; kept labels are the true ones; val labels untouched.
    assert np.array_equal(_ids(s.train), _ids(full.train))
    assert torch.equal(s.train.y[labeled], full.train.y[labeled])
    assert torch.equal(s.val.y, full.val.y) and (s.val.y != UNLABELED).all()
    assert (raw.train.y != UNLABELED).all()  # the raw data set is not modified in place
    # Seeded: the same seed hides the same images, another seed other images.
    again = datasets.split(raw, spec)
    other = datasets.split(
        raw, DatasetSpec(name="synthetic", val_fraction=0.2, labeled_fraction=0.05, seed=1)
    )
    assert torch.equal(again.train.y, s.train.y)
    other_ids = set(_ids(other.train)[(other.train.y != UNLABELED).numpy()])
    assert other_ids != set(_ids(s.train)[labeled.numpy()])


def test_synthetic_load_through_spec() -> None:
    """``datasets.load`` of the synthetic set applies options and the split."""
    spec = DatasetSpec(
        name="synthetic",
        val_fraction=0.25,
        options={"n_train": 80, "n_test": 30, "num_classes": 4},
    )
    s = datasets.load(spec)
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (60, 20, 30, 4)
    assert s.train.x.dtype == torch.uint8 and s.train.x.shape[1:] == (3, 32, 32)
    assert set(s.train.y.tolist()) <= {0, 1, 2, 3}
    again = datasets.load(spec)
    assert torch.equal(s.train.x, again.train.x) and torch.equal(s.test.y, again.test.y)


def test_unknown_option_is_a_user_error() -> None:
    """A misspelled loader option is a KDSearchError naming dataset.options."""
    with pytest.raises(KDSearchError, match=r"dataset\.options"):
        datasets.load(DatasetSpec(name="synthetic", options={"n_trian": 10}))


def test_digits_loader() -> None:
    """digits: N×3×32×32 uint8, 10 classes, 1,797 images split 80/20 into train/test."""
    raw = datasets.load_raw(DatasetSpec(name="digits"))
    assert raw.num_classes == 10
    for part in (raw.train, raw.test):
        assert part.x.dtype == torch.uint8
        assert part.x.shape[1:] == (3, 32, 32)
        assert torch.equal(part.x[:, 0], part.x[:, 1]) and torch.equal(part.x[:, 0], part.x[:, 2])
    assert len(raw.train) + len(raw.test) == 1797 and len(raw.test) == 359
    assert set(raw.train.y.tolist()) == set(range(10))
    assert raw.train.x.max() > 200 and raw.train.x.min() == 0
    s = datasets.load(DatasetSpec(name="digits", val_fraction=0.1))
    assert len(s.val) == round(len(raw.train) * 0.1)


# --- CIFAR-10 in torchvision's real on-disk format ------------------------------------------


LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
LABEL_NAMES.append("truck")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar10(root: Path, per_batch: int = 4, n_test: int = 5) -> dict[str, np.ndarray]:
    """A tiny ``cifar-10-batches-py``: five data batches, a test batch and batches.meta.

    Each batch is a pickled dict with ``data`` (uint8, N×3072: 1024 red, 1024 green,
    1024 blue values, each a row-major 32×32 plane), ``labels``, ``batch_label`` and
    ``filenames``, as the real files (which torchvision reads with ``encoding="latin1"``).
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    parts: dict[str, np.ndarray] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(k * 3 + j) % 10 for j in range(n)]
        blob = {
            "batch_label": f"{name} of tiny",
            "labels": labels,
            "data": pixels,
            "filenames": [f"img_{k}_{j}.png" for j in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
        parts[name] = pixels
        parts[name + "_labels"] = np.asarray(labels)
    meta = {
        "num_cases_per_batch": per_batch,
        "label_names": LABEL_NAMES,
        "num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return parts


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """The tiny CIFAR-10 folder, with torchvision's expected md5s set to those of its files.

    Only the test's copy of the checksum table changes: torchvision still verifies every file.
    """
    root = tmp_path / "data"
    parts = _write_cifar10(root)
    folder = root / "cifar-10-batches-py"
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "batches.meta")})
    return root, parts


def test_cifar10_real_format(cifar_root: tuple[Path, dict]) -> None:
    """The cifar10 loader reads the real format into N×3×32×32 uint8 with the right labels."""
    root, parts = cifar_root
    raw = datasets.load_raw(DatasetSpec(name="cifar10", root=str(root)))
    train_pixels = np.concatenate([parts[f"data_batch_{i}"] for i in range(1, 6)])
    train_labels = np.concatenate([parts[f"data_batch_{i}_labels"] for i in range(1, 6)])
    assert raw.num_classes == 10
    assert raw.mean == datasets.NORMALIZATION["cifar10"][0]
    assert raw.train.x.dtype == torch.uint8 and raw.train.x.shape == (20, 3, 32, 32)
    assert raw.test.x.shape == (5, 3, 32, 32)
    # Channel-major planes: row 3072 = R(32×32), G(32×32), B(32×32).
    assert np.array_equal(raw.train.x.numpy(), train_pixels.reshape(20, 3, 32, 32))
    assert np.array_equal(raw.test.x.numpy(), parts["test_batch"].reshape(5, 3, 32, 32))
    assert raw.train.x[0, 1, 0, 0].item() == train_pixels[0, 1024]  # G of pixel (0, 0)
    assert raw.train.x[0, 0, 0, 1].item() == train_pixels[0, 1]  # R of pixel (0, 1)
    assert raw.train.x[0, 0, 1, 0].item() == train_pixels[0, 32]  # R of pixel (1, 0)
    assert raw.train.y.tolist() == train_labels.tolist()
    assert raw.test.y.tolist() == parts["test_batch_labels"].tolist()
    assert raw.train.x.is_contiguous()

    s = datasets.load(DatasetSpec(name="cifar10", root=str(root), val_fraction=0.25))
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 5)


def test_cifar10_relative_root_resolves_against_home(
    cifar_root: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``dataset.root`` is found under ``KDSEARCH_HOME``."""
    root, _ = cifar_root
    monkeypatch.setenv("KDSEARCH_HOME", str(root.parent))
    monkeypatch.chdir("/")
    assert len(datasets.load_raw(DatasetSpec(name="cifar10", root="data")).train) == 20


def test_cifar10_corrupted_file_is_rejected(cifar_root: tuple[Path, dict]) -> None:
    """A file whose md5 does not match is refused (the checksum check is still live)."""
    root, _ = cifar_root
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(KDSearchError, match="cifar-10-batches-py"):
        datasets.load_raw(DatasetSpec(name="cifar10", root=str(root)))


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    """No data: a KDSearchError naming the folder it looked in and how to fix it."""
    root = tmp_path / "nowhere"
    with pytest.raises(KDSearchError) as err:
        datasets.load(DatasetSpec(name="cifar10", root=str(root)))
    message = str(err.value)
    assert str(root / "cifar-10-batches-py") in message
    assert "download: true" in message and "copy" in message
    assert "\n" not in message
