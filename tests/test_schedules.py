"""The learning-rate schedule (``schedules.py``), step by step against its formula, built as the LightningModule builds
it; schedulers stepped per epoch, built without the run's length."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from inception_lab.models import Inception
from inception_lab.module import InceptionClassifier
from inception_lab.run.layout import RunDir
from inception_lab.schedules import WarmupCosineLR
from tests.conftest import QUICKSTART, short, trainer_stub

BASE_LR, TOTAL, WARMUP_FRACTION, FINAL = 0.4, 200, 0.1, 0.05


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer) -> list[float]:
    """The LR each optimizer step runs at, as Lightning steps a per-step scheduler (after every optimizer step)."""
    seen = []
    for _ in range(TOTAL):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_cosine_follows_its_formula_from_the_first_step() -> None:
    """Step 0 runs at the start of the warm-up (1 / (W + 1) of the peak, not the ~0.9x of a schedule whose length
    was patched in after LambdaLR had set step 0), the peak at the end of the warm-up, the floor at the last step."""
    model = InceptionClassifier(
        Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125),
        optimizer=lambda p: torch.optim.SGD(p, lr=BASE_LR),
        lr_scheduler=lambda opt, total_steps: WarmupCosineLR(opt, total_steps, WARMUP_FRACTION, FINAL),
        lr_interval="step")
    model.trainer = trainer_stub(estimated_stepping_batches=TOTAL)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = lrs(scheduler, optimizer)
    warmup = WARMUP_FRACTION * TOTAL  # 20 steps

    def expected(step: int) -> float:
        if step < warmup:
            return BASE_LR * (step + 1) / (warmup + 1)
        progress = (step - warmup) / (TOTAL - 1 - warmup)
        return BASE_LR * (FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * progress)))

    assert seen[0] == pytest.approx(BASE_LR / 21)
    assert seen[19] == pytest.approx(BASE_LR * 20 / 21) and seen[20] == pytest.approx(BASE_LR)  # end of warm-up
    assert seen[-1] == pytest.approx(BASE_LR * FINAL)  # the last step
    assert seen == pytest.approx([expected(s) for s in range(TOTAL)])
    assert max(seen) == pytest.approx(BASE_LR)


def test_no_warmup_starts_at_the_peak() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    seen = lrs(WarmupCosineLR(optimizer, TOTAL, warmup_fraction=0.0), optimizer)
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(0.0, abs=1e-12)


def test_epoch_schedulers_are_built_without_a_length() -> None:
    model = InceptionClassifier(
        Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=8, gamma=0.96))
    model.trainer = trainer_stub(estimated_stepping_batches=TOTAL)
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)




def test_a_run_until_stopped_takes_the_schedules_length_from_max_steps(tmp_path: Path, cli) -> None:
    """``max_epochs: -1`` trains until stopped: a schedule stepped per step runs over ``max_steps`` (without it the
    fit is refused in one line: tests/test_errors.py)."""
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(QUICKSTART), *short(epochs=-1, batches=2, val_batches=1, wandb=False),
                        "--trainer.max_steps=3", "--run_dir", str(run_dir)])
    assert code == 0, err[-3000:]
    last = torch.load(RunDir(run_dir).last, map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 and last["lr_schedulers"][0]["total_steps"] == 3
