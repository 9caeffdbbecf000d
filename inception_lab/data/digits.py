"""The embedded default: scikit-learn's handwritten digits (real 8x8 scans that ship with the package)."""

from __future__ import annotations

import sys

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import TensorDataset

from inception_lab.arguments import check_arguments
from inception_lab.data.base import ImageDataModule, TestViews, check_split, split_indices
from inception_lab.errors import config_prefix

DIGITS = 1797  # images in load_digits()


class DigitsDataModule(ImageDataModule):
    """1,797 handwritten digits (UCI, via ``sklearn.datasets.load_digits``), 10 classes, upsampled to 32x32.

    A seeded split: ``test_size`` test, ``val_size`` val, the rest (1,197 by default) train, fixed by ``split_seed``
    (``null``: the run's seed, so that seeds vary the split too). Augmentation: random crops after ``pad`` pixels of
    padding; no flips (a mirrored digit is another symbol). Needs no network.
    ``resident`` (default): the whole set lives on the training device (see ``ImageDataModule``).
    """

    table3_views: tuple[TestViews, ...] = ("single",)  # `ensemble`'s default

    @classmethod
    def check_test_views(cls, test_views: str) -> None:
        """As every DataModule's, and a note on ``flip``: allowed (it shows what mirroring costs), never a gain."""
        super().check_test_views(test_views)
        if test_views == "flip":
            print(f"inception_lab: note: {config_prefix(cls)}test_views='flip': a mirrored digit is another glyph "
                  "(training never mirrors one), so flip raises the digits' test error; 'single' is their protocol",
                  file=sys.stderr)

    def __init__(self, batch_size: PositiveInt = 64, num_workers: NonNegativeInt = 0, image_size: PositiveInt = 32,
                 val_size: PositiveInt = 300, test_size: PositiveInt = 300, pad: NonNegativeInt = 2,
                 split_seed: int | None = 0, test_views: TestViews = "single", resident: bool = True) -> None:
        check_arguments(DigitsDataModule, locals())
        check_split(DIGITS, {"test_size": test_size, "val_size": val_size})
        super().__init__(batch_size, num_workers, test_views, resident)
        self.save_hyperparameters()
        # plain ints: linked into the network's hyperparameters, which checkpoints load with weights_only=True
        self.num_classes, self.in_channels, self.image_size = 10, 1, int(image_size)
        self.val_size, self.test_size, self.pad, self.split_seed = val_size, test_size, pad, split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255 / 16)  # N x 1 x 8 x 8, 0..255
        images = torch.nn.functional.interpolate(images, size=self.image_size, mode="bilinear", antialias=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
        labels = torch.tensor(digits.target, dtype=torch.long)
        test, val, train = split_indices(len(images), {"test_size": self.test_size, "val_size": self.val_size},
                                         self.split_seed)
        pixels = images[train].float() / 255
        self.mean, self.std = (pixels.mean().item(),), (pixels.std().item(),)
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(images[test], labels[test])
