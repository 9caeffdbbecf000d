"""Learning-rate schedules over a run's optimizer steps: built with the run's length, which only the trainer knows
(``InceptionClassifier`` calls ``lr_scheduler(optimizer, total_steps)`` when ``lr_interval`` is ``step``)."""

from __future__ import annotations

import math

from jsonargparse.typing import NonNegativeFloat, PositiveInt
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from inception_lab.arguments import UnitInterval, check_arguments


class WarmupCosineLR(LambdaLR):
    """Linear warm-up over the first ``W = warmup_fraction x total_steps`` steps (step ``s`` runs at
    ``(s + 1) / (W + 1)`` of the base LR), then cosine decay from the base LR at step ``W`` to ``final_lr_ratio`` x
    it at the last step. Stepped after every optimizer step.

    With ``warmup_fraction=0.3`` and ``final_lr_ratio=0`` this is the learning-rate half of a one-cycle schedule.
    """

    def __init__(self, optimizer: Optimizer, total_steps: PositiveInt, warmup_fraction: UnitInterval = 0.05,
                 final_lr_ratio: NonNegativeFloat = 0.0) -> None:
        check_arguments(WarmupCosineLR, locals())
        # plain numbers: the scheduler's attributes go into checkpoints, which load with weights_only=True
        self.total_steps, self.warmup_steps = int(total_steps), float(warmup_fraction * total_steps)
        self.final_lr_ratio = float(final_lr_ratio)
        super().__init__(optimizer, self.factor)  # computes step 0's learning rate: the length is known by now

    def factor(self, step: int) -> float:
        """The LR at ``step`` (0-based) over the base LR."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        last = max(1, self.total_steps - 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1.0, last - self.warmup_steps))
        return self.final_lr_ratio + (1 - self.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
