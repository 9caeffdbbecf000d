"""Resident in-memory datasets and their sampler (``sampling.py``): the DataLoader's batches in the DataLoader's
order, an epoch resumed mid-way, shards as DistributedSampler's, the tensors on the trainer's device once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inception_lab.data import CIFARDataModule, DigitsDataModule
from inception_lab.data.base import ImageDataModule
from inception_lab.sampling import EpochShuffleSampler, ResidentLoader
from tests.conftest import trainer_stub


def _fit_ready(dm: ImageDataModule, rank: int = 0, world_size: int = 1, device: str = "cpu") -> ImageDataModule:
    dm.setup("fit")
    dm.trainer = trainer_stub(global_rank=rank, world_size=world_size, device=device)
    return dm


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("source", ["digits", "cifar"])
def test_resident_batches_are_the_dataloaders_batches(source: str, tiny_cifar: Path) -> None:
    """Resident (the default) or through a DataLoader: the same images in the same order, train and val."""
    def make(resident: bool) -> ImageDataModule:
        if source == "digits":
            return _fit_ready(DigitsDataModule(batch_size=100, resident=resident))
        return _fit_ready(CIFARDataModule(root=str(tiny_cifar), batch_size=16, val_size=20, resident=resident))

    resident, loaded = make(True), make(False)
    assert isinstance(resident.train_dataloader(), ResidentLoader)
    assert isinstance(loaded.train_dataloader(), torch.utils.data.DataLoader)
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        a, b = getattr(resident, split)(), getattr(loaded, split)()
        assert len(a) == len(b)
        batches_a, batches_b = _batches(a), _batches(b)
        assert len(batches_a) == len(b)
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == torch.uint8
    # the training order is shuffled, changes with the epoch and is fixed by (seed, epoch) alone
    order = resident.train_dataloader().sampler
    first = order.order()
    assert not torch.equal(first, torch.arange(len(first)))
    order.progress_fn = lambda: (1, 0)
    assert not torch.equal(order.order(), first)
    assert torch.equal(order.order(), EpochShuffleSampler(len(first), 0, lambda: (1, 0)).order())
    assert isinstance(resident.predict_dataloader(), torch.utils.data.DataLoader)  # predictions.csv needs indices


@pytest.mark.parametrize("resident", [True, False])
def test_a_loader_resumed_mid_epoch_goes_on_where_it_stopped(resident: bool) -> None:
    """Lightning's loader protocol: the state saved after batch 3 of epoch 1 makes the next iterator of epoch 1 start
    at batch 4 (the rest of the epoch, as the uninterrupted loader gives it); of another epoch, from its start; and a
    state from the end of an epoch or another batch size is ignored."""
    progress = [(1, 3)]
    dm = _fit_ready(DigitsDataModule(batch_size=100, resident=resident))
    loader = dm.train_dataloader()
    loader.sampler.progress_fn = lambda: progress[0]
    whole = _batches(loader)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3, "batch_size": 100}
    resumed = dm.train_dataloader()
    resumed.sampler.progress_fn = lambda: progress[0]
    resumed.load_state_dict(state)
    rest = _batches(resumed)
    assert len(rest) == len(whole) - 3 and all(torch.equal(a[0], b[0]) for a, b in zip(rest, whole[3:]))
    assert len(_batches(resumed)) == len(whole)  # once: the next epoch starts at its beginning
    for other in ({**state, "epoch": 2}, {**state, "batches": len(whole)}, {**state, "batch_size": 50}):
        resumed.load_state_dict(other)
        assert len(_batches(resumed)) == len(whole), other


def test_resident_shards_like_distributed_sampler() -> None:
    """Under DDP each rank gathers its own equal share: disjoint, covering the set, padded by at most one."""
    modules = [_fit_ready(DigitsDataModule(batch_size=64), rank, 2) for rank in (0, 1)]
    shards = [dm.train_dataloader() for dm in modules]
    orders = [s.sampler.order() for s in shards]
    assert len(orders[0]) == len(orders[1]) == 599  # ceil(1197 / 2)
    images = modules[1].train_set.tensors[0]
    assert torch.equal(torch.cat([x for x, _ in shards[1]]), images[orders[1]])  # the batches are that shard
    a, b = (set(o.tolist()) for o in orders)
    assert len(a & b) <= 1 and a | b == set(range(1197))
    assert len(shards[0]) == len(shards[1]) == 10  # the same number of steps on every rank
    val = [_fit_ready(DigitsDataModule(batch_size=64), rank, 2).val_dataloader().sampler.order() for rank in (0, 1)]
    assert sorted(torch.cat(val).tolist()) == list(range(300))  # val: unshuffled, every image once


def test_resident_tensors_live_on_the_trainer_device_and_are_copied_once() -> None:
    """The whole split moves to the trainer's root device once ("meta" stands in for a GPU here)."""
    dm = _fit_ready(DigitsDataModule(batch_size=64), device="meta")
    loader = dm.train_dataloader()
    x, y = next(iter(loader))
    assert x.device.type == "meta" and y.device.type == "meta" and x.shape == (64, 1, 32, 32)
    held = dm._on_device[id(dm.train_set)]
    next(iter(dm.train_dataloader()))  # a second loader (and epoch): no second copy
    assert all(a is b for a, b in zip(held, dm._on_device[id(dm.train_set)]))
    assert dm.train_set.tensors[0].device.type == "cpu"  # the host copy stays for non-resident uses
