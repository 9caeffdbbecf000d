"""A run directory as a type: the one place its file names are spelled (torch-free).

    runs/<experiment>/<run name>/
        config.yaml  summary.json  metrics.csv  hparams.yaml            the fit's (rank 0)
        <stage>-config.yaml  <stage>-summary.json  <stage>-metrics.csv   an evaluation's (validate, test, predict)
        <stage>-hparams.yaml
        checkpoints/last.ckpt  checkpoints/best-epochNNN-accX.XXXX.ckpt  the fit's checkpoints
        hpc_ckpt_N.ckpt                                                  saved on SLURM's signal, before a requeue
        predictions.csv  predictions/<split>-<views>.npz                 predict's, and test/predict's for ensemble
        wandb_run.json  .heartbeat  .lock                                W&B run id, the fit's liveness, its claim
        fit.sbatch  slurm-<job>.out                                      ``slurm fit``'s job file and its log
        args.json  trial.log  trial.stderr.log                           a sweep trial's values and output

Every other module asks :class:`RunDir` for a path; none spells a name itself.
"""

from __future__ import annotations

import os
from pathlib import Path

STAGES = ("fit", "validate", "test", "predict")


class RunDir:
    """A run directory at ``path`` (it need not exist yet)."""

    CHECKPOINTS = "checkpoints"
    LAST = "last"  # ModelCheckpoint's filename for last.ckpt
    BEST = "best-epoch{epoch:03d}-acc{val/acc:.4f}"  # ModelCheckpoint's filename template for the best checkpoint
    EXT = ".ckpt"
    HPC_GLOB = "hpc_ckpt_*.ckpt"  # Lightning's name for the checkpoint saved before a SLURM requeue

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunDir | None:
        """The run a checkpoint belongs to: ``<run>/checkpoints/*.ckpt`` or ``<run>/hpc_ckpt_N.ckpt``, wherever the
        run now is (moved, renamed or reached through a symlink); None for a checkpoint outside a run directory."""
        path = Path(checkpoint)
        if path.parent.name == cls.CHECKPOINTS:
            return cls(path.parent.parent)
        if path.match(cls.HPC_GLOB) and cls(path.parent).holds_run():
            return cls(path.parent)
        return None

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:  # one directory, symlinks and ``..`` resolved
        return isinstance(other, RunDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    # ---- the record, per stage -----------------------------------------------------------------------------------
    def _staged(self, name: str, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}")
        return self.path / (name if stage == "fit" else f"{stage}-{name}")

    def config(self, stage: str = "fit") -> Path:
        """``config.yaml`` (the fit's resolved config) or ``<stage>-config.yaml``."""
        return self._staged("config.yaml", stage)

    def summary(self, stage: str = "fit") -> Path:
        """``summary.json`` (the fit's record) or ``<stage>-summary.json`` (an evaluation's)."""
        return self._staged("summary.json", stage)

    def metrics(self, stage: str = "fit") -> Path:
        """``metrics.csv`` (every metric the fit logged) or ``<stage>-metrics.csv``."""
        return self._staged("metrics.csv", stage)

    def hparams(self, stage: str = "fit") -> Path:
        """``hparams.yaml`` (what Lightning's CSV logger writes beside the metrics) or ``<stage>-hparams.yaml``."""
        return self._staged("hparams.yaml", stage)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{self.LAST}{self.EXT}"

    def best(self) -> list[Path]:
        """``checkpoints/best-*.ckpt`` (one unless a version counter added another), by name."""
        return sorted(self.checkpoints.glob(f"best-*{self.EXT}"))

    def hpc(self) -> list[Path]:
        """The checkpoints saved on SLURM's signal before a requeue (``hpc_ckpt_N.ckpt``)."""
        return sorted(self.path.glob(self.HPC_GLOB))

    def checkpoint_files(self) -> list[Path]:
        """Every checkpoint of the run: ``checkpoints/*.ckpt`` and the HPC ones."""
        return sorted(self.checkpoints.glob(f"*{self.EXT}")) + self.hpc()

    def owns(self, checkpoint: str | os.PathLike) -> bool:
        """Whether ``checkpoint`` is one of this run's (in ``checkpoints/`` or an HPC checkpoint), by real path."""
        run = RunDir.of_checkpoint(checkpoint)
        return run == self

    # ---- liveness, claims, tracking, SLURM and sweeps: one file each -------------------------------------------------
    heartbeat = property(lambda self: self.path / ".heartbeat")
    lock = property(lambda self: self.path / ".lock")
    wandb_run = property(lambda self: self.path / "wandb_run.json")  # the W&B run id: a resume logs into the same run
    sbatch = property(lambda self: self.path / "fit.sbatch")
    slurm_output = property(lambda self: self.path / "slurm-%j.out")
    trial_args = property(lambda self: self.path / "args.json")  # a sweep trial's values (``${args_json_file}``)
    trial_log = property(lambda self: self.path / "trial.log")
    trial_stderr = property(lambda self: self.path / "trial.stderr.log")

    def predictions_csv(self, rank: int | None = None) -> Path:
        return self.path / ("predictions.csv" if rank is None else f"predictions.rank{rank}.csv")

    def predictions(self, split: str, views: str) -> Path:
        """``predictions/<split>-<views>.npz``: per-image class probabilities, for ``ensemble``."""
        return self.path / "predictions" / f"{split}-{views}.npz"

    # ---- what it holds ---------------------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether it holds a run's record (a sweep runner's ``args.json`` and ``trial.log`` alone do not)."""
        return self.config().is_file() or self.summary().is_file() or any(self.checkpoints.glob(f"*{self.EXT}"))

    def temporaries(self) -> list[Path]:
        """Temporary files a writer killed mid-write left (``.<name>.<pid>.tmp`` / ``.set``, see ``write_atomic``)."""
        folders = (self.path, self.checkpoints, self.path / "predictions")
        return sorted(p for folder in folders for pattern in (".*.*.tmp", ".*.*.set") for p in folder.glob(pattern))
