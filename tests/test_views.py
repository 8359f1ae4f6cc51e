"""``kdsearch.data.views``: the 162 crop+flip views equal torchvision's pad/crop/flip,
batched or not."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from kdsearch.data import views


def _image(seed: int = 0, n: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # 1..255 so that no pixel looks like padding: a misplaced zero border cannot hide.
    return torch.randint(1, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)


def _decode(v: int) -> tuple[int, int, bool]:
    """The documented numbering: ``flip = v % 2, dx = (v // 2) % 9, dy = v // 18``."""
    return v // 18, (v // 2) % 9, bool(v % 2)


def _torchvision_view(img: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """RandomCrop(32, padding=4) at offset (dy, dx), then RandomHorizontalFlip, on uint8."""
    out = TF.crop(TF.pad(img, [4], fill=0), top=dy, left=dx, height=32, width=32)
    return TF.horizontal_flip(out) if flip else out


def test_constants() -> None:
    """9 offsets per axis × 2 flips = 162 views; the identity is offset (4, 4) unflipped."""
    assert views.N_VIEWS == 162
    assert _decode(views.IDENTITY) == (4, 4, False)


def test_every_view_is_torchvision_pad_crop_flip() -> None:
    """All 162 views of one image are distinct and each is torchvision's pad+crop(+hflip)."""
    img = _image()
    all_views = torch.arange(views.N_VIEWS)
    out = views.apply(img.expand(views.N_VIEWS, -1, -1, -1), all_views)
    assert out.dtype == torch.uint8
    assert out.shape == (162, 3, 32, 32)
    assert len({bytes(o.numpy().tobytes()) for o in out}) == 162
    for v in range(views.N_VIEWS):
        dy, dx, flip = _decode(v)
        expected = _torchvision_view(img[0], dy, dx, flip)
        assert torch.equal(out[v], expected), f"view {v} (dy={dy}, dx={dx}, flip={flip})"


def test_corner_view_has_zero_padding() -> None:
    """View 0 (dy=0, dx=0) shows 4 rows and 4 columns of zero padding at the top left."""
    out = views.apply(_image(), torch.tensor([0]))[0]
    assert (out[:, :4, :] == 0).all() and (out[:, :, :4] == 0).all()
    assert (out[:, 4:, 4:] != 0).all()


def test_batched_equals_per_image() -> None:
    """A batch with a different view per image equals applying each image's view alone."""
    x = _image(seed=1, n=40)
    v = torch.randint(views.N_VIEWS, (40,), generator=torch.Generator().manual_seed(2))
    v[:4] = torch.tensor([0, 1, views.IDENTITY, views.N_VIEWS - 1])
    batched = views.apply(x, v)
    for i in range(len(x)):
        assert torch.equal(batched[i], views.apply(x[i : i + 1], v[i : i + 1])[0]), i
        dy, dx, flip = _decode(int(v[i]))
        assert torch.equal(batched[i], _torchvision_view(x[i], dy, dx, flip)), i


def test_view_set() -> None:
    """``view_set(True)`` is every view once; ``view_set(False)`` is only the identity view."""
    assert torch.equal(views.view_set(True), torch.arange(162))
    identity = views.view_set(False)
    assert identity.tolist() == [views.IDENTITY]
    x = _image(seed=3, n=5)
    assert torch.equal(views.apply(x, identity.expand(5)), x)


def test_normalize() -> None:
    """``normalize`` maps uint8 to (x/255 - mean) / std per channel."""
    x = _image(seed=4, n=2)
    mean = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    out = views.normalize(x, mean, std)
    expected = (x.double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(out, expected.float())
