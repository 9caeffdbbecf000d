"""The run directory: where a run goes, which checkpoint resumes it, and a resume that goes on exactly.

``runs/<experiment>/<run name>/`` unless ``--run_dir`` says otherwise; ``--ckpt_path last`` resumes a run from its
newest checkpoint; a SLURM job started again (``--requeue``, :mod:`inception_lab.slurm`) resumes its own run.
:class:`ExactResume` makes a resumed fit continue as the uninterrupted one would, from an epoch's end (the RNG seeded
from (seed, epoch, rank)) or from the middle of an epoch (the loaders' position and every rank's RNG state, saved in
the checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning import Callback, LightningModule, Trainer

from inception_lab.errors import UserError
from inception_lab.run.files import (
    best_checkpoint,
    flatten,
    mix_seed,
    process_start,
    read_summary,
    run_seed,
    safe_name,
    short_value,
)
from inception_lab.run.identity import resume_differences, variant_name
from inception_lab.run.layout import RunDir
from inception_lab.run.lock import NoLocks, PathLock, run_lock
from inception_lab.slurm import requeued

RUNS_ROOT = Path("runs")
# A fit's default run name, for the ranks Lightning starts as child processes of rank 0 (they parse the same command
# line again, at another time): set by rank 0 for the fit's length (cli_main removes it).
RUN_NAME_ENV = "INCEPTION_LAB_RUN_NAME"


class ExactResume(Callback):
    """Resumes that replay the uninterrupted fit.

    Each epoch starts from the RNG seeded with (seed, epoch, rank), so a fit resumed from an epoch-end checkpoint
    draws what the uninterrupted one drew. A checkpoint saved mid-epoch (SLURM's requeue, or any callback saving
    after a step) also holds the training loaders' position (Lightning's loader ``state_dict`` protocol) and every
    rank's RNG state; the resumed epoch starts at the next batch, with that state. Saving runs on every rank at once,
    as Lightning's own saving does (each rank's state is gathered).
    """

    def __init__(self) -> None:
        self._trainer: Trainer | None = None
        self._rng: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A fit resumed mid-epoch (Lightning does not call ``on_train_epoch_start`` again) goes on from the saved
        batch with the saved RNG. The loader's position is loaded here: ``configure_optimizers`` asks for
        ``estimated_stepping_batches``, which sets the loader up before Lightning restores the loops, so Lightning's
        own loading (in ``setup_data``) has already passed; the iterator is made again."""
        fit_loop = trainer.fit_loop
        if fit_loop.restarting and fit_loop._combined_loader_states_to_load:
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)
        rng, self._rng = self._rng, None
        if rng is None or not fit_loop.restarted_mid_epoch:
            return
        if len(rng["cpu"]) != trainer.world_size:
            print(f"inception_lab: warning: resumed on {trainer.world_size} ranks from a checkpoint of "
                  f"{len(rng['cpu'])}: the rest of the epoch draws new random numbers", file=sys.stderr)
            return
        torch.set_rng_state(rng["cpu"][trainer.global_rank].clone())  # a row of its own: torch reads from offset 0
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"][trainer.global_rank].clone(), trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.manual_seed(mix_seed(run_seed(), trainer.current_epoch, trainer.global_rank))

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        strategy = trainer.strategy

        def gathered(state: torch.Tensor) -> torch.Tensor:
            return strategy.all_gather(state.to(strategy.root_device)).reshape(trainer.world_size, -1).cpu()

        cuda = strategy.root_device.type == "cuda"
        return {"rng": {"cpu": gathered(torch.get_rng_state()),
                        "cuda": gathered(torch.cuda.get_rng_state(strategy.root_device)) if cuda else None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng = state.get("rng")


def _is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's contents, or a one-line error naming the file."""
    if Path(path).is_dir():
        raise UserError(f"--ckpt_path {path}: a directory, not a checkpoint (<run>/checkpoints/<name>.ckpt, or last)")
    if not Path(path).is_file():
        raise UserError(f"--ckpt_path {path}: no such file")
    if not zipfile.is_zipfile(path):  # what torch.save writes; torch's own message talks of mmap and zipfiles
        with open(path, "rb") as f:
            start = f.read(512)
        kind = ("empty" if not start else "a torch.save archive cut short (an interrupted copy?)"
                if start.startswith(b"PK\x03\x04") else "a text file" if _is_text(start)
                else "not a torch.save archive")
        raise UserError(f"--ckpt_path {path}: not a checkpoint ({kind}; a fit writes <run>/checkpoints/*.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch's messages talk of pickles and weights_only; the user needs the file named
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--ckpt_path {path}: not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"--ckpt_path {path}: not a readable checkpoint (no state_dict: not written by Lightning)")
    return checkpoint


def resume_checkpoint(run_dir: Path) -> Path:
    """``--ckpt_path last``: the run's ``last.ckpt`` (after every epoch), or the HPC checkpoint saved on SLURM's
    signal before a requeue (``hpc_ckpt_N.ckpt``, mid-epoch) where that is further on. Where ``last.ckpt`` is missing
    or cannot be read (a full disk, a copy cut short), the newest readable checkpoint of the run (``best-*.ckpt``);
    a one-line error where there is none."""
    run = RunDir(run_dir)
    last = run.last
    preferred = [*([last] if last.is_file() else []), *run.hpc()]
    others = sorted((p for p in run.checkpoints.glob(f"*{run.EXT}") if p != last),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    if not preferred and not others:
        raise UserError(f"--ckpt_path last: {run_dir} has no checkpoint ({run.checkpoints}): the fit stopped "
                        f"before its first epoch ended, so nothing resumes it: start a new run in a new --run_dir (or "
                        f"delete {run_dir})")
    steps: dict[Path, int] = {}  # readable checkpoints and their global step; each file loaded once (mmap)
    problems = [] if last.is_file() else [f"{last} does not exist"]
    for path in preferred:
        try:
            steps[path] = int(read_checkpoint(str(path)).get("global_step", -1))
        except UserError as error:
            problems.append(str(error))
    if last in steps:
        return max(steps, key=lambda p: (steps[p], p.stat().st_mtime))
    for other in others:  # the newest readable one: older ones need not be read
        try:
            steps[other] = int(read_checkpoint(str(other)).get("global_step", -1))
            break
        except UserError:
            continue
    if not steps:
        raise UserError(f"{problems[0]}; and the run has no other readable checkpoint to resume from")
    chosen = max(steps, key=lambda p: (steps[p], p.stat().st_mtime))
    if chosen.parent == run.checkpoints:  # not an HPC checkpoint, which stands in for last.ckpt as designed
        print(f"inception_lab: warning: {problems[0]}; resuming from the newest readable checkpoint, {chosen}",
              file=sys.stderr)
    return chosen


def resolve_run(config: Namespace, subcommand: str, run_variant: dict[str, Any], first_config: str | None) -> None:
    """Fill in ``experiment``, ``run_name`` and ``run_dir`` (in the config, so config.yaml records them). Names are
    one path component: a given ``--experiment`` or ``--run_name`` is made one by ``safe_name``, with a note."""
    if not config.experiment:
        config.experiment = Path(first_config).stem if first_config and Path(first_config).is_file() else "default"
    for key in ("experiment", "run_name"):
        given = config.get(key)
        if given is not None and safe_name(given) != given:
            if not safe_name(given):
                raise UserError(f"--{key} {given!r}: no usable characters for a directory name (letters, digits, "
                                "_.=+-)")
            print(f"inception_lab: note: --{key} {given!r} is used as {safe_name(given)!r} (one directory name)",
                  file=sys.stderr)
            config[key] = safe_name(given)
    ckpt = config.get("ckpt_path")
    if ckpt is not None and not ckpt.strip():
        raise UserError(f"--ckpt_path {ckpt!r}: empty; give a checkpoint file, or last (the run's newest), or leave "
                        "the option out")
    if not config.run_dir and ckpt and ckpt != "last" and (run := RunDir.of_checkpoint(ckpt)) is not None:
        config.run_dir = str(run.path)  # validate/test a checkpoint: report into its run
    if not config.run_dir and ckpt == "last" and not config.run_name:
        config.run_dir = str(latest_run(config.experiment))
    if not config.run_dir:
        if not config.run_name:
            parts = [variant_name(run_variant), f"seed{config.get('seed_everything')}",
                     os.environ.get("WANDB_RUN_ID") or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)]
            config.run_name = os.environ.get(RUN_NAME_ENV) or safe_name(*parts)
            if subcommand == "fit":
                os.environ[RUN_NAME_ENV] = config.run_name
        config.run_dir = str(RUNS_ROOT / config.experiment / config.run_name)
    if not config.run_name:
        config.run_name = Path(config.run_dir).name


def check_training(config: Namespace) -> None:
    """What Lightning takes but a fit cannot train with, one line before anything is written."""
    trainer, model = config.trainer, config.model
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(key) == 0:
            raise UserError(f"trainer.{key}=0: a fit trains at least one batch (use validate or test to evaluate "
                            "a checkpoint without training)")
    if trainer.get("accumulate_grad_batches", 1) < 1:
        raise UserError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: must be >= 1 (batches "
                        "per optimizer step)")
    # what Lightning takes and then divides by (ZeroDivisionError mid-fit), or clips with (a negative norm reverses
    # the gradients)
    if (every := trainer.get("check_val_every_n_epoch")) is not None and every < 1:
        raise UserError(f"trainer.check_val_every_n_epoch={every}: must be >= 1, or null to validate by "
                        "val_check_interval alone")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and not interval > 0:
        raise UserError(f"trainer.val_check_interval={interval}: must be > 0 (an int: every N training batches; a "
                        "float: that fraction of an epoch)")
    if (clip := trainer.get("gradient_clip_val")) is not None and not clip >= 0:
        raise UserError(f"trainer.gradient_clip_val={clip}: must be >= 0 (0 or null: no clipping)")
    # Lightning trains until stopped (or max_time) at max_epochs -1, and at max_epochs null with max_time
    open_ended = trainer.get("max_epochs") == -1 or (trainer.get("max_epochs") is None and trainer.get("max_time"))
    if open_ended and trainer.get("max_steps", -1) == -1 and model.get("lr_scheduler") and model.lr_interval == "step":
        given = "max_epochs=-1" if trainer.get("max_epochs") == -1 else f"max_time={trainer.max_time}"
        raise UserError(f"trainer.{given}: a run that trains until stopped has no length for model.lr_scheduler, "
                        "stepped per step (model.lr_interval: step); give trainer.max_steps or trainer.max_epochs")


def check_fit(config: Namespace, run_dir: Path, resolved: Callable[[], dict[str, Any]]) -> None:
    """One run, one directory: a fit into a directory that holds a run must resume it, as the same run (its
    ``config.yaml`` against ``resolved()``, this command's flat resolved config). Checked before anything is
    written; a SLURM job started again resumes its own run."""
    check_training(config)
    run, ckpt = RunDir(run_dir), config.get("ckpt_path")
    if ckpt is None and requeued() and run.holds_run():  # SLURM started this job again: go on, don't refuse
        try:
            config.ckpt_path = ckpt = str(resume_checkpoint(run_dir))
        except UserError:  # stopped before its first checkpoint: it starts again, its attempts say so
            print(f"inception_lab: SLURM job requeued: {run_dir} has no checkpoint yet; starting it again",
                  file=sys.stderr)
            return
        print(f"inception_lab: SLURM job requeued (restart {os.environ['SLURM_RESTART_COUNT']}): resuming "
              f"{run_dir} from {ckpt}", file=sys.stderr)
    if ckpt is None or not run.owns(ckpt):
        if run.holds_run():
            status = read_summary(run_dir).get("status", "no summary.json")
            if not run.checkpoint_files():
                raise UserError(f"--run_dir {run_dir}: already holds a run (status: {status}) that stopped before "
                                "its first checkpoint, so nothing resumes it: start a new run in a new --run_dir (or "
                                f"delete {run_dir})")
            raise UserError(f"--run_dir {run_dir}: already holds a run (status: {status}); resume it with "
                            "--ckpt_path last, or start a new run in a new --run_dir")
        return
    if not run.config().is_file():
        return  # a checkpoint copied without its run: nothing to compare with
    try:
        recorded = flatten(yaml.safe_load(run.config().read_text()))
    except (OSError, ValueError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{run.config()}: unreadable ({reason}); cannot check that the resume is the same "
                        "run") from None
    differences = resume_differences(recorded, resolved())
    if differences:
        shown = "; ".join(f"{key}: run {short_value(was)}, now {short_value(now)}"
                          for key, (was, now) in list(differences.items())[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        raise UserError(f"--ckpt_path {ckpt}: a resume is the same run, but this config differs from "
                        f"{run.config()} in {shown}{more}; only the length of training and bookkeeping keys may "
                        "change (start a new run with a new --run_dir)")


def check_evaluation(config: Namespace, run_dir: Path, stage: str) -> None:
    """``validate``/``test``/``predict`` into a directory that holds a fit evaluate one of that fit's checkpoints:
    with no ``--ckpt_path``, its best (``summary.json``'s ``best_checkpoint``, else ``checkpoints/best-*``, else
    ``last.ckpt``); another run's checkpoint, or none at all, is refused: an untrained network's metrics never land
    in a fit's record."""
    run, ckpt = RunDir(run_dir), config.get("ckpt_path")
    if not run.holds_run():
        return
    if ckpt is not None:
        if not run.owns(ckpt):
            raise UserError(f"--ckpt_path {ckpt}: not a checkpoint of the run in --run_dir {run_dir}; an "
                            f"evaluation into a run's directory evaluates that run (give one of "
                            f"{run.checkpoints}/*.ckpt, or another --run_dir)")
        return
    chosen = best_checkpoint(run_dir)
    if chosen is None:
        raise UserError(f"--run_dir {run_dir}: holds a run with no checkpoint to {stage}; an evaluation into a run's "
                        "directory evaluates one of its checkpoints (give --ckpt_path, or another --run_dir)")
    config.ckpt_path = str(chosen)
    print(f"inception_lab: {stage}: the run's best checkpoint, {chosen}", file=sys.stderr)


def latest_run(experiment: str) -> Path:
    """The most recent run of ``experiment`` that has a ``last.ckpt`` (for ``--ckpt_path last``)."""
    candidates = sorted((p for p in (RUNS_ROOT / experiment).glob("*") if RunDir(p).last.is_file()),
                        key=lambda p: RunDir(p).last.stat().st_mtime)
    if not candidates:
        raise UserError(f"--ckpt_path last: no run of experiment {experiment!r} under {RUNS_ROOT / experiment} has "
                        "a last checkpoint; pass --run_dir DIR of the run to resume")
    return candidates[-1]


HELD: list[tuple[PathLock, Path | None]] = []  # this process's run locks, held until it ends (release_runs), and the
# topmost directory hold_run made for each (None: the run directory was there before)


def hold_run(run_dir: Path, fresh: bool = False, wait_s: float = 0) -> None:
    """A fit's claim on its run directory (rank 0; the other ranks write nothing there of their own), held for as
    long as the process runs: a second fit into the same directory is refused in one line. The lock alone is not
    trusted: a lock file deleted or replaced while a fit holds it ("a stale lock") gives a newcomer a lock of its own,
    so the run's record is asked too, and a fit it says is alive (its process, or its heartbeat from another host)
    refuses the newcomer. ``wait_s``: how long to wait for a fit that holds the run to end (a requeued job's old
    process on a dead node, a reclaimed sweep trial's). Temporary files of writers killed mid-write go."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    made = next((p for p in reversed([run_dir.absolute(), *run_dir.absolute().parents]) if not p.exists()), None)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock, deadline = run_lock(run_dir), time.monotonic() + wait_s
    try:
        held = lock.acquire(timeout=wait_s)
    except NoLocks as error:
        raise UserError(f"--run_dir {run_dir}: {error.strerror}") from None
    alive = None
    while held and (alive := live_fit(run_dir)) and time.monotonic() < deadline:
        time.sleep(1)
    if not held or alive:  # the lock's holder, or the live fit the record names (the lock was then ours: let go)
        lock.release()
        with contextlib.suppress(OSError):
            alive = alive or lock.path.read_text().strip()
        raise UserError(f"--run_dir {run_dir}: a fit is running in it{f' ({alive})' if alive else ''}; wait for "
                        "it to end, or start a new run in a new --run_dir")
    HELD.append((lock, made))
    if fresh and RunDir(run_dir).holds_run():  # another fit wrote it between our check and our lock
        release_runs()
        raise UserError(f"--run_dir {run_dir}: already holds a run; resume it with --ckpt_path last, or start a new "
                        "run in a new --run_dir")
    os.ftruncate(lock.fd, 0)
    os.pwrite(lock.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    remove_temporaries(run_dir)


def live_fit(run_dir: Path) -> str | None:
    """"pid P on H" when the run's record says a fit of another process runs in it and that fit is alive."""
    record = read_summary(run_dir)
    attempt = (record.get("attempts") or [{}])[-1]
    if record.get("status") != "running" or (attempt.get("pid"), attempt.get("host")) == (os.getpid(),
                                                                                         socket.gethostname()):
        return None
    return f"pid {attempt.get('pid')} on {attempt.get('host')}, per its {RunDir(run_dir).summary().name}"


def remove_temporaries(run_dir: Path, min_age_s: float = 60) -> None:
    """The temporary files of writers killed mid-write (``write_atomic``'s ``.<name>.<pid>.tmp``): called under the
    run's lock by the next fit, and by an evaluation when no fit runs. A file of a live process on this host stays, and
    so does one younger than ``min_age_s`` (a write in flight on another host, where the pid says nothing)."""
    for path in RunDir(run_dir).temporaries():
        pid = path.name.rsplit(".", 2)[-2]
        alive = pid.isdigit() and (int(pid) == os.getpid() or process_start(int(pid)) is not None)
        with contextlib.suppress(OSError):
            if not alive and time.time() - path.stat().st_mtime > min_age_s:
                path.unlink()


def release_runs(refused: bool = False) -> None:
    """Lets go of this process's run directories. ``refused``: the command stopped on a user error; a run directory
    this process made that holds no checkpoint is removed (with the parents made for it), so that a refused fit
    leaves no run behind and the corrected command can use the same ``--run_dir`` (a fit stopped on a user error
    mid-epoch, e.g. ``bad_images: error``, before its first checkpoint: nothing could resume it). One with a
    checkpoint stays, and resumes with ``--ckpt_path last``."""
    while HELD:
        lock, made = HELD.pop()
        run_dir = lock.path.parent
        if refused and made is not None and not RunDir(run_dir).checkpoint_files():  # made here, nothing to resume
            with contextlib.suppress(OSError):
                shutil.rmtree(run_dir)  # what the fit wrote before its user error: no record of a run
                for directory in run_dir.absolute().parents:
                    if not directory.is_relative_to(made):
                        break
                    directory.rmdir()
        lock.release()
