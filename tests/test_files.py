"""Tensor files (kdsearch.files): atomic writes that leave no temporary file, one-line errors for
missing, broken or unsafe files, and a full disk told apart from other failed writes.

test_disk_full fills a real tmpfs (root only, slow); these check the same decisions in-process.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest
import torch

from kdsearch.errors import KDSearchError
from kdsearch.files import DiskFull, _raise_if_full, atomic_save, safe_load


class Pickled:
    """An object ``torch.load(weights_only=True)`` must refuse: loading it would run code."""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_save_writes_into_new_folders_and_replaces_in_place(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "last.pt"
    atomic_save({"epoch": 1}, path)
    atomic_save({"epoch": 2, "w": torch.ones(2)}, path)
    loaded = safe_load(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["w"], torch.ones(2))
    assert leftovers(path.parent) == []


def test_the_temporary_file_is_beside_the_target(tmp_path: Path, monkeypatch) -> None:
    """A rename is atomic only within one file system: the temporary file goes in the target's
    folder, never the system's temporary folder (made unusable here to tell)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    atomic_save({"epoch": 1}, tmp_path / "last.pt")
    assert safe_load(tmp_path / "last.pt") == {"epoch": 1}


def test_a_failed_write_that_is_not_a_full_disk_is_raised_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileExistsError):  # its folder cannot be made
        atomic_save({}, tmp_path / "a-file" / "last.pt")
    (tmp_path / "a-folder.pt").mkdir()
    with pytest.raises(IsADirectoryError):  # the rename cannot replace a folder
        atomic_save({}, tmp_path / "a-folder.pt")
    assert leftovers(tmp_path) == []


def test_a_failed_save_leaves_neither_file_nor_temporary(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    with pytest.raises(Exception, match="lambda"):  # pickle cannot store a lambda
        atomic_save({"f": lambda: 0}, path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_is_one_line_naming_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(KDSearchError, match=r"^teacher: .*nope\.pt does not exist$"):
        safe_load(tmp_path / "nope.pt", "teacher")


def test_a_broken_file_is_one_line_with_the_first_line_of_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")  # torch's reason spans several lines
    broken = r"^checkpoint: .* is not a loadable weights file \("
    with pytest.raises(KDSearchError, match=broken) as e:
        safe_load(path)
    with pytest.raises(Exception) as raw:
        torch.load(path, weights_only=True)
    assert f"({str(raw.value).strip().splitlines()[0]})" in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).endswith("); re-create it or import it with `kdsearch import-checkpoint`")


def test_an_error_without_words_is_named_by_its_type(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")  # torch raises a bare EOFError()
    with pytest.raises(KDSearchError, match=r"is not a loadable weights file \(EOFError\); "):
        safe_load(path, "teacher cache")


def test_a_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"obj": Pickled()}, path)
    with pytest.raises(KDSearchError, match="not a loadable weights file"):
        safe_load(path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_space_and_over_quota_are_a_full_disk(tmp_path: Path, code: int) -> None:
    path = tmp_path / "last.pt"
    with pytest.raises(DiskFull, match=r"^disk full: no space left to write .*last\.pt; "):
        _raise_if_full(OSError(code, "no space"), path)


def test_other_failed_writes_are_not_a_full_disk(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    assert _raise_if_full(OSError(errno.EACCES, "denied"), path) is None
    # torch.save's opaque RuntimeError counts as full only when the disk is nearly full.
    assert _raise_if_full(RuntimeError("unexpected pos"), path) is None
    with pytest.raises(DiskFull):
        _raise_if_full(RuntimeError("unexpected pos"), tmp_path / "gone" / "last.pt")
