"""A callback the DDP test adds with ``--trainer.callbacks+=ddp_probe.RankProbe``: each rank writes what it saw."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lightning import Callback, LightningModule, Trainer


class RankProbe(Callback):
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch != 0:
            return
        sampler = trainer.train_dataloader.sampler
        config = json.dumps({"hparams": dict(pl_module.hparams), "net": repr(pl_module.net),
                             "data": dict(trainer.datamodule.hparams)}, sort_keys=True, default=str)
        record = {
            "rank": trainer.global_rank, "world_size": trainer.world_size,
            "backend": str(trainer.strategy.process_group_backend if hasattr(trainer.strategy,
                                                                               "process_group_backend") else ""),
            "sampler": type(sampler).__name__, "train_indices": list(iter(sampler)),
            "config_sha": hashlib.sha256(config.encode()).hexdigest(),
            "lrs": [group.get("initial_lr", group["lr"]) for group in trainer.optimizers[0].param_groups],  # the base
        }
        Path(trainer.default_root_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        Path(trainer.default_root_dir, f"weights{trainer.global_rank}.sha").write_text(digest.hexdigest())
        from torch._dynamo.utils import counters  # what torch.compile did on this rank (empty when eager)

        compiled = {"compiled": getattr(pl_module.net, "_compiled_call_impl", None) is not None,
                    "graph_breaks": sum(counters["graph_break"].values()), "stats": dict(counters["stats"])}
        Path(trainer.default_root_dir, f"dynamo{trainer.global_rank}.json").write_text(json.dumps(compiled))


class PreemptAt(Callback):
    """SLURM's signal before the time limit at a chosen step: SIGUSR1, sent by the process to itself after the step's
    optimizer update (``PREEMPT_AT_STEP``; on rank ``PREEMPT_RANK`` alone where set); the CLI's RequeueOnSignal
    saves, requeues and stops."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        import os
        import signal

        rank = os.environ.get("PREEMPT_RANK")  # only this rank gets the signal (default: every rank)
        step = int(os.environ.get("PREEMPT_AT_STEP", -1))
        if trainer.global_step == step and rank in (None, str(trainer.global_rank)):
            os.kill(os.getpid(), signal.SIGUSR1)


class PauseAt(Callback):
    """Waits after the optimizer step ``PAUSE_AT_STEP`` (every rank) until the test removes ``<run>/paused<rank>``,
    which it wrote: a real ``scancel -s USR1`` arrives at a step of the test's choosing."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        import os
        import time

        if trainer.global_step != int(os.environ.get("PAUSE_AT_STEP", -1)):
            return
        marker = Path(trainer.default_root_dir, f"paused{trainer.global_rank}")
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
