"""Random-resized crops (kdsearch.data.crops, kdsearch.data.augment): boxes like torchvision's,
views reproduced exactly from their stored boxes, the centre crop as evaluation's view."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import SYNTHETIC_SPEC

from kdsearch.config.spec import from_dict, merge
from kdsearch.data import crops
from kdsearch.data.augment import PadCrop, RandomResizedCrop, for_dataset
from kdsearch.errors import KDSearchError


def _images(n: int = 6, side: int = 40) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )


def test_boxes_follow_torchvisions_scale_and_ratio() -> None:
    """Every box lies inside the image; drawn boxes cover [min_scale, 1] of the area with an
    aspect ratio in [3/4, 4/3] (up to rounding to whole pixels); about half are flipped."""
    side, min_scale = 64, 0.25
    boxes = crops.draw(4000, side, min_scale, torch.Generator().manual_seed(0))
    x0, y0, w, h, flip = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (x0 >= 0).all() and (y0 >= 0).all() and (w >= 1).all() and (h >= 1).all()
    assert (x0 + w <= side).all() and (y0 + h <= side).all()
    area = w * h / side**2
    assert area.min() > min_scale * 0.8 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() > 0.75 * 0.85 and ratio.max() < 4 / 3 / 0.85
    assert 0.45 < flip.mean().item() < 0.55
    # Positions are uniform over where the box fits, not centred.
    small = w < side
    pos = x0[small] / (side - w[small])
    assert 0.15 < (pos < 0.25).float().mean().item() < 0.35
    assert x0.min() == 0 and (x0 + w).max() == side


def test_a_view_is_reproduced_exactly_from_its_stored_box() -> None:
    """``apply`` is a pure function of image and box: a box taken from a cache gives back the
    same pixels, batched or one at a time; a box of the output's size is a plain crop."""
    x = _images()
    boxes = crops.draw(len(x), 40, 0.08, torch.Generator().manual_seed(3))
    once = crops.apply(x, boxes, 24)
    again = crops.apply(x, boxes.clone(), 24)
    assert once.dtype == torch.uint8 and once.shape == (6, 3, 24, 24)
    assert torch.equal(once, again)
    for i in range(len(x)):
        assert torch.equal(crops.apply(x[i : i + 1], boxes[i : i + 1], 24)[0], once[i])
    plain = torch.tensor([[5.0, 7.0, 24.0, 24.0, 0.0], [5.0, 7.0, 24.0, 24.0, 1.0]])
    out = crops.apply(x[:2], plain, 24)
    assert torch.equal(out[0], x[0, :, 7:31, 5:29])
    assert torch.equal(out[1], x[1, :, 7:31, 5:29].flip(2))


def test_a_box_is_resized_with_area_averaging() -> None:
    """Shrinking a box 4× averages 4×4 blocks (antialiased), not 2×2 of them."""
    x = _images(2, 40)
    out = crops.apply(x, torch.tensor([[0.0, 0.0, 40.0, 40.0, 0.0]] * 2), 10)
    blocks = x.float().view(2, 3, 10, 4, 10, 4).mean((3, 5))
    assert (out.float() - blocks).abs().max() <= 0.5 + 1e-4


def test_evaluation_sees_the_centre_crop() -> None:
    """torchvision's resize + centre crop: the centre ``size``² of the stored square."""
    x = _images(3, 40)
    aug = RandomResizedCrop(size=32, side=40)
    assert torch.equal(aug.centre(x), x[..., 4:36, 4:36])
    centre_boxes = crops.centre(3, 40, 32)
    assert torch.equal(aug.apply(x, centre_boxes), aug.centre(x))
    # Without augmentation, training draws the evaluation view too.
    plain = RandomResizedCrop(size=32, side=40, augment=False)
    drawn = plain.draw(3, torch.Generator().manual_seed(0))
    assert torch.equal(plain.apply(x, drawn), aug.centre(x))


def _spec(dataset: dict[str, Any], distill: dict[str, Any] | None = None) -> Any:
    data = merge(SYNTHETIC_SPEC, {"name": "s", "dataset": dataset, "distill": distill or {}})
    data["teacher"]["checkpoint"] = "models/teacher.pt"
    return from_dict(data)


def test_crop_auto_follows_the_input_size() -> None:
    """Up to 64 px the CIFAR pad crop (exact views); above, random-resized crops stored at
    image_size / 0.875 unless storage_size says otherwise."""
    small = _spec({"image_size": 48}, {"teacher_cache": "all_views"}).dataset
    assert small.crop_mode == "pad" and small.stored_size == 48
    assert isinstance(for_dataset(small), PadCrop)
    big = _spec({"image_size": 128}, {"teacher_cache": "sampled:4"}).dataset
    assert big.crop_mode == "random_resized" and big.stored_size == 146
    aug = for_dataset(big)
    assert isinstance(aug, RandomResizedCrop) and (aug.size, aug.side) == (128, 146)
    assert (
        _spec(
            {"image_size": 128, "storage_size": 160}, {"teacher_cache": "none"}
        ).dataset.stored_size
        == 160
    )


@pytest.mark.parametrize(
    ("dataset", "distill", "message"),
    [
        ({"image_size": 128}, {"teacher_cache": "all_views"}, "cannot enumerate random-resized"),
        ({"image_size": 128, "storage_size": 100}, {"teacher_cache": "none"}, "below image_size"),
        ({"image_size": 32, "storage_size": 40}, {}, "the pad crop keeps"),
        ({"min_scale": 0.0}, {}, "dataset.min_scale"),
        ({"image_size": 4}, {}, "dataset.image_size"),
    ],
)
def test_impossible_crop_settings_are_one_line(
    dataset: dict[str, Any], distill: dict[str, Any], message: str
) -> None:
    with pytest.raises(KDSearchError, match=message) as err:
        _spec(dataset, distill)
    assert "\n" not in str(err.value)


def test_crop_draws_are_seeded() -> None:
    a = crops.draw(50, 40, 0.08, torch.Generator().manual_seed(7))
    b = crops.draw(50, 40, 0.08, torch.Generator().manual_seed(7))
    c = crops.draw(50, 40, 0.08, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isclose(float((a[:, 2] * a[:, 3]).mean()) / 1600, 0.54, abs_tol=0.15)
