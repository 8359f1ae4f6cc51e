"""The memory-mapped image store (kdsearch.data.store, Images.rows) and the batches prefetched
from it (kdsearch.data.batches): the same pixels, the same training, one shared copy."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdsearch.config import spec as specs
from kdsearch.data import datasets, store
from kdsearch.training.experiment import Context, fit_student
from kdsearch.training.loop import StopRequested

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _splits(write_spec: Callable[..., Path], mode: str, **dataset: object) -> datasets.Splits:
    spec = specs.load(write_spec({"dataset": {"store": mode, **dataset}}, f"s{mode}"))
    return datasets.load(spec.dataset)


def test_a_mapped_store_holds_the_same_images_as_memory(write_spec: Callable[..., Path]) -> None:
    memory = _splits(write_spec, "memory")
    mapped = _splits(write_spec, "mmap")
    for part in ("train", "val", "test"):
        a, b = getattr(memory, part), getattr(mapped, part)
        assert not a.shared and b.shared, part
        assert torch.equal(a.x, b.chunk(0, len(b))), part
        assert torch.equal(a.y, b.y), part
        idx = torch.tensor([5, 0, 3])
        assert torch.equal(a.take(idx), b.take(idx)), part


def test_mapped_splits_select_rows_of_one_file(write_spec: Callable[..., Path]) -> None:
    """Train and validation images are rows of one mapped tensor, never a private copy."""
    mapped = _splits(write_spec, "mmap")
    assert mapped.train.x.data_ptr() == mapped.val.x.data_ptr()
    assert len(mapped.train.x) == len(mapped.train) + len(mapped.val)
    files = list((Path.cwd() / "models" / "cache").glob("store-*.pt"))
    assert len(files) == 2  # train and test parts, written once
    again = _splits(write_spec, "mmap")
    assert torch.equal(again.train.chunk(0, 10), mapped.train.chunk(0, 10))
    assert len(list((Path.cwd() / "models" / "cache").glob("store-*.pt"))) == 2


def test_auto_maps_only_above_the_limit(
    write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not _splits(write_spec, "auto").train.shared  # 1.5 MB of synthetic images
    monkeypatch.setattr(store, "AUTO_LIMIT_BYTES", 1000)
    assert _splits(write_spec, "auto").train.shared


def test_a_broken_store_file_is_written_again(
    write_spec: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    first = _splits(write_spec, "mmap")
    expected = first.test.chunk(0, len(first.test))  # a copy: the mapping goes with `first`
    del first
    for path in (Path.cwd() / "models" / "cache").glob("store-*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    again = _splits(write_spec, "mmap")
    assert torch.equal(again.test.chunk(0, len(again.test)), expected)
    assert "writing it again" in caplog.text


def _train(write_spec: Callable[..., Path], mode: str, tmp: Path) -> tuple[list, dict]:
    spec = specs.load(write_spec({"dataset": {"store": mode}}, f"t{mode}"))
    ctx = Context.load(spec, "cpu")
    outcome = fit_student(ctx, spec, tmp / f"{mode}.pt", progress=False)
    curve = [(e.train_loss, e.val_accuracy) for e in outcome.history.epochs]
    return curve, torch.load(tmp / f"{mode}.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("distill", [{}, {"distill": {"teacher_cache": "none"}}])
def test_training_from_the_mapped_store_equals_training_from_memory(
    write_spec: Callable[..., Path], tmp_path: Path, distill: dict
) -> None:
    """Batches gathered by the prefetch thread are the batches the on-device path slices:
    the same curve and the same weights, bit for bit, cached or online teacher."""
    write = write_spec if not distill else (lambda o, n: write_spec({**o, **distill}, n))
    memory_curve, memory_weights = _train(write, "memory", tmp_path)
    mapped_curve, mapped_weights = _train(write, "mmap", tmp_path)
    assert mapped_curve == memory_curve
    for key, value in memory_weights.items():
        assert torch.equal(value, mapped_weights[key]), key


def test_the_prefetch_thread_ends_with_a_stopped_run(
    write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    # 16 batches an epoch: the thread is still gathering ahead when the run stops.
    spec = specs.load(
        write_spec({"dataset": {"store": "mmap"}, "train": {"batch_size": 16}}, "stop")
    )
    ctx = Context.load(spec, "cpu")
    calls = iter(range(100))
    with pytest.raises(StopRequested):
        fit_student(
            ctx, spec, tmp_path / "s.pt", progress=False, should_stop=lambda: next(calls) == 2
        )
    assert not [t for t in threading.enumerate() if t.name == "kdsearch-prefetch"]
