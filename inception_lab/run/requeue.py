"""SLURM's signal before the time limit, in a fit: save at a step's end, requeue the job (:mod:`inception_lab.slurm`
writes the job files and holds ``requeue_job``; this is the Lightning side)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from inception_lab.slurm import requeue_job


class Requeued(SIGTERMException):
    """The fit stopped for SLURM to start it again (recorded "interrupted", exit 143, as SIGTERM); ``requeued``:
    whether ``scontrol requeue`` took it (None on ranks other than 0)."""

    def __init__(self, message: str, requeued: bool | None = None) -> None:
        super().__init__(message)
        self.requeued = requeued


class RequeueOnSignal(Callback):
    """SLURM's signal before the time limit, handled at a step boundary so that the requeued job resumes exactly.

    Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``; the CLI turns it off) saves inside the signal
    handler, wherever the step is, and each rank on its own signal. Here the signal only sets a flag; after the next
    optimizer step the ranks agree (any rank's flag), all save ``hpc_ckpt_N.ckpt`` (with the loaders' position and
    every rank's RNG state: :class:`ExactResume`), rank 0 runs ``scontrol requeue`` (``<array job>_<task>`` in an
    array), and the fit stops as interrupted. The resumed fit goes on as the uninterrupted one would (same metrics).
    """

    def __init__(self) -> None:
        self.received, self._previous = False, None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and SLURMEnvironment.detect() and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._previous is None or not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return  # not under SLURM, or no rank has the signal
        # the requeue SIGTERMs every task at once: the fit stops anyway, and Lightning's handler would broadcast to
        # ranks already gone (a gloo traceback, exit 1); ignored to the end (Lightning restores its originals)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        trainer._signal_connector._original_handlers[signal.SIGTERM] = signal.SIG_IGN
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # with the loaders' position and the RNG (ExactResume)
        for logger in trainer.loggers:  # before the requeue's SIGTERM reaches W&B's service process too
            logger.finalize("failed")
        if (wandb := sys.modules.get("wandb")) is not None:
            wandb.teardown()  # the service process, closed now rather than at exit, when SLURM has killed it
        done = requeue_job() if trainer.is_global_zero else None
        raise Requeued(f"requeued by SLURM after step {trainer.global_step} ({Path(path).name})", done)
