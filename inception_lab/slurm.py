"""SLURM job files: a fit on N nodes x G GPUs, and a sweep as a job array of runners on one sweep directory.

    python -m inception_lab slurm fit --config X [--config ...] --nodes N --gpus-per-node G \\
        [--partition P] [--time T] [--account A] [--cpus-per-task C] [--sbatch OPTION ...] [--dry-run] [fit args...]
    python -m inception_lab sweep sweeps/<x>.yaml --slurm [--array-parallelism K] [--gpus-per-trial G] [...]

SLURM schedules; Lightning's ``SLURMEnvironment`` reads the ranks from ``srun``'s variables. On the signal sent
before the time limit (``--signal=USR1@90``), ``RequeueOnSignal`` saves ``hpc_ckpt_N.ckpt`` in the run
directory at the next step boundary and requeues the job (``--requeue``); the requeued job runs the same command, in
the same run directory (fixed in the job file), and the CLI resumes from the run's newest checkpoint, in the same W&B
run (its id is kept in the run directory), exactly where it stopped. Nothing here schedules anything itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from inception_lab.run.files import write_atomic

REQUEUE_SIGNAL = "USR1@90"  # seconds before the time limit: time for Lightning to save and requeue


def sbatch_text(*, job_name: str, command: list[str], nodes: int = 1, tasks_per_node: int = 1, gpus_per_node: int = 0,
                cpus_per_task: int | None = None, time: str | None = None, partition: str | None = None,
                account: str | None = None, array: str | None = None, output: str, extra: list[str] = (),
                srun: bool = True, workdir: str | None = None, signal: str = REQUEUE_SIGNAL) -> str:
    """A job file: ``#SBATCH`` lines, then the command (under ``srun``: one task per GPU, ranks from SLURM)."""
    options = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}"]
    options += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []
    options += [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    options += [f"--time={time}"] if time else []
    options += [f"--partition={partition}"] if partition else []
    options += [f"--account={account}"] if account else []
    options += [f"--array={array}"] if array else []
    options += ["--requeue", f"--signal={signal}", f"--output={output}", "--open-mode=append", *extra]
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), "",
             "# written by inception_lab; the requeued job runs this same file again",
             f"cd {shlex.quote(workdir or os.getcwd())}",
             f"{'srun' if srun else 'exec'} {shlex.join(command)}", ""]
    return "\n".join(lines)


def submit(path: Path, dry_run: bool) -> int:
    """Submits a job file with ``sbatch`` where there is one; otherwise says what to run."""
    if dry_run:
        print(f"wrote {path}; dry run: nothing submitted (sbatch {path})")
        return 0
    if shutil.which("sbatch") is None:
        print(f"wrote {path}; no sbatch on this machine: submit it on the cluster with `sbatch {path}`")
        return 0
    done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"inception_lab: error: sbatch {path}: {done.stderr.strip().splitlines()[-1:] or done.returncode}",
              file=sys.stderr)
        return 2
    job = re.search(r"(\d+)", done.stdout)
    print(f"wrote {path}; submitted job {job.group(1) if job else done.stdout.strip()}")
    return 0


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m inception_lab slurm", description="Write (and submit) a SLURM "
                                     "job file for a fit on N nodes x G GPUs; other arguments go to fit unchanged.")
    parser.add_argument("subcommand", choices=["fit"])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--partition")
    parser.add_argument("--time", help="the job's time limit (SLURM's format, e.g. 2-00:00:00)")
    parser.add_argument("--account")
    parser.add_argument("--sbatch", action="append", default=[], help="another #SBATCH option, e.g. --qos=high")
    parser.add_argument("--dry-run", action="store_true", help="write the job file; submit nothing")
    args, rest = parser.parse_known_args(argv)
    for flag in ("nodes", "gpus_per_node"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    """``slurm fit ...``: the fit's config is checked and its run directory fixed now, so that every requeue of the
    job writes the same run."""
    from inception_lab import cli

    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    fit = [*rest, f"--trainer.num_nodes={args.nodes}", f"--trainer.devices={args.gpus_per_node}"]
    try:
        _, _, config = cli.parse(fit)
        cli.resolve_run(config, "fit", config.variant, next(iter(cli._option_values(rest, "--config", "-c")), None))
    except cli.UserError as error:
        print(f"inception_lab: error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(config.run_dir)
    if cli.holds_run(run_dir):
        print(f"inception_lab: error: --run_dir {run_dir}: already holds a run; a job file for it is "
              f"{run_dir / 'fit.sbatch'}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "inception_lab", "fit", *_without(fit, "--run_dir"), "--run_dir",
               str(run_dir.absolute()),
               "--experiment", config.experiment]
    text = sbatch_text(job_name=f"inception_lab-{config.run_name}", command=command, nodes=args.nodes,
                       tasks_per_node=args.gpus_per_node, gpus_per_node=args.gpus_per_node,
                       cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition,
                       account=args.account, output=str(run_dir.absolute() / "slurm-%j.out"), extra=args.sbatch)
    path = run_dir / "fit.sbatch"
    write_atomic(path, text)
    return submit(path, args.dry_run)


def _without(argv: list[str], option: str) -> list[str]:
    """A command line without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            out.append(arg)
    return out


# ---- a job started again, and the signal before the time limit ------------------------------------------------
def requeued() -> bool:
    """Whether this process is a SLURM job started again (``--requeue``: preempted, or requeued by Lightning on the
    time limit's signal)."""
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


class Requeued(SIGTERMException):
    """The fit stopped for SLURM to start it again (recorded "interrupted", exit 143, as SIGTERM)."""


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
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # with the loaders' position and the RNG (ExactResume)
        if trainer.is_global_zero:
            requeue_job()
        raise Requeued(f"requeued by SLURM after step {trainer.global_step} ({Path(path).name})")


def requeue_job() -> None:
    """``scontrol requeue`` this job (or this task of an array job), as Lightning's own handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        problem = done.stderr.strip() if done.returncode else ""
    except FileNotFoundError:
        problem = "no scontrol on PATH"
    print(f"inception_lab: {'could not requeue' if problem else 'requeued'} SLURM job {job}"
          f"{': ' + problem if problem else ''}", file=sys.stderr)
