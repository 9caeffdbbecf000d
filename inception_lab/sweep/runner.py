"""A sweep's trials: the command line the W&B agent (``Agent._command_run``) would run for each, rendered by wandb's
own ``create_sweep_command`` and ``create_sweep_command_args`` and checked by the CLI before anything runs; the state
on disk (``state.json``); one subprocess per trial in a slot (a GPU or a share of the CPU threads), the loop that fills
the slots and records each ending, and the table at the end."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import itertools
import json
import logging
import os
import re
import secrets
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

from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args

from inception_lab.hostmem import usable_cores
from inception_lab.run.files import flatten, holds_run, read_summary, safe_name, variant_name, write_atomic
from inception_lab.run.lock import CLAIM_ENV, NoLocks, PathLock, run_lock
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
STATUSES = ("pending", "running", "finished", "failed", "stopped", "interrupted")
TRIAL_KEYS = tuple(f.name for f in dataclasses.fields(Trial))

LEASE_S = float(os.environ.get("INCEPTION_LAB_SWEEP_LEASE_S", 120))  # a claim's life without renewal
HEARTBEAT_S = LEASE_S / 6  # how often a runner renews the claims of its trials
LOCK_WAIT_S = float(os.environ.get("INCEPTION_LAB_SWEEP_LOCK_WAIT_S", 300))  # then a one-line error


def take(lock: PathLock, timeout: float) -> bool:
    """``lock.acquire``, with a filesystem that has no POSIX locks as one line (SweepError)."""
    try:
        return lock.acquire(timeout=timeout)
    except NoLocks as error:
        raise SweepError(f"{error.filename}: {error.strerror}") from None


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

    Every change is a read-modify-write under a POSIX lock on ``state.json`` itself (:class:`PathLock`: there is no
    lock file to delete away), and the file is rewritten atomically as the change's last step, the previous good copy
    kept beside it (``state.json.prev``): a kill at any instant leaves a readable file.

    **Fencing.** A runner claims a trial (``owner`` = host:pid, ``lease_until``, a fresh ``claim`` token) holding
    the lock of the trial's run directory (``<run>/.lock``), and renews its claims every ``HEARTBEAT_S``. The trial's
    fit takes that lock for its whole life and, once it holds it, checks that ``state.json`` still gives the trial
    to its token; it writes nothing if not. A claim changes hands only while the new runner holds both locks, so a
    trial whose fit runs can never be reclaimed, however long its runner is stopped: a trial is claimed again only
    when its lease ran out (or its runner's pid is gone on this host) *and* no fit holds its run directory. A runner
    writes a trial only while ``state.json`` still holds its token; one that finds its claim taken stops that
    trial's fit and records nothing of it. On NFS the locks are the server's (NLM, NFSv4); a dead node's locks go
    when the server's lease on them ends.
    """

    def __init__(self, directory: Path, sweep: Sweep, seed: int, read: bool = True) -> None:
        self.directory, self.path, self.sweep = directory, directory / "state.json", sweep
        self.prev = self.path.with_name("state.json.prev")
        self.runner = f"{socket.gethostname()}:{os.getpid()}"
        self.seed, self.trials = seed, []
        self.rule: Any = None  # resolve.Rule of an --until-resolved sweep (kept in state.json)
        self.mine: dict[str, str] = {}  # the trials this runner claimed and runs: their claim tokens
        self.held: dict[str, PathLock] = {}  # run directory locks this runner holds: claims being written, started
        self.starting: set[str] = set()  # held until their fit starts (start_trial)
        self.lost: list[str] = []  # claims of this runner that another runner holds now
        if read:
            self.load(self.parse(self.peek()))

    def peek(self) -> bytes:
        """state.json as it is, read under a shared lock (b"" where there is none)."""
        lock = PathLock(self.path, shared=True)
        try:
            if not take(lock, LOCK_WAIT_S):
                raise SweepError(self.busy())
        except FileNotFoundError:
            return b""
        try:
            return lock.read()
        finally:
            lock.release()

    def busy(self) -> str:
        return (f"{self.path}: another runner has held its lock for {LOCK_WAIT_S:.0f} s (a runner stopped while "
                "changing it, or a stuck filesystem); try again once it goes on")

    def parse(self, raw: bytes, path: Path | None = None) -> dict[str, Any]:
        """state.json checked: anything but a sweep state this version wrote is one line naming the file and the
        repair."""
        path = path or self.path
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise SweepError(self.broken(path, "not UTF-8 text (a binary file)")) from None
        if not text.strip():
            if (runs := self.trial_runs()) and path == self.path:
                raise SweepError(self.broken(path, f"{'empty' if self.path.exists() else 'missing'}, but "
                                                   f"{self.directory / 'runs'} holds {len(runs)} trial run(s)"))
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SweepError(self.broken(path, f"not valid JSON ({error.msg} at line {error.lineno}, column "
                                               f"{error.colno})")) from None
        if not isinstance(data, dict) or not isinstance(data.get("trials", []), list):
            raise SweepError(self.broken(path, "not a sweep state (a JSON object with a list of trials)"))
        for i, entry in enumerate(data.get("trials", [])):
            where = f"trials[{i}]"
            if not isinstance(entry, dict):
                raise SweepError(self.broken(path, f"{where} is not an object"))
            if unknown := sorted(set(entry) - set(TRIAL_KEYS)):
                raise SweepError(self.broken(path, f"{where} has key {unknown[0]!r}, which this version of "
                                                   f"inception_lab does not write (it writes {', '.join(TRIAL_KEYS)})"))
            if not isinstance(entry.get("name"), str) or not isinstance(entry.get("values"), dict):
                raise SweepError(self.broken(path, f"{where} needs a name (text) and values (an object)"))
            if entry.get("status", "pending") not in STATUSES or not isinstance(entry.get("starts", 0), int):
                raise SweepError(self.broken(path, f"{where}: status {entry.get('status')!r} / starts "
                                                   f"{entry.get('starts')!r}; a status is one of "
                                                   f"{', '.join(STATUSES)}"))
        return data

    def trial_runs(self) -> list[Path]:
        return [d for d in (self.directory / "runs").glob("*")
                if d.is_dir() and ((d / "args.json").is_file() or holds_run(d))]

    def broken(self, path: Path, why: str) -> str:
        seed = f" --seed {self.seed}" if self.seed else ""  # the draws of a random sweep depend on it
        command = f"python -m inception_lab sweep {self.sweep.path} --out {self.directory}{seed} --repair"
        source = (f"the previous good copy, {self.prev}" if path != self.prev and self.prev_good()
                  else f"the run directories under {self.directory / 'runs'}")
        return f"{path}: {why}; `{command}` rebuilds it from {source}"

    def prev_good(self) -> bool:
        try:
            return bool(self.parse(self.prev.read_bytes(), self.prev))
        except (OSError, SweepError):
            return False

    def load(self, data: dict[str, Any]) -> None:
        """Takes state.json's trials, keeping this runner's own as it has them (the same objects, updated in place);
        a trial of this runner's whose token is not its own any more is another runner's now (``lost``)."""
        self.seed = data.get("seed", self.seed)
        if data.get("until_resolved") is not None and self.rule is None:
            from inception_lab.sweep.resolve import Rule

            self.rule = Rule(**data["until_resolved"])
        known = {t.name: t for t in self.trials}
        trials = []
        for entry in data.get("trials", []):
            fresh, trial = Trial(**entry), known.get(entry["name"])
            if trial is None:
                trial = fresh
            elif trial.name not in self.mine or fresh.claim != self.mine[trial.name]:
                if trial.name in self.mine:
                    del self.mine[trial.name]
                    self.lost.append(trial.name)
                trial.__dict__.update(fresh.__dict__)
            trials.append(trial)
        names = {t.name for t in trials}
        self.trials = trials + [t for t in self.trials if t.name not in names]

    @contextlib.contextmanager
    def locked(self) -> Any:
        """Read, change, write, with no other runner in between."""
        self.directory.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() and not self.prev.exists() and not self.trial_runs()  # a new sweep
        lock = PathLock(self.path, create=new)
        try:
            if not take(lock, LOCK_WAIT_S):
                raise SweepError(self.busy())
        except FileNotFoundError:  # deleted: never a new state over the runs of this one
            raise SweepError(self.broken(self.path, "missing")) from None
        try:
            raw = lock.read()
            self.load(self.parse(raw))
            yield self
            self.save(raw)
        finally:
            lock.release()
            for name in [n for n in self.held if n not in self.starting]:
                self.held.pop(name).release()

    def data(self) -> dict[str, Any]:
        return {"sweep": self.sweep.name, "sweep_file": str(self.sweep.path), "method": self.sweep.method,
                "metric": {"name": self.sweep.metric, "goal": self.sweep.goal}, "seed": self.seed,
                **({"until_resolved": self.rule.as_json()} if self.rule is not None else {}),
                "trials": [t.__dict__ for t in self.trials]}

    def save(self, previous: bytes = b"") -> None:
        """The previous good state beside it, then state.json replaced: the last step under the lock (a runner
        waiting on the replaced file locks the new one: PathLock)."""
        text = json.dumps(self.data(), indent=2) + "\n"
        if previous.strip() and previous != text.encode():
            write_atomic(self.prev, previous)
        write_atomic(self.path, text)

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

    def hold(self, trial: Trial, timeout: float = 0) -> bool:
        """The lock of a trial's run directory, until the state is written (and its fit starts, for a claim); False
        where a fit holds it."""
        if trial.name not in self.held:
            run_dir = self.run_dir(trial)
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = run_lock(run_dir)
            if not take(lock, timeout):
                return False
            self.held[trial.name] = lock
        return True

    def claim(self, trial: Trial) -> bool:
        if not self.hold(trial):
            return False  # a fit holds its run directory (its runner is stopped, or someone runs it by hand)
        self.starting.add(trial.name)
        trial.owner, trial.lease_until = self.runner, time.time() + LEASE_S
        trial.claim = self.mine[trial.name] = secrets.token_hex(8)
        return True

    def release(self, trial: Trial) -> None:
        trial.owner = trial.lease_until = trial.claim = None
        self.mine.pop(trial.name, None)

    def renew(self) -> None:
        for trial in self.trials:
            if trial.name in self.mine:
                trial.lease_until = time.time() + LEASE_S

    def reconcile(self, retry_failed: bool = False, runners_gone: bool = False) -> None:
        """A trial left running or interrupted by a runner that is gone (``runners_gone``: every runner, as after a
        repair) either finished meanwhile (kept) or is pending again (it resumes from its last.ckpt); failed and
        stopped trials run again with ``retry_failed``. A trial whose fit still holds its run directory stays its
        runner's."""
        for trial in self.trials:
            if trial.status in RESUMABLE and (runners_gone or not self.alive(trial)):
                if not self.hold(trial):
                    continue  # its fit runs on: its runner is stopped or slow, not gone
                summary = read_summary(self.run_dir(trial))
                if summary.get("status") == "running" and (summary.get("attempts") or [{}])[-1].get("pid"):
                    continue  # its record says its fit lives (pid, heartbeat): its lock file was deleted, or unshared

                if summary.get("status") == "finished":
                    trial.status, trial.metrics = "finished", summary.get("metrics", {})
                else:
                    trial.status = "pending"
                trial.owner = trial.lease_until = trial.claim = None
            elif retry_failed and trial.status in ("failed", "stopped"):
                trial.status = "pending"


def repair(state: State, planned: list[dict[str, Any]]) -> None:
    """``--repair``: state.json back from its previous good copy, or rebuilt from the run directories (their
    ``args.json``, summaries and ``trial.log``), trials without one from the sweep's plan; the broken file kept
    beside it as ``state.json.broken``."""
    path = state.path

    def sound(raw: bytes | None) -> bool:
        try:
            if raw is not None and state.parse(raw):
                return True
        except SweepError:
            return False
        return not (raw or b"").strip() and not state.prev.exists() and not state.trial_runs()  # a new sweep

    if sound(path.read_bytes() if path.exists() else None):
        print(f"sweep {state.sweep.name}: {path} is sound: nothing to repair", flush=True)
        return
    existed = path.exists()
    lock = PathLock(path)  # (created where it is missing: the repair writes it)
    if not take(lock, LOCK_WAIT_S):
        raise SweepError(state.busy())
    try:
        broken = lock.read()  # through the lock's descriptor: closing another one of this file would drop the lock
        if existed and sound(broken):  # another --repair was first
            print(f"sweep {state.sweep.name}: {path} is sound: nothing to repair", flush=True)
            return
        if state.prev_good():
            state.load(state.parse(state.prev.read_bytes(), state.prev))
            source = f"its previous good copy {state.prev}"
            state.reconcile(runners_gone=True)  # what happened since that copy: as the runs say
            for held in state.held.values():
                held.release()
            state.held.clear()
            data = state.data()
        else:
            data, source = rebuilt(state, planned), f"the run directories under {state.directory / 'runs'}"
        kept = path.with_name("state.json.broken")
        if existed:
            write_atomic(kept, broken)
        write_atomic(path, json.dumps(data, indent=2) + "\n")
    finally:
        lock.release()
    print(f"sweep {state.sweep.name}: repaired {path} from {source} ({len(data.get('trials', []))} trials)"
          f"{f'; the broken file is kept as {kept}' if existed else ''}", flush=True)


def rebuilt(state: State, planned: list[dict[str, Any]]) -> dict[str, Any]:
    runs = {int(m.group(1)): d for d in (state.directory / "runs").glob("*")
            if d.is_dir() and (m := re.match(r"(\d+)-", d.name)) and (d / "args.json").is_file()}
    trials: list[Trial] = []
    for index in range(max([*runs, len(planned) - 1], default=-1) + 1):
        run_dir = runs.get(index)
        if run_dir is None:
            if index >= len(planned):
                continue  # a bayes draw that never started
            trials.append(Trial(check_trials(state.sweep, state.directory, [(index, planned[index])])[0],
                                planned[index]))
            continue
        summary = read_summary(run_dir)
        status = {"finished": "finished", "failed": "failed"}.get(summary.get("status"), "interrupted")
        starts = 1
        with contextlib.suppress(OSError):
            starts = sum(line.startswith("# start ") for line in (run_dir / "trial.log").read_text().splitlines())
        try:
            values = json.loads((run_dir / "args.json").read_text())
        except (OSError, ValueError):  # cut short by a kill: the trial's values are the plan's
            if index >= len(planned):
                continue
            values = planned[index]
        trials.append(Trial(run_dir.name, values, status=status,
                            starts=starts, metrics=summary.get("metrics", {}),
                            error=summary.get("error") if status == "failed" else None))
    state.trials = trials
    return state.data()


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
    """Starts a claimed trial's fit; the runner holds its run directory's lock until the fit is started (the fit then
    takes it: :func:`inception_lab.run.resume.hold_run`)."""
    run_dir = state.run_dir(trial)
    resume = read_summary(run_dir).get("status") in RESUMABLE and any((run_dir / "checkpoints").glob("*.ckpt"))
    if not resume and holds_run(run_dir):  # one run, one directory: an attempt that starts over moves the old aside
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
    write_args_json(run_dir / "args.json", trial.values)
    command = [*trial_command(sweep, run_dir, trial.values), *trial_args]
    if resume:
        command += ["--ckpt_path", "last"]  # interrupted or killed: resume from its last checkpoint
    env = {**env, CLAIM_ENV: json.dumps({"state": str(state.path.absolute()), "trial": trial.name,
                                         "claim": trial.claim})}
    # the files are closed here once the trial has its own copies of them
    with open(run_dir / "trial.log", "a") as out, open(run_dir / "trial.stderr.log", "a") as err:
        if out.tell() and not (run_dir / "trial.log").read_bytes().endswith(b"\n"):
            out.write("\n")  # an interrupted attempt's last progress-bar line
        print(f"# start {trial.starts} {time.strftime('%Y-%m-%d %H:%M:%S')} slot={slot}: "
              f"{subprocess.list2cmdline(command)}", file=out, flush=True)
        state.starting.discard(trial.name)
        lock = state.held.pop(trial.name)
        if cli_args(command) is not None:
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
    base_env = {k: v for k, v in os.environ.items()  # a trial is not the array task's SLURM job step: its DDP
                if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", CLAIM_ENV) and not k.startswith("SLURM_")}
    print(f"sweep {sweep.name}: {len(state.trials)} trials, {sum(t.status != 'pending' for t in state.trials)} done "
          f"or under way; slots {', '.join(slots)}; runner {state.runner}; {state.directory}", flush=True)
    renewed = time.monotonic()
    received.clear()
    previous = {s: signal.signal(s, _as_interrupt) for s in (signal.SIGTERM, signal.SIGUSR1)}
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
                time.sleep(2)  # until resolved: another runner's trials end a round this runner may follow up
                continue
            time.sleep(0.5)
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
                drop_lost(state, running, free)
    except KeyboardInterrupt:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):  # a second signal (the requeue's) changes
            signal.signal(signum, signal.SIG_IGN)  # nothing now: the trials are being stopped and recorded
        stop(running)
        with state.locked():
            for r in running:
                if r.trial.name in state.mine:
                    r.trial.status = "interrupted"  # not failed: the next start (in any runner) resumes it
                    r.trial.wall_s = round(time.monotonic() - r.started, 1)
                    state.release(r.trial)
        if received and received[-1] == signal.SIGUSR1:  # SLURM's warning before the time limit
            again = ("its trials resume when SLURM starts this task again" if requeue_array_task() else
                     "run the same command again to carry on")
            print(f"sweep {sweep.name}: stopped before the time limit; {again}", file=sys.stderr)
            return 143
        how = {signal.SIGTERM: "stopped (SIGTERM: a cancel)"}.get(received[-1] if received else None, "interrupted")
        print(f"sweep {sweep.name}: {how}; run the same command again to carry on", file=sys.stderr)
        return 143 if received else 130
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


def stop(runs: list[Running], grace_s: float = 30) -> None:
    """SIGTERM to every trial's process group, ``grace_s`` for all of them to end (they save and record), then
    SIGKILL to the rest."""
    for r in runs:
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


def requeue_array_task() -> bool:
    """In a SLURM array task warned before its time limit (``--signal=B:USR1@120``): requeue the task, whose runner
    then resumes the trials this one interrupted (any other runner on the directory may claim them first). A plain
    ``scancel`` (SIGTERM) cancels: nothing is requeued."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if not (array and task):
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", f"{array}_{task}"], capture_output=True, text=True)
    except OSError:
        return False
    if done.returncode:
        print(f"sweep: could not requeue SLURM task {array}_{task}: {done.stderr.strip()}", file=sys.stderr)
    return done.returncode == 0


def next_trial(sweep: Sweep, state: State, run_cap: int | None, skip: set[str] = frozenset()) -> Trial | None:
    """The next trial to claim (under the state's lock): a pending one (not in ``skip``), or a new bayes draw given
    every result so far, within ``run_cap`` (counted over all runners)."""
    pending = next((t for t in state.trials if t.status == "pending" and t.name not in skip), None)
    if pending is None and state.rule is not None:  # a round ended: seeds where a comparison is not answered yet
        from inception_lab.sweep.resolve import follow_ups

        more = follow_ups(sweep, state.trials, state.run_dir, state.rule)
        if more:
            start = len(state.trials)
            names = check_trials(sweep, state.directory, list(enumerate(more, start)))
            state.trials += [Trial(name, values) for name, values in zip(names, more)]
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
