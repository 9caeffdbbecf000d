"""A sweep directory's ``state.json``: every trial's values, status, starts and ending, and the runner that holds it,
shared by any number of runners (:class:`State`), and ``--repair`` (:func:`repair`), which puts it back from its
previous good copy or rebuilds it from the run directories."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from inception_lab.run.files import process_start, read_summary, write_atomic
from inception_lab.run.layout import RunDir
from inception_lab.run.lock import NoLocks, PathLock, run_lock
from inception_lab.sweep.claim import LOCK_WAIT_S
from inception_lab.sweep.commands import check_trials
from inception_lab.sweep.spec import Sweep, SweepError, Trial

RESUMABLE = ("running", "interrupted", "killed")  # "killed": its process ended without recording an end (read_summary)
STATUSES = ("pending", "running", "finished", "failed", "stopped", "interrupted")
TRIAL_KEYS = tuple(f.name for f in dataclasses.fields(Trial))
RERUNS = 1  # an --until-resolved sweep runs a failed trial this many times more under its seed; then the seed is lost

LEASE_S = float(os.environ.get("INCEPTION_LAB_SWEEP_LEASE_S", 120))  # a claim's life without renewal
HEARTBEAT_S = LEASE_S / 6  # how often a runner renews the claims of its trials


def take(lock: PathLock, timeout: float) -> bool:
    """``lock.acquire``, with a filesystem that has no POSIX locks as one line (SweepError)."""
    try:
        return lock.acquire(timeout=timeout)
    except NoLocks as error:
        raise SweepError(f"{error.filename}: {error.strerror}") from None


class State:
    """``state.json``, shared by any number of runners (processes, nodes, array tasks) on one sweep directory.

    Every change is a read-modify-write under a POSIX lock on ``state.json`` itself (:class:`PathLock`: there is no
    lock file to delete away), and the file is rewritten atomically as the change's last step, the previous good copy
    kept beside it (``state.json.prev``): a kill at any instant leaves a readable file.

    **Fencing.** A runner claims a trial (``owner`` = host:pid, ``lease_until``, a fresh ``claim`` token) holding
    the lock of the trial's run directory (``run_lock``), and renews its claims every ``HEARTBEAT_S``. The trial's
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
            if (status := entry.get("status", "pending")) not in STATUSES:
                raise SweepError(self.broken(path, f"{where}: status {status!r} is not one of {', '.join(STATUSES)}"))
            for key in ("starts", "failures"):
                if not isinstance(entry.get(key, 0), int) or isinstance(entry.get(key), bool):
                    raise SweepError(self.broken(path, f"{where}: {key} {entry[key]!r} is not a count (an integer)"))
        return data

    def trial_runs(self) -> list[Path]:
        return [d for d in (self.directory / "runs").glob("*")
                if d.is_dir() and (RunDir(d).trial_args.is_file() or RunDir(d).holds_run())]

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

            self.rule = Rule.from_json(data["until_resolved"])
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
        return host != socket.gethostname() or process_start(int(pid)) is not None

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

    @property
    def retries_failed(self) -> bool:
        """Whether ``--retry-failed`` runs failed and stopped trials again: in a plain sweep. An --until-resolved
        sweep's failures are final: each ran once more already (:meth:`rerun`), and a lost seed's cell went on with
        its next seed."""
        return self.rule is None

    def reconcile(self, retry_failed: bool = False, runners_gone: bool = False) -> None:
        """A trial left running or interrupted by a runner that is gone (``runners_gone``: every runner, as after a
        repair) either finished meanwhile (kept) or is pending again (it resumes from its last checkpoint); failed and
        stopped trials run again with ``retry_failed``, an --until-resolved sweep's failed ones once anyway
        (:meth:`rerun`) and never again: a seed failed twice is lost, its cell's next seed already in its place. A
        trial whose fit still holds its run directory stays its runner's."""
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
            elif retry_failed and trial.status in ("failed", "stopped") and self.retries_failed:
                trial.status = "pending"
            else:
                self.rerun(trial)

    def rerun(self, trial: Trial) -> None:
        """An --until-resolved sweep's failed trial runs once more under its seed (pending), decided under the lock as
        every change is, on its ``failures`` (kept in state.json: a restart never runs it a third time). It starts
        afresh, its failed attempt moved aside (``start_trial``): a failed fit's last.ckpt may hold what failed it. A
        plain sweep's failed trial stays failed, and so does one whose fit someone stopped by a signal (its record
        says interrupted) or that failed again: its seed is lost, never counted, and the cell's next seed replaces it
        (``resolve.judge_runs``)."""
        if self.rule is None or trial.status != "failed" or trial.failures > RERUNS:
            return
        if read_summary(self.run_dir(trial)).get("status") == "interrupted":
            return
        trial.failures = max(trial.failures, 1)  # (failed before state.json counted failures)
        trial.status = "pending"
        from inception_lab.sweep.resolve import SEED

        why = (trial.error or "").split("\n", 1)[0][:120]
        print(f"sweep {self.sweep.name}: until resolved: {trial.name} failed ({why}); running it again under seed "
              f"{trial.values.get(SEED)} (failing again, the cell's next seed replaces it)", flush=True)


def repair(state: State, planned: list[dict[str, Any]]) -> None:
    """``--repair``: state.json back from its previous good copy, or rebuilt from the run directories (their
    trial values, summaries and trial logs), trials without one from the sweep's plan; the broken file kept
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
            if d.is_dir() and (m := re.match(r"(\d+)-", d.name)) and RunDir(d).trial_args.is_file()}
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
            starts = sum(line.startswith("# start ") for line in RunDir(run_dir).trial_log.read_text().splitlines())
        try:
            values = json.loads(RunDir(run_dir).trial_args.read_text())
        except (OSError, ValueError):  # cut short by a kill: the trial's values are the plan's
            if index >= len(planned):
                continue
            values = planned[index]
        aside = [d for d in (state.directory / "runs" / ".discarded").glob("*") if d.name.startswith(
            f"{run_dir.name}.start")]  # its attempts that started over (start_trial)
        failed = [status == "failed"] + [read_summary(d).get("status") == "failed" for d in aside]
        trials.append(Trial(run_dir.name, values, status=status, starts=starts, failures=sum(failed),
                            metrics=summary.get("metrics", {}),
                            error=summary.get("error") if status == "failed" else None))
    state.trials = trials
    return state.data()
