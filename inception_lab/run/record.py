"""The writers of a run's record (rank 0, atomically): ``summary.json`` (the fit's), ``<stage>-summary.json`` (an
evaluation's), the metrics files and checkpoints (``predictions.csv``: :mod:`inception_lab.run.predictions`).
Who writes what: :mod:`inception_lab.run.files`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from inception_lab.run.files import HEARTBEAT_S, RunSummary, disk_fault, process_start, read_metrics, write_atomic
from inception_lab.run.identity import DATA_BOOKKEEPING, bookkeeping_keys
from inception_lab.run.layout import RunDir

WALL_S_IS = ("the fit's wall time: the sum of its attempts' wall_s, each from the attempt's start to its end (a "
             "resumed run's includes the partial epoch an interruption lost)")


def checkpoint_callbacks(run_dir: Path) -> list[ModelCheckpoint]:
    """A fit's checkpoints: the best by val top-1, and ``last.ckpt`` after every epoch in a callback of its own
    (Lightning 2.6's ``save_last=True`` writes it only when the monitored value improved, so a crash would resume
    from the best epoch, not the last one)."""
    run = RunDir(run_dir)
    return [ModelCheckpoint(dirpath=run.checkpoints, filename=RunDir.BEST, auto_insert_metric_name=False,
                            monitor="val/acc", mode="max"),
            ModelCheckpoint(dirpath=run.checkpoints, filename=RunDir.LAST, monitor=None, save_top_k=1,
                            enable_version_counter=False)]


def interruption(exception: BaseException) -> str | None:
    """"SIGINT" / "SIGTERM" when the exception is an interruption (Ctrl-C, a scheduler or sweep runner stopping the
    run), not a failure."""
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    return None


class RunRecord(Callback):
    """Keeps a stage's record current: ``summary.json`` for ``fit`` (status, metrics, cost, throughput, seed, wall
    time, attempts), ``<stage>-summary.json`` for validate/test/predict (its status, metrics and checkpoint). An
    evaluation never writes the fit's file, so it cannot change the fit's status or race a fit still running.

    The fit's status: "running", then "finished", "interrupted" (SIGINT/SIGTERM: resume it with ``--ckpt_path
    last``) or "failed" (with ``error``). Each attempt records its ``host`` and ``pid``, and the fit touches
    ``.heartbeat`` every ``HEARTBEAT_S``: a fit killed outright stays "running" in the file, and readers
    (:func:`~inception_lab.run.files.read_summary`) report it "killed"; its next start marks that attempt "killed".
    """

    def __init__(self, run_dir: Path, subcommand: str = "fit", seed: int | None = None,
                 variant: dict[str, Any] | None = None, wandb_run: str | None = None,
                 test_after_fit: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.stage = subcommand
        self.test_after_fit = test_after_fit and subcommand == "fit"
        self.held_out: str | None = None  # the checkpoint the fit's test pass evaluates (set at the fit's end)
        self.seed = seed
        self.variant = variant or {}
        self.record = RunSummary()
        self._start = time.perf_counter()
        self._attempt: dict[str, Any] | None = None
        self._epoch_t0: float | None = None
        self._epoch_images = 0
        self._throughputs: list[float] = []
        self._heartbeat: threading.Event | None = None
        self._set_up = False
        self.wandb_run = wandb_run  # an evaluation's own W&B run (the fit's is in wandb_run.json)

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.held_out and stage == "test":  # the fit's own test pass: the fit's record, its attempt still open
            if trainer.is_global_zero:
                self._start_heartbeat()
            return
        if not trainer.is_global_zero:
            return
        self._start = time.perf_counter()
        self.record = self._begin(trainer)
        if self.stage == "fit":
            self.record.variant = self.variant  # what makes the run differ from its experiment: its name and tags
            data = getattr(trainer, "datamodule", None)  # the keys compare sets aside when it groups runs by config
            self.record.extra["bookkeeping"] = bookkeeping_keys(getattr(data, "BOOKKEEPING", DATA_BOOKKEEPING))
            for attempt in self.record.attempts:  # an attempt that never wrote its end was killed outright
                if attempt.get("status") == "running":
                    attempt.update(status="killed", end=attempt.pop("last_seen", None))
            self._attempt = {"start": _now(), "end": None, "status": "running", "wall_s": 0.0, "first_epoch": None,
                             "epochs": 0, "ckpt_path": None, **_process()}
            self.record.attempts.append(self._attempt)
            self.record.status, self.record.error = "running", None
            self._start_heartbeat()
        if hasattr(pl_module, "cost"):
            self.record.extra.update(pl_module.cost())
        if self.stage == "fit" and hasattr(pl_module, "optimization"):  # the LR the run trains at, and why
            resolved = pl_module.optimization()
            if len(resolved) > 1:
                self.record.extra["optimization"] = resolved
        self._set_up = True
        self._write(trainer)

    def _begin(self, trainer: Trainer) -> RunSummary:
        """The record this stage writes: the fit's as it stands (a resume adds an attempt), an evaluation's anew."""
        if self.stage != "fit":
            record = RunSummary(checkpoint=_ckpt_path(trainer), extra={"start": _now(), **_process()})
            if self.wandb_run:
                record.extra["wandb_run"] = self.wandb_run
        else:
            try:
                record = RunSummary.load(self.run_dir) or RunSummary()
            except ValueError as error:  # cut short by a crash of an older version: the record starts again
                print(f"inception_lab: warning: {error}; its attempts are lost, a new record starts", file=sys.stderr)
                record = RunSummary()
        record.run_name = record.run_name or self.run_dir.name  # a run moved or reached through a link keeps its name
        record.seed = self.seed
        record.extra["manifest"] = manifest(trainer)  # what produced this start of the stage
        return record

    def _start_heartbeat(self) -> None:
        stop = self._heartbeat = threading.Event()
        beat = RunDir(self.run_dir).heartbeat

        def run() -> None:
            while True:
                with contextlib.suppress(OSError):  # a full disk: the next beat tries again
                    beat.touch()
                if stop.wait(HEARTBEAT_S):
                    return

        threading.Thread(target=run, name="inception_lab-heartbeat", daemon=True).start()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.set()
            self._heartbeat = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_heartbeat()
        # a loop Lightning skips (limit_test_batches=0, ...) calls none of its *_end hooks: the stage ends here
        if trainer.is_global_zero and self.record.status == "running" and not (stage == "fit" and self.held_out):
            self._finish(trainer, "finished")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._attempt is not None:
            first = trainer.current_epoch
            self._attempt.update(first_epoch=first, ckpt_path=_ckpt_path(trainer))  # a resume's
            before = self.record.attempts[-2] if len(self.record.attempts) > 1 else {}
            if before.get("status") == "killed" and isinstance(before.get("first_epoch"), int):
                # killed outright after an epoch's checkpoint, before its record counted that epoch: the checkpoint
                # this attempt starts from says how far it got (the attempts add up)
                before["epochs"] = max(before.get("epochs", 0), first - before["first_epoch"])
        cost = self.record.extra
        for logger in trainer.loggers:  # cost in metrics.csv and W&B, at the (restored) step training starts from
            logger.log_metrics({"cost/params": cost.get("params", 0), "cost/macs": cost.get("macs", 0)},
                               step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Finished, or (``test_after_fit``) still running until the best checkpoint by val top-1 has been evaluated
        on the test split: the held-out answer, ``test/*`` in the fit's metrics. A checkpoint the record says was
        tested already (a resume that trained nothing new, or no better epoch) is not tested again, so its record
        and metrics.csv stay as they were. Rank 0 decides, for every rank."""
        best = _best_path(trainer)
        tested = trainer.is_global_zero and best and self.record.extra.get("tested_checkpoint") == Path(best).name
        held_out = best if self.test_after_fit and best and not tested else None
        self.held_out = trainer.strategy.broadcast(held_out, src=0)
        if self.held_out is None:
            self._finish(trainer, "finished")
            return
        for logger in trainer.loggers:  # the W&B run stays open for the test pass (RunWandbLogger)
            if hasattr(logger, "hold_open"):
                logger.hold_open = True
        self._write(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.held_out and trainer.is_global_zero:
            self.record.extra["tested_checkpoint"] = Path(self.held_out).name  # in the run's checkpoints/
        if self.stage == "test" or self.held_out:
            self._finish(trainer, "finished")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.stage == "validate":
            self._finish(trainer, "finished")
        else:
            self._collect(trainer)
            self._write(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "predict":
            self._finish(trainer, "finished")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        signal_name = interruption(exception)
        lines = [ln for ln in str(exception).strip().splitlines() if ln.strip()]
        error = disk_fault(exception) or f"{type(exception).__name__}: {lines[0] if lines else ''}".strip()
        if signal_name:  # a requeue says why (slurm.Requeued)
            error = f"interrupted: {exception}" if str(exception) else f"interrupted by {signal_name}"
        if not self._set_up:  # failed before setup: the fit's record as it was, with how this start ended
            self.record = self._begin(trainer)
        self.record.error = error
        with contextlib.suppress(OSError):  # recorded where the disk allows; the CLI says what happened either way
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
        share = getattr(trainer.datamodule, "share_skipped_images", None)
        if share is not None and trainer.world_size > 1:  # every rank at once: the files any rank skipped
            share(lambda flags: trainer.strategy.reduce(flags.to(pl_module.device), reduce_op="max"))
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
        prefixes = ("val/", "train/", "test/") if self.stage == "fit" else ("val/", "test/")
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefixes) and key != "train/loss_total":
                value = float(value)
                if self.stage == "validate":  # under its own keys: the fit's val/* stay the fit's
                    key = "validate/" + key.removeprefix("val/")
                if math.isfinite(value):
                    self.record.metrics[key] = value

    def _finish(self, trainer: Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        self._stop_heartbeat()
        self._collect(trainer)
        self.record.status = status
        if self._attempt is not None:
            self._attempt.update(status=status, end=_now())
            self._attempt.pop("last_seen", None)
        else:
            self.record.extra["end"] = _now()
        self._write(trainer)
        summary = self.record.as_dict()
        for logger in trainer.loggers:
            if hasattr(logger, "log_summary"):
                logger.log_summary({k: v for k, v in summary.items() if k not in ("metrics", "status")}
                                   | self.record.metrics)

    def _write(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        if self.stage != "fit":  # the checkpoint an evaluation restored (Lightning knows it after setup)
            self.record.checkpoint = self.record.checkpoint or _ckpt_path(trainer)
        else:  # by name in this run's checkpoints/: a resumed callback's path may name where the run used to be
            best = Path(_best_path(trainer) or ".").name
            run = RunDir(self.run_dir)
            if best and (run.checkpoints / best).is_file():
                self.record.extra["best_checkpoint"] = str((run.checkpoints / best).relative_to(run.path))
        skipped = getattr(getattr(trainer, "datamodule", None), "skipped_images", None)
        if skipped is not None and (found := skipped()):  # undecodable files the loaders skipped (bad_images)
            self.record.extra["bad_images"] = found
        if self._throughputs:  # the first epoch carries warm-up (allocator, cuDNN autotune, compile)
            steady = self._throughputs[1:] or self._throughputs
            self.record.extra["throughput_img_per_s"] = round(statistics.median(steady), 2)
        if self._attempt is not None:
            self._attempt["wall_s"] = round(time.perf_counter() - self._start, 2)
            if self._attempt["status"] == "running":
                self._attempt["last_seen"] = _now()
            self.record.extra.update(wall_s=self._wall_s(), wall_s_is=WALL_S_IS)
        self.record.save(self.run_dir, self.stage)

    def _wall_s(self) -> float:
        """Wall time of the fit so far: this attempt's and the earlier ones' (see ``WALL_S_IS``)."""
        earlier = sum(a.get("wall_s") or 0.0 for a in self.record.attempts if a is not self._attempt)
        return round(earlier + time.perf_counter() - self._start, 2)


def test_held_out(trainer: Trainer, model: LightningModule, datamodule: Any) -> None:
    """After a fit (``--test_after_fit``, the default): its best checkpoint by val top-1 evaluated on the test split,
    which the fit never selects on; :class:`RunRecord` records ``test/*`` in the fit's summary.json and then finishes
    it. A fit with no best checkpoint (no validation ran) has no held-out answer."""
    held_out = next((c.held_out for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    if not held_out:
        return
    info = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "Restoring states from ...": not a resume
    level = info.level
    info.setLevel(logging.WARNING)
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=held_out, verbose=False, weights_only=True)
    finally:
        info.setLevel(level)


def manifest(trainer: Trainer) -> dict[str, Any]:
    """What produced a run: the code's git commit and whether its tree was dirty, the versions of the libraries and
    the project, the host, the devices and the command line."""
    from importlib.metadata import PackageNotFoundError, version

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    versions = {}
    for name in ("torch", "torchvision", "lightning", "inception-lab"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    root = trainer.strategy.root_device
    device = torch.cuda.get_device_name(root) if root.type == "cuda" else platform.processor() or platform.machine()
    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain", "-uno")) if commit else None,
            "versions": versions, "host": socket.gethostname(),
            "devices": {"accelerator": root.type, "name": device, "world_size": trainer.world_size,
                        "num_nodes": trainer.num_nodes},
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}


def _process() -> dict[str, Any]:
    """Where this process runs, so that a reader can tell a live stage from a killed one (``files.fit_gone``)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid())}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _best_path(trainer: Trainer) -> str | None:
    """The fit's best checkpoint (``best-*.ckpt``, by val top-1) as its callback knows it: the one summary.json names
    and the fit's test pass evaluates."""
    return next((c.best_model_path for c in trainer.checkpoint_callbacks
                 if getattr(c, "monitor", None) and c.best_model_path), None)


def _ckpt_path(trainer: Trainer) -> str | None:
    """The checkpoint a fit resumes from (None: a new run)."""
    path = trainer.ckpt_path
    return None if path is None else str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through ``write_atomic``: a process killed while saving leaves the previous
    ``last.ckpt`` whole, never a truncated one; a full disk leaves no temporary file behind and raises OSError
    naming the checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getbuffer())


class _RunMetricsWriter(ExperimentWriter):
    """A run's metrics file, rewritten whole through a temporary file and a rename at every save: a reader never
    sees half of it, and nothing is removed before its rows are written again. A resumed fit keeps the rows of the
    interrupted one up to the step it resumes from (later rows were lost with the kill)."""

    def __init__(self, log_dir: str, stage: str = "fit") -> None:
        run = RunDir(log_dir)
        self.NAME_METRICS_FILE, self.NAME_HPARAMS_FILE = run.metrics(stage).name, run.hparams(stage).name
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's removes the file here
        self._rows: list[dict[str, Any]] = []
        self._previous: list[dict[str, Any]] | None = None
        if Path(self.metrics_file_path).is_file():
            self._previous = read_metrics(Path(self.metrics_file_path))

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
        self.stage = stage

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunMetricsWriter(log_dir=self.log_dir, stage=self.stage)
        return self._experiment
