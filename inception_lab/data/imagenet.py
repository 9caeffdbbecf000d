"""ImageNet (ILSVRC-2012) from JPEG folders, with the paper's augmentation and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder, ImageNet
from torchvision.transforms import v2

from inception_lab.data.base import DataError, ImageDataModule, split_indices
from inception_lab.data.views import TestViews, ViewMaker

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Transformed(Dataset):
    """A view of a dataset with its own transform (one directory scan serves train and held-out val)."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


class ImageNetDataModule(ImageDataModule):
    """ImageNet: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (torchvision ``ImageFolder``), or
    torchvision's ``ImageNet`` layout when ``root`` holds its devkit (``meta.bin`` / ``ILSVRC2012_devkit_t12.tar.gz``).

    ``val_size`` training images (seeded) are held out for validation; the official ``val/`` set is the test split.
    Training: the paper's augmentation (Section 6): crops of 8%-100% of the area with aspect ratio 3/4-4/3 resized to
    ``image_size``, horizontal flips, photometric distortions (``color_jitter``), normalized in the workers.
    Evaluation: resize to ``eval_resize``, center crop ``image_size``, cut in the workers as uint8 and normalized on
    the device; ``test_views``: ``ten_crop`` for the one-scale 10-crop protocol, ``multi144`` for the paper's 144
    crops (Section 7; ``inception_lab.data.views``). 144 views are 21.7 MB per image at 224 as uint8: a test batch
    of 256 images is 5.5 GB, so lower ``batch_size`` for ``multi144`` (it counts images, not views).
    """

    views_supported = get_args(TestViews)
    mean, std = MEAN, STD

    def __init__(self, root: str = "data/imagenet", image_size: PositiveInt = 224, eval_resize: PositiveInt = 256,
                 num_classes: PositiveInt = 1000, batch_size: PositiveInt = 256, num_workers: NonNegativeInt = 8,
                 pin_memory: bool = True, persistent_workers: bool = True, val_size: PositiveInt = 10000,
                 split_seed: int = 0, color_jitter: NonNegativeFloat = 0.4, test_views: TestViews = "single") -> None:
        super().__init__(batch_size, num_workers, test_views)
        self.save_hyperparameters()
        self.root, self.eval_resize, self.val_size, self.split_seed = root, eval_resize, val_size, split_seed
        self.pin_memory, self.persistent_workers, self.color_jitter = pin_memory, persistent_workers, color_jitter
        # plain ints: linked into the network's hyperparameters, which checkpoints load with weights_only=True
        self.num_classes, self.in_channels, self.image_size = int(num_classes), 3, int(image_size)

    def _transforms(self) -> dict[str, Any]:
        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        jitter = [v2.ColorJitter(self.color_jitter, self.color_jitter, self.color_jitter)] if self.color_jitter else []
        train = v2.Compose([v2.RandomResizedCrop(self.image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                                 antialias=True), v2.RandomHorizontalFlip(), *jitter, *to_tensor])
        center = ViewMaker("single", self.image_size, self.eval_resize)
        return {"train": train, "eval": center, "test": ViewMaker(self.test_views, self.image_size, self.eval_resize)}

    def _devkit_layout(self) -> bool:
        root = Path(self.root)
        return (root / "meta.bin").is_file() or (root / "ILSVRC2012_devkit_t12.tar.gz").is_file()

    def _check_layout(self) -> None:
        root = Path(self.root)
        if self._devkit_layout():
            return
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise DataError(f"ImageNet {split} directory not found: {root / split} (expected "
                                f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG, or torchvision's "
                                "ImageNet layout with its devkit); set data.init_args.root")

    def _folders(self) -> tuple[Dataset, Dataset, int]:
        root = Path(self.root)
        self._check_layout()
        if self._devkit_layout():
            try:
                train, test = ImageNet(str(root), split="train"), ImageNet(str(root), split="val")
            except (RuntimeError, FileNotFoundError) as error:
                raise DataError(f"{root}: torchvision ImageNet layout incomplete ({error})") from None
            return train, test, len(train.classes)
        try:
            train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
        except FileNotFoundError as error:
            raise DataError(f"{root}: {error}") from None
        if train.classes != test.classes:
            raise DataError(f"{root}: train/ and val/ hold different class folders")
        return train, test, len(train.classes)

    def prepare_data(self) -> None:
        self._check_layout()  # cheap: the directory scan (1.3M files) happens once, in setup

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test, classes = self._folders()
        if classes != self.num_classes:
            raise DataError(f"{self.root}: found {classes} class folders but data.init_args.num_classes="
                            f"{self.num_classes}; set it to {classes}")
        transforms = self._transforms()
        val, fit = split_indices(len(train), {"val_size": self.val_size}, self.split_seed)
        self.train_set = _Transformed(Subset(train, fit.tolist()), transforms["train"])
        self.val_set = _Transformed(Subset(train, val.tolist()), transforms["eval"])
        self.test_set = _Transformed(test, transforms["test"])
