"""The CIFAR DataModule (``data/cifar.py``) on CIFAR-10 and CIFAR-100 in torchvision's on-disk format: loading, the
held-out split, an archive extracted without the network, a missing or corrupt file named in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision.datasets.utils as tv_utils
from torchvision.datasets import CIFAR10, CIFAR100

from inception_lab.data import CIFARDataModule, DataError
from inception_lab.errors import ArgumentValueError
from tests.data.conftest import first_batch, rows


# ---- CIFAR --------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    for name in ("_urlretrieve", "_get_redirect_url", "_download_file_from_remote_location"):
        monkeypatch.setattr(tv_utils, name, refuse)


@pytest.mark.parametrize(("dataset", "classes", "cls"), [("cifar10", 10, CIFAR10), ("cifar100", 100, CIFAR100)])
def test_cifar_loads_real_format(tiny_cifar: Path, dataset: str, classes: int, cls: type[CIFAR10]) -> None:
    dm = CIFARDataModule(dataset=dataset, root=str(tiny_cifar), batch_size=8, val_size=10)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (classes, 3, 32)
    dm.prepare_data()
    dm.setup("fit")
    train_size = 20 * len(cls.train_list)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (train_size - 10, 10, 20 * len(cls.test_list))
    # held out of train, and together they are torchvision's training set, in NCHW
    reference = cls(str(tiny_cifar), train=True)
    train, val = rows(dm.train_set.tensors[0]), rows(dm.val_set.tensors[0])
    assert not train & val
    assert train | val == rows(torch.from_numpy(reference.data).permute(0, 3, 1, 2))
    labels = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]])
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < classes
    x, y = first_batch(dm, "train")
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)


def test_cifar_download_extracts_present_archive(tiny_cifar: Path, no_network: None) -> None:
    shutil.rmtree(tiny_cifar / CIFAR10.base_folder)
    dm = CIFARDataModule(root=str(tiny_cifar), download=True, val_size=10)
    dm.prepare_data()  # the archive is there with the expected md5: extracted, never fetched
    dm.setup("fit")
    assert len(dm.test_set) == 20
    dm.prepare_data()  # intact files: nothing to do


def test_cifar_missing_names_path_and_download(tmp_path: Path, no_network: None) -> None:
    dm = CIFARDataModule(root=str(tmp_path / "nowhere"))
    for check in (dm.check_source, dm.prepare_data):  # the CLI's check before a run is written, and the fit's own
        with pytest.raises(ArgumentValueError) as error:
            check()
        message = str(error.value)
        assert message.startswith(f"root={str(tmp_path / 'nowhere')!r}: CIFAR-10 not found there")
        assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "set download to true" in message
        assert "\n" not in message


def test_cifar_corrupt_batch_names_file(tiny_cifar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = tiny_cifar / CIFAR10.base_folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3.*md5"):
        CIFARDataModule(root=str(tiny_cifar)).prepare_data()
    # a file that matches its md5 yet does not unpickle is named too
    import hashlib

    train_list = [[n, hashlib.md5(batch.read_bytes()).hexdigest() if n == "data_batch_3" else m]
                  for n, m in CIFAR10.train_list]
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    with pytest.raises(DataError, match="data_batch_3: unreadable") as error:
        CIFARDataModule(root=str(tiny_cifar), val_size=10).setup("fit")
    assert "\n" not in str(error.value)
