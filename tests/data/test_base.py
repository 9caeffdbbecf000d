"""What every DataModule shares (``data/base.py``): typed constructors whose linked values exist before setup, the
per-sample crop and flip, splits that must leave training images, and the record of undecodable files skipped."""

from __future__ import annotations

import inspect

import pytest
import torch

from inception_lab.data import CIFARDataModule, DigitsDataModule, ImageDataModule, ImageNetDataModule, random_crop_flip
from inception_lab.data.base import BadImages, UndecodableImage, split_indices
from inception_lab.errors import ArgumentValueError
from tests.data.conftest import rows


@pytest.mark.parametrize("cls", [DigitsDataModule, CIFARDataModule, ImageNetDataModule])
def test_constructor_is_typed_and_says_linked_attributes(cls: type[ImageDataModule]) -> None:
    """jsonargparse builds these from YAML: every argument typed, no **kwargs; linked values exist before setup."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert all(p.annotation is not inspect.Parameter.empty for p in params)
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    dm = cls()  # no I/O: --print_config must work without data
    assert all(isinstance(getattr(dm, attr), int) for attr in ("num_classes", "in_channels", "image_size"))


def test_random_crop_flip_draws_per_sample() -> None:
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(1, 3, 8, 8).expand(200, -1, -1, -1)
    flipped = random_crop_flip(image, pad=0, flip=True)
    mirrored = (flipped == image.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == image).flatten(1).all(1)
    assert (mirrored | unchanged).all() and 60 < mirrored.sum() < 140  # some flipped, some not, ~half
    cropped = random_crop_flip(image, pad=4, flip=False)
    assert cropped.shape == image.shape and cropped.dtype == torch.uint8 and len(rows(cropped)) > 40
    assert (cropped == 0).any()  # zero padding shows at the borders of shifted crops


def test_split_sizes_that_leave_nothing_name_the_key() -> None:
    """Refused in the constructor (the digits are 1,797), before a fit writes anything; and by the split itself."""
    with pytest.raises(ArgumentValueError, match="^test_size=900, val_size=1000: leaves no training images out of "
                                                 "the 1797"):
        DigitsDataModule(val_size=1000, test_size=900)
    with pytest.raises(ArgumentValueError, match="^val_size=10: leaves no training images out of the 10"):
        split_indices(10, {"val_size": 10}, seed=0)


def test_skipped_files_are_counted_once_and_merged_across_ranks() -> None:
    """A file skipped twice counts once, and its place goes to the next file that decodes (from the split's start past
    its end); under DDP the ranks' flags become their union (an elementwise max): a rank that skipped nothing records
    the others' files and names one."""
    ranks = [BadImages("skip", "data.init_args.bad_images") for _ in range(2)]
    flags = [[rank.flags(n, lambda i, s=s: f"s{s}/{i}.JPEG") for s, n in enumerate((5, 3))] for rank in ranks]

    def fetch(split: int, i: int) -> int:
        if (split, i) in {(0, 1), (1, 2)}:
            raise UndecodableImage(f"s{split}/{i}.JPEG", RuntimeError("Unsupported image file. Only jpeg, png ..."))
        return i

    assert [ranks[0].get(lambda i: fetch(0, i), 1, flags[0][0]) for _ in range(2)] == [(2, 2)] * 2
    assert ranks[0].get(lambda i: fetch(1, i), 2, flags[0][1]) == (0, 0)
    assert ranks[0].record() == {"count": 2, "first": "s0/1.JPEG", "reason": "Unsupported image file"}
    assert ranks[1].record() is None
    union = torch.stack([torch.cat(f).to(torch.uint8) for f in flags]).amax(0)
    for rank in ranks:
        rank.merge(lambda t: union.clone())
    assert ranks[0].record() == {"count": 2, "first": "s0/1.JPEG", "reason": "Unsupported image file"}
    assert ranks[1].record() == {"count": 2, "first": "s0/1.JPEG"}
