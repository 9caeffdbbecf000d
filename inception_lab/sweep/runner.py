"""A sweep's trials: the command line the W&B agent (``Agent._command_run``) would run for each, rendered by wandb's
own ``create_sweep_command`` and ``create_sweep_command_args`` and checked by the CLI before anything runs; the state
on disk (``state.json``); one subprocess per trial in a slot (a GPU or a share of the CPU threads), the loop that fills
the slots and records each ending, and the table at the end."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args

from inception_lab.run.files import flatten, holds_run, read_summary, safe_name, variant_name, write_atomic
from inception_lab.sweep import spec
from inception_lab.sweep.spec import Sweep, SweepError, Trial

ERROR_TAIL_LINES = 20
AGENT_MACROS = ("env", "interpreter", "program", "args_json_file")  # what the agent adds to create_sweep_command_args


def sweep_vars(values: dict[str, Any]) -> dict[str, Any]:
    """The agent's macros of a trial's values: ``--key=str(value)`` for ``${args}``, JSON for ``${args_json}``."""
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})


def check_command(sweep: Sweep) -> None:
    known = sorted({*sweep_vars({}), *AGENT_MACROS})
    for token in sweep.command:
        macro = re.fullmatch(r"\$\{(\w+)\}", token)
        if macro and macro.group(1) not in known:
            raise SweepError(f"{sweep.path}: command: unknown macro {token}; the agent knows "
                             f"{', '.join('${' + m + '}' for m in known)}")
    if "${program}" in (sweep.command or DEFAULT_SWEEP_COMMAND) and not sweep.config.get("program"):
        raise SweepError(f"{sweep.path}: command uses ${{program}} but the sweep file sets no program")


def render_command(template: list[str], values: dict[str, Any], args_json_file: Path,
                   program: str | None = None) -> list[str]:
    macros = {**sweep_vars(values), "interpreter": [sys.executable], "program": [program],
              "args_json_file": [str(args_json_file)], "env": ["/usr/bin/env"] if os.name != "nt" else []}
    command: list[str] = []
    for token in map(str, create_sweep_command(list(template))):  # ${envvar:X} filled in; a copy: it edits in place
        if token.startswith("${") and token.endswith("}"):
            command += macros.get(token[2:-1]) or []
        else:
            command.append(sys.executable if token == "python" else token)
    return command


def trial_command(sweep: Sweep, run_dir: Path, values: dict[str, Any], json_file: Path | None = None) -> list[str]:
    command = render_command(sweep.command, values, json_file or run_dir / "args.json", sweep.config.get("program"))
    return [*command, "--run_dir", str(run_dir), "--wandb.group", sweep.name]


def write_args_json(path: Path, values: dict[str, Any]) -> None:  # what the agent writes for ${args_json_file}
    write_atomic(path, sweep_vars(values)["args_json"][0])


def cli_args(command: list[str]) -> list[str] | None:
    """The arguments after ``-m inception_lab`` (what ``cli.parse`` takes), or None for another program."""
    starts = [i + 2 for i in range(len(command) - 1) if command[i:i + 2] == ["-m", "inception_lab"]]
    return command[starts[0]:] if starts else None


def check_trials(sweep: Sweep, directory: Path, trials: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """Every trial's command line through the CLI's parser (model and data built, nothing written): their names.
    Only trials of the inception_lab CLI import it (and torch, Lightning)."""
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, values in trials:
            write_args_json(json_file := Path(tmp) / f"{index}.json", values)
            args = cli_args(trial_command(sweep, directory / "runs" / f"{index:03d}", values, json_file))
            config = None  # another program than the inception_lab CLI: nothing to check it with
            if args is not None:
                from inception_lab import cli

                logging.disable(logging.INFO)  # "Seed set to ..." per trial
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        config = cli.parse(args)[2]
                except cli.UserError as error:
                    raise SweepError(f"trial {trial_name(index, values)} ({describe(values)}): {error}") from None
                finally:
                    logging.disable(logging.NOTSET)
            names.append(trial_name(index, values, config))
    return names


def trial_name(index: int, values: dict[str, Any], config: Any = None) -> str:
    """``003-filter_sizes=3x3x3-seed1``: the name the CLI gives the run (from its parsed ``config``), after the trial's
    index; from the swept values alone without one (another program than this CLI, or a config it rejects)."""
    variant, seed = (config.variant, config.seed_everything) if config is not None else (
        {k: v for k, v in flatten(values).items() if k != "seed_everything"}, values.get("seed_everything"))
    return safe_name(f"{index:03d}", variant_name(variant), "" if seed is None else f"seed{seed}")


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


RESUMABLE = ("running", "interrupted", "killed")  # "killed": its process ended without recording an end (read_summary)


LEASE_S = float(os.environ.get("INCEPTION_LAB_SWEEP_LEASE_S", 120))  # a claim's life without renewal
HEARTBEAT_S = LEASE_S / 6  # how often a runner renews the claims of its trials


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class State:
    """``state.json``, shared by any number of runners (processes, nodes, array tasks) on one sweep directory.

    Every change is a read-modify-write under a lock file (``state.json.lock``, ``filelock``), and the file is
    rewritten atomically: a kill at any moment leaves a readable file. A runner claims a trial before it starts it
    (``owner`` = host:pid, ``lease_until``) and renews its claims every ``HEARTBEAT_S``; a trial whose runner died
    (its lease ran out, or its pid is gone on this host) is claimed again by any runner, and resumes from its
    ``last.ckpt``. A runner changes only the trials it claimed.
    """

    def __init__(self, directory: Path, sweep: Sweep, seed: int) -> None:
        self.directory, self.path, self.sweep = directory, directory / "state.json", sweep
        self.runner = f"{socket.gethostname()}:{os.getpid()}"
        self.seed, self.trials = seed, []
        self.mine: set[str] = set()  # names of the trials this runner claimed and runs
        self._lock: FileLock | None = None
        self.load()

    def load(self) -> None:
        """Reads state.json, keeping this runner's own trials as it has them (the same objects, updated in place)."""
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.seed = data.get("seed", self.seed)
        known = {t.name: t for t in self.trials}
        trials = []
        for entry in data.get("trials", []):
            trial = known.get(entry["name"])
            if trial is None:
                trial = Trial(**entry)
            elif trial.name not in self.mine:
                trial.__dict__.update(Trial(**entry).__dict__)
            trials.append(trial)
        self.trials = trials + [t for t in self.trials if t.name not in {e.name for e in trials}]

    @contextlib.contextmanager
    def locked(self) -> Any:
        """Read, change, write, with no other runner in between."""
        if self._lock is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(self.path.with_name("state.json.lock"))
        with self._lock:
            self.load()
            yield self
            self.save()

    def save(self) -> None:
        data = {"sweep": self.sweep.name, "sweep_file": str(self.sweep.path), "method": self.sweep.method,
                "metric": {"name": self.sweep.metric, "goal": self.sweep.goal}, "seed": self.seed,
                "trials": [t.__dict__ for t in self.trials]}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")

    def run_dir(self, trial: Trial) -> Path:
        return self.directory / "runs" / trial.name

    def alive(self, trial: Trial) -> bool:
        """Whether the runner that claimed a trial still holds it."""
        if trial.name in self.mine:
            return True
        if trial.owner is None or (trial.lease_until or 0) < time.time():
            return False
        host, _, pid = trial.owner.rpartition(":")
        return host != socket.gethostname() or pid_alive(int(pid))

    def claim(self, trial: Trial) -> None:
        trial.owner, trial.lease_until = self.runner, time.time() + LEASE_S
        self.mine.add(trial.name)

    def release(self, trial: Trial) -> None:
        trial.owner = trial.lease_until = None
        self.mine.discard(trial.name)

    def renew(self) -> None:
        for trial in self.trials:
            if trial.name in self.mine:
                trial.lease_until = time.time() + LEASE_S

    def reconcile(self, retry_failed: bool = False) -> None:
        """A trial left running or interrupted by a runner that is gone either finished meanwhile (kept) or is pending
        again (it resumes from its last.ckpt); failed and stopped trials run again with ``retry_failed``."""
        for trial in self.trials:
            if trial.status in RESUMABLE and not self.alive(trial):
                summary = read_summary(self.run_dir(trial))
                if summary.get("status") == "finished":
                    trial.status, trial.metrics = "finished", summary.get("metrics", {})
                else:
                    trial.status = "pending"
                trial.owner = trial.lease_until = None
            elif retry_failed and trial.status in ("failed", "stopped"):
                trial.status = "pending"


def slots_for(parallel: int, devices: list[str]) -> dict[str, dict[str, str]]:
    """One slot per concurrent trial, with its environment: a GPU (``CUDA_VISIBLE_DEVICES``) or CPU threads."""
    if devices:
        if parallel > len(devices):
            raise SweepError(f"--parallel {parallel} needs as many --devices, got {len(devices)}: {','.join(devices)}")
        return {f"gpu{d}": {"CUDA_VISIBLE_DEVICES": d} for d in devices[:parallel]}
    if parallel == 1:
        return {"cpu0": {}}
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return {f"cpu{i}": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for i in range(parallel)}


@dataclass
class Running:
    trial: Trial
    proc: subprocess.Popen
    slot: str
    started: float

    def kill(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # its own session: the runner's Ctrl-C does not reach it


def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGKILL this trial when the runner dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl took effect
        os._exit(1)


def start_trial(sweep: Sweep, state: State, trial: Trial, slot: str, env: dict[str, str],
                trial_args: list[str] = ()) -> Running:
    run_dir = state.run_dir(trial)
    resume = read_summary(run_dir).get("status") in RESUMABLE and any((run_dir / "checkpoints").glob("*.ckpt"))
    if not resume and holds_run(run_dir):  # one run, one directory: an attempt that starts over moves the old aside
        discarded = state.directory / "runs" / ".discarded" / f"{trial.name}.start{trial.starts}"
        discarded.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, discarded)
    write_args_json(run_dir / "args.json", trial.values)
    command = [*trial_command(sweep, run_dir, trial.values), *trial_args]
    if resume:
        command += ["--ckpt_path", "last"]  # interrupted or killed: resume from its last checkpoint
    # the files are closed here once the trial has its own copies of them
    with open(run_dir / "trial.log", "a") as out, open(run_dir / "trial.stderr.log", "a") as err:
        if out.tell() and not (run_dir / "trial.log").read_bytes().endswith(b"\n"):
            out.write("\n")  # an interrupted attempt's last progress-bar line
        print(f"# start {trial.starts} {time.strftime('%Y-%m-%d %H:%M:%S')} slot={slot}: "
              f"{subprocess.list2cmdline(command)}", file=out, flush=True)
        proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))
    return Running(trial, proc, slot, time.monotonic())


def finish_trial(state: State, running: Running, returncode: int) -> str:
    """Records how the trial ended; returns it in a few words."""
    trial, metric = running.trial, state.sweep.metric
    summary = read_summary(run_dir := state.run_dir(trial))
    trial.returncode, trial.wall_s = returncode, round(time.monotonic() - running.started, 1)
    trial.metrics = summary.get("metrics", {})
    if trial.status == "stopped":
        trial.error = f"stopped by hyperband early termination; {metric}={trial.metrics.get(metric)}"
    elif returncode == 0 and summary.get("status") == "finished":
        trial.status, value = "finished", trial.metrics.get(metric)
        return f"{metric}={value:.4f} ({trial.wall_s} s)" if value is not None else f"({trial.wall_s} s)"
    else:
        trial.status = "failed"
        reason = (f"exited 0 but its summary.json says status={summary.get('status')!r}" if returncode == 0
                  else summary.get("error") or f"exit code {returncode}")
        with contextlib.suppress(OSError):  # the last lines of its stderr, progress-bar redraws (\r) as they ended
            log = (run_dir / "trial.stderr.log").read_text(errors="replace")
            lines = [ln.rsplit("\r", 1)[-1].rstrip() for ln in log.splitlines()]
            reason += "\n" + "\n".join([ln for ln in lines if ln][-ERROR_TAIL_LINES:])
        trial.error = reason.strip()
    return trial.error.splitlines()[0]


def loop(sweep: Sweep, state: State, slots: dict[str, dict[str, str]], run_cap: int | None,
         trial_args: list[str] = ()) -> int:
    """Claims trials while a slot is free, runs them, records how each ended; ends when this runner has nothing
    running and nothing is left to claim (trials other runners hold stay theirs)."""
    running: list[Running] = []
    free = list(slots)
    base_env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID")}
    print(f"sweep {sweep.name}: {len(state.trials)} trials, {sum(t.status != 'pending' for t in state.trials)} done "
          f"or under way; slots {', '.join(slots)}; runner {state.runner}; {state.directory}", flush=True)
    renewed = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _as_interrupt)  # a scheduler's stop: as Ctrl-C, trials resumable
    try:
        while True:
            claimed: list[tuple[Trial, str]] = []
            if free:
                with state.locked():
                    state.reconcile()  # the trials of runners that died are claimable again
                    while free and (trial := next_trial(sweep, state, run_cap)) is not None:
                        state.claim(trial)
                        trial.status, trial.starts = "running", trial.starts + 1
                        trial.error = trial.returncode = None
                        claimed.append((trial, free.pop(0)))
            for trial, slot in claimed:
                running.append(start_trial(sweep, state, trial, slot, {**base_env, **slots[slot]}, trial_args))
                print(f"[{state.trials.index(trial) + 1}/{len(state.trials)}] start {trial.name} ({slot}, start "
                      f"{trial.starts})", flush=True)
            if not running:
                break
            time.sleep(0.5)
            if time.monotonic() - renewed > HEARTBEAT_S:
                with state.locked():
                    state.renew()
                renewed = time.monotonic()
            if sweep.config.get("early_terminate"):
                stops = spec.hyperband_stops(sweep, [(t, state.run_dir(t)) for t in state.trials])
                for r in running:  # stopped by hyperband: SIGTERM to its group
                    if r.trial.name in stops and r.trial.status == "running":
                        r.trial.status = "stopped"
                        r.kill()
            ended = [r for r in running if r.proc.poll() is not None]
            if ended:
                with state.locked():
                    results = [finish_trial(state, r, r.proc.returncode) for r in ended]
                    for r in ended:
                        state.release(r.trial)
                for r, result in zip(ended, results):
                    running.remove(r)
                    free.append(r.slot)
                    print(f"[{state.trials.index(r.trial) + 1}/{len(state.trials)}] {r.trial.status} {r.trial.name} "
                          f"{result}", flush=True)
    except KeyboardInterrupt:
        for r in running:
            r.kill()
        for r in running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.kill(signal.SIGKILL)
        with state.locked():
            for r in running:
                r.trial.status = "interrupted"  # not failed: the next start (in any runner) resumes it
                r.trial.wall_s = round(time.monotonic() - r.started, 1)
                state.release(r.trial)
        print(f"sweep {sweep.name}: interrupted; run the same command again to carry on", file=sys.stderr)
        requeue_array_task()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    with state.locked():
        pass  # the latest state, other runners' results included
    print(table(sweep, state))
    elsewhere = [t.name for t in state.trials if t.status in RESUMABLE and state.alive(t)]
    if elsewhere:
        print(f"sweep {sweep.name}: still running in other runners: {', '.join(elsewhere)}")
    return 1 if any(t.status == "failed" for t in state.trials) else 0


def _as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def requeue_array_task() -> None:
    """In a SLURM array task stopped before its time limit (``--signal=B:TERM@120``): requeue the task, whose runner
    then resumes the trials this one interrupted (any other runner on the directory may claim them first)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        with contextlib.suppress(OSError):
            subprocess.run(["scontrol", "requeue", f"{array}_{task}"], check=False)


def next_trial(sweep: Sweep, state: State, run_cap: int | None) -> Trial | None:
    """The next trial to claim (under the state's lock): a pending one, or a new bayes draw given every result so
    far, within ``run_cap`` (counted over all runners)."""
    pending = next((t for t in state.trials if t.status == "pending"), None)
    if pending is not None or sweep.method != "bayes" or len(state.trials) >= (run_cap or 0):
        return pending
    values = spec.bayes_value(sweep, state.trials, state.seed)
    if values is None:
        return None
    state.trials.append(Trial(check_trials(sweep, state.directory, [(len(state.trials), values)])[0], values))
    return state.trials[-1]


def table(sweep: Sweep, state: State) -> str:
    """Per trial, then per cell (the values other than the seed) as mean ± std over seeds."""
    lines = [f"sweep {sweep.name}: {sweep.metric} ({sweep.goal})", f"{'trial':<60} {'status':<9} {sweep.metric}"]
    groups: dict[str, list[float]] = {}
    for t in state.trials:
        value = t.metrics.get(sweep.metric) if t.status == "finished" else None
        shown = f"{value:.4f}" if isinstance(value, float) else t.error.splitlines()[0][:60] if t.error else ""
        lines.append(f"{t.name:<60} {t.status:<9} {shown}")
        cell = describe({k: v for k, v in t.values.items() if k != "seed_everything"}) or "(all)"
        if isinstance(value, float):
            groups.setdefault(cell, []).append(value)
    if any(len(v) > 1 for v in groups.values()):
        lines.append(f"per cell, mean ± std over seeds ({sweep.metric}):")
        for cell, values in groups.items():
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"  {statistics.fmean(values):.4f} ± {std:.4f} (n={len(values)})  {cell}")
    lines += [f"failed {t.name}: {t.error}" for t in state.trials if t.status == "failed"]
    return "\n".join(lines)
