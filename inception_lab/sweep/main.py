"""The ``sweep`` command: its options, and a sweep directory run, repaired or followed up."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from inception_lab import console, slurm
from inception_lab.errors import ArgumentParser
from inception_lab.run.files import write_atomic
from inception_lab.sweep import resolve, runner, spec
from inception_lab.sweep.commands import check_command, check_trials, trial_command
from inception_lab.sweep.spec import SweepError, Trial, load_sweep
from inception_lab.sweep.state import RESUMABLE, STATUSES, State, repair


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    sweep = load_sweep(Path(args.sweep_file))
    check_command(sweep)
    rule = None
    if args.until_resolved:
        rule = resolve.Rule(args.half_width / 100, args.max_seeds, args.alpha, args.seeds_per_round, args.metric)
        resolve.check(sweep, rule)
        if args.emit_followup:
            return emit_followup(args, sweep, rule)
    elif args.emit_followup:
        raise SweepError("--emit-followup needs --until-resolved (its rule says which cells need seeds)")
    run_cap = args.run_cap or sweep.run_cap
    if sweep.method in ("random", "bayes") and not run_cap:
        raise SweepError(f"{sweep.path}: method {sweep.method} draws without end: set run_cap in the sweep file "
                         "or pass --run-cap N")
    if sweep.method == "bayes" or sweep.config.get("early_terminate"):
        spec.engine(required=True)
    directory = Path(args.out or f"runs/sweeps/{sweep.path.stem}")
    devices = [d.strip() for d in (args.devices or "").split(",") if d.strip()]
    slots = runner.slots_for(args.parallel or len(devices) or 1, devices)
    if directory.exists() and not directory.is_dir():
        raise SweepError(f"--out {directory}: a file, not a sweep directory")
    if args.repair:  # (from this sweep file only)
        check_one_sweep(fresh := State(directory, sweep, args.seed, read=False), args.seed, rule, [])
        repair(fresh, planned_values(sweep, run_cap, args.seed))
    state = State(directory, sweep, args.seed)
    # bayes: each draw depends on the results so far; check the next one here, and each before it runs
    planned = planned_values(sweep, run_cap, state.seed) or [t.values for t in state.trials]
    check_one_sweep(state, args.seed, rule, planned)
    check = [(i, v) for i, v in enumerate(planned) if i >= len(state.trials) or state.trials[i].status != "finished"]
    if sweep.method == "bayes" and len(planned) < run_cap:
        draw = spec.bayes_value(sweep, state.trials, state.seed)
        check += [(len(planned), draw)] if draw is not None else []
    print(f"sweep {sweep.name}: validating {len(check)} trial config(s) with the CLI ...", flush=True)
    names = dict(zip([i for i, _ in check], check_trials(sweep, directory, check)))
    trials = [*state.trials, *(Trial(names[i], v) for i, v in enumerate(planned) if i >= len(state.trials))]
    if args.slurm:
        return write_array_job(args, sweep, directory)
    if args.dry_run:
        for i, trial in enumerate(trials[:len(planned)]):
            command = subprocess.list2cmdline(trial_command(sweep, state.run_dir(trial), trial.values))
            print(f"{trial.name}{f'  [{trial.status}]' if i < len(state.trials) else ''}\n  {command}")
        done = sum(t.status == "finished" or t.status in ("failed", "stopped") and not (
            args.retry_failed and state.retries_failed) for t in state.trials)
        total = len(planned) if sweep.method != "bayes" else run_cap
        bayes = "up to " if sweep.method == "bayes" else ""
        console.result(f"sweep {sweep.name}: dry run: {bayes}{total - done} of {total} trials to run into {directory}, "
                       "all valid; nothing started, nothing written")
        return 0
    (directory / "runs").mkdir(parents=True, exist_ok=True)
    with state.locked():  # another runner may have written the trials meanwhile: add only what is missing
        check_one_sweep(state, args.seed, rule, planned)  # decided here: of two sweeps started at once, one runs
        if not (copy := directory / "sweep.yaml").is_file():
            write_atomic(copy, sweep.text)
        state.rule = state.rule or rule
        if state.rule is not None:
            resolve.check_metric(state.rule, state.trials)
        state.trials += trials[len(state.trials):]
        state.reconcile(args.retry_failed)
    trial_args = [f"--trainer.devices={args.gpus_per_trial}", "--trainer.strategy=ddp"] if (
        args.gpus_per_trial or 1) > 1 else []
    code = runner.loop(sweep, state, slots, run_cap, trial_args)
    console.result(outcome(sweep, state))  # the last line; --quiet (every command's) keeps only it
    return code


def outcome(sweep: spec.Sweep, state: State) -> str:
    """The command's last line: the sweep directory, its trials by status, and what to run next."""
    counts = Counter(t.status for t in state.trials)
    rest = "".join(f", {counts[s]} {s}" for s in STATUSES if counts[s] and s not in ("finished", "failed"))
    retry = "" if not counts["failed"] else (" (--retry-failed runs them again)" if state.retries_failed else
                                             " (seeds lost after a rerun: their cells' next seeds took their place)")
    compare = f"python -m inception_lab compare {shlex.quote(str(state.directory))}"
    left = any(t.status in ("pending", *RESUMABLE) for t in state.trials)
    return (f"sweep {sweep.name}: {state.directory}: {counts['finished']} of {len(state.trials)} trials finished, "
            f"{counts['failed']} failed{retry}{rest}; next: "
            + (f"the same command again to carry on, then {compare}" if left else compare))


def check_one_sweep(state: State, seed: int, rule: resolve.Rule | None, planned: list[dict[str, Any]]) -> None:
    """One sweep directory holds one sweep: the sweep file it first ran (its command and values; comments may change),
    the seed its random or bayes trials are drawn with, its until-resolved rule, the ``planned`` values of its trials
    (a trial's index says which values it runs: the grid's; an --until-resolved sweep's follow-ups come after them).
    Another is one line."""
    copy, sweep = state.directory / "sweep.yaml", state.sweep
    if copy.exists() and not copy.is_file():
        raise SweepError(f"{copy}: not a file: a sweep directory keeps the copy of its sweep file there (delete it)")
    if copy.is_file() and spec.read_yaml(copy, "sweep file copy")[1] != sweep.config:
        raise SweepError(f"{state.directory} holds a different sweep ({copy} differs from {sweep.path}): pass --out "
                         "DIR for a new sweep directory, or delete the old one")
    if sweep.method != "grid" and state.trials and state.seed != seed:
        raise SweepError(f"{state.path}: this sweep draws its trials with --seed {state.seed}; pass the same --seed "
                         f"(not {seed}), or --out DIR for a new sweep directory")
    if rule is not None and state.rule is not None and state.rule != rule:
        if resolve.metric_fixed(state.rule, rule, state.trials):
            state.rule = rule
            return check_one_sweep(state, seed, rule, planned)
        raise SweepError(f"{state.path}: this sweep runs until resolved with {_options(state.rule)}; pass the same "
                         f"options (not {_options(rule)}), or --out DIR for a new sweep directory")
    for trial, values in zip(state.trials, planned):
        if trial.values != values:
            raise SweepError(f"{state.path}: trial {trial.name} has other values than the sweep file gives it")


def _options(rule: resolve.Rule) -> str:
    return (f"--half-width {100 * rule.half_width:g} --max-seeds {rule.max_seeds} --alpha {rule.alpha:g} "
            f"--seeds-per-round {rule.step} --metric {rule.metric}")


def emit_followup(args: argparse.Namespace, sweep: spec.Sweep, rule: resolve.Rule) -> int:
    """``--emit-followup OUT.yaml``: the next round's W&B sweep file, from a finished sweep directory (``--out``, or
    the default one) or from the runs of every W&B round so far (``--wandb-sweep ENTITY/PROJECT/ID`` once a round, read
    as ``compare`` reads them)."""
    out = Path(args.emit_followup)
    if args.wandb_sweep:  # every round so far: a W&B sweep holds one
        from inception_lab.compare.runs import wandb_rounds

        records = wandb_rounds(args.wandb_sweep)[0]
        trials = resolve.trials_of_runs(sweep, records)
        judged = resolve.judge_runs(sweep, trials, {r.name: r for r in records}, rule)
        source = f"W&B sweep{'s' * (len(args.wandb_sweep) > 1)} {', '.join(args.wandb_sweep)}"
    else:
        directory = Path(args.out or f"runs/sweeps/{sweep.path.stem}")
        if not (directory / "state.json").is_file():
            raise SweepError(f"{directory}: no sweep state (state.json) to follow up; run the sweep first, or pass "
                             "--wandb-sweep ENTITY/PROJECT/ID")
        state = State(directory, sweep, args.seed)
        trials, source = state.trials, str(directory)
        judged = resolve.judge(sweep, trials, state.run_dir, rule)
    text = resolve.emit_followup(sweep.config, judged, rule, out)
    if out.is_dir():
        raise SweepError(f"--emit-followup {out}: a directory; give the path of the sweep file to write")
    write_atomic(out, text)
    judge = ""
    if args.wandb_sweep:  # compare knows a sweep directory's looks; W&B rounds are told theirs
        looks = ",".join(map(str, rule.design(len(resolve.file_seeds(sweep))).looks))
        judge = (f"; once it has run, every round judged together: `python -m inception_lab compare "
                 f"{' '.join(f'--wandb {path}' for path in args.wandb_sweep)} --wandb <its id> --looks {looks} "
                 f"--half-width {100 * rule.half_width:g} --alpha {rule.alpha:g} --metric {rule.metric}`")
    console.result(f"sweep {sweep.name}: follow-up of {source} written to {out}: `wandb sweep {out}`{judge}")
    return 0


def planned_values(sweep: spec.Sweep, run_cap: int | None, seed: int) -> list[dict]:
    """The values of every trial a grid or random sweep runs, in order (a bayes sweep's are drawn as it goes: [])."""
    if sweep.method == "grid":
        return spec.grid_values(sweep)[:run_cap]
    return spec.random_values(sweep, run_cap, seed) if sweep.method == "random" else []


def write_array_job(args: argparse.Namespace, sweep: spec.Sweep, directory: Path) -> int:
    """``--slurm``: ``<sweep dir>/sweep.sbatch``, a job array of ``--array-parallelism`` runners on the one sweep
    directory (each claims trials under its lock), each task with ``--gpus-per-trial`` GPUs (0: a CPU job);
    submitted with sbatch where there is one. SLURM's warning before the time limit reaches the runner alone as
    SIGUSR1: it stops its trials (recorded interrupted) and requeues its task, whose runner resumes them. A plain
    ``scancel`` (SIGTERM) stops them the same way and requeues nothing."""
    gpus = 1 if args.gpus_per_trial is None else args.gpus_per_trial  # 0: CPU jobs
    if args.wandb_sweep:  # a W&B server holds the sweep: each task is an agent that runs --count trials
        if len(args.wandb_sweep) > 1:
            raise SweepError(f"--slurm runs agents on one W&B sweep; got --wandb-sweep {len(args.wandb_sweep)} times")
        command = [sys.executable, "-m", "wandb", "agent", "--count", str(args.count), args.wandb_sweep[0]]
    else:
        command = [sys.executable, "-m", "inception_lab", "sweep", str(sweep.path.absolute()), "--out",
                   str(directory.absolute()), "--seed", str(args.seed),
                   *(["--gpus-per-trial", str(gpus)] if gpus > 1 else []),
                   *(["--run-cap", str(args.run_cap)] if args.run_cap else []),
                   *(["--retry-failed"] if args.retry_failed else []),
                   *(["--until-resolved", *_options(resolve.Rule(args.half_width / 100, args.max_seeds, args.alpha,
                                                                 args.seeds_per_round, args.metric)).split()]
                     if args.until_resolved else [])]
    text = slurm.sbatch_text(job_name=slurm.job_name(sweep.name, "sweep"), command=command, nodes=1,
                             tasks_per_node=1, gpus_per_node=gpus, cpus_per_task=args.cpus_per_task,
                             time=args.time, partition=args.partition, account=args.account,
                             array=f"0-{args.array_parallelism - 1}",
                             output=str(directory.absolute() / "slurm-%A_%a.out"),
                             extra=args.sbatch, srun=False, signal=slurm.SWEEP_SIGNAL)
    path = directory / "sweep.sbatch"
    write_atomic(path, text)
    return slurm.submit(path, args.dry_run)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m inception_lab sweep", description="Run a W&B sweep file locally, "
                                     "no W&B server: every trial is the command line the W&B agent would run; state "
                                     "survives kills (run the same command again to carry on).")
    parser.add_argument("sweep_file", help="a W&B sweep file (sweeps/<x>.yaml)")
    parser.add_argument("--out", help="sweep directory (default: runs/sweeps/<sweep file stem>)")
    parser.add_argument("--parallel", type=int, help="trials at once (default: one per --devices entry, else 1)")
    parser.add_argument("--devices", help="GPU ids, one trial per GPU (CUDA_VISIBLE_DEVICES), e.g. 0,1; without "
                                          "it, --parallel N splits the CPU threads between N trials")
    parser.add_argument("--dry-run", action="store_true", help="print and validate every trial; run nothing")
    parser.add_argument("--run-cap", type=int, help="at most N trials (overrides the sweep file's run_cap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random / bayes draws (kept in state.json)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed and stopped trials again (not an "
                        "--until-resolved sweep's: it reruns a failure once by itself, then the seed is lost)")
    parser.add_argument("--gpus-per-trial", type=int, help="GPUs for each trial (DDP when more than 1); with "
                                                           "--slurm, 0 writes CPU jobs (default 1)")
    until = parser.add_argument_group("until resolved: after the file's seeds, more seeds where a comparison with the "
                                      "baseline is not answered yet")
    until.add_argument("--until-resolved", action="store_true",
                       help="add seeds, a few at a time, to the cells (and the baseline) that are neither higher, "
                            "lower nor equal within ±--half-width (a group-sequential paired t test over the planned "
                            "looks, TOST for equal: compare/sequential.py), until each is resolved or at --max-seeds")
    until.add_argument("--half-width", type=float, default=0.5, metavar="POINTS",
                       help="δ of 'equal within ±δ' (two one-sided tests) in points of top-1 (default 0.5)")
    until.add_argument("--max-seeds", type=int, default=20, help="seeds per cell at most (default 20)")
    until.add_argument("--alpha", type=float, default=0.05,
                       help="each cell's chance of a false higher-or-lower, and of a false equal, over all its looks "
                            "(default 0.05)")
    until.add_argument("--metric", default=resolve.Rule().metric, metavar="KEY",
                       help=f"the runs' summary metric a cell is judged by (default {resolve.Rule().metric})")
    until.add_argument("--seeds-per-round", type=int, default=2, help="seeds added to a cell per round (default 2)")
    until.add_argument("--emit-followup", metavar="OUT.yaml",
                       help="write the next round as a W&B sweep file (the unresolved cells x new seeds) from the "
                            "finished sweep directory, or from --wandb-sweep ENTITY/PROJECT/ID once per round so "
                            "far; run nothing")
    parser.add_argument("--repair", action="store_true", help="a broken state.json: put its previous good copy "
                                                              "back (or rebuild it from the run directories), then "
                                                              "go on")
    jobs = parser.add_argument_group("SLURM: --slurm writes <sweep dir>/sweep.sbatch, a job array of runners")
    jobs.add_argument("--slurm", action="store_true", help="write (and submit with sbatch) the job array")
    jobs.add_argument("--array-parallelism", type=int, default=1, help="array tasks: runners at once (default 1)")
    jobs.add_argument("--partition")
    jobs.add_argument("--time", help="each task's time limit (SLURM's format)")
    jobs.add_argument("--account")
    jobs.add_argument("--cpus-per-task", type=int)
    jobs.add_argument("--sbatch", action="append", default=[], help="another #SBATCH option, e.g. --sbatch=--qos=high")
    jobs.add_argument("--wandb-sweep", metavar="ENTITY/PROJECT/ID", action="append",
                       help="a sweep on a W&B server (`wandb sweep <file>` made it): each array task runs "
                            "`wandb agent --count N` on it instead of the local runner")
    jobs.add_argument("--count", type=int, default=1, help="trials per array task with --wandb-sweep (default 1)")
    args = parser.parse_args(slurm.sbatch_options(argv))
    for flag, value in (("parallel", args.parallel), ("run-cap", args.run_cap), ("max-seeds", args.max_seeds),
                        ("seeds-per-round", args.seeds_per_round)):
        if value is not None and value < 1:
            raise SweepError(f"--{flag} {value}: expected a positive integer")
    if not args.half_width > 0:
        raise SweepError(f"--half-width {args.half_width}: expected points of top-1 > 0, e.g. 0.5")
    if not 0 < args.alpha < 1:
        raise SweepError(f"--alpha {args.alpha}: expected a level in (0, 1), e.g. 0.05")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial}: expected 0 (CPU) or more")
    slurm.check_job_options(args, slurm.SWEEP_SIGNAL)
    return args


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)
