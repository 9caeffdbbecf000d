"""``summary.json``: the record of a run that sweeps and comparisons read (written on rank 0, atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from inception_lab.run.files import read_summary, write_atomic


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


WALL_S_IS = ("the fit's wall time: the sum of its attempts' wall_s, each from the attempt's start to its end (a "
             "resumed run's includes the partial epoch an interruption lost)")


def interruption(exception: BaseException) -> str | None:
    """"SIGINT" / "SIGTERM" when the exception is an interruption (Ctrl-C, a scheduler or sweep runner stopping the
    run), not a failure."""
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    return None


class RunRecord(Callback):
    """Keeps ``<run dir>/summary.json`` current: status, metrics, cost, throughput, seed and wall time.

    ``status`` is the fit's: "running", then "finished", "interrupted" (SIGINT/SIGTERM: resume it with
    ``--ckpt_path last``) or "failed" (with ``error``); a run killed outright stays "running". ``attempts`` holds one
    entry per fit attempt (the first and each resume): start, end, wall time, epochs trained, how it ended (a killed
    attempt: "killed", with the time it was last seen). validate/test/predict add their metrics to the record without
    changing the fit's status (an evaluation that fails says so under ``<stage>_error``).
    """

    def __init__(self, run_dir: Path, subcommand: str = "fit", seed: int | None = None,
                 variant: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / "summary.json"
        self.subcommand = subcommand
        self.seed = seed
        self.variant = variant or {}
        self.summary: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._attempt: dict[str, Any] | None = None
        self._epoch_t0: float | None = None
        self._epoch_images = 0
        self._throughputs: list[float] = []

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        self.summary = read_summary(self.path.parent)
        self._start = time.perf_counter()
        self.summary.setdefault("metrics", {})
        self.summary.update(run_name=self.path.parent.name, seed=self.seed)
        if self.subcommand == "fit":  # what makes the run differ from its experiment (compare groups by it)
            self.summary["variant"] = self.variant
            attempts = self.summary.setdefault("attempts", [])
            for attempt in attempts:  # an attempt that never wrote its end was killed outright
                if attempt.get("status") == "running":
                    attempt.update(status="killed", end=attempt.pop("last_seen", None))
            self._attempt = {"start": _now(), "end": None, "status": "running", "wall_s": 0.0,
                             "first_epoch": None, "epochs": 0, "ckpt_path": None}
            attempts.append(self._attempt)
        if self.subcommand == "fit" or "status" not in self.summary:
            self.summary["status"] = "running"
            self.summary.pop("error", None)
        if hasattr(pl_module, "cost"):
            self.summary.update(pl_module.cost())
        self._write(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._attempt is not None:
            self._attempt.update(first_epoch=trainer.current_epoch, ckpt_path=_ckpt_path(trainer))  # a resume's
        for logger in trainer.loggers:  # cost in metrics.csv and W&B, at the (restored) step training starts from
            logger.log_metrics({"cost/params": self.summary.get("params", 0),
                                "cost/macs": self.summary.get("macs", 0)}, step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, "finished")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collect(trainer)
        if self.subcommand != "fit":
            self._finish(trainer, self.summary.get("status") if self.summary.get("status") != "running" else
                         "finished")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._collect(trainer)
        if self.subcommand == "validate":
            self._finish(trainer, self.summary.get("status") if self.summary.get("status") != "running" else
                         "finished")
        else:
            self._write(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.subcommand == "predict" and self.summary.get("status") == "running":
            self._finish(trainer, "finished")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        if not self.summary:
            self.summary = read_summary(self.path.parent) or {"metrics": {}}
        signal_name = interruption(exception)
        lines = [ln for ln in str(exception).strip().splitlines() if ln.strip()]
        error = f"{type(exception).__name__}: {lines[0] if lines else ''}".strip()
        if signal_name:  # a requeue says why (slurm.Requeued)
            error = f"interrupted: {exception}" if str(exception) else f"interrupted by {signal_name}"
        if self.subcommand != "fit":  # an evaluation going wrong says nothing about the fit
            self.summary[f"{self.subcommand}_error"] = error
            self._finish(trainer, self.summary.get("status", "running"))
            return
        self.summary["error"] = error
        self._finish(trainer, "interrupted" if signal_name else "failed")

    # ---- throughput: images per second of the training loop, validation excluded --------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_t0, self._epoch_images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._epoch_images += len(batch[0])  # a host-side int: no device sync

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch(trainer, pl_module)
        if self._attempt is not None:
            self._attempt["epochs"] += 1
        if self._throughputs:
            pl_module.log("perf/throughput_img_per_s", self._throughputs[-1], sync_dist=False)
        # at the epoch's step in metrics.csv, as val/acc is: the wall time to reach an accuracy (CIFAR-10's 94%)
        pl_module.log("perf/wall_s", self._wall_s(), sync_dist=False)

    def _close_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_t0 is None or not self._epoch_images:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._epoch_t0
        self._throughputs.append(self._epoch_images * trainer.world_size / elapsed)
        self._epoch_t0 = None

    # ---- writing ------------------------------------------------------------------------------------------------
    def _collect(self, trainer: Trainer) -> None:
        metrics = self.summary.setdefault("metrics", {})
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("val/", "test/", "train/")) and key != "train/loss_total":
                value = float(value)
                if self.subcommand == "validate":  # under its own keys: the fit's val/* stay the fit's
                    key = "validate/" + key.removeprefix("val/")
                if math.isfinite(value):
                    metrics[key] = value

    def _finish(self, trainer: Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        self._collect(trainer)
        self.summary["status"] = status
        if self._attempt is not None:
            self._attempt.update(status=status, end=_now())
            self._attempt.pop("last_seen", None)
        self._write(trainer)
        for logger in trainer.loggers:
            if hasattr(logger, "log_summary"):
                logger.log_summary({k: v for k, v in self.summary.items() if k not in ("metrics", "status")}
                                   | self.summary.get("metrics", {}))

    def _write(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero or not self.summary:
            return
        if self._throughputs:  # the first epoch carries warm-up (allocator, cuDNN autotune, compile)
            steady = self._throughputs[1:] or self._throughputs
            self.summary["throughput_img_per_s"] = round(statistics.median(steady), 2)
        if self._attempt is not None:
            self._attempt["wall_s"] = round(time.perf_counter() - self._start, 2)
            if self._attempt["status"] == "running":
                self._attempt["last_seen"] = _now()
            self.summary["wall_s"] = self._wall_s()
            self.summary["wall_s_is"] = WALL_S_IS
        write_json(self.path, self.summary)

    def _wall_s(self) -> float:
        """Wall time of the fit so far: this attempt's and the earlier ones' (see ``WALL_S_IS``)."""
        earlier = sum(a.get("wall_s") or 0.0 for a in self.summary.get("attempts", []) if a is not self._attempt)
        return round(earlier + time.perf_counter() - self._start, 2)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _ckpt_path(trainer: Trainer) -> str | None:
    """The checkpoint a fit resumes from (None: a new run)."""
    path = trainer.ckpt_path
    return None if path is None else str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed into place: a process killed while saving leaves the
    previous ``last.ckpt`` whole, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class PredictionWriter(BasePredictionWriter):
    """``predict`` writes ``<run dir>/predictions.csv``: index, predicted class, its probability, top-5 classes."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(run_dir) / "predictions.csv"

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        probs = torch.cat(_leaves(predictions)).float().cpu()
        indices = _leaves(batch_indices)
        if len(indices) != len(probs):
            indices = list(range(len(probs)))
        top = probs.topk(min(5, probs.shape[1]), dim=1)
        rank = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        path = self.path.with_name(f"predictions{rank}.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            f.write("index,class,probability,top5\n")
            for i, p, c in zip(indices, top.values, top.indices):
                f.write(f"{i},{int(c[0])},{float(p[0]):.6f},{' '.join(map(str, c.tolist()))}\n")
        os.replace(tmp, path)


def _leaves(tree: Any) -> list:
    """Tensors or ints out of Lightning's nested per-dataloader, per-batch lists."""
    if isinstance(tree, (torch.Tensor, int)):
        return [tree]
    return [leaf for item in (tree or []) for leaf in _leaves(item)]


class _RunMetricsWriter(ExperimentWriter):
    """A run's metrics file, rewritten whole through a temporary file and a rename at every save: a reader never
    sees half of it, and nothing is removed before its rows are written again. A resumed fit keeps the rows of the
    interrupted one up to the step it resumes from (later rows were lost with the kill)."""

    def __init__(self, log_dir: str, prefix: str = "") -> None:
        self.NAME_METRICS_FILE, self.NAME_HPARAMS_FILE = f"{prefix}metrics.csv", f"{prefix}hparams.yaml"
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's removes the file here
        self._rows: list[dict[str, Any]] = []
        self._previous: list[dict[str, Any]] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self._previous = [{k: int(float(v)) if k in ("step", "epoch") else float(v)
                                   for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._previous is not None and step is not None:
            self._rows = [row for row in self._previous if row.get("step", 0) <= step]
            self._previous = None
        super().log_metrics(metrics_dict, step)

    def save(self) -> None:
        if not self.metrics:
            return
        self._rows += self.metrics
        self.metrics = []
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=sorted(set().union(*self._rows)))
        writer.writeheader()
        writer.writerows(self._rows)
        write_atomic(Path(self.metrics_file_path), out.getvalue())


class RunCSVLogger(CSVLogger):
    """``<run dir>/metrics.csv`` for ``fit`` (a resumed fit continues it); ``<stage>-metrics.csv`` and
    ``<stage>-hparams.yaml`` for validate/test/predict, which never rewrite what the fit wrote."""

    def __init__(self, run_dir: Path, stage: str = "fit") -> None:
        super().__init__(run_dir, name="", version="")
        self.prefix = "" if stage == "fit" else f"{stage}-"

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunMetricsWriter(log_dir=self.log_dir, prefix=self.prefix)
        return self._experiment
