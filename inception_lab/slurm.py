"""SLURM job files: a fit on N nodes x G GPUs, and a sweep as a job array of runners on one sweep directory.

    python -m inception_lab slurm fit --config X [--config ...] --nodes N --gpus-per-node G \\
        [--partition P] [--time T] [--account A] [--cpus-per-task C] [--sbatch OPTION ...] [--dry-run] [fit args...]
    python -m inception_lab sweep sweeps/<x>.yaml --slurm [--array-parallelism K] [--gpus-per-trial G] [...]

SLURM schedules; Lightning's ``SLURMEnvironment`` reads the ranks from ``srun``'s variables. On the signal sent
before the time limit (``--signal=USR1@90``), ``rundir.RequeueOnSignal`` saves ``hpc_ckpt_N.ckpt`` in the run
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
import subprocess
import sys
from pathlib import Path

from inception_lab.runfiles import write_atomic

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
