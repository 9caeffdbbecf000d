"""A callback that records, between two training steps, every call that would make the host wait for an accelerator.

On CPU nothing waits, so the probe watches for the operations that do on a GPU: reading a value on the host
(``item``, ``bool``, ``tolist``...), ops whose output size depends on the data (``nonzero``, ``unique``, boolean
masks), and tensors made from Python data (a host-to-device copy each time). It covers one whole step: from the
start of step k to the start of step k+1 (the step, Lightning's bookkeeping, our callbacks and the next batch).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import torch
from lightning import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from inception_lab.module import InceptionClassifier

SYNCING_ATEN = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
                "is_nonzero", "equal", "lift_fresh", "_assert_async"}
SYNCING_METHODS = {"tolist", "numpy", "item"}
# ATen's one_hot reads min/max on the host for CPU tensors only; on CUDA it relies on a device-side assert
CPU_ONLY_CHECKS = {"one_hot"}


def _where() -> str:
    frames = [f for f in traceback.extract_stack()[:-3] if "/torch/" not in f.filename]
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in frames[-3:][::-1])


_inside: list[str] = []  # CPU_ONLY_CHECKS calls now running
# torch.optim keeps its step counters on the host (unless capturable or fused): reading one waits for nothing
_host_counters: set[int] = set()


def _on_host_anyway(args: tuple) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor) and args[0].data_ptr() in _host_counters


class _Dispatch(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING_ATEN and not _inside and not _on_host_anyway(args):
            self.found.append(f"aten.{func.overloadpacket.__name__} at {_where()}")
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING_METHODS and not _on_host_anyway(args):
            self.found.append(f"Tensor.{name} at {_where()}")
        if name in CPU_ONLY_CHECKS:
            _inside.append(name)
            try:
                return func(*args, **(kwargs or {}))
            finally:
                _inside.pop()
        return func(*args, **(kwargs or {}))


class SyncProbe(Callback):
    """Watches training steps 2 to 4 (step 1 builds lazy state); ``found`` lists what it saw."""

    def __init__(self, first: int = 2, last: int = 4) -> None:
        self.first, self.last, self.found, self.watched = first, last, [], 0
        self._modes: tuple | None = None

    def _stop(self) -> None:
        if self._modes is not None:
            for mode in reversed(self._modes):
                mode.__exit__(None, None, None)
            self._modes = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stop()
        if self.first <= trainer.global_step <= self.last:
            _host_counters.clear()
            _host_counters.update(state["step"].data_ptr() for optimizer in trainer.optimizers
                                  for state in optimizer.state.values()
                                  if isinstance(state.get("step"), torch.Tensor) and not state["step"].is_cuda)
            self._modes = (_Function(self.found), _Dispatch(self.found))
            for mode in self._modes:
                mode.__enter__()
            self.watched += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()  # the epoch's end (metrics sync, logging) is allowed to read values

    def teardown(self, trainer, pl_module, stage) -> None:
        self._stop()
        record = {"watched": self.watched, "found": self.found}
        Path(trainer.default_root_dir, "sync_probe.json").write_text(json.dumps(record))


class ProgressBarLoss(InceptionClassifier):
    """The step loss on the progress bar: Lightning reads it on the host after every step (the probe's control)."""

    def training_step(self, batch, batch_idx):
        loss = self._evaluate(batch, "train")[0]
        self.log("train/loss_total", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss
