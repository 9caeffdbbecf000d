"""SLURM job files: a fit on N nodes x G GPUs (the ``slurm fit`` command itself: ``commands.slurm_main``), and a
sweep as a job array of runners on one sweep directory; a job started again, and the signal before the time limit.

    python -m inception_lab slurm fit --config X [--config ...] --nodes N --gpus-per-node G \\
        [--partition P] [--time T] [--account A] [--cpus-per-task C] [--sbatch OPTION ...] [--dry-run] [fit args...]
    python -m inception_lab sweep sweeps/<x>.yaml --slurm [--array-parallelism K] [--gpus-per-trial G] [...]

SLURM schedules; Lightning's ``SLURMEnvironment`` reads the ranks from ``srun``'s variables. On the signal sent
before the time limit (``--signal=USR1@90``), ``run.requeue.RequeueOnSignal`` saves ``hpc_ckpt_N.ckpt`` in the run
directory at the next step boundary and requeues the job (``--requeue``); the requeued job runs the same command, in
the same run directory (fixed in the job file), and the CLI resumes from the run's newest checkpoint, in the same W&B
run (its id is kept in the run directory), exactly where it stopped. Nothing here schedules anything itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from inception_lab.console import result
from inception_lab.errors import ArgumentParser, UserError

REQUEUE_SIGNAL = "USR1@90"  # seconds before the time limit: time for Lightning to save and requeue
SWEEP_SIGNAL = "B:USR1@120"  # to the array task's runner alone; SIGTERM (scancel) is a cancel
TIME = re.compile(r"(\d+)(:\d+){0,2}|(\d+)-(\d+)(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)  # sbatch --time


def time_limit_s(value: str) -> float:
    """SLURM's ``--time`` in seconds (minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    days-hours:minutes, days-hours:minutes:seconds; UNLIMITED); ValueError for anything else."""
    value = value.strip()
    if not TIME.fullmatch(value):
        raise ValueError(f"--time {value}: not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS "
                         "or UNLIMITED)")
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return float("inf")
    days, _, clock = value.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    scale = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
    return float(sum(p * k for p, k in zip(parts, scale)))


def check_time(value: str | None, signal: str) -> None:
    """A job's ``--time`` against the warning it asks for (``signal``, e.g. ``USR1@90``): ValueError, one line."""
    if value is None:
        return
    lead_s = int(signal.rpartition("@")[2])
    if time_limit_s(value) <= lead_s + 60:
        raise ValueError(f"--time {value}: shorter than the warning SLURM sends {lead_s} s before the limit (plus "
                         "up to a minute's delay): the job would be stopped before it could save")


def job_name(name: str, kind: str) -> str:
    """``<run or sweep name>.<kind>``: what squeue's 8-column NAME shows first is the part people tell jobs by."""
    return re.sub(r"[^\w.+-]", "_", f"{name}.{kind}")[:64]


def sbatch_options(argv: list[str]) -> list[str]:
    """``--sbatch --qos=high`` as ``--sbatch=--qos=high`` (argparse takes a value starting with '--' for an
    option of its own)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--sbatch" and i + 1 < len(argv):
            out.append(f"--sbatch={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def sbatch_text(*, job_name: str, command: list[str], nodes: int = 1, tasks_per_node: int = 1, gpus_per_node: int = 0,
                cpus_per_task: int | None = None, time: str | None = None, partition: str | None = None,
                account: str | None = None, array: str | None = None, output: str, extra: list[str] = (),
                srun: bool = True, workdir: str | None = None, signal: str = REQUEUE_SIGNAL) -> str:
    """A job file: ``#SBATCH`` lines, then the command (under ``srun``: one task per GPU, ranks from SLURM). With no
    GPUs it is a CPU job: ``--cpus-per-task`` (1 unless given), no GRES."""
    options = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}"]
    options += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []  # none on a CPU job: no GRES asked
    options += [f"--cpus-per-task={cpus_per_task or 1}"] if cpus_per_task or not gpus_per_node else []
    options += [f"--time={time}"] if time else []
    options += [f"--partition={partition}"] if partition else []
    options += [f"--account={account}"] if account else []
    options += [f"--array={array}"] if array else []
    options += ["--requeue", f"--signal={signal}", f"--output={output}", "--open-mode=append", *extra]
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), "",
             "# written by inception_lab; the requeued job runs this same file again",
             f"cd {shlex.quote(workdir or os.getcwd())}", f"{'srun' if srun else 'exec'} {shlex.join(command)}", ""]
    return "\n".join(lines)


def submit(path: Path, dry_run: bool) -> int:
    """Submits a job file with ``sbatch`` where there is one; otherwise says what to run."""
    if dry_run:
        result(f"wrote {path}; dry run: nothing submitted (sbatch {path})")
        return 0
    if shutil.which("sbatch") is None:
        result(f"wrote {path}; no sbatch on this machine: submit it on the cluster with `sbatch {path}`")
        return 0
    done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise UserError(f"sbatch {path}: {said.removeprefix('sbatch: error: ')}")
    job = re.search(r"(\d+)", done.stdout)
    result(f"wrote {path}; submitted job {job.group(1) if job else done.stdout.strip()}")
    return 0


def parse_args(argv: list[str]) -> tuple[Any, list[str]]:
    parser = ArgumentParser(prog="python -m inception_lab slurm", description="Write (and submit) a SLURM "
                                     "job file for a fit on N nodes x G GPUs; other arguments go to fit unchanged.")
    parser.add_argument("subcommand", choices=["fit"])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node, one rank each (default 1); 0: "
                                                                      "a CPU job, one rank per node")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per rank (default: SLURM's; 1 on a "
                                                                        "CPU job)")
    parser.add_argument("--partition")
    parser.add_argument("--time", help="the job's time limit (SLURM's format, e.g. 2-00:00:00)")
    parser.add_argument("--account")
    parser.add_argument("--sbatch", action="append", default=[], help="another #SBATCH option, e.g. --sbatch "
                                                                      "--qos=high")
    parser.add_argument("--dry-run", action="store_true", help="write the job file; submit nothing")
    args, rest = parser.parse_known_args(sbatch_options(argv))
    if args.gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {args.gpus_per_node}: expected 0 (a CPU job) or more")
    check_job_options(args, REQUEUE_SIGNAL)
    return args, rest


def check_job_options(args: Any, signal: str) -> None:
    """The options a job file takes (``slurm fit``'s and ``sweep --slurm``'s), checked as sbatch would take them and
    set to what the job file holds (``--time`` stripped): UserError, one line naming the option."""
    for flag in ("nodes", "cpus_per_task", "array_parallelism", "count"):
        if (value := getattr(args, flag, None)) is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value}: expected a positive integer")
    for flag in ("partition", "account", "time"):
        if (value := getattr(args, flag, None)) is not None:
            if not re.fullmatch(r"\S+", value.strip()):
                raise UserError(f"--{flag} {value!r}: expected one word, as sbatch takes it")
            setattr(args, flag, value.strip())
    for option in args.sbatch:
        if not re.fullmatch(r"-\S.*", option.strip()) or "\n" in option:
            raise UserError(f"--sbatch {option!r}: expected one sbatch option on one line, e.g. --qos=high")
    try:
        check_time(args.time, signal)
    except ValueError as error:
        raise UserError(str(error)) from None


# ---- a job started again, and the signal before the time limit ------------------------------------------------
def requeued() -> bool:
    """Whether this process is a SLURM job started again (``--requeue``: preempted, or requeued by Lightning on the
    time limit's signal)."""
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def requeue_job() -> bool:
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
    return not problem
