"""A sweep's trials: the command line the W&B agent (``Agent._command_run``) would run for each, rendered by wandb's
own ``create_sweep_command`` and ``create_sweep_command_args`` and checked by the CLI before anything runs; one
subprocess per trial in a slot (a GPU or a share of the CPU threads), the loop that fills the slots and records each
ending in the sweep directory's state (``state.py``), and the table at the end."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from inception_lab import slurm
from inception_lab.hostmem import usable_cores
from inception_lab.run.files import read_summary
from inception_lab.run.layout import RunDir
from inception_lab.run.lock import PathLock
from inception_lab.sweep import spec
from inception_lab.sweep.claim import CLAIM_ENV, LOCK_WAIT_S
from inception_lab.sweep.commands import check_trials, cli_args, describe, trial_command, write_args_json
from inception_lab.sweep.spec import Sweep, SweepError, Trial
from inception_lab.sweep.state import HEARTBEAT_S, RESUMABLE, State

ERROR_TAIL_LINES = 20


def slots_for(parallel: int, devices: list[str]) -> dict[str, dict[str, str]]:
    """One slot per concurrent trial, with its environment: a GPU (``CUDA_VISIBLE_DEVICES``) or CPU threads."""
    if devices:
        if parallel > len(devices):
            raise SweepError(f"--parallel {parallel} needs as many --devices, got {len(devices)}: {','.join(devices)}")
        return {f"gpu{d}": {"CUDA_VISIBLE_DEVICES": d} for d in devices[:parallel]}
    if parallel == 1:
        return {"cpu0": {}}
    threads = str(max(1, usable_cores() // parallel))
    return {f"cpu{i}": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for i in range(parallel)}


@dataclass
class Running:
    trial: Trial
    proc: subprocess.Popen
    slot: str
    started: float
    lock: PathLock | None = None  # its run directory's, where the program is not the CLI (whose fit holds it)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def kill(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # its own session: the runner's Ctrl-C does not reach it


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: no dlopen in a forked child
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGKILL this trial when the runner dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl took effect
        os._exit(1)


def start_trial(sweep: Sweep, state: State, trial: Trial, slot: str, env: dict[str, str],
                trial_args: list[str] = ()) -> Running:
    """Starts a claimed trial's program; the runner holds its run directory's lock until the CLI's fit is started (the
    fit then takes it and checks the claim: :func:`inception_lab.sweep.claim.check_trial_claim`), or, for another
    program, for as long as it runs. Another program gets the command line the agent would give it, nothing added."""
    run = RunDir(run_dir := state.run_dir(trial))
    resume = read_summary(run_dir).get("status") in RESUMABLE and bool(run.checkpoint_files())
    if not resume and run.holds_run():  # one run, one directory: an attempt that starts over moves the old aside
        discarded = state.directory / "runs" / ".discarded" / f"{trial.name}.start{trial.starts}"
        for n in itertools.count(2):
            if not discarded.exists():
                break
            discarded = discarded.with_name(f"{trial.name}.start{trial.starts}-{n}")
        discarded.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, discarded)  # its lock goes with it: lock the new directory (no one else can: ours)
        state.held.pop(trial.name).release()
        if not state.hold(trial, timeout=LOCK_WAIT_S):  # a stale fit holds it a moment, to find its claim gone
            raise SweepError(f"{run_dir}: its lock has been held for {LOCK_WAIT_S:.0f} s by a fit of no claim")
    write_args_json(run.trial_args, trial.values)
    command = trial_command(sweep, run_dir, trial.values)
    cli = cli_args(command) is not None
    if cli:  # interrupted or killed: resume from its last checkpoint
        command += [*trial_args, *(["--ckpt_path", "last"] if resume else [])]
        env = {**env, CLAIM_ENV: json.dumps({"state": str(state.path.absolute()), "trial": trial.name,
                                             "claim": trial.claim})}
    # the files are closed here once the trial has its own copies of them
    with open(run.trial_log, "a") as out, open(run.trial_stderr, "a") as err:
        if out.tell() and not run.trial_log.read_bytes().endswith(b"\n"):
            out.write("\n")  # an interrupted attempt's last progress-bar line
        print(f"# start {trial.starts} {time.strftime('%Y-%m-%d %H:%M:%S')} slot={slot}: "
              f"{subprocess.list2cmdline(command)}", file=out, flush=True)
        state.starting.discard(trial.name)
        lock = state.held.pop(trial.name)
        if cli:
            lock.release()  # the fit takes it, and checks that the claim is still ours
            lock = None  # another program: the runner holds it for as long as the trial runs
        proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))
    return Running(trial, proc, slot, time.monotonic(), lock)


def finish_trial(state: State, running: Running, returncode: int) -> str:
    """Records how the trial ended; returns it in a few words."""
    trial, metric = running.trial, state.sweep.metric
    summary = read_summary(run_dir := state.run_dir(trial))
    trial.returncode, trial.wall_s = returncode, round(time.monotonic() - running.started, 1)
    trial.metrics = summary.get("metrics", {})
    if trial.status == "stopped":
        trial.error = f"stopped by hyperband early termination; {metric}={trial.metrics.get(metric)}"
    elif returncode == 0 and summary.get("status", None if running.lock is None else "finished") == "finished":
        # (another program than the CLI may write no run record: its exit code says it finished)
        trial.status, value = "finished", trial.metrics.get(metric)
        return f"{metric}={value:.4f} ({trial.wall_s} s)" if value is not None else f"({trial.wall_s} s)"
    else:
        trial.status, trial.failures = "failed", trial.failures + 1
        reason = (f"exited 0 but its run record says status={summary.get('status')!r}" if returncode == 0
                  else summary.get("error") or f"exit code {returncode}")
        with contextlib.suppress(OSError):  # the last lines of its stderr, progress-bar redraws (\r) as they ended
            log = RunDir(run_dir).trial_stderr.read_text(errors="replace")
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
    base_env = {k: v for k, v in os.environ.items()  # a trial is not the array task's SLURM job step: its DDP
                if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", CLAIM_ENV) and not k.startswith("SLURM_")}
    print(f"sweep {sweep.name}: {len(state.trials)} trials, {sum(t.status != 'pending' for t in state.trials)} done "
          f"or under way; slots {', '.join(slots)}; runner {state.runner}; {state.directory}", flush=True)
    renewed = time.monotonic()
    received.clear()
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),  # all three restored (the stop ignores them)
                **{s: signal.signal(s, _as_interrupt) for s in (signal.SIGTERM, signal.SIGUSR1)}}
    try:
        while True:
            claimed: list[tuple[Trial, str]] = []
            if free:
                with state.locked():
                    state.reconcile()  # the trials of runners that died are claimable again
                    held: set[str] = set()  # pending, but a fit holds its run directory
                    while free and (trial := next_trial(sweep, state, run_cap, held)) is not None:
                        if not state.claim(trial):
                            held.add(trial.name)
                            continue
                        trial.status, trial.starts = "running", trial.starts + 1
                        trial.error = trial.returncode = None
                        claimed.append((trial, free.pop(0)))
                drop_lost(state, running, free)
            for trial, slot in claimed:
                running.append(start_trial(sweep, state, trial, slot, {**base_env, **slots[slot]}, trial_args))
                print(f"[{state.trials.index(trial) + 1}/{len(state.trials)}] start {trial.name} ({slot}, start "
                      f"{trial.starts})", flush=True)
            if not running:
                if state.rule is None or not any(t.status in RESUMABLE for t in state.trials):
                    break
                time.sleep(0.5)  # until resolved: another runner's trials end a round this runner may follow up
                continue
            deadline = time.monotonic() + 0.5  # or until a trial ends: the next one starts at once
            while time.monotonic() < deadline and all(r.proc.poll() is None for r in running):
                time.sleep(0.02)
            if time.monotonic() - renewed > HEARTBEAT_S:
                with state.locked():
                    state.renew()
                renewed = time.monotonic()
                drop_lost(state, running, free)
            if sweep.config.get("early_terminate"):
                stops = spec.hyperband_stops(sweep, [(t, state.run_dir(t)) for t in state.trials])
                for r in running:  # stopped by hyperband: SIGTERM to its group
                    if r.trial.name in stops and r.trial.status == "running":
                        r.trial.status = "stopped"
                        r.kill()
            ended = [r for r in running if r.proc.poll() is not None]
            if ended:
                with state.locked():
                    results = {r.trial.name: finish_trial(state, r, r.proc.returncode) for r in ended
                               if r.trial.name in state.mine}
                    for r in ended:
                        if r.trial.name in results:
                            state.release(r.trial)
                for r in ended:
                    running.remove(r)
                    free.append(r.slot)
                    r.release()
                    if r.trial.name in results:
                        print(f"[{state.trials.index(r.trial) + 1}/{len(state.trials)}] {r.trial.status} "
                              f"{r.trial.name} {results[r.trial.name]}", flush=True)
                if state.rule is not None:
                    from inception_lab.sweep.resolve import check_metric

                    check_metric(state.rule, [r.trial for r in ended])
                drop_lost(state, running, free)
    except (KeyboardInterrupt, SweepError) as stopped:  # an error: the trials stop and resume as at Ctrl-C
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):  # a second signal (the requeue's) changes
            signal.signal(signum, signal.SIG_IGN)  # nothing now: the trials are being stopped and recorded
        for r in running:
            r.kill()  # SIGTERM: each fit saves and records itself
        # Recorded before the fits have ended: SLURM SIGKILLs this runner KillWait (30 s by default) after a cancel or
        # a requeue, however long they take. Nobody resumes a trial early: its fit holds its run directory until done.
        with state.locked():
            for r in running:
                if r.trial.name in state.mine:
                    r.trial.status = "interrupted"  # not failed: the next start (in any runner) resumes it
                    r.trial.wall_s = round(time.monotonic() - r.started, 1)
                    state.release(r.trial)
        if isinstance(stopped, SweepError):
            stop(running, signalled=True)
            raise
        if received and received[-1] == signal.SIGUSR1:  # SLURM's warning before the time limit
            array_task = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
            again = ("its trials resume when SLURM starts this task again" if array_task and slurm.requeue_job() else
                     "run the same command again to carry on")
            how, code = f"stopped before the time limit; {again}", 143
        else:
            how = {signal.SIGTERM: "stopped (SIGTERM: a cancel)"}.get(received[-1] if received else None,
                                                                     "interrupted")
            how, code = f"{how}; run the same command again to carry on", 143 if received else 130
        print(f"sweep {sweep.name}: {how}", file=sys.stderr, flush=True)
        stop(running, signalled=True)
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    with state.locked():
        pass  # the latest state, other runners' results included
    print(table(sweep, state))
    if state.rule is not None:
        from inception_lab.sweep.resolve import summary_lines

        print("\n".join(summary_lines(sweep, state.trials, state.run_dir, state.rule)))
    elsewhere = [t.name for t in state.trials if t.status in RESUMABLE]
    if elsewhere:
        print(f"sweep {sweep.name}: not finished here (another runner has them, or a later run of this command "
              f"resumes them): {', '.join(elsewhere)}")
    return 1 if any(t.status == "failed" for t in state.trials) else 0


def drop_lost(state: State, running: list[Running], free: list[str]) -> None:
    """The trials whose claim another runner holds now (this runner was stopped past its lease): their fits stop,
    and nothing of them is recorded here."""
    for name in state.lost:
        lost = [r for r in running if r.trial.name == name]
        stop(lost)
        for r in lost:
            running.remove(r)
            free.append(r.slot)
            r.release()
        print(f"sweep {state.sweep.name}: {name}: another runner holds it now (this runner was stopped past its "
              f"lease); this runner records nothing of it", file=sys.stderr, flush=True)
    state.lost.clear()


def stop(runs: list[Running], grace_s: float = 30, signalled: bool = False) -> None:
    """SIGTERM to every trial's process group (unless ``signalled`` already), ``grace_s`` for all of them to end (they
    save and record), then SIGKILL to the rest."""
    for r in runs if not signalled else ():
        r.kill()
    deadline = time.monotonic() + grace_s
    for r in runs:
        try:
            r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.kill(signal.SIGKILL)
            r.proc.wait()


received: list[int] = []  # the signals that stopped the loop


def _as_interrupt(signum: int, frame: Any) -> None:
    received.append(signum)
    raise KeyboardInterrupt


def next_trial(sweep: Sweep, state: State, run_cap: int | None, skip: set[str] = frozenset()) -> Trial | None:
    """The next trial to claim (under the state's lock): a pending one (not in ``skip``), or a new bayes draw given
    every result so far, within ``run_cap`` (counted over all runners)."""
    pending = next((t for t in state.trials if t.status == "pending" and t.name not in skip), None)
    if pending is None and state.rule is not None:  # a round ended: seeds where a comparison is not answered yet
        from inception_lab.sweep.resolve import follow_ups

        more, replacing = follow_ups(sweep, state.trials, state.run_dir, state.rule)
        if more:
            start = len(state.trials)
            names = check_trials(sweep, state.directory, list(enumerate(more, start)))
            state.trials += [Trial(name, values) for name, values in zip(names, more)]
            for line in replacing:
                print(f"sweep {sweep.name}: until resolved: {line}", flush=True)
            print(f"sweep {sweep.name}: until resolved: {len(more)} trial(s) added "
                  f"({', '.join(names)})", flush=True)
            return state.trials[start]
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
