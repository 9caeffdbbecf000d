"""Fast defaults that leave the maths unchanged: resident in-memory datasets, no host sync per training step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from inception_lab.data import CIFARDataModule, DigitsDataModule
from inception_lab.data.base import ImageDataModule
from inception_lab.models import Inception
from inception_lab.sampling import EpochShuffleSampler, ResidentLoader
from tests.conftest import QUICKSTART, short
from tests.sync_probe import ProgressBarLoss, SyncProbe


def _fit_ready(dm: ImageDataModule, rank: int = 0, world_size: int = 1, device: str = "cpu") -> ImageDataModule:
    dm.setup("fit")
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, strategy=SimpleNamespace(
        root_device=torch.device(device)))
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


@pytest.mark.parametrize("arg, message", [
    ("--data.init_args.num_workers=2", "data.init_args.num_workers=2: a resident dataset is gathered on the device"),
    ("--data.init_args.batch_size=0", "data.init_args.batch_size=0: must be > 0"),
    ("--data.init_args.val_size=1797", "data.init_args.test_size=300, data.init_args.val_size=1797: leaves no "),
])
def test_data_constructor_errors_are_one_line(arg: str, message: str, tmp_path: Path, cli) -> None:
    """A DataModule's own check reaches the user as its one line (not jsonargparse's Union wrapping)."""
    code, _, err = cli(["fit", "--config", str(QUICKSTART), arg])
    err = err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"inception_lab fit: error: {message}") and "Traceback" not in "".join(err)
    assert not (tmp_path / "runs").exists()


def _probe_fit(tmp_path: Path, model_cls: type) -> SyncProbe:
    torch.manual_seed(0)
    net = Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125)
    model = model_cls(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    probe = SyncProbe()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=6, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[probe],
                        enable_progress_bar=False)
    trainer.fit(model, DigitsDataModule(batch_size=32))
    return probe


@pytest.mark.slow
def test_probe_sees_a_host_sync(tmp_path: Path) -> None:
    """The control: the step loss on the progress bar is read on the host after every step, and the probe says so."""
    probe = _probe_fit(tmp_path, ProgressBarLoss)
    assert probe.watched == 3 and any("_local_scalar_dense" in f for f in probe.found), probe.found


@pytest.mark.slow
def test_training_steps_never_wait_on_the_device(tmp_path: Path, cli) -> None:
    """The whole quickstart fit loop through the CLI (W&B offline, run record, CSV log, checkpoints, warm-up cosine
    schedule): between the start of one step and the start of the next nothing reads a device value on the host,
    makes an output whose size depends on the data, or copies Python data to the device. Loggers read values every
    ``log_every_n_steps`` (kept outside the probe's window here) and at epoch ends, by design."""
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(QUICKSTART), *short(),
                        "--trainer.log_every_n_steps=50", "--trainer.callbacks+=tests.sync_probe.SyncProbe",
                        "--run_dir", str(run_dir)])
    assert code == 0, err[-2000:]
    record = json.loads((run_dir / "sync_probe.json").read_text())
    assert record["watched"] == 3 and record["found"] == []


_FAULTS = """
import resource, sys
if sys.argv[1] == "keep":
    from inception_lab.hostmem import keep_freed_memory
    assert keep_freed_memory()
import torch
from inception_lab.bench import train_step
from inception_lab.models.inception import googlenet
net = googlenet("cifar", width_mult=0.5).to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (16,))
for _ in range(2):
    train_step(net, opt, x, y, "32-true")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    train_step(net, opt, x, y, "32-true")
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_host_memory_is_reused_without_page_faults() -> None:
    """glibc hands a training step's freed activations back to the OS, and the next step faults them in again page
    by page (here 8,000 to 50,000 page faults per step); with the CLI's setting the memory is reused."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "keep")}
    # seen over runs: 7,990 to 50,103 faults per step by default (it depends on the host), 0 to 426 with the setting
    assert faults["keep"] < 2_000 and 5 * faults["keep"] < faults["default"], faults
