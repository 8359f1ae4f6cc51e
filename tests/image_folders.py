"""A user's own image folder, laid out from the real images in ``../shared/data``.

Tests of the "your own images" journey (``init``, ``validate``, a search, ``best``) need a
folder as a user brings it: ImageNet's ``train/<class>/`` and ``val/<class>/``, real JPEG
files. :func:`own_images` copies a slice of the CIFAR-10 JPEG copy (32 px, the fast choice)
or of Imagenette (224 px, squashed; 242 of its images are greyscale) into such a folder.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Each source: its archive, the folder inside it, its held-out folder and its first classes.
SOURCES = {
    "cifar10": ("cifar10-jpg.tar.gz", "", "test", ("airplane", "automobile", "bird", "cat")),
    "imagenette": (
        "imagenette2-224sq.tar.gz",
        "imagenette2-224sq/",
        "val",
        ("n01440764", "n02102040", "n02979186", "n03000684"),
    ),
}


def own_images(
    dest: Path, classes: int = 3, train: int = 24, val: int = 8, source: str = "cifar10"
) -> Path:
    """``dest/train/<class>/`` with ``train`` and ``dest/val/<class>/`` with ``val`` real JPEG
    files for the first ``classes`` classes of ``source``; returns ``dest``.

    The archive is read once, front to back (its files are grouped by split and class).
    """
    archive, prefix, held, names = SOURCES[source]
    wanted = {("train", name): train for name in names[:classes]}
    wanted |= {(held, name): val for name in names[:classes]}
    with tarfile.open(SHARED / archive) as tar:
        for member in tar:
            parts = member.name.removeprefix(prefix).split("/")
            key = tuple(parts[:2])
            if not member.isfile() or len(parts) != 3 or wanted.get(key, 0) <= 0:
                continue
            wanted[key] -= 1
            split = "train" if key[0] == "train" else "val"
            folder = dest / split / key[1]
            folder.mkdir(parents=True, exist_ok=True)
            source_file = tar.extractfile(member)
            assert source_file is not None
            (folder / parts[2]).write_bytes(source_file.read())
            if not any(n > 0 for n in wanted.values()):
                break
    return dest
