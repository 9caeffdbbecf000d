"""A training order that depends on (seed, epoch) alone, so that a fit resumed from a checkpoint replays it.

Lightning creates the first iterator of a resumed fit before it calls ``set_epoch`` (and a plain RandomSampler draws
from the global RNG, whose state a checkpoint does not hold); this sampler reads the epoch from the trainer when its
iterator starts. It shards itself across ranks as DistributedSampler does (and is one, so Lightning does not wrap it).
Both training loaders are resumable mid-epoch (Lightning's ``state_dict``/``load_state_dict`` protocol): a checkpoint
saved after batch k of an epoch records (epoch, k), and the resumed loader starts that epoch at batch k + 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from inception_lab.run.files import mix_seed

Progress = Callable[[], tuple[int, int]]  # (the epoch being trained, batches of it done)


class EpochShuffleSampler(DistributedSampler):
    def __init__(self, num_samples: int, seed: int = 0, progress_fn: Progress | None = None,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(range(num_samples), world_size, rank, shuffle, seed)
        self.progress_fn = progress_fn
        self.skip: tuple[int, int] | None = None  # (epoch, samples): where a resumed epoch starts

    def order(self) -> Tensor:
        """This rank's indices for the epoch about to start: DistributedSampler's (padded with the order's head to a
        multiple of the ranks and dealt out round-robin: every rank runs the same number of steps), shuffled by
        ``mix_seed(seed, epoch)``."""
        epoch = self.progress_fn()[0] if self.progress_fn is not None else self.epoch
        epoch_order = DistributedSampler(self.dataset, self.num_replicas, self.rank, self.shuffle,
                                         mix_seed(self.seed, epoch))
        order = torch.tensor(list(epoch_order), dtype=torch.int64)
        skip, self.skip = self.skip, None
        return order[skip[1]:] if skip is not None and skip[0] == epoch else order

    def state_dict(self, batch_size: int) -> dict[str, int]:
        epoch, batches = self.progress_fn() if self.progress_fn is not None else (self.epoch, 0)
        return {"epoch": int(epoch), "batches": int(batches), "batch_size": int(batch_size)}  # plain ints: weights_only

    def load_state_dict(self, state: dict[str, int], batch_size: int) -> None:
        if state.get("batch_size") == batch_size and 0 < state["batches"] * batch_size < len(self):
            self.skip = state["epoch"], state["batches"] * batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())


class _Resumable:
    """A loader over an :class:`EpochShuffleSampler` that resumes mid-epoch (Lightning's loader state protocol)."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict(self.batch_size)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state, self.batch_size)


class ResidentLoader(_Resumable):
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


class ResumableDataLoader(_Resumable, DataLoader):
    """A DataLoader that resumes mid-epoch: its order; the random draws of augmentation in workers are not replayed."""


def trainer_progress(datamodule) -> Progress:
    """The epoch a DataModule's trainer is about to train (the fit loop's processed-epoch count), and the batches of
    it fetched so far (a checkpoint saved after batch k's update: k)."""

    def progress() -> tuple[int, int]:
        fit_loop = getattr(getattr(datamodule, "trainer", None), "fit_loop", None)
        if fit_loop is None:
            return 0, 0
        return fit_loop.epoch_progress.current.processed, fit_loop.epoch_loop.batch_progress.current.ready

    return progress
