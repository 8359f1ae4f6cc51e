"""The evaluation transform a checkpoint's network was measured with, as data and as a function.

Training decoded each image once: RGB, shorter side resized to the stored size and the centre
square kept (or squashed), then, for random-resized crops, the centre ``image_size`` square
cut at evaluation; pixels ``/ 255`` then normalized with the checkpoint's mean and std.
:class:`Preprocess` is that pipeline for one image file, so a deployed student sees exactly
the pixels its validation and test accuracy were measured on. It is stored beside the
weights in every export (:meth:`Preprocess.to_dict`), so nothing has to be pieced together
from the spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kdsearch.data import imagefolder, views
from kdsearch.errors import KDSearchError

if TYPE_CHECKING:
    from PIL import Image

#: The input side of a data set whose checkpoint records none: CIFAR-sized images.
DEFAULT_SIZE = 32


@dataclass(frozen=True)
class Preprocess:
    """From an image to the network's input: resize the shorter side to ``stored_size`` and
    keep the centre square (``squash``: resize the whole image instead), cut the centre
    ``image_size`` square, scale to [0, 1], normalize."""

    image_size: int
    stored_size: int
    squash: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Preprocess:
        data = ckpt.get("dataset") or {}
        size = int(data.get("image_size") or DEFAULT_SIZE)
        norm = ckpt["normalization"]
        return cls(
            image_size=size,
            stored_size=int(data.get("storage_size") or size),
            squash=bool(data.get("squash", False)),
            mean=tuple(float(m) for m in norm["mean"]),
            std=tuple(float(s) for s in norm["std"]),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(
            image_size=int(data["image_size"]),
            stored_size=int(data["stored_size"]),
            squash=bool(data["squash"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    def _crop(self, stored: np.ndarray) -> np.ndarray:
        """The evaluation centre ``image_size`` square of a ``3×stored×stored`` array."""
        top = round((self.stored_size - self.image_size) / 2)
        return stored[:, top : top + self.image_size, top : top + self.image_size]

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 pixels as the network's input, by the training loop's own function."""
        x = torch.as_tensor(np.ascontiguousarray(pixels))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return views.normalize(x, mean, std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """A decoded image as a normalized ``3×image_size×image_size`` float tensor."""
        stored = np.asarray(imagefolder.fit(imagefolder.to_rgb(img), self.stored_size, self.squash))
        return self.normalize(self._crop(stored.transpose(2, 0, 1)))

    def file(self, path: str | Path) -> torch.Tensor:
        """An image file as the network's input, decoded exactly as training decoded it (a
        large JPEG at a reduced DCT scale first); a file Pillow cannot read is a one-line
        error."""
        try:
            stored = imagefolder.read(str(path), self.stored_size, self.squash)
        except (OSError, ValueError, SyntaxError) as err:
            raise KDSearchError(f"image {path}: cannot be read ({err}); pass image files") from None
        return self.normalize(self._crop(stored))

    def batch(self, paths: list[Path]) -> torch.Tensor:
        """The files at ``paths`` as one ``N×3×S×S`` batch."""
        return torch.stack([self.file(p) for p in paths])
