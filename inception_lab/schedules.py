"""Learning-rate schedules that need the run's length, which only the trainer knows."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from 0, then cosine decay to ``final_lr_ratio`` x the base LR, stepped every optimizer step.

    ``total_steps`` is filled in from ``trainer.estimated_stepping_batches`` when left at None.
    With ``warmup_fraction=0.3`` and ``final_lr_ratio=0`` this is the learning-rate half of a one-cycle schedule.
    """

    interval = "step"

    def __init__(self, optimizer: Optimizer, warmup_fraction: float = 0.05, final_lr_ratio: float = 0.0,
                 total_steps: int | None = None) -> None:
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction={warmup_fraction!r}: must be in [0, 1)")
        self.warmup_fraction, self.final_lr_ratio, self.total_steps = warmup_fraction, final_lr_ratio, total_steps
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        total = max(1, self.total_steps or 1)
        warmup = self.warmup_fraction * total
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
        return self.final_lr_ratio + (1 - self.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
