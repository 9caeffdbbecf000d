"""The LightningModule (``module.py``): a training step that never waits on the device, test-time views averaged as
probabilities, one parameter group where no LR scaling is asked for, and a copy of the module (EMA) that shares its
optimizer callables."""

from __future__ import annotations

import copy
import functools
import json
import threading
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from inception_lab.data import DigitsDataModule
from inception_lab.data.views import ViewBatch
from inception_lab.models import Inception, googlenet
from inception_lab.module import InceptionClassifier
from tests.conftest import QUICKSTART, short, trainer_stub
from tests.sync_probe import ProgressBarLoss, SyncProbe


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


def test_model_averages_probabilities_over_views_in_chunks() -> None:
    """The model evaluates views at most ``views_per_forward`` at a time and averages softmax probabilities (not
    logits) over each image's views; the batch of ``N`` images gives ``N`` rows whatever the chunking."""
    torch.manual_seed(0)
    net = Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125)
    views = torch.randint(0, 256, (3, 6, 1, 32, 32), dtype=torch.uint8)
    normalize = lambda x: (x.float() / 255 - 0.5) / 0.5  # noqa: E731
    probs, calls = {}, []
    for chunk in (4, 18, 256):
        model = InceptionClassifier(net, views_per_forward=chunk).eval()
        calls.clear()
        hook = model.net.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
        with torch.no_grad():
            probs[chunk] = model(ViewBatch(views, normalize))
        hook.remove()
        assert max(calls) <= chunk and sum(calls) == 18
    with torch.no_grad():
        per_view = model.net(normalize(views.flatten(0, 1))).logits.softmax(-1).view(3, 6, 10)
    assert probs[256].shape == (3, 10)
    for chunk in (4, 18):
        torch.testing.assert_close(probs[chunk], probs[256], rtol=0, atol=1e-6)
    torch.testing.assert_close(probs[256], per_view.mean(1), rtol=0, atol=1e-6)
    assert not torch.allclose(probs[256], per_view.log().mean(1).softmax(-1), atol=1e-4)  # not a logit average


def test_the_batch_norm_presets_keep_one_group_and_the_given_lr() -> None:
    """Without lr_reference_batch and bias multipliers (every experiment but ImageNet's), one parameter group at
    the config's LR, as before."""
    model = InceptionClassifier(googlenet("cifar", width_mult=0.125), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    model._trainer = trainer_stub(datamodule=DigitsDataModule(batch_size=128), devices=4)
    optimizer = model.configure_optimizers()
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.1
    assert model.optimization() == {"lr_scale": 1.0}


def test_a_copy_of_the_module_shares_its_optimizer_callables() -> None:
    """EMAWeightAveraging deep-copies the module (torch's AveragedModel). The CLI's optimizer callable holds
    jsonargparse's instantiator, and through it the trainer, whose DDP launcher holds its child processes (a lock
    here): the copy shares the callables instead of failing with "cannot pickle '_thread.lock'"."""
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    optimizer.holds = threading.Lock()  # like jsonargparse's partial: something deepcopy cannot copy
    with pytest.raises(TypeError, match="_thread.lock"):
        copy.deepcopy(optimizer)
    model = InceptionClassifier(Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar",
                                          width_mult=0.125), optimizer=optimizer)
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    clone = average.module
    assert clone.optimizer is optimizer and clone.lr_scheduler is None and clone.heads == model.heads
    weights = dict(model.named_parameters())
    assert all(p is not weights[k] and torch.equal(p, weights[k]) for k, p in clone.named_parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    average.update_parameters(model)
    assert torch.equal(next(clone.parameters()), next(model.parameters()))  # the first update copies
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(clone.eval()(x), model.eval()(x))
