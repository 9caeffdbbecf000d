"""A training order that depends on (seed, epoch) alone, so that a fit resumed from ``last.ckpt`` replays it.

Lightning creates the first iterator of a resumed fit before it calls ``set_epoch`` (and a plain RandomSampler draws
from the global RNG, whose state a checkpoint does not hold); this sampler reads the epoch from the trainer when its
iterator starts. Under DDP, Lightning wraps it in a DistributedSamplerWrapper that hands each rank a disjoint slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int = 0, epoch_fn: Callable[[], int] | None = None) -> None:
        self.num_samples, self.seed, self.epoch_fn, self.epoch = num_samples, seed, epoch_fn, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def trainer_epoch(datamodule) -> Callable[[], int]:
    """The epoch a DataModule's trainer is about to train (the fit loop's processed-epoch count)."""

    def epoch() -> int:
        fit_loop = getattr(getattr(datamodule, "trainer", None), "fit_loop", None)
        return fit_loop.epoch_progress.current.processed if fit_loop is not None else 0

    return epoch
