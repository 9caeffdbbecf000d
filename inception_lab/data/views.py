"""Test-time views: the protocols of the paper's Section 7 as pure functions from one uint8 image ``(C, H, W)`` to
its views ``(V, C, S, S)``, and the batch of views the model evaluates in chunks.

Views are cut in the loader workers as uint8 (144 views of a 224x224 image are 21.7 MB, four times that as float)
and normalized on the device, a chunk at a time (:class:`ViewBatch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from torchvision.transforms import v2

TestViews = Literal["single", "flip", "ten_crop", "multi144"]
VIEW_COUNTS: dict[str, int] = {"single": 1, "flip": 2, "ten_crop": 10, "multi144": 144}
assert set(VIEW_COUNTS) == set(get_args(TestViews))
PAPER_VIEWS: tuple[TestViews, ...] = ("single", "ten_crop", "multi144")  # Table 3's 1, 10 and 144 crops (Section 7)

PAPER_CROP = 224
# Section 7: the shorter side resized to 256, 288, 320 and 352 for 224x224 crops; scaled with the crop size
MULTI144_SIDES = (256, 288, 320, 352)


def center_offset(margin: int) -> int:
    """Where a centered crop starts in a side ``margin`` pixels longer than the crop: as torchvision's
    ``center_crop`` puts it (round half to even), so every protocol's center view is the single view."""
    return int(round(margin / 2.0))


def resize_shorter(image: Tensor, side: int) -> Tensor:
    """The image with its shorter side resized to ``side``, aspect kept (antialiased bilinear, as ``v2.Resize``)."""
    return v2.functional.resize(image, side, antialias=True)


def crop(image: Tensor, top: int, left: int, size: int) -> Tensor:
    return image[..., top:top + size, left:left + size]


def center_crop(image: Tensor, size: int) -> Tensor:
    h, w = image.shape[-2:]
    return crop(image, center_offset(h - size), center_offset(w - size), size)


def five_crops(image: Tensor, size: int) -> Tensor:
    """``(C, H, W)`` -> ``(5, C, S, S)``: the top-left, top-right, bottom-left and bottom-right corners, the center."""
    h, w = image.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"a {size}x{size} crop does not fit in a {h}x{w} image")
    return torch.stack(v2.functional.five_crop(image, [size, size]))  # its center: center_offset's rounding too


def mirrored(views: Tensor) -> Tensor:
    """``(V, C, H, W)`` -> ``(2V, C, H, W)``: each view followed by its mirror (the view itself flipped)."""
    return torch.stack([views, views.flip(-1)], 1).flatten(0, 1)


def squares(image: Tensor) -> Tensor:
    """``(C, H, W)`` -> ``(3, C, R, R)`` with R the shorter side: the left, center and right squares of a landscape
    image, the top, center and bottom ones of a portrait image (Section 7)."""
    h, w = image.shape[-2:]
    side, margin = min(h, w), abs(h - w)
    offsets = (0, center_offset(margin), margin)
    if w >= h:
        return torch.stack([crop(image, 0, offset, side) for offset in offsets])
    return torch.stack([crop(image, offset, 0, side) for offset in offsets])


def six_crops(square: Tensor, size: int) -> Tensor:
    """``(C, R, R)`` -> ``(6, C, S, S)``: the four corners and the center, and the whole square resized to S."""
    whole = v2.functional.resize(square, [size, size], antialias=True)
    return torch.cat([five_crops(square, size), whole[None]])


def multi144_sides(size: int) -> tuple[int, ...]:
    """The four shorter sides of ``multi144`` for crops of ``size``: 256, 288, 320 and 352 at 224."""
    return tuple(round(size * side / PAPER_CROP) for side in MULTI144_SIDES)


def multi144(image: Tensor, size: int) -> Tensor:
    """The paper's 144 crops (Section 7): ``(C, H, W)`` -> ``(144, C, S, S)``, ordered (scale, square, crop, mirror).

    4 scales (shorter side :func:`multi144_sides`) x 3 squares (:func:`squares`) x 6 crops (:func:`six_crops`) x 2
    (each view and its mirror): view ``((scale * 3 + square) * 6 + crop) * 2 + mirror``.
    """
    views = []
    for side in multi144_sides(size):
        views += [six_crops(square, size) for square in squares(resize_shorter(image, side))]
    return mirrored(torch.cat(views))  # 72 x C x S x S -> 144 x C x S x S


def make_views(image: Tensor, protocol: TestViews, size: int, resize: int) -> Tensor:
    """One image's test views, ordered (crop, mirror):

    - ``single``: ``(C, S, S)``, the center crop of the image resized to shorter side ``resize``;
    - ``flip``: ``(2, C, S, S)``, that crop and its mirror;
    - ``ten_crop``: ``(10, C, S, S)``, the four corners and the center of the *rectangle* resized to shorter side
      ``resize`` (256 at 224), as torchvision's ``Resize(256)`` + ``TenCrop(224)``: not of its 256x256 center
      square, nor of the image squashed to 256x256 (Caffe's "oversample"); each crop followed by its exact mirror
      (torchvision's ``ten_crop`` crops the mirrored image instead, which moves an odd-margin center by a pixel);
    - ``multi144``: ``(144, C, S, S)``, :func:`multi144` (``resize`` unused: its scales follow ``size``).
    """
    if protocol == "multi144":
        return multi144(image, size)
    resized = resize_shorter(image, resize)
    if protocol == "single":
        return center_crop(resized, size)
    if protocol == "flip":
        return mirrored(center_crop(resized, size)[None])
    if protocol == "ten_crop":
        return mirrored(five_crops(resized, size))
    raise ValueError(f"test_views={protocol!r}: expected one of {', '.join(get_args(TestViews))}")


@dataclass(frozen=True)
class ViewMaker:
    """A loader worker's transform: a decoded image (PIL or uint8 tensor) -> its uint8 views (picklable)."""

    protocol: TestViews
    size: int
    resize: int

    def __call__(self, image: object) -> Tensor:
        tensor = image if isinstance(image, Tensor) else v2.functional.pil_to_tensor(image)
        return make_views(tensor.as_subclass(Tensor), self.protocol, self.size, self.resize).contiguous()


class ViewBatch:
    """A test batch of views as it reaches the model: uint8 ``(N, V, C, S, S)`` on the device, with the
    DataModule's normalization, applied a chunk of views at a time (a whole batch of 144 views as float would be
    four times its 21.7 MB per image). Float views (a Python caller's) pass with ``normalize=None``."""

    def __init__(self, views: Tensor, normalize: Callable[[Tensor], Tensor] | None = None) -> None:
        if views.ndim != 5:
            raise ValueError(f"views: expected (N, V, C, H, W), got shape {tuple(views.shape)}")
        self.views, self.normalize = views, normalize

    @property
    def shape(self) -> torch.Size:
        return self.views.shape

    def __len__(self) -> int:
        return self.views.shape[0]

    def chunks(self, max_views: int) -> Iterator[Tensor]:
        """The N x V views in order, as normalized ``(n, C, S, S)`` float batches of at most ``max_views``."""
        flat = self.views.flatten(0, 1)
        for start in range(0, len(flat), max_views):
            chunk = flat[start:start + max_views]
            chunk = self.normalize(chunk) if self.normalize is not None else chunk
            yield chunk.contiguous(memory_format=torch.channels_last)
