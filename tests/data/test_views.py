"""Test-time views (``data/views.py``) against their definitions (the paper's Section 7), on images whose pixels say
where they are."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from inception_lab.data import CIFARDataModule, DigitsDataModule, ImageNetDataModule
from inception_lab.data.views import (
    PAPER_VIEWS,
    VIEW_COUNTS,
    make_views,
    multi144,
    multi144_sides,
    six_crops,
    squares,
)

S = 32  # crop side: the tests run the protocols scaled down from 224


def coordinates(height: int, width: int) -> torch.Tensor:
    """A uint8 ``(3, H, W)`` image whose pixel ``(r, c)`` is ``(r % 256, c % 256, 16 * (r // 256) + c // 256)``:
    no two pixels alike, so a slice equals only itself."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    return torch.stack([rows % 256, cols % 256, 16 * (rows // 256) + cols // 256]).to(torch.uint8)


def resize(image: torch.Tensor, size: int | list[int]) -> torch.Tensor:
    return v2.functional.resize(image, size, antialias=True)


def expected_square_views(image: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Section 7 at one scale, written out: the left, center and right squares (top, center, bottom for portrait);
    of each, the top-left, top-right, bottom-left, bottom-right and center crops and the square resized; each
    followed by its mirror. Centered offsets round half to even, as torchvision's ``center_crop``."""
    h, w = image.shape[-2:]
    side, margin = min(h, w), abs(h - w)
    views = []
    for offset in (0, round(margin / 2), margin):
        square = image[:, :, offset:offset + side] if w >= h else image[:, offset:offset + side, :]
        m, c = side - size, round((side - size) / 2)
        crops = [square[:, top:top + size, left:left + size] for top, left in ((0, 0), (0, m), (m, 0), (m, m), (c, c))]
        for view in (*crops, resize(square, [size, size])):
            views += [view, view.flip(-1)]
    return views


@pytest.mark.parametrize("shape", [(41, 70), (70, 41)], ids=["landscape", "portrait"])
def test_one_scale_is_three_squares_of_six_crops(shape: tuple[int, int]) -> None:
    image = coordinates(*shape)
    side = min(shape)
    got = squares(image)
    assert got.shape == (3, 3, side, side)
    along = 2 if shape[1] > shape[0] else 1  # the longer axis: squares at 0, the center (29 / 2 -> 14) and the end
    for square, offset in zip(got, (0, 14, 29)):
        assert torch.equal(square, image.narrow(along, offset, side))
    views = torch.cat([six_crops(square, S) for square in got])
    expected = expected_square_views(image, S)
    assert torch.equal(views, torch.stack(expected[0::2]))  # the mirrors come with make_views/multi144
    # the center crop is torchvision's (9 / 2 -> 4): the center view of the center square is the single view
    assert torch.equal(views[1 * 6 + 4], v2.functional.center_crop(got[1], S))


@pytest.mark.parametrize("shape", [(37, 61), (61, 37)], ids=["landscape", "portrait"])
def test_multi144_is_every_scale_square_crop_and_mirror(shape: tuple[int, int]) -> None:
    """View ((scale * 3 + square) * 6 + crop) * 2 + mirror is that slice of the image resized to that scale. The
    image's shorter side is the first scale (37 at 32): those 36 views are slices of the coordinate image itself."""
    image = coordinates(*shape)
    sides = multi144_sides(S)
    assert sides == (37, 41, 46, 50) and min(shape) == sides[0]
    views = multi144(image, S)
    assert views.shape == (144, 3, S, S) and views.dtype == torch.uint8
    expected = []
    for scale, side in enumerate(sides):
        resized = image if scale == 0 else resize(image, side)
        assert min(resized.shape[-2:]) == side and (resized.shape[-1] > resized.shape[-2]) == (shape[1] > shape[0])
        expected += expected_square_views(resized, S)
    for index, (view, want) in enumerate(zip(views, expected, strict=True)):
        assert torch.equal(view, want), index
    # distinct within a scale; across scales a square resized whole shows the same region of the image each time
    assert len({v.numpy().tobytes() for v in views[:36]}) == 36
    # scale 0, right (bottom) square, bottom-right crop, mirrored: the image's own bottom-right corner, mirrored
    assert torch.equal(views[((0 * 3 + 2) * 6 + 3) * 2 + 1], image[:, -S:, -S:].flip(-1))


def test_multi144_at_224_is_the_papers() -> None:
    assert multi144_sides(224) == (256, 288, 320, 352)
    views = make_views(coordinates(375, 500), "multi144", 224, 256)
    assert views.shape == (144, 3, 224, 224) and views.numel() == 21_676_032  # bytes as uint8: 21.7 MB


@pytest.mark.parametrize("shape", [(40, 57), (57, 40)], ids=["landscape", "portrait"])
def test_ten_crop_is_the_corners_of_the_resized_rectangle(shape: tuple[int, int]) -> None:
    """ten_crop: the four corners and the center of the image resized to shorter side ``resize`` (the whole
    rectangle, not a square), each followed by its exact mirror; here the image already has that shorter side."""
    image = coordinates(*shape)
    h, w = shape
    views = make_views(image, "ten_crop", S, resize=40)
    corners = [(0, 0), (0, w - S), (h - S, 0), (h - S, w - S), (round((h - S) / 2), round((w - S) / 2))]
    expected = [image[:, t:t + S, left:left + S] for t, left in corners]
    assert views.shape == (10, 3, S, S)
    for i, want in enumerate(expected):
        assert torch.equal(views[2 * i], want) and torch.equal(views[2 * i + 1], want.flip(-1)), i
    assert torch.equal(views[0::2], torch.stack(v2.functional.five_crop(image, S)))  # torchvision's five crops
    # a larger image is resized first (shorter side 40), then cut the same way
    big = coordinates(3 * h // 2, 3 * w // 2)
    assert torch.equal(make_views(big, "ten_crop", S, resize=40), make_views(resize(big, 40), "ten_crop", S, 40))


def test_single_and_flip_are_the_center_crop() -> None:
    image = coordinates(90, 67)
    center = v2.functional.center_crop(resize(image, 40), S)
    assert torch.equal(make_views(image, "single", S, 40), center)
    assert torch.equal(make_views(image, "flip", S, 40), torch.stack([center, center.flip(-1)]))
    assert {p: len(make_views(image, p, S, 40)) for p in ("flip", "ten_crop", "multi144")} == {
        p: n for p, n in VIEW_COUNTS.items() if p != "single"}




@pytest.mark.parametrize("data", [DigitsDataModule, CIFARDataModule, ImageNetDataModule], ids=lambda c: c.__name__)
def test_each_datamodule_declares_table3_views_it_can_cut(data: type, capsys: pytest.CaptureFixture) -> None:
    """``ensemble``'s default protocols: the paper's three for ImageNet, one view for the 32x32 sets (no room for
    ImageNet's crops); each passes the DataModule's own check without a note."""
    assert tuple(VIEW_COUNTS[v] for v in PAPER_VIEWS) == (1, 10, 144)
    assert data.table3_views == (PAPER_VIEWS if data is ImageNetDataModule else ("single",))
    for views in data.table3_views:
        data.check_test_views(views)
    assert capsys.readouterr().err == ""
