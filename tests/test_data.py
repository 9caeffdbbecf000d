"""DataModules on the real loading code: digits, CIFAR in its on-disk format, an ImageNet JPEG tree."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision.datasets.utils as tv_utils
from torchvision.datasets import CIFAR10, CIFAR100

from inception_lab.data import (
    CIFARDataModule,
    DataError,
    DigitsDataModule,
    ImageDataModule,
    ImageNetDataModule,
    random_crop_flip,
)
from inception_lab.data.base import split_indices
from inception_lab.data.views import ViewBatch
from inception_lab.errors import ArgumentValueError, user_message


def stage(dm: ImageDataModule, name: str) -> None:
    """Stand in for the trainer state that ``on_after_batch_transfer`` reads."""
    dm.trainer = SimpleNamespace(training=name == "train", testing=name == "test", predicting=name == "predict")


def first_batch(dm: ImageDataModule, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader,
              "predict": dm.predict_dataloader}[name]()
    dm.trainer = None
    batch = next(iter(loader))
    stage(dm, name)
    return dm.on_after_batch_transfer(batch, 0)


def rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


@pytest.mark.parametrize("cls", [DigitsDataModule, CIFARDataModule, ImageNetDataModule])
def test_constructor_is_typed_and_says_linked_attributes(cls: type[ImageDataModule]) -> None:
    """jsonargparse builds these from YAML: every argument typed, no **kwargs; linked values exist before setup."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert all(p.annotation is not inspect.Parameter.empty for p in params)
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    dm = cls()  # no I/O: --print_config must work without data
    assert all(isinstance(getattr(dm, attr), int) for attr in ("num_classes", "in_channels", "image_size"))


# ---- digits -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_digits_shapes_and_split(digits: DigitsDataModule) -> None:
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 32)
    assert [len(s) for s in (digits.train_set, digits.val_set, digits.test_set)] == [1197, 300, 300]
    x, y = digits.train_set.tensors
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 32, 32) and x.max() > 200
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    for name in ("train", "val", "test", "predict"):
        x, y = first_batch(digits, name)
        assert x.shape == (32, 1, 32, 32) and x.dtype == torch.float32 and y.shape == (32,) and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_digits_split_is_disjoint_and_fixed_by_seed(digits: DigitsDataModule) -> None:
    parts = split_indices(1797, {"test_size": 300, "val_size": 300}, seed=0)
    assert sorted(torch.cat(parts).tolist()) == list(range(1797))  # a partition: disjoint and complete
    again = DigitsDataModule()
    again.setup("fit")
    for a, b in zip((digits.train_set, digits.val_set, digits.test_set), (again.train_set, again.val_set,
                                                                          again.test_set)):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    other = DigitsDataModule(split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.test_set.tensors[1], digits.test_set.tensors[1])


def test_digits_normalization_uses_train_statistics(digits: DigitsDataModule) -> None:
    stage(digits, "val")
    x, _ = digits.on_after_batch_transfer(digits.train_set.tensors, 0)
    assert abs(x.mean().item()) < 1e-3 and x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_digits_augmentation_is_per_sample_and_train_only(digits: DigitsDataModule) -> None:
    image = digits.train_set.tensors[0][:1]
    same = image.expand(64, -1, -1, -1).contiguous()
    labels = torch.zeros(64, dtype=torch.long)
    stage(digits, "train")
    torch.manual_seed(0)
    x, _ = digits.on_after_batch_transfer((same, labels), 0)
    assert len(rows(x)) > 10  # each image its own crop (one parameter set per batch would give 1)
    # crops only: every output is the image shifted by at most pad=2 pixels, never mirrored
    plain = digits.normalize(image)
    padded = torch.nn.functional.pad(image, (2,) * 4)
    shifts = {digits.normalize(padded[..., dy:dy + 32, dx:dx + 32]).numpy().tobytes()
              for dy in range(5) for dx in range(5)}
    assert rows(x) <= shifts
    for name in ("val", "test"):
        stage(digits, name)
        x, _ = digits.on_after_batch_transfer((same, labels), 0)
        assert torch.equal(x, plain.expand_as(x))


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


@pytest.mark.parametrize("views", ["ten_crop", "multi144"])
def test_flip_test_views_and_crops_rejected(digits: DigitsDataModule, views: str) -> None:
    dm = DigitsDataModule(batch_size=16, test_views="flip")
    dm.setup("test")
    x, y = first_batch(dm, "test")
    assert isinstance(x, ViewBatch) and x.shape == (16, 2, 1, 32, 32) and x.views.dtype == torch.uint8
    assert torch.equal(x.views[:, 1], x.views[:, 0].flip(-1)) and y.shape == (16,)
    plain, _ = first_batch(digits, "test")
    assert torch.equal(next(x.chunks(32)), torch.stack([plain[:16], plain[:16].flip(-1)], 1).flatten(0, 1))
    x, _ = first_batch(dm, "val")
    assert x.shape == (16, 1, 32, 32)  # views only at test time: validation picks models on single views
    with pytest.raises(ArgumentValueError, match=rf"^test_views='{views}': .* allows 'single' or 'flip'$") as error:
        DigitsDataModule(test_views=views)
    assert user_message(error.value).startswith(f"data.init_args.test_views='{views}': ")  # the CLI's key


def test_split_sizes_that_leave_nothing_name_the_key() -> None:
    """Refused in the constructor (the digits are 1,797), before a fit writes anything; and by the split itself."""
    with pytest.raises(ArgumentValueError, match="^test_size=900, val_size=1000: leaves no training images out of "
                                                 "the 1797"):
        DigitsDataModule(val_size=1000, test_size=900)
    with pytest.raises(ArgumentValueError, match="^val_size=10: leaves no training images out of the 10"):
        split_indices(10, {"val_size": 10}, seed=0)


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


# ---- ImageNet -----------------------------------------------------------------------------------------------------
def imagenet(root: Path, **kwargs: object) -> ImageNetDataModule:
    args = dict(root=str(root), image_size=64, eval_resize=72, num_classes=3, batch_size=4, num_workers=0,
                val_size=4)
    dm = ImageNetDataModule(**{**args, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_imagenet_batches(tiny_imagenet: Path) -> None:
    dm = imagenet(tiny_imagenet)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 4, 6)
    assert not set(dm.train_set.dataset.indices) & set(dm.val_set.dataset.indices)  # val held out of train/
    for name in ("train", "val", "test"):
        x, y = first_batch(dm, name)
        assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert -3 < x.mean() < 3 and x.min() < 0  # normalized with ImageNet mean/std (eval: on the device)


@pytest.mark.parametrize(("views", "count"), [("ten_crop", 10), ("flip", 2), ("multi144", 144)])
def test_imagenet_test_views(tiny_imagenet: Path, views: str, count: int) -> None:
    """Cut in the workers as uint8, normalized on the device a chunk at a time; each view followed by its mirror."""
    dm = imagenet(tiny_imagenet, test_views=views)
    x, y = first_batch(dm, "test")
    assert isinstance(x, ViewBatch) and x.shape == (4, count, 3, 64, 64) and x.views.dtype == torch.uint8
    assert y.shape == (4,) and torch.equal(x.views[:, 1::2], x.views[:, 0::2].flip(-1))
    assert len({v.numpy().tobytes() for v in x.views[0]}) == count
    single, _ = first_batch(imagenet(tiny_imagenet), "test")
    chunks = list(x.chunks(7))
    assert [len(c) for c in chunks] == [7] * (4 * count // 7) + ([4 * count % 7] if 4 * count % 7 else [])
    normalized = torch.cat(chunks).unflatten(0, (4, count))
    assert normalized.dtype == torch.float32 and torch.equal(normalized, dm.normalize(x.views.flatten(0, 1)).view(
        normalized.shape))
    if views != "multi144":  # its first scale is not eval_resize; its views are checked in tests/test_views.py
        center = {10: 8, 2: 0}[count]  # ten_crop: top-left, top-right, bottom-left, bottom-right, center; each mirrored
        assert torch.equal(normalized[:, center], single)  # the center view is the single-view input
    x, _ = first_batch(dm, "val")
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32


def test_imagenet_class_count_mismatch(tiny_imagenet: Path) -> None:
    with pytest.raises(ArgumentValueError, match="^num_classes=1000: .* holds 3 class folders; set it to 3"):
        imagenet(tiny_imagenet, num_classes=1000)


def test_imagenet_missing_directory(tmp_path: Path, tiny_imagenet: Path) -> None:
    with pytest.raises(ArgumentValueError, match=str(tmp_path / "nowhere" / "train")):
        imagenet(tmp_path / "nowhere")
    shutil.rmtree(tiny_imagenet / "val")
    with pytest.raises(ArgumentValueError, match=r"^root=.*: no ImageNet val directory .*<wnid>/\*\.JPEG"):
        imagenet(tiny_imagenet)
