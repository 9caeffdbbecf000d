"""ImageNet (ILSVRC-2012) from JPEG folders, with the paper's augmentation and evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor
from torch.utils.data import Dataset, Subset, get_worker_info
from torchvision import tv_tensors
from torchvision.datasets import ImageFolder, ImageNet
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2

from inception_lab.arguments import check_arguments
from inception_lab.data.base import (
    CROP_AREA,
    CROP_RATIO,
    BadImagePolicy,
    BadImages,
    DataError,
    FileBatch,
    ImageDataModule,
    UndecodableImage,
    split_indices,
)
from inception_lab.data.views import PAPER_VIEWS, TestViews, ViewMaker
from inception_lab.errors import ArgumentValueError, config_prefix
from inception_lab.run.files import run_seed
from inception_lab.run.identity import DATA_BOOKKEEPING
from inception_lab.sampling import trainer_progress

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# BVLC's transform_param: mean_value 104, 117, 123 (BGR) subtracted from 0-255 pixels, nothing divided
CAFFE_MEAN_RGB = (123.0, 117.0, 104.0)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (MEAN, STD),  # torchvision's: [0, 1] pixels less the mean, over the std (input rms about 1.4)
    # 0-255 less BVLC's mean (rms about 83 on photographs): the scale LRN's alpha was set for. In the units of
    # normalize() ([0, 1] pixels): mean / 255, std 1 / 255.
    "caffe": (tuple(m / 255 for m in CAFFE_MEAN_RGB), (1 / 255,) * 3),
}
Backend = Literal["torchvision", "dali", "torchvision_device"]
Normalization = Literal["imagenet", "caffe"]
Interpolation = Literal["bilinear", "random"]
# Section 6: "we used ... random interpolation methods (bilinear, area, nearest neighbor and cubic, with equal
# probability) for resizing"
PAPER_INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")


def is_jpeg(data: Tensor) -> bool:
    return len(data) > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8  # the JPEG start-of-image marker


def read_bytes(path: str) -> Tensor:
    """For ``backend: torchvision_device``: a JPEG's bytes as a uint8 tensor ``(L,)``, decoded later on the training
    device; anything else (ImageNet's few PNG and CMYK files) decoded here, ``(3, H, W)``."""
    try:
        data = read_file(path)
    except RuntimeError as error:  # empty, or gone
        raise UndecodableImage(path, error) from None
    if is_jpeg(data):
        try:
            torchvision_jpeg_header(data)
            return data
        except RuntimeError:
            pass
    return load_image(path)


def torchvision_jpeg_header(data: Tensor) -> None:
    """Raises RuntimeError for JPEGs the device decoder cannot take (CMYK): libjpeg's colour space, from the SOF
    marker's component count (3: YCbCr or RGB, 1: gray; 4: CMYK/YCCK)."""
    raw = data.numpy().tobytes()
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            return
        marker, length = raw[i + 1], int.from_bytes(raw[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            if raw[i + 9] == 4:
                raise RuntimeError("a 4-component (CMYK) JPEG")
            return
        i += 2 + length


class _FileBytes(Dataset):
    """Training images as their files' bytes (``read_bytes``), labels and indices: ``backend: torchvision_device``."""

    def __init__(self, samples: list[tuple[str, int]], bad_images: BadImages) -> None:
        self.samples, self.bad_images = samples, bad_images
        self.flags = bad_images.flags(len(samples), self.path)

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        index, data = self.bad_images.get(lambda i: read_bytes(self.path(i)), index, self.flags)
        return data, self.samples[index][1], index


def collate_bytes(batch: list[tuple[Tensor, int, int]]) -> tuple[FileBatch, Tensor]:
    """A batch of file bytes (of different lengths) packed as one :class:`FileBatch`, the labels as a tensor."""
    items = [x for x, _, _ in batch]
    size = sum(x.numel() for x in items)
    out = None
    if get_worker_info() is not None:  # straight into shared memory, as default_collate does in a worker
        out = items[0].new(items[0].untyped_storage()._new_shared(size)).resize_(size)
    data = torch.cat([x.reshape(-1) for x in items], out=out)
    shapes, index = tuple(tuple(x.shape) for x in items), tuple(i for _, _, i in batch)
    return FileBatch(data, shapes, index), torch.tensor([y for _, y, _ in batch])


def load_image(path: str) -> Tensor:
    """A file as a uint8 RGB tensor ``(3, H, W)``, by ``torchvision.io.decode_image`` (libjpeg-turbo, libpng, ...
    straight into a tensor: faster than PIL's decode and copy): JPEG, CMYK JPEG, PNG (gray, palette, alpha dropped)
    whatever the file's name says (ImageNet holds a PNG and CMYK files saved as .JPEG), as PIL's ``convert("RGB")``.
    A file that does not decode (empty, cut short, not an image): :class:`UndecodableImage`."""
    try:
        return decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise UndecodableImage(path, error) from None


class RandomInterpolationResizedCrop(v2.RandomResizedCrop):
    """``v2.RandomResizedCrop`` whose resize draws its interpolation per image, each of ``modes`` with equal
    probability (the paper's bilinear, area, nearest and bicubic). ``area`` is ``torch.nn.functional.interpolate``'s
    (a box filter when shrinking: OpenCV's INTER_AREA), which torchvision's resize has no mode for."""

    MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "nearest": v2.InterpolationMode.NEAREST,
             "bicubic": v2.InterpolationMode.BICUBIC}

    def __init__(self, size: int, modes: tuple[str, ...] = PAPER_INTERPOLATIONS, **kwargs: Any) -> None:
        super().__init__(size, antialias=True, **kwargs)
        self.modes = modes

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        params["mode"] = self.modes[int(torch.randint(len(self.modes), ()))]
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        mode = params["mode"]
        if mode != "area":
            return v2.functional.resized_crop(inpt, params["top"], params["left"], params["height"], params["width"],
                                              self.size, interpolation=self.MODES[mode], antialias=True)
        patch = v2.functional.crop(inpt, params["top"], params["left"], params["height"], params["width"])
        out = torch.nn.functional.interpolate(patch[None].float(), size=self.size, mode="area")[0]
        out = out.round_().clamp_(0, 255).to(inpt.dtype)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def train_crop(size: int, interpolation: Interpolation = "bilinear") -> v2.Compose:
    """The loader worker's half of the paper's training augmentation, on a uint8 image: a random crop (area and
    aspect as Section 6) resized to ``size`` x ``size`` (bilinear, or ``random``: the paper's four interpolations
    with equal probability), and a horizontal flip. uint8 ``(3, size, size)`` out."""
    if interpolation == "random":
        resize: v2.Transform = RandomInterpolationResizedCrop(size, scale=CROP_AREA, ratio=CROP_RATIO)
    else:
        resize = v2.RandomResizedCrop(size, scale=CROP_AREA, ratio=CROP_RATIO, antialias=True)
    return v2.Compose([resize, v2.RandomHorizontalFlip()])


def jitter_params(n: int, strength: float, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample photometric parameters as ``v2.ColorJitter(strength, strength, strength)`` draws them for one
    image: factors ``(n, 3)`` (brightness, contrast, saturation), each uniform in [max(0, 1 - s), 1 + s], and the
    order ``(n, 3)`` in which the three are applied, a uniform random permutation per image."""
    low, high = max(0.0, 1 - strength), 1 + strength
    factors = torch.rand(n, 3, device=device, generator=generator) * (high - low) + low
    order = torch.rand(n, 3, device=device, generator=generator).argsort(1)
    return factors, order


def color_jitter(images: Tensor, strength: float, params: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """torchvision's ColorJitter (brightness, contrast, saturation; no hue) with its own draw for every image of a
    float batch ``(N, 3, H, W)`` in [0, 1], on the batch's device (v2 transforms on a batch draw once: vision #8484).

    Each of the three is torchvision's blend ``clamp(f * x + (1 - f) * ref, 0, 1)`` with ``ref`` 0 (brightness),
    the image's mean gray (contrast) or its gray image (saturation): step k blends every image with the reference of
    its k-th operation, so the three steps cost three blends whatever the orders.
    """
    factors, order = params if params is not None else jitter_params(len(images), strength, images.device)
    weights = images.new_tensor((0.2989, 0.587, 0.114)).view(1, 3, 1, 1)  # torchvision's rgb_to_grayscale
    rows = torch.arange(len(images), device=images.device)
    for step in range(3):
        op = order[:, step]
        f = factors[rows, op].to(images.dtype).view(-1, 1, 1, 1)
        gray = (images * weights).sum(1, keepdim=True)
        mean = gray.mean((1, 2, 3), keepdim=True)
        ref = torch.where((op == 0).view(-1, 1, 1, 1), 0.0, torch.where((op == 1).view(-1, 1, 1, 1), mean, gray))
        images = (f * images + (1 - f) * ref).clamp_(0, 1)
    return images


class _Transformed(Dataset):
    """A view of a folder (or of a Subset of one) with its own transform (one directory scan serves train and
    held-out val); a file that does not decode is skipped or stops the loader, as ``bad_images`` says."""

    def __init__(self, dataset: Dataset, transform: Any, bad_images: BadImages) -> None:
        self.dataset, self.transform, self.bad_images = dataset, transform, bad_images
        self.flags = bad_images.flags(len(self), self.path)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def path(self, index: int) -> str:
        if isinstance(self.dataset, Subset):
            return self.dataset.dataset.samples[self.dataset.indices[index]][0]
        return self.dataset.samples[index][0]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        _, (image, label) = self.bad_images.get(self.dataset.__getitem__, index, self.flags)
        return self.transform(image), label


def _holds_image(folder: str) -> bool:
    """Whether ``folder`` (or a folder in it) holds a file ImageFolder takes: stops at the first one."""
    with os.scandir(folder) as entries:
        subfolders = []
        for entry in entries:
            if entry.is_dir():
                subfolders.append(entry.path)
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                return True
    return any(_holds_image(subfolder) for subfolder in subfolders)


class ImageNetDataModule(ImageDataModule):
    """ImageNet: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (torchvision ``ImageFolder``), or
    torchvision's ``ImageNet`` layout when ``root`` holds its devkit (``meta.bin`` / ``ILSVRC2012_devkit_t12.tar.gz``).

    ``val_size`` training images (seeded by ``split_seed``; ``null``: the run's seed) are held out for validation; the
    official ``val/`` set is the test split. Training: the paper's augmentation (Section 6): the loader workers decode
    (:func:`load_image`), take crops of 8%-100% of the area with aspect ratio 3/4-4/3 resized to ``image_size`` and flip
    them (:func:`train_crop`), and hand over uint8 batches (a quarter of float's bytes over PCIe); the photometric
    distortions (``color_jitter``, drawn per image: :func:`color_jitter`), the float conversion and the normalization
    run on the training device, on the batch. Evaluation: resize to ``eval_resize``, center crop ``image_size``, cut in
    the workers as uint8 and normalized on the device; ``test_views``: ``ten_crop`` for the one-scale 10-crop protocol,
    ``multi144`` for the paper's 144 crops (Section 7; ``inception_lab.data.views``). 144 views are 21.7 MB per image at
    224 as uint8: a test batch of 256 images is 5.5 GB, so lower ``batch_size`` for ``multi144`` (it counts images, not
    views).

    ``normalization``: ``imagenet`` (torchvision's mean and std, the batch-norm presets') or ``caffe`` (BVLC's:
    0-255 pixels less the mean, not divided: the scale the paper network's LRN was set for; channels stay RGB).
    ``interpolation``: the training crop's resize: ``bilinear`` or ``random`` (the paper's Section 6: bilinear,
    area, nearest and bicubic with equal probability, drawn per image; torchvision backend).

    ``backend``: who decodes and crops the training images. ``torchvision`` (the default: loader workers, as
    above) or ``dali`` (NVIDIA DALI, ``pip install inception_lab[dali]``: decodes on the GPU with the random crop
    fused into the decode, or on the CPU where there is no GPU; ``num_workers`` is its CPU thread count; sharded by
    global rank, reshuffled per epoch from (seed, epoch): :mod:`inception_lab.data.dali`). Both hand uint8 crops of
    the same area and aspect ranges to the same on-device distortions; or ``torchvision_device`` (the workers read
    the JPEGs' bytes; ``torchvision.io.decode_jpeg`` decodes the batch on the training device, nvJPEG on a GPU, and
    the random crop and flip run there, per image, with the worker path's own transform and draws:
    :meth:`decode`). Evaluation always runs on torchvision in the workers.

    ``bad_images``: a file that cannot be decoded (empty, cut short, not an image), in any split: ``skip`` (the next
    file of its split takes its place, so batches keep their size and DDP ranks their step counts; in a test or
    predict split the substitute's output stands at the bad file's index; each file skipped is counted in the run's
    ``summary.json``, ``bad_images``, and the first is named on stderr once) or ``error`` (the run stops in one line
    naming the file and resumes from its last checkpoint once the file is replaced). DALI's decoder has no such
    choice: a bad file stops its pipeline.
    """

    views_supported = get_args(TestViews)
    table3_views = PAPER_VIEWS  # what `ensemble` compares by default
    BOOKKEEPING = (*DATA_BOOKKEEPING, "bad_images")  # what to do on a broken file, not what a run computes

    def __init__(self, root: str = "data/imagenet", image_size: PositiveInt = 224, eval_resize: PositiveInt = 256,
                 num_classes: PositiveInt = 1000, batch_size: PositiveInt = 256, num_workers: NonNegativeInt = 8,
                 pin_memory: bool = True, persistent_workers: bool = True, val_size: PositiveInt = 10000,
                 split_seed: int | None = 0, color_jitter: NonNegativeFloat = 0.4, test_views: TestViews = "single",
                 backend: Backend = "torchvision", normalization: Normalization = "imagenet",
                 interpolation: Interpolation = "bilinear", bad_images: BadImagePolicy = "skip") -> None:
        check_arguments(ImageNetDataModule, locals())
        super().__init__(batch_size, num_workers, test_views)
        if backend == "dali":
            if interpolation != "bilinear":
                raise ArgumentValueError(type(self), "the DALI pipeline resizes bilinearly (DALI has no area "
                                         "filter); random interpolation is the torchvision backend's: with backend "
                                         "dali, set interpolation to 'bilinear'", interpolation=interpolation)
            from inception_lab.data.dali import require_dali

            require_dali(type(self))
        self.mean, self.std = NORMALIZATIONS[normalization]
        self.normalization, self.interpolation, self.bad_images = normalization, interpolation, bad_images
        self.save_hyperparameters()
        self.backend = backend
        self.root, self.eval_resize, self.val_size, self.split_seed = root, eval_resize, val_size, split_seed
        self.pin_memory, self.persistent_workers, self.color_jitter = pin_memory, persistent_workers, color_jitter
        # plain ints: linked into the network's hyperparameters, which checkpoints load with weights_only=True
        self.num_classes, self.in_channels, self.image_size = int(num_classes), 3, int(image_size)

    def _transforms(self) -> dict[str, Any]:
        center = ViewMaker("single", self.image_size, self.eval_resize)
        return {"train": train_crop(self.image_size, self.interpolation), "eval": center,
                "test": ViewMaker(self.test_views, self.image_size, self.eval_resize)}

    def collate(self, train: bool) -> Any:
        return collate_bytes if train and self.backend == "torchvision_device" else None

    def decode(self, batch: FileBatch, labels: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """``backend: torchvision_device``: the batch's JPEG bytes decoded on their device (one batched
        ``decode_jpeg``), then each image's random crop (Section 6's area and aspect, resized to ``image_size``) and
        flip by the worker path's own transform (:func:`train_crop`), drawn image by image in the same order: uint8
        ``(N, 3, S, S)``. Items already decoded by a worker (PNG, CMYK) join the batch as they are. One bad JPEG fails
        the batched decode: its files are then decoded one by one, a bad one's place taken by the next file of the
        split that decodes, as in the workers (``bad_images``), its label with it."""
        items = batch.items()
        jpegs = [i for i, x in enumerate(items) if x.ndim == 1]
        decoded = [x.to(device, non_blocking=True) if x.ndim == 3 else x for x in items]
        if jpegs:  # the bytes stay on the host; the decoder writes the images onto the device
            try:
                for i, image in zip(jpegs, decode_jpeg([items[i] for i in jpegs], mode=ImageReadMode.RGB,
                                                       device=device)):
                    decoded[i] = image
            except RuntimeError:
                labels = labels.clone()
                for i in jpegs:
                    index, decoded[i] = self._bad_images.get(lambda j: self._decode_file(j, device), batch.index[i],
                                                             self.train_set.flags)
                    labels[i] = self.train_set.samples[index][1]
        return torch.stack([self._train_crop(image) for image in decoded]), labels

    def _decode_file(self, index: int, device: torch.device) -> Tensor:
        """The ``index``-th training file decoded onto ``device`` on its own, or :class:`UndecodableImage`."""
        path = self.train_set.path(index)
        data = read_bytes(path)
        try:
            return data.to(device) if data.ndim == 3 else decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as error:
            raise UndecodableImage(path, error) from None

    def augment(self, images: Tensor) -> Tensor:
        """On the device, per image: the photometric distortions on the uint8 crops, as float in [0, 1]."""
        images = images.float().div_(255)
        return color_jitter(images, self.color_jitter) if self.color_jitter else images

    def _devkit_layout(self) -> bool:
        root = Path(self.root)
        return (root / "meta.bin").is_file() or (root / "ILSVRC2012_devkit_t12.tar.gz").is_file()

    def check_source(self) -> None:
        """The split directories; in each class folder a file ImageFolder takes (the first found will do: ImageNet
        has 1.28M files); the same class folders in train/ as in val/, ``num_classes`` of them."""
        root = Path(self.root)
        if self._devkit_layout():
            return
        classes = []
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise ArgumentValueError(type(self), f"no ImageNet {split} directory {root / split} (expected "
                                         f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG, or torchvision's "
                                         "ImageNet layout with its devkit)", root=self.root)
            folders = sorted(entry.path for entry in os.scandir(root / split) if entry.is_dir())
            empty = next((folder for folder in folders if not _holds_image(folder)), None)
            if empty or not folders:
                what = f"class folder {empty} holds no image" if empty else f"{root / split} holds no class folder"
                raise ArgumentValueError(type(self), f"{what}: ImageFolder takes files ending in "
                                         f"{', '.join(IMG_EXTENSIONS)} (in any case) in each class folder; add them, "
                                         "or remove the folder from train/ and val/", root=self.root)
            classes.append([Path(folder).name for folder in folders])
        if classes[0] != classes[1]:
            raise ArgumentValueError(type(self), f"train/ and val/ hold different class folders (in one only: "
                                     f"{', '.join(sorted(set(classes[0]) ^ set(classes[1]))[:3])}, ...)",
                                     root=self.root)
        self._check_classes(len(classes[0]))

    def _check_classes(self, classes: int) -> None:
        if classes != self.num_classes:
            raise ArgumentValueError(type(self), f"{self.root} holds {classes} class folders; set it to {classes}",
                                     num_classes=self.num_classes)

    def _folders(self) -> tuple[Dataset, Dataset, int]:
        root = Path(self.root)
        self.check_source()
        if self._devkit_layout():
            try:
                train = ImageNet(str(root), split="train", loader=load_image)
                test = ImageNet(str(root), split="val", loader=load_image)
            except (RuntimeError, FileNotFoundError) as error:
                raise DataError(f"{root}: torchvision ImageNet layout incomplete ({error})") from None
            return train, test, len(train.classes)
        try:
            train = ImageFolder(str(root / "train"), loader=load_image)
            test = ImageFolder(str(root / "val"), loader=load_image)
        except FileNotFoundError as error:
            raise DataError(f"{root}: {error}") from None
        return train, test, len(train.classes)

    def prepare_data(self) -> None:
        self.check_source()  # cheap: the directory scan (1.3M files) happens once, in setup

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test, classes = self._folders()
        self._check_classes(classes)
        transforms = self._transforms()
        val, fit = split_indices(len(train), {"val_size": self.val_size}, self.split_seed)
        self._train_crop = transforms["train"]  # the workers' crop, or the device's (decode)
        bad = self._bad_images = BadImages(self.bad_images, f"{config_prefix(type(self))}bad_images")
        if self.backend == "torchvision_device":  # bytes: decoded, cropped and flipped on the device (decode)
            self.train_set = _FileBytes([train.samples[i] for i in fit.tolist()], bad)
        else:
            self.train_set = _Transformed(Subset(train, fit.tolist()), transforms["train"], bad)
        self.val_set = _Transformed(Subset(train, val.tolist()), transforms["eval"], bad)
        self.test_set = _Transformed(test, transforms["test"], bad)

    def train_dataloader(self) -> Any:
        if self.backend != "dali":
            return super().train_dataloader()
        from inception_lab.data.dali import DaliTrainLoader

        if self.train_set is None:
            raise DataError(f"{type(self).__name__}: setup() has not loaded this split")
        subset = self.train_set.dataset  # a Subset of the folder: the training images less the held-out ones
        samples = [subset.dataset.samples[i] for i in subset.indices]
        trainer = self.trainer
        device = getattr(getattr(trainer, "strategy", None), "root_device", None) or torch.device("cpu")
        return DaliTrainLoader([path for path, _ in samples], [label for _, label in samples], self.batch_size,
                               self.image_size, seed=run_seed(),
                               progress_fn=trainer_progress(self), rank=getattr(trainer, "global_rank", 0),
                               world_size=getattr(trainer, "world_size", 1),
                               device_id=(device.index or 0) if device.type == "cuda" else None,
                               num_threads=max(1, self.num_workers), key=f"{config_prefix(type(self))}backend",
                               decode=load_image)
