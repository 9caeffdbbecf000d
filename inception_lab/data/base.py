"""What every DataModule here shares: the linked attributes, per-sample augmentation on the device, test views."""

from __future__ import annotations

import multiprocessing
import re
import sys
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from inception_lab.arguments import check_arguments
from inception_lab.data.views import TestViews, ViewBatch, mirrored
from inception_lab.errors import ArgumentValueError, UserError
from inception_lab.run.files import run_seed
from inception_lab.run.identity import DATA_BOOKKEEPING
from inception_lab.sampling import EpochShuffleSampler, ResidentLoader, ResumableDataLoader, trainer_progress

# The paper's training crop, shared by ImageNet's two backends. Section 6: "patches of various sizes ... distributed
# evenly between 8% and 100% of the image area with aspect ratio constrained to the interval [3/4, 4/3]"
CROP_AREA, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


class DataError(UserError, RuntimeError):
    """Data missing or unreadable: reported to the user as one line naming the file or directory."""


BadImagePolicy = Literal["skip", "error"]
T = TypeVar("T")


class UndecodableImage(Exception):
    """A file the decoder refused (empty, cut short, not an image): its path and the decoder's reason."""

    def __init__(self, path: str, error: BaseException) -> None:
        line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        # torchvision's line: "decode_jpeg, <its source file>:171, Image is incomplete or truncated"
        self.path, self.reason = path, re.sub(r"^\w+, \S+:\d+, ", "", line).split(". ")[0]
        super().__init__(f"{path}: {self.reason}")


class BadImageError(DataError):
    """``bad_images: error``'s stop, one line. A loader worker's exception reaches the main process as
    ``BadImageError(<the worker's traceback>)`` (torch's ``ExceptionWrapper.reraise``): the line is its last."""

    def __init__(self, message: str) -> None:
        super().__init__(message.strip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1])


class BadImages:
    """What a DataModule's loaders do with an undecodable file (``mode``): ``skip`` it (the next file of its split
    that decodes takes its place: batches keep their size and DDP ranks their step counts; counted, and the first
    named on stderr once) or stop on it (``error``: :class:`BadImageError`). Its state is in shared memory made before
    the loader workers (separate processes) start, so that their skips count with the main process's: a flag per file
    of each split (a file counts once however often it is drawn) and the first file skipped."""

    def __init__(self, mode: BadImagePolicy, key: str) -> None:
        self.mode, self.key = mode, key
        self.first = multiprocessing.Array("c", 4096)  # "path\nreason"; its lock makes one process the first
        self.splits: list[tuple[Tensor, Callable[[int], str]]] = []  # each split's flags, and its files' paths
        self.announced = False  # (this process) the first one's line was printed

    def flags(self, n: int, path: Callable[[int], str]) -> Tensor:
        """A split of ``n`` files (``path(i)``: the i-th one's path): its flags."""
        self.splits.append((torch.zeros(n, dtype=torch.bool).share_memory_(), path))
        return self.splits[-1][0]

    def get(self, fetch: Callable[[int], T], index: int, flags: Tensor) -> tuple[int, T]:
        """``(i, fetch(i))`` for the first ``i`` from ``index`` on (cyclically) whose file decodes."""
        for step in range(len(flags)):
            i = (index + step) % len(flags)
            try:
                return i, fetch(i)
            except UndecodableImage as error:
                self.met(error, flags, i)
        raise DataError(f"none of the {len(flags)} files of a split decodes ({self.record()['first']}, ...)")

    def met(self, error: UndecodableImage, flags: Tensor, index: int) -> None:
        if self.mode == "error":
            raise BadImageError(f"{self.key}='error': {error.path} cannot be decoded ({error.reason}); replace it "
                                "with a readable image (removing it would change the held-out split) and run the "
                                f"command again (a fit resumes with --ckpt_path last), or set {self.key}=skip to skip "
                                "such files")
        flags[index] = True
        with self.first.get_lock():
            self.first.value = self.first.value or f"{error.path}\n{error.reason}".encode()[:4095]

    def announce(self) -> None:
        """In the main process, once: the line naming the first file skipped (by any worker)."""
        if not self.announced and self.first.value:
            self.announced = True
            path, _, reason = self.first.value.decode(errors="replace").partition("\n")
            print(f"inception_lab: skipped an undecodable image: {path} ({reason}); the next file of its split takes "
                  "its place, and every file skipped is counted in the run's summary.json (bad_images), named here "
                  f"only once ({self.key}=error stops instead)", file=sys.stderr)

    def merge(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Every rank's flags made their union, ``reduce`` being the ranks' elementwise max (DDP, at an epoch's end)."""
        if self.splits:
            flags = [f for f, _ in self.splits]
            merged = reduce(torch.cat(flags).to(torch.uint8)).cpu().bool()
            for f, part in zip(flags, merged.split([len(f) for f in flags])):
                f.copy_(part)

    def record(self) -> dict[str, Any] | None:
        """``{"count": files skipped, "first": its path, "reason": the decoder's}`` (the first this process met; under
        DDP, perhaps one another rank skipped, with no reason); None where none was."""
        count = sum(int(f.sum()) for f, _ in self.splits)
        if not count:
            return None
        first, _, reason = self.first.value.decode(errors="replace").partition("\n")
        first = first or next(path(int(f.nonzero()[0])) for f, path in self.splits if f.any())
        return {"count": count, "first": first, **({"reason": reason} if reason else {})}


def random_crop_flip(images: Tensor, pad: int, flip: bool) -> Tensor:
    """Per-sample random crop after zero padding, and a per-sample horizontal flip, on a batch ``(N, C, H, W)``.

    torchvision's v2 transforms on a batched tensor draw one set of parameters for the whole batch (vision #8484);
    here every image draws its own offsets and its own flip, on whatever device the batch is on.
    """
    n, _, h, w = images.shape
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), device=images.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # N x 1 x H x 1
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # N x 1 x 1 x W
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if flip:
        mask = torch.rand(n, device=images.device) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images


class FileBatch(NamedTuple):
    """A batch of undecoded items (file bytes, or a few images a worker decoded) as one tensor, end to end, and each
    item's shape: a worker hands over one shared-memory block per batch, as ``default_collate`` does, not one per
    image (a list of ``read_file`` tensors cannot cross to the main process at all: their storage is a file
    mapping; and one file descriptor per image would exhaust a cluster's ``ulimit -n``)."""

    data: Tensor  # uint8, (sum of the items' sizes,)
    shapes: tuple[tuple[int, ...], ...]
    index: tuple[int, ...] = ()  # each item's index in its dataset: names (and flags) a file the device cannot decode

    def items(self) -> list[Tensor]:
        sizes = [int(torch.Size(shape).numel()) for shape in self.shapes]
        return [x.view(*shape) for x, shape in zip(self.data.split(sizes), self.shapes)]


class ImageDataModule(LightningDataModule):
    """Base class. Subclasses set ``num_classes``, ``in_channels``, ``image_size`` in ``__init__`` (the CLI links
    them into the network) and the datasets in ``setup``.

    In-memory datasets (digits, CIFAR) hold uint8 ``(N, C, H, W)`` tensors. With ``resident`` (their default) the
    whole dataset is copied once to the training device (the GPU) and batches are gathered there by index (a
    :class:`ResidentLoader`: no workers, no collation, no copy per step); otherwise batches travel to the device
    as uint8 through a DataLoader; ImageNet's JPEGs are decoded and cropped in the workers and travel as uint8 too.
    All are augmented (per sample), converted and normalized on the device, in ``on_after_batch_transfer``
    (``augment``, then ``normalize``); float batches (already normalized: a Python caller's) pass through unchanged.
    The training order is the same both ways: (seed, epoch) alone fixes it. Test views arrive as uint8
    ``(N, V, C, H, W)`` (cut in the workers, or, for ``flip`` on in-memory data, here) and go on as a
    :class:`~inception_lab.data.views.ViewBatch`, normalized by the model a chunk at a time.

    Args:
        batch_size: per device: the global batch is ``batch_size x devices``.
        num_workers: DataLoader worker processes.
        test_views: test-time views (``inception_lab.data.views.make_views``): ``single``; ``flip`` (the image
            and its mirror); ``ten_crop`` (four corners and the center, and their mirrors) and ``multi144`` (the
            paper's 144 crops, Section 7): ImageNet only (``views_supported``). The model averages its probabilities
            over an image's views; ``batch_size`` still counts images.
        resident: hold the whole (in-memory) dataset on the training device and gather batches there; needs
            ``num_workers=0``.
    """

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    pad: int = 0  # random-crop padding for on-device augmentation (0: none)
    flip: bool = False  # random horizontal flips for on-device augmentation
    views_supported: tuple[str, ...] = ("single", "flip")  # the test_views this data can cut
    pin_memory: bool = False
    persistent_workers: bool = False
    BOOKKEEPING: tuple[str, ...] = DATA_BOOKKEEPING  # init_args on where/how data is read, not what: run.identity

    def __init__(self, batch_size: PositiveInt = 128, num_workers: NonNegativeInt = 0,
                 test_views: TestViews = "single", resident: bool = False) -> None:
        super().__init__()
        check_arguments(ImageDataModule, locals())
        self.check_test_views(test_views)
        if resident and num_workers:
            raise ArgumentValueError(type(self), "a resident dataset is gathered on the device and needs no workers; "
                                     "set num_workers to 0, or resident to false", num_workers=num_workers)
        self.batch_size, self.num_workers, self.test_views = batch_size, num_workers, test_views
        self.resident = resident
        self._on_device: dict[int, tuple[Tensor, ...]] = {}  # resident splits, by id of their host dataset
        self._stats: tuple | None = None  # (device, mean, std) and the normalization tensors made there
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._bad_images: BadImages | None = None  # made in setup by DataModules that decode files

    def skipped_images(self) -> dict[str, Any] | None:
        """The undecodable files the loaders skipped (``BadImages.record``: the run's record holds it)."""
        return None if self._bad_images is None else self._bad_images.record()

    def share_skipped_images(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Under DDP, on every rank at once: each rank's skipped files made every rank's (``BadImages.merge``)."""
        if self._bad_images is not None:
            self._bad_images.merge(reduce)

    def check_source(self) -> None:
        """Where the data is to come from exists (cheap: no download, no scan). The CLI calls it before a fit's run
        directory is written, so that a wrong ``root`` leaves nothing behind; ``prepare_data`` checks again."""

    @classmethod
    def check_test_views(cls, test_views: str) -> None:
        """ArgumentValueError, in one line naming the argument, when this data cannot cut ``test_views``."""
        if test_views not in cls.views_supported:
            allowed = " or ".join(repr(v) for v in cls.views_supported)
            raise ArgumentValueError(cls, f"only for ImageNet-sized inputs; {cls.__name__} allows {allowed}",
                                     test_views=test_views)

    # ---- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, train: bool,
                resident: bool | None = None) -> DataLoader | ResidentLoader:
        if dataset is None:
            raise DataError(f"{type(self).__name__}: setup() has not loaded this split")
        workers = self.num_workers
        # The training order follows seed_everything (and the epoch), not the split seed: seeds vary the order.
        seed = run_seed()
        trainer = self.trainer
        sampler = EpochShuffleSampler(len(dataset), seed, trainer_progress(self), shuffle=train, world_size=getattr(
            trainer, "world_size", 1), rank=getattr(trainer, "global_rank", 0))
        if (self.resident if resident is None else resident) and isinstance(dataset, TensorDataset):
            return ResidentLoader(lambda: self._resident_tensors(dataset), self.batch_size, sampler)
        return (ResumableDataLoader if train else DataLoader)(
            dataset, batch_size=self.batch_size, num_workers=workers, drop_last=False,
            sampler=sampler if train else None, collate_fn=self.collate(train),
            generator=torch.Generator().manual_seed(seed),  # worker seeds: not drawn from the global RNG
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
        )

    def _resident_tensors(self, dataset: TensorDataset) -> tuple[Tensor, ...]:
        """The split's tensors on the trainer's device: copied there once, then kept."""
        strategy = getattr(self.trainer, "strategy", None)
        device = getattr(strategy, "root_device", None) or torch.device("cpu")
        tensors = self._on_device.get(id(dataset))
        if tensors is None or tensors[0].device != device:
            tensors = self._on_device[id(dataset)] = tuple(t.to(device) for t in dataset.tensors)
        return tensors

    def collate(self, train: bool) -> Any:
        """The DataLoader's ``collate_fn`` (None: PyTorch's default)."""
        return None

    def decode(self, batch: FileBatch, labels: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """A batch that arrived undecoded (file bytes, on the host) as uint8 images ``(N, C, H, W)`` on ``device``,
        and its labels (another file's where one could not be decoded and was skipped): for DataModules whose
        workers hand over bytes."""
        raise DataError(f"{type(self).__name__}: its loaders hand over images, not bytes")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        x, *rest = batch if isinstance(batch, (tuple, list)) else (batch,)
        if isinstance(x, FileBatch):  # the workers' file bytes: decoded straight onto the device
            images, labels = self.decode(x, rest[0], device)
            batch = [images, super().transfer_batch_to_device(labels, device, dataloader_idx)]
        else:
            batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        if self._bad_images is not None:
            self._bad_images.announce()
        return batch

    def train_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False, resident=False)  # the writer needs each batch's indices

    # ---- on the device ------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        trainer = self.trainer
        if x.dtype == torch.uint8:
            evaluating = trainer is not None and (trainer.testing or trainer.predicting)
            if x.ndim == 4 and evaluating and self.test_views == "flip":  # in-memory data: its views cut here
                x = mirrored(x).unflatten(0, (len(x), 2))  # N x 2 x C x H x W
            if x.ndim == 5:
                return ViewBatch(x, self.normalize), y
            if trainer is not None and trainer.training:
                x = self.augment(x)
            x = self.normalize(x)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def augment(self, images: Tensor) -> Tensor:
        """Training augmentation of a uint8 batch on the device, per sample: uint8, or float in [0, 1], out."""
        return random_crop_flip(images, self.pad, self.flip)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or float in [0, 1]) images -> float, standardized by the data's mean and std."""
        key = (images.device, self.mean, self.std)
        if self._stats is None or self._stats[0] != key:  # made once per device: no host-to-device copy per step
            mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
            self._stats = key, mean, torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        _, mean, std = self._stats
        images = images.float() / 255 if images.dtype == torch.uint8 else images
        return (images - mean) / std


def check_split(n: int, sizes: dict[str, int]) -> None:
    """ArgumentValueError naming the arguments when ``sizes`` (held-out splits, by argument name) leave none of ``n``
    images to train on; a DataModule whose size is known calls it in its constructor."""
    if sum(sizes.values()) >= n:
        raise ArgumentValueError(ImageDataModule, f"leaves no training images out of the {n} available; lower it",
                                 **sizes)


def split_indices(n: int, sizes: dict[str, int], seed: int | None) -> list[Tensor]:
    """A seeded permutation of ``range(n)`` cut into ``sizes`` (named by their argument names) and the rest (last).
    ``seed`` None (``split_seed: null``): the run's seed, so that the split varies with it as the weights, the data
    order and the augmentation do (Bouthillier et al. 2021); Lightning keeps it in ``PL_GLOBAL_SEED``, in every DDP
    process too."""
    check_split(n, sizes)
    if seed is None and (seed := run_seed(None)) is None:
        raise ArgumentValueError(ImageDataModule, "null follows the run's seed, and this run has none "
                                 "(seed_everything: false): give seed_everything a seed, or split_seed one",
                                 split_seed=...)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm.split([*sizes.values(), n - sum(sizes.values())]))
