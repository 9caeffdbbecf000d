"""Stored predictions: what ``test`` and ``predict`` computed for every image, kept in the run directory so that
ensembles (``python -m inception_lab ensemble``) and any later analysis start from numbers, not checkpoints.

``<run dir>/predictions/<split>-<views>.npz``, e.g. ``predictions/test-multi144.npz``:

| array | what |
|---|---|
| ``probs`` | float16 ``(images, classes)``: class probabilities, averaged over the image's views, in dataset order |
| ``labels`` | int64 ``(images,)`` |
| ``checkpoint`` | the checkpoint they came from: its path inside the run directory (else as given) |
| ``views``, ``split`` | the view protocol (``single``, ``flip``, ``ten_crop``, ``multi144``) and the split (``test``) |
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from inception_lab.run.files import write_atomic
from inception_lab.run.layout import RunDir

SPLIT = "test"  # test and predict both read the DataModule's test split


def predictions_path(run_dir: Path, views: str, split: str = SPLIT) -> Path:
    return RunDir(run_dir).predictions(split, views)


def checkpoint_name(run_dir: Path, checkpoint: str | Path) -> str:
    """A checkpoint as the run's predictions name it: relative to the run directory when inside it (a run moved
    elsewhere keeps its names), else as given."""
    path = Path(checkpoint)
    try:
        return str(path.resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(checkpoint)


@dataclass(frozen=True)
class Predictions:
    """One stored ``.npz``: probabilities ``(images, classes)`` (as stored: float16), labels, where they came from."""

    probs: np.ndarray
    labels: np.ndarray
    checkpoint: str
    views: str
    split: str

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["probs"], data["labels"], str(data["checkpoint"]), str(data["views"]), str(data["split"]))

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, probs=self.probs.astype(np.float16), labels=self.labels.astype(np.int64),
                 checkpoint=np.array(self.checkpoint), views=np.array(self.views), split=np.array(self.split))
        write_atomic(path, buffer.getvalue())


class ProbabilityWriter(Callback):
    """``test`` and ``predict`` write ``<run dir>/predictions/<split>-<views>.npz`` (see this module's docstring).

    The probabilities stay on the device until the epoch ends (no host sync per step), then go out in one copy. On
    one process only: under DDP each rank holds a padded shard in sampler order, and nothing is written.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def _start(self) -> None:
        self._probs, self._labels = [], []

    def _collect(self, outputs: Any, batch: Any) -> None:
        if isinstance(outputs, torch.Tensor) and isinstance(batch, (tuple, list)) and len(batch) > 1:
            self._probs.append(outputs.detach().to(torch.float16))  # as stored; half the device memory
            self._labels.append(batch[1].detach())

    def _write(self, trainer: Trainer) -> None:
        probs, labels = self._probs, self._labels
        self._start()
        if not probs:
            return
        if trainer.world_size > 1:
            rank_zero_warn("predictions/*.npz are written by single-process test/predict only; run it on one device")
            return
        views = getattr(trainer.datamodule, "test_views", "single")
        checkpoint = checkpoint_name(self.run_dir, trainer.ckpt_path) if trainer.ckpt_path else ""
        Predictions(torch.cat(probs).cpu().numpy(), torch.cat(labels).cpu().numpy(), checkpoint, views,
                    SPLIT).save(predictions_path(self.run_dir, views))

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    on_predict_epoch_start, on_predict_epoch_end = on_test_epoch_start, on_test_epoch_end

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)


class PredictionWriter(BasePredictionWriter):
    """``predict`` writes ``<run dir>/predictions.csv``: index, the true label (empty where the data has none),
    predicted class, its probability, top-5 classes; under DDP, from each rank's shard (``predictions.rank<r>.csv``
    until rank 0 has merged them)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(write_interval="epoch")
        self.run = RunDir(run_dir)
        self.labels: list[torch.Tensor] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.labels = []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
            self.labels.append(batch[1].detach())  # on the device until the epoch's end: no sync per step
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        probs = torch.cat(_leaves(predictions)).float().cpu()
        indices = _leaves(batch_indices)
        if len(indices) != len(probs):
            indices = list(range(len(probs)))
        labels = torch.cat(self.labels).tolist() if self.labels else []
        labels = labels if len(labels) == len(probs) else [""] * len(probs)
        top = probs.topk(min(5, probs.shape[1]), dim=1)
        lines = ["index,label,class,probability,top5\n"]
        lines += [f"{i},{y},{int(c[0])},{float(p[0]):.6f},{' '.join(map(str, c.tolist()))}\n"
                  for i, y, p, c in zip(indices, labels, top.values, top.indices)]
        rank = None if trainer.world_size == 1 else trainer.global_rank
        write_atomic(self.run.predictions_csv(rank), "".join(lines))
        if rank is not None:  # DDP: each rank wrote its shard; rank 0 makes them one file
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                self._merge(trainer.world_size)

    def _merge(self, world_size: int) -> None:
        """The ranks' shards as one ``predictions.csv`` in dataset order, each image once (DistributedSampler pads
        the last shards with repeats of the first images)."""
        shards = [self.run.predictions_csv(r) for r in range(world_size)]
        header, rows = "", {}
        for shard in shards:
            header, *body = shard.read_text().splitlines(keepends=True)
            for line in body:
                rows.setdefault(int(line.split(",", 1)[0]), line)
        write_atomic(self.run.predictions_csv(), header + "".join(rows[i] for i in sorted(rows)))
        for shard in shards:
            shard.unlink()


def _leaves(tree: Any) -> list:
    """Tensors or ints out of Lightning's nested per-dataloader, per-batch lists."""
    if isinstance(tree, (torch.Tensor, int)):
        return [tree]
    return [leaf for item in (tree or []) for leaf in _leaves(item)]
