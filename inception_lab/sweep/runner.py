"""The runner: one subprocess per trial in a slot (a GPU or a share of the CPU threads), the loop that fills the
slots, records each ending in the state and prints the table at the end."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from inception_lab.record import read_summary
from inception_lab.sweep import search
from inception_lab.sweep.command import check_trials, describe, trial_command, write_args_json
from inception_lab.sweep.spec import Sweep, SweepError
from inception_lab.sweep.state import State, Trial

ERROR_TAIL_LINES = 20
POLL_S = 0.5


def slots_for(parallel: int, devices: list[str] | None) -> dict[str, dict[str, str]]:
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


def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGKILL this trial when the runner dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl took effect
        os._exit(1)


def start_trial(sweep: Sweep, state: State, trial: Trial, slot: str, env: dict[str, str]) -> Running:
    run_dir = state.run_dir(trial)
    write_args_json(run_dir / "args.json", trial.values)
    command = trial_command(sweep, run_dir, trial.values)
    if read_summary(run_dir).get("status") == "running" and (run_dir / "checkpoints" / "last.ckpt").is_file():
        command += ["--ckpt_path", "last"]  # interrupted: resume from its last checkpoint
    trial.starts += 1
    trial.status, trial.error, trial.returncode = "running", None, None
    # the files are closed here once the trial has its own copies of them
    with open(run_dir / "trial.log", "a") as out, open(run_dir / "trial.stderr.log", "a") as err:
        out.write(f"# start {trial.starts} {time.strftime('%Y-%m-%d %H:%M:%S')} slot={slot}: "
                  f"{subprocess.list2cmdline(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))
    return Running(trial, proc, slot, time.monotonic())


def finish_trial(state: State, running: Running, returncode: int) -> None:
    trial, metric = running.trial, state.sweep.metric
    run_dir = state.run_dir(trial)
    summary = read_summary(run_dir)
    trial.returncode = returncode
    trial.wall_s = round(time.monotonic() - running.started, 1)
    trial.metrics = summary.get("metrics", {})
    if trial.status == "stopped":
        trial.error = f"stopped by hyperband early termination; {metric}={trial.metrics.get(metric)}"
    elif returncode == 0 and summary.get("status") == "finished":
        trial.status = "finished"
    else:
        trial.status = "failed"
        reason = summary.get("error") or f"exit code {returncode}"
        if returncode == 0:
            reason = f"exited 0 but its summary.json says status={summary.get('status')!r}"
        trial.error = f"{reason}\n{error_tail(run_dir / 'trial.stderr.log')}".strip()


def error_tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    """The last lines of a log, progress-bar redraws (``\\r``) reduced to their final state."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.splitlines()]
    return "\n".join([ln for ln in kept if ln.strip()][-lines:])


def loop(sweep: Sweep, state: State, slots: dict[str, dict[str, str]], run_cap: int | None) -> int:
    running: list[Running] = []
    free = list(slots)
    base_env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID")}
    done = sum(t.status != "pending" for t in state.trials)
    print(f"sweep {sweep.name}: {len(state.trials)} trials, {done} done before; slots {', '.join(slots)}; "
          f"{state.directory}", flush=True)
    try:
        while True:
            while free and (trial := next_trial(sweep, state, run_cap)) is not None:
                slot = free.pop(0)
                running.append(start_trial(sweep, state, trial, slot, {**base_env, **slots[slot]}))
                state.save()
                print(f"[{_index(state, trial)}] start {trial.name} ({slot}, start {trial.starts})", flush=True)
            if not running:
                break
            time.sleep(POLL_S)
            if sweep.config.get("early_terminate"):
                early_terminate(sweep, state, running)
            for r in list(running):
                code = r.proc.poll()
                if code is None:
                    continue
                finish_trial(state, r, code)
                running.remove(r)
                free.append(r.slot)
                state.save()
                print(f"[{_index(state, r.trial)}] {r.trial.status} {r.trial.name} {_result(r.trial, sweep)}",
                      flush=True)
    except KeyboardInterrupt:
        for r in running:  # their own sessions: Ctrl-C did not reach them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
        for r in running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
        print(f"sweep {sweep.name}: interrupted; run the same command again to carry on", file=sys.stderr)
        return 130
    print(table(sweep, state))
    return 1 if any(t.status == "failed" for t in state.trials) else 0


def next_trial(sweep: Sweep, state: State, run_cap: int | None) -> Trial | None:
    pending = next((t for t in state.trials if t.status == "pending"), None)
    if pending is not None or sweep.method != "bayes" or len(state.trials) >= (run_cap or 0):
        return pending
    values = search.bayes_value(sweep, [(t, state.run_dir(t)) for t in state.trials], state.seed)
    if values is None:
        return None
    trial = Trial(check_trials(sweep, state.directory, [(len(state.trials), values)])[0], values)
    state.trials.append(trial)
    return trial


def early_terminate(sweep: Sweep, state: State, running: list[Running]) -> None:
    """Hyperband through W&B's engine: the running trials it names are stopped (SIGTERM to their group)."""
    stops = search.hyperband_stops(sweep, [(t, state.run_dir(t)) for t in state.trials])
    for r in running:
        if r.trial.name in stops and r.trial.status == "running":
            r.trial.status = "stopped"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)


def _index(state: State, trial: Trial) -> str:
    return f"{state.trials.index(trial) + 1}/{len(state.trials)}"


def _result(trial: Trial, sweep: Sweep) -> str:
    if trial.status == "finished":
        value = trial.metrics.get(sweep.metric)
        return f"{sweep.metric}={value:.4f} ({trial.wall_s} s)" if value is not None else f"({trial.wall_s} s)"
    return (trial.error or "").splitlines()[0] if trial.error else ""


def table(sweep: Sweep, state: State) -> str:
    """Per trial, then per cell (the values other than the seed) as mean ± std over seeds."""
    lines = [f"sweep {sweep.name}: {sweep.metric} ({sweep.goal})", f"{'trial':<60} {'status':<9} {sweep.metric}"]
    groups: dict[str, list[float]] = {}
    for t in state.trials:
        value = t.metrics.get(sweep.metric) if t.status == "finished" else None
        shown = f"{value:.4f}" if isinstance(value, float) else (t.error or "").splitlines()[0][:60] if t.error else ""
        lines.append(f"{t.name:<60} {t.status:<9} {shown}")
        cell = describe({k: v for k, v in t.values.items() if k != "seed_everything"}) or "(all)"
        if isinstance(value, float):
            groups.setdefault(cell, []).append(value)
    if groups and any(len(v) > 1 for v in groups.values()):
        lines.append(f"per cell, mean ± std over seeds ({sweep.metric}):")
        for cell, values in groups.items():
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"  {statistics.fmean(values):.4f} ± {std:.4f} (n={len(values)})  {cell}")
    lines += [f"failed {t.name}: {t.error}" for t in state.trials if t.status == "failed"]
    return "\n".join(lines)
