"""ImageNet's training input paths as ``bench`` times them side by side, one loader worker (one core) each, and
ImageNet-sized JPEGs to time them on (``python -m inception_lab bench --make-imagenet DIR``).

- ``torchvision_float``: the transform before issue 15, kept here as the reference: PIL decode, RandomResizedCrop,
  flip, ColorJitter, float conversion and normalization, all in the worker.
- ``torchvision_uint8``: the default path: the worker decodes (``torchvision.io``), crops and flips and hands over
  uint8; the distortions, conversion and normalization run on the training device (timed apart: ``device``).
- ``torchvision_device``: ``backend: torchvision_device``: the worker reads the files' bytes; the batch is decoded
  (one batched ``decode_jpeg`` on the device: nvJPEG on a GPU), cropped and flipped on the device (timed with the
  worker's half: on a CPU both run on the host).
- ``dali``: the DALI pipeline of ``backend: dali`` with one CPU thread (on a GPU: its mixed decode).
Each makes the same crops (Section 6's area and aspect) and the same distortions. Measured: ``docs/performance.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from inception_lab.data.imagenet import (
    CROP_AREA,
    CROP_RATIO,
    MEAN,
    STD,
    ImageNetDataModule,
    _FileBytes,
    collate_bytes,
    load_image,
    read_bytes,
    train_crop,
)

PATHS = ("torchvision_float", "torchvision_uint8", "torchvision_device", "dali")
IMAGENET_SIZE = (500, 375)  # ImageNet's typical JPEG: 500 x 375 (width x height), quality about 90


def float_reference(size: int, jitter: float) -> v2.Compose:
    """The training transform before issue 15: everything in the worker, float out (on a PIL image)."""
    distort = [v2.ColorJitter(jitter, jitter, jitter)] if jitter else []
    return v2.Compose([v2.RandomResizedCrop(size, scale=CROP_AREA, ratio=CROP_RATIO, antialias=True),
                       v2.RandomHorizontalFlip(), *distort, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD)])


def input_paths(data: ImageNetDataModule, images: int, device: torch.device
                ) -> tuple[dict[str, Callable[[], int]], dict[str, str]]:
    """``({path: run}, {path: why it cannot run})``: each ``run()`` makes at least ``images`` training images as
    one worker does (batches of ``data.batch_size``) and returns how many; ``device`` is the uint8 path's on-device
    half (distortions, conversion, normalization on ``device``). ``data`` has been set up for fit."""
    from PIL import Image

    if isinstance(data.train_set, _FileBytes):
        samples = data.train_set.samples
    else:
        subset = data.train_set.dataset  # Subset of the folder: the training images
        samples = [subset.dataset.samples[i] for i in subset.indices]
    batches = max(1, -(-images // data.batch_size))
    reference = float_reference(data.image_size, data.color_jitter)
    crop = train_crop(data.image_size, data.interpolation)  # the recipe's own crop
    order = itertools.cycle(range(len(samples)))

    def worker(load: Callable[[str], object], transform: Callable) -> Callable[[], int]:
        def run() -> int:
            for _ in range(batches):
                default_collate([(transform(load(samples[i][0])), samples[i][1])
                                 for i in (next(order) for _ in range(data.batch_size))])
            return batches * data.batch_size
        return run

    def pil_load(path: str) -> Image.Image:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")  # ImageFolder's default loader

    uint8_batch = default_collate([crop(load_image(samples[i % len(samples)][0])) for i in range(data.batch_size)])
    uint8_batch = uint8_batch.to(device)

    def on_device() -> int:
        for _ in range(batches):
            data.normalize(data.augment(uint8_batch))
        return batches * data.batch_size

    def device_decode() -> int:  # the worker's half (bytes) and the device's (decode, crop, flip) in one
        for _ in range(batches):
            data.decode(*collate_bytes([(read_bytes(samples[i][0]), samples[i][1], i)
                                        for i in (next(order) for _ in range(data.batch_size))]), device)
        return batches * data.batch_size

    runs = {"torchvision_float": worker(pil_load, reference), "torchvision_uint8": worker(load_image, crop),
            "torchvision_device": device_decode, "device": on_device}
    missing: dict[str, str] = {}
    try:
        from inception_lab.data.dali import PREFETCH, DaliTrainLoader, require_dali

        require_dali(type(data))
    except ValueError as error:
        missing["dali"] = str(error)
    else:
        dali = DaliTrainLoader([p for p, _ in samples], [c for _, c in samples], data.batch_size, data.image_size,
                               device_id=(device.index or 0) if device.type == "cuda" else None, num_threads=1)
        stream: Iterator | None = None

        def dali_run() -> int:
            nonlocal stream
            made, ready = 0, PREFETCH  # the batches it prepared in the background since the last call: not counted
            while made < batches * data.batch_size:
                if stream is None:
                    stream = iter(dali)
                try:
                    x, _ = next(stream)
                except StopIteration:  # next epoch: a new pipeline
                    stream, ready = None, 0
                    continue
                if ready:
                    ready -= 1
                else:
                    made += len(x)
            return made

        runs["dali"] = dali_run
    return runs, missing


def make_imagenet(root: Path, images: int = 1000, classes: int = 10, val_fraction: float = 0.1,
                  seed: int = 0, processes: int | None = None) -> tuple[int, int]:
    """Writes ``images`` ImageNet-sized JPEGs (500x375, quality 90) in ImageNet's layout, ``root/train/<wnid>/*.JPEG``
    and ``root/val/<wnid>/*.JPEG``: crops of scikit-learn's two sample photographs at random scales, mirrored at
    random, shifted in brightness and with sensor-like noise, so they cost what photographs cost to decode (noise
    alone would not: it compresses far worse). Each image has its own seed, so ``processes`` (default: every core)
    changes how fast, not what is written. Returns (train, val) counts."""
    from concurrent.futures import ProcessPoolExecutor

    from inception_lab.hostmem import usable_cores

    val = max(classes, round(images * val_fraction))
    counts = {"train": images - val, "val": val}
    jobs = [(root / split / f"n{1440764 + 1000 * (k % classes):08d}", f"{k}", (seed, s, k))
            for s, (split, count) in enumerate(counts.items()) for k in range(count)]
    for folder in {folder for folder, _, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    processes = max(1, min(processes or usable_cores(), len(jobs) // 50 or 1))
    if processes == 1:
        for job in jobs:
            _write_jpeg(*job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_write_jpeg, *zip(*jobs), chunksize=max(1, len(jobs) // (4 * processes))))
    return counts["train"], counts["val"]


_PHOTOS: list[np.ndarray] = []


def _write_jpeg(folder: Path, k: str, seed: tuple[int, int, int]) -> None:
    """One of :func:`make_imagenet`'s JPEGs, from its own seed."""
    from PIL import Image

    if not _PHOTOS:
        from sklearn.datasets import load_sample_images

        _PHOTOS.extend(load_sample_images().images)  # two 427 x 640 photographs
    rng = np.random.default_rng(seed)
    width, height = IMAGENET_SIZE
    photo = _PHOTOS[rng.integers(len(_PHOTOS))]
    scale = rng.uniform(0.45, 1.0)
    h, w = int(photo.shape[0] * scale), int(photo.shape[0] * scale * width / height)
    w = min(w, photo.shape[1])
    top, left = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
    patch = Image.fromarray(photo[top:top + h, left:left + w]).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(patch, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 4, (height, width, 3))
    pixels = pixels[:, ::-1] if rng.random() < 0.5 else pixels
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{folder.name}_{k}.JPEG", quality=90)
