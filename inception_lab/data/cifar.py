"""CIFAR-10 and CIFAR-100 through torchvision's datasets (the real pickled batches and archive), held in memory."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import TensorDataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from inception_lab.arguments import check_arguments
from inception_lab.data.base import DataError, ImageDataModule, TestViews, check_split, split_indices
from inception_lab.errors import ArgumentValueError

TRAIN_IMAGES = 50000  # in either CIFAR's training batches
DATASETS = {"cifar10": (CIFAR10, "CIFAR-10", 10), "cifar100": (CIFAR100, "CIFAR-100", 100)}


class CIFARDataModule(ImageDataModule):
    """CIFAR-10/100 with a validation split held out of the training set (the test set never picks a model).

    Augmentation (per sample, on the training device): pad 4 + random 32x32 crop, random horizontal flip.

    Args:
        dataset: ``cifar10`` or ``cifar100``.
        root: the directory holding ``cifar-10-batches-py/`` or ``cifar-100-python/`` (torchvision's layout).
        download: fetch the archive (about 170 MB) into ``root`` when missing.
        val_size: training images held out for validation.
        split_seed: the seed of that hold-out (``null``: the run's seed, so that seeds vary the split too).
        resident: keep the whole dataset (150 MB of uint8 for train + val + test) on the training device and gather
            batches there: no loader workers, no copy per step. ``false``: a DataLoader with ``num_workers``.
    """

    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    pad, flip = 4, True
    table3_views: tuple[TestViews, ...] = ("single",)  # `ensemble`'s default (the crops are ImageNet's; flip: asked)

    def __init__(self, dataset: Literal["cifar10", "cifar100"] = "cifar10", root: str = "data", download: bool = False,
                 batch_size: PositiveInt = 128, num_workers: NonNegativeInt = 0, val_size: PositiveInt = 5000,
                 split_seed: int | None = 0, test_views: TestViews = "single", resident: bool = True) -> None:
        check_arguments(CIFARDataModule, locals())
        check_split(TRAIN_IMAGES, {"val_size": val_size})
        super().__init__(batch_size, num_workers, test_views, resident)
        self.save_hyperparameters()
        self.dataset, self.root, self.download = dataset, root, download
        self.val_size, self.split_seed = val_size, split_seed
        self.num_classes, self.in_channels, self.image_size = DATASETS[dataset][2], 3, 32

    @property
    def folder(self) -> Path:
        return Path(self.root) / DATASETS[self.dataset][0].base_folder

    def prepare_data(self) -> None:
        cls, name, _ = DATASETS[self.dataset]
        if self.download and not self._intact():
            try:  # skips the fetch (not the extraction) when root holds the archive with the right md5
                download_and_extract_archive(cls.url, self.root, filename=cls.filename, md5=cls.tgz_md5)
            except (OSError, RuntimeError) as error:
                raise ArgumentValueError(type(self), f"the download of {name} from {cls.url} failed ({error}); fetch "
                                         f"{cls.filename} by hand into root", root=self.root) from None
        self.check_source()

    def check_source(self) -> None:
        """The dataset's files are in ``root`` (or are to be downloaded): checked before a run is written."""
        if self.download and not self._intact():
            return  # prepare_data fetches them
        name = DATASETS[self.dataset][1]
        if not self.folder.is_dir():
            raise ArgumentValueError(type(self), f"{name} not found there ({self.folder} is missing): set download "
                                     "to true to fetch it (about 170 MB), or point root at an existing copy",
                                     root=self.root)
        self._check_files()

    def _files(self) -> list[tuple[Path, str]]:
        cls = DATASETS[self.dataset][0]
        listed = (*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"]))
        return [(self.folder / filename, md5) for filename, md5 in listed]

    def _intact(self) -> bool:
        return all(check_integrity(str(path), md5) for path, md5 in self._files())

    def _check_files(self) -> None:
        name = DATASETS[self.dataset][1]
        for path, md5 in self._files():
            if not path.is_file():
                raise DataError(f"{path}: missing {name} file; set download to true to fetch the dataset again")
            if not check_integrity(str(path), md5):
                raise DataError(f"{path}: corrupt or incomplete {name} file (md5 mismatch); delete "
                                f"{self.folder} and download again")

    def _unreadable(self) -> Path | None:
        """The first file that does not unpickle into a dict (only called once loading has failed)."""
        for path, _ in self._files():
            try:
                with open(path, "rb") as f:
                    if not isinstance(pickle.load(f, encoding="latin1"), dict):
                        return path
            except Exception:  # any failure names the file; the caller says what went wrong
                return path
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._check_files()
        cls, name, _ = DATASETS[self.dataset]
        try:
            train, test = cls(self.root, train=True), cls(self.root, train=False)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError) as error:
            raise DataError(f"{self._unreadable() or self.folder}: unreadable {name} file "
                            f"({type(error).__name__}: {error}); delete {self.folder} and download again") from None
        images, labels = self._tensors(train)
        val, fit = split_indices(len(images), {"val_size": self.val_size}, self.split_seed)
        self.train_set = TensorDataset(images[fit], labels[fit])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(*self._tensors(test))

    @staticmethod
    def _tensors(dataset: CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # N x 3 x 32 x 32, uint8
        return images, torch.tensor(dataset.targets, dtype=torch.long)
