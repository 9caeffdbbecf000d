"""DataModules: each says ``num_classes``, ``in_channels`` and ``image_size``, which the CLI links into the network."""

from inception_lab.data.base import DataError, ImageDataModule, random_crop_flip
from inception_lab.data.cifar import CIFARDataModule
from inception_lab.data.digits import DigitsDataModule
from inception_lab.data.imagenet import ImageNetDataModule

__all__ = ["CIFARDataModule", "DataError", "DigitsDataModule", "ImageDataModule", "ImageNetDataModule",
           "random_crop_flip"]
