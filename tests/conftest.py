"""Tiny datasets written in exactly the real on-disk formats, so the real loading code runs on them."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach for a W&B server


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _batch(n: int, rng: np.random.Generator, classes: int, cifar100: bool) -> dict:
    labels = rng.integers(0, classes, n).tolist()
    # The real files are Python 2 pickles whose str keys torchvision reads with encoding="latin1" as str keys.
    batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": ["x.png"] * n,
             "batch_label": "tiny"}
    if cifar100:
        batch["fine_labels"], batch["coarse_labels"] = labels, [c // 5 for c in labels]
    else:
        batch["labels"] = labels
    return batch


def write_cifar(root: Path, cifar100: bool = False, per_batch: int = 20, seed: int = 0) -> dict:
    """CIFAR's python version as torchvision reads it: pickled batches (uint8 rows of 3072 RGB values, labels)
    in cifar-10-batches-py/ (or cifar-100-python/), and the .tar.gz archive torchvision downloads. Returns the
    class attributes that hold the md5s of these files."""
    cls = CIFAR100 if cifar100 else CIFAR10
    rng = np.random.default_rng(seed)
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    classes = 100 if cifar100 else 10
    files = {}
    for name, _ in (*cls.train_list, *cls.test_list):
        with open(folder / name, "wb") as f:
            pickle.dump(_batch(per_batch, rng, classes, cifar100), f, protocol=2)
        files[name] = _md5(folder / name)
    meta_key = cls.meta["key"]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, f, protocol=2)
    archive = root / cls.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=cls.base_folder)
    return {
        "train_list": [[n, files[n]] for n, _ in cls.train_list],
        "test_list": [[n, files[n]] for n, _ in cls.test_list],
        "meta": {**cls.meta, "md5": _md5(folder / cls.meta["filename"])},
        "tgz_md5": _md5(archive),
    }


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CIFAR-10 and CIFAR-100 under one root, with torchvision's expected md5s set to these files'."""
    root = tmp_path / "cifar"
    for cls, cifar100 in ((CIFAR10, False), (CIFAR100, True)):
        for attr, value in write_cifar(root, cifar100).items():
            monkeypatch.setattr(cls, attr, value)  # CLI tests on these files run the CLI in this process
    return root


def write_imagenet(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2) -> Path:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, JPEGs of assorted sizes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(40, 90, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG", quality=85)
    return root


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    return write_imagenet(tmp_path / "imagenet")
