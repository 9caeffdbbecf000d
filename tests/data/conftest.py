"""Shared by the DataModule tests: one batch of a split as a fit's device side sees it, an ImageNet DataModule on a
JPEG tree."""

from __future__ import annotations

from pathlib import Path

import torch

from inception_lab.data import ImageDataModule, ImageNetDataModule
from tests.conftest import trainer_stub


def first_batch(dm: ImageDataModule, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch of split ``name`` ("train", "val", "test", "predict") after ``on_after_batch_transfer``, as
    the trainer's stage makes it (augmented in training, views in testing)."""
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader,
              "predict": dm.predict_dataloader}[name]()
    dm.trainer = None
    batch = next(iter(loader))
    dm.trainer = trainer_stub(name)
    return dm.on_after_batch_transfer(batch, 0)


def rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def imagenet_data(root: Path, **kwargs: object) -> ImageNetDataModule:
    """An ImageNetDataModule on the JPEG tree at ``root`` (3 classes), checked and set up for a fit: 32-pixel crops
    (eval resize 37), batches of 4, 4 training images held out for validation, no workers; ``kwargs`` override."""
    args = dict(root=str(root), image_size=32, eval_resize=37, num_classes=3, batch_size=4, num_workers=0,
                val_size=4)
    dm = ImageNetDataModule(**{**args, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm
