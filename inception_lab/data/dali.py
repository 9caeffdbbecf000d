"""ImageNet's training loader on NVIDIA DALI (``data.init_args.backend: dali``; ``pip install inception_lab[dali]``).

One DALI pipeline per epoch: ``fn.readers.file`` reads this rank's shard (``shard_id`` = global rank, ``num_shards``
= world size) of the epoch's order, ``fn.decoders.image_random_crop`` decodes only the random crop (Section 6's
area and aspect; on the GPU with ``device="mixed"``, on the CPU where there is none), ``fn.resize`` brings it to
``image_size`` and ``fn.crop_mirror_normalize`` flips it at random and lays it out CHW, still uint8: the same
batches as the torchvision path, which the DataModule distorts and normalizes on the device.

Lightning injects no sampler into a loader it does not know (PL #11538): the order is made here, a permutation of
the files drawn from (seed, epoch) alone (the torchvision path's :class:`~inception_lab.sampling.EpochShuffleSampler`)
and padded with its head to a multiple of the world size, so every rank reads a disjoint shard of the same length
and a fit resumed at an epoch boundary reads the epoch in the same order. A resume in mid-epoch starts that epoch
over (DALI's reader cannot start inside a shard).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from inception_lab.data.base import CROP_AREA, CROP_RATIO, BadImageError, UndecodableImage
from inception_lab.errors import ArgumentValueError
from inception_lab.run.files import mix_seed
from inception_lab.sampling import EpochShuffleSampler, Progress

EXTRA = "pip install inception_lab[dali]"
PREFETCH = 2  # batches DALI prepares ahead, in its own threads


def require_dali(owner: type) -> None:
    """ArgumentValueError in one line, naming ``owner``'s backend argument and the extra, when DALI is not installed."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as error:
        raise ArgumentValueError(owner, f"NVIDIA DALI is not installed ({error}); {EXTRA}, or set backend to "
                                 "'torchvision'", backend="dali") from None


def _pipeline(files: list[str], labels: list[int], shard_id: int, num_shards: int, size: int, batch_size: int,
              num_threads: int, device_id: int | None, seed: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=PREFETCH)
    def train() -> tuple:
        jpegs, label = fn.readers.file(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                                       random_shuffle=False, name="reader")  # the order is the epoch's permutation
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if device_id is not None else "cpu",
                                               output_type=types.RGB, random_area=list(CROP_AREA),
                                               random_aspect_ratio=list(CROP_RATIO), num_attempts=10)
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW",
                                          mirror=fn.random.coin_flip(probability=0.5))
        return images, label

    return train()


class DaliTrainLoader:
    """The training loader: uint8 ``(N, 3, S, S)`` images and int64 labels, this rank's share of each epoch."""

    def __init__(self, files: list[str], labels: list[int], batch_size: int, image_size: int, seed: int = 0,
                 progress_fn: Progress | None = None, rank: int = 0, world_size: int = 1,
                 device_id: int | None = None, num_threads: int = 1, key: str = "backend",
                 decode: Callable[[str], Any] | None = None) -> None:
        self.files, self.labels, self.batch_size, self.image_size = files, labels, batch_size, image_size
        # the backend's config key and a decoder that raises UndecodableImage: the line naming a file DALI refused
        self.key, self.decode = key, decode
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device_id, self.num_threads = device_id, num_threads
        self.order = EpochShuffleSampler(len(files), seed, progress_fn)  # the global order; the reader shards it

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    @property
    def shard_size(self) -> int:
        return math.ceil(len(self.files) / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def epoch_order(self) -> list[int]:
        """The epoch's permutation of the files, padded with its head to ``shard_size x world_size``."""
        order = self.order.order().tolist()
        return order + order[:self.shard_size * self.world_size - len(order)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        order = self.epoch_order()
        epoch = self.order.progress_fn()[0] if self.order.progress_fn is not None else self.order.epoch
        pipe = _pipeline([self.files[i] for i in order], [self.labels[i] for i in order], self.rank,
                         self.world_size, self.image_size, self.batch_size, self.num_threads, self.device_id,
                         seed=mix_seed(self.seed, epoch, self.rank))  # the crops' draws
        batches, done = None, 0
        try:  # the iterator decodes its first batches as it is made
            batches = DALIGenericIterator(pipe, ["images", "labels"], reader_name="reader",
                                          last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
            for (batch,) in batches:
                done += 1
                yield batch["images"], batch["labels"].view(-1).to(torch.int64)
        except RuntimeError as error:  # DALI names the operator, not the file
            raise self._undecodable(order, done) or error from None
        finally:
            del batches, pipe

    def _undecodable(self, order: list[int], done: int) -> BadImageError | None:
        """The first file of this rank's shard, from the batch that failed on, that does not decode: one line (DALI
        names its operator, not the file). DALI cannot skip a file and go on, whatever ``bad_images`` says."""
        if self.decode is None:
            return None
        shard = order[self.rank * self.shard_size:(self.rank + 1) * self.shard_size]
        for i in shard[done * self.batch_size:]:
            try:
                self.decode(self.files[i])
            except UndecodableImage as bad:
                return BadImageError(f"{self.key}='dali': {bad.path} cannot be decoded ({bad.reason}), and DALI cannot "
                                     "skip a file: replace it with a readable image (removing it would change the "
                                     "held-out split) and run the command again (a fit resumes with --ckpt_path "
                                     f"last), or set {self.key}=torchvision, which skips such files")
        return None
