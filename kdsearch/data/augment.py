"""The training augmentation a spec asks for, behind one interface the loop and cache share.

A view is a tensor row that says exactly which crop and flip of an image is meant: an index
into the 162 pad-crop views (:mod:`kdsearch.data.views`) or a stored box
(:mod:`kdsearch.data.crops`). The loop draws views, the teacher cache stores them with the
teacher's logits, and ``apply`` turns them into the uint8 images both networks see, so a
cached view reproduces the teacher's input exactly. ``centre`` is the evaluation view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from kdsearch.data import crops, views

if TYPE_CHECKING:  # the spec only types arguments here; config sits above data
    from kdsearch.config.spec import DatasetSpec


@dataclass(frozen=True)
class PadCrop:
    """The CIFAR pad-4 crop and flip: 162 enumerable views (only the identity without
    augmentation); evaluation sees the image as it is."""

    augment: bool = True
    # Literal, so that checking it tells the type checker which of the two augmentations it is.
    enumerable: ClassVar[Literal[True]] = True

    def all_views(self) -> torch.Tensor:
        return views.view_set(self.augment)

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        choices = self.all_views().to(gen.device)
        return choices[torch.randint(len(choices), (n,), device=gen.device, generator=gen)]

    def apply(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return views.apply(x, v)

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def describe(self) -> tuple[object, ...]:
        return ("pad", self.augment)


@dataclass(frozen=True)
class RandomResizedCrop:
    """torchvision's random-resized crop and flip at ``size`` from ``side``² stored images;
    evaluation sees the centre ``size``² crop (resize + centre crop, done at decode time)."""

    size: int
    side: int
    min_scale: float = 0.08
    augment: bool = True
    enumerable: ClassVar[Literal[False]] = False

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if not self.augment:
            return crops.centre(n, self.side, self.size, gen.device)
        return crops.draw(n, self.side, self.min_scale, gen)

    def apply(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return crops.apply(x, v, self.size)

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        top = round((x.shape[-1] - self.size) / 2)
        return x[..., top : top + self.size, top : top + self.size]

    def describe(self) -> tuple[object, ...]:
        return ("random_resized", self.size, self.side, self.min_scale, self.augment)


Augmentation = PadCrop | RandomResizedCrop


def for_dataset(spec: DatasetSpec) -> Augmentation:
    """The augmentation ``spec`` names, with ``crop: auto`` resolved by the input size."""
    if spec.crop_mode == "pad":
        return PadCrop(spec.augment)
    return RandomResizedCrop(spec.input_size, spec.stored_size, spec.min_scale, spec.augment)
