"""A training order that depends on (seed, epoch) alone, so that a fit resumed from ``last.ckpt`` replays it.

Lightning creates the first iterator of a resumed fit before it calls ``set_epoch`` (and a plain RandomSampler draws
from the global RNG, whose state a checkpoint does not hold); this sampler reads the epoch from the trainer when its
iterator starts. Under DDP, Lightning wraps it in a DistributedSamplerWrapper that hands each rank a disjoint slice;
a :class:`ResidentLoader` shards it itself (``rank``/``world_size``), as DistributedSampler does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int = 0, epoch_fn: Callable[[], int] | None = None,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.seed, self.epoch_fn, self.epoch = num_samples, seed, epoch_fn, 0
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def order(self) -> Tensor:
        """This rank's indices for the epoch about to start. Across ranks the order is padded with its own head to a
        multiple of ``world_size`` and dealt out round-robin (DistributedSampler's scheme): equal shares, so every
        rank runs the same number of steps."""
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        if self.world_size > 1:
            padding = len(self) * self.world_size - self.num_samples
            order = torch.cat([order, order[:padding]])[self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())


class ResidentLoader:
    """Batches indexed out of tensors that live whole on the training device (CIFAR: 150 MB of uint8).

    No workers, no per-sample collation, no host-to-device copy per step: each epoch moves one index tensor to the
    device, and each batch is a gather there. The order is the sampler's, so a resident run and a DataLoader run
    see the same batches. ``tensors_fn`` gives the tensors, already on the device, when iteration starts (the
    trainer's root device is known by then).
    """

    batch_sampler = None  # batches are cut from the sampler's order here (Lightning inspects the attribute)

    def __init__(self, tensors_fn: Callable[[], tuple[Tensor, ...]], batch_size: int,
                 sampler: EpochShuffleSampler) -> None:
        self.tensors_fn, self.batch_size, self.sampler = tensors_fn, batch_size, sampler

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        tensors = self.tensors_fn()
        order = self.sampler.order().to(tensors[0].device)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield tuple(t[index] for t in tensors)


def trainer_epoch(datamodule) -> Callable[[], int]:
    """The epoch a DataModule's trainer is about to train (the fit loop's processed-epoch count)."""

    def epoch() -> int:
        fit_loop = getattr(getattr(datamodule, "trainer", None), "fit_loop", None)
        return fit_loop.epoch_progress.current.processed if fit_loop is not None else 0

    return epoch
