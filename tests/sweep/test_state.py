"""sweep/state.py: a sweep directory's state.json under its lock: claims (a fit whose claim was taken writes
nothing), a lock that cannot be deleted away, a broken or lost state.json in one line and its repair."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from inception_lab.__main__ import main as lab_main
from inception_lab.sweep import runner, spec
from inception_lab.sweep import state as sweep_state
from inception_lab.sweep.claim import CLAIM_ENV
from inception_lab.sweep.state import State
from tests.conftest import REPO, SHORT, one_error_line, read_state, state_trials, write_run
from tests.sweep.conftest import executions, fake_sweep


def _fake_state(tmp_path: Path) -> tuple[spec.Sweep, Path]:
    path, out = fake_sweep(tmp_path, sleep=0.0), tmp_path / "out"
    sweep = spec.load_sweep(path)
    state = State(out, sweep, 0)
    with state.locked():
        state.trials = [spec.Trial("000-a=1", {"a": 1}), spec.Trial("001-a=2", {"a": 2})]
    return sweep, out


def test_a_claim_taken_while_its_runner_slept_is_never_written_back(tmp_path: Path, monkeypatch) -> None:
    """Runner A claims a trial, then sleeps past its lease (its fit has ended meanwhile); runner B reclaims it and
    runs it. A, awake, finds its token gone: it drops the trial, stops its fit, and writes nothing of it over B's
    claim (it used to write its old claim back)."""
    sweep, out = _fake_state(tmp_path)
    a, b = State(out, sweep, 0), State(out, sweep, 0)
    b.runner = "elsewhere:1"  # another host: only the lease says whether A is alive
    with a.locked():
        trial = a.trials[0]
        assert a.claim(trial)
        trial.status, trial.starts = "running", 1
    a.held.pop(trial.name).release()
    a.starting.clear()  # its fit started and ended: its run directory is free
    data = read_state(out)
    data["trials"][0]["lease_until"] = time.time() - 1  # A slept past its lease
    (out / "state.json").write_text(json.dumps(data))
    with b.locked():
        b.reconcile()
        taken = runner.next_trial(sweep, b, None)
        assert taken.name == trial.name and b.claim(taken)
        taken.status, taken.starts = "running", 2
    b.held.clear()
    with a.locked():  # A wakes: renews, and would record its trial
        a.renew()
    assert a.lost == [trial.name] and trial.name not in a.mine
    fit = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    running = [runner.Running(trial, fit, "cpu0", time.monotonic())]
    free: list[str] = []
    runner.drop_lost(a, running, free)
    assert fit.wait(timeout=120) == -signal.SIGTERM and running == [] and free == ["cpu0"]
    on_disk = state_trials(out)[0]
    assert (on_disk["owner"], on_disk["claim"], on_disk["starts"]) == ("elsewhere:1", b.mine[trial.name], 2)


def test_a_fit_whose_claim_was_taken_writes_nothing(tmp_path: Path, cli: Any, monkeypatch) -> None:
    """A trial's fit started by a runner that lost its claim meanwhile checks the claim once it holds its run
    directory: one line, exit 2, nothing written; and a second fit into a run directory a fit holds is refused."""
    state, run_dir = tmp_path / "state.json", tmp_path / "run"
    state.write_text(json.dumps({"trials": [{"name": "000", "values": {}, "claim": "theirs"}]}))
    fit = ["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *SHORT, "--run_dir", str(run_dir)]
    monkeypatch.setenv(CLAIM_ENV, json.dumps({"state": str(state), "trial": "000", "claim": "mine"}))
    code, _, err = cli(fit)
    assert one_error_line(code, err, "fit") == (f"inception_lab fit: error: sweep trial 000: another runner holds it "
                                                f"now ({state}); this fit stops before writing anything")
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    monkeypatch.delenv(CLAIM_ENV)
    hold = ("import os, sys, time; from inception_lab.run.lock import run_lock; lock = run_lock(sys.argv[1]); "
            "assert lock.acquire(0); os.ftruncate(lock.fd, 0); "
            "os.write(lock.fd, f'pid {os.getpid()} on here'.encode()); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = cli(fit)
        assert one_error_line(code, err, "fit") == (
            f"inception_lab fit: error: --run_dir {run_dir}: a fit is running in it (pid {holder.pid} on here); wait "
            "for it to end, or start a new run in a new --run_dir")
    finally:
        holder.kill()
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


_HOLD_STATE = ("import sys, time; from pathlib import Path; from inception_lab.sweep import spec; "
               "from inception_lab.sweep.state import State; "
               "s = State(Path(sys.argv[2]), spec.load_sweep(Path(sys.argv[1])), 0)\n"
               "with s.locked():\n    print('held', flush=True); time.sleep(float(sys.argv[3]))\n"
               "    Path(sys.argv[4]).touch()")


def test_the_state_lock_cannot_be_deleted_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner A holds the state's lock; every lock file in the sweep directory is deleted (people delete "stale"
    lock files), and state.json is replaced as a rewrite does: runner B still waits for A. (With filelock's
    state.json.lock, deleting it let B in at once.)"""
    sweep, out = _fake_state(tmp_path)
    (out / "state.json.lock").write_text("")  # a lock file from an older version: nothing holds it
    done = tmp_path / "a-is-done"  # A touches it just before it lets go of the lock
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_STATE, str(sweep.path), str(out), "4", str(done)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    for lock in out.rglob("*.lock"):
        lock.unlink()
    monkeypatch.setattr(sweep_state, "LOCK_WAIT_S", 1.0)
    b = State(out, sweep, 0, read=False)
    started = time.monotonic()
    with pytest.raises(spec.SweepError, match="another runner has held its lock for 1 s"):
        with b.locked():
            pass
    assert time.monotonic() - started >= 0.9
    monkeypatch.setattr(sweep_state, "LOCK_WAIT_S", 30.0)
    with b.locked():  # once A is done
        assert done.exists() and [t.name for t in b.trials] == ["000-a=1", "001-a=2"]
    assert holder.wait(timeout=120) == 0


def test_until_resolved_reruns_a_failed_trial_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Under the lock (reconcile), an --until-resolved sweep's failed trial is pending again once: not after a second
    failure (``failures`` in state.json), not one whose fit someone stopped by a signal (its record says interrupted),
    not in a plain sweep; one failed before failures were counted gets its one rerun."""
    from inception_lab.sweep.resolve import Rule

    sweep, out = _fake_state(tmp_path)
    trials = [spec.Trial(f"00{i}-a={i + 1}", {"a": i + 1, "seed_everything": i}, status="failed", failures=n,
                         error="CUDA out of memory\nTraceback ...") for i, n in enumerate([1, 2, 1, 0])]
    write_run(out / "runs" / trials[2].name, status="interrupted", error="interrupted by SIGTERM")
    plain = State(out, sweep, 0)
    with plain.locked():
        plain.trials = trials
        plain.reconcile()
    assert [t["status"] for t in state_trials(out)] == ["failed"] * 4 and not capsys.readouterr().out
    resolving = State(out, sweep, 0)
    with resolving.locked():
        resolving.rule = Rule()
        resolving.reconcile()
    assert [(t["status"], t["failures"]) for t in state_trials(out)] == [
        ("pending", 1), ("failed", 2), ("failed", 1), ("pending", 1)]
    assert capsys.readouterr().out.splitlines() == [
        f"sweep many: until resolved: {t.name} failed (CUDA out of memory); running it again under seed {i} (failing "
        "again, the cell's next seed replaces it)" for i, t in ((0, trials[0]), (3, trials[3]))]


BROKEN_STATES = {
    "truncated": (b'{"seed": 0, "trials": [{"name": "000-a=1", "val', "not valid JSON"),
    "binary": (b"\x80\x02}q\x00(X\x04\x00\x00\x00seedq", "not UTF-8 text (a binary file)"),
    "list": (b"[1, 2]", "not a sweep state (a JSON object with a list of trials)"),
    "trials-not-a-list": (b'{"trials": {"000": 1}}', "not a sweep state"),
    "entry-not-an-object": (b'{"trials": ["000-a=1"]}', "trials[0] is not an object"),
    "unknown-key": (b'{"trials": [{"name": "000-a=1", "values": {"a": 1}, "lease_token": 3}]}',
                    "trials[0] has key 'lease_token', which this version of inception_lab does not write"),
    "bad-status": (b'{"trials": [{"name": "000-a=1", "values": {"a": 1}, "status": "done"}]}',
                   "trials[0]: status 'done' is not one of pending, running, finished, failed, stopped, interrupted"),
    "bad-failures": (b'{"trials": [{"name": "000-a=1", "values": {"a": 1}, "failures": "2"}]}',
                     "trials[0]: failures '2' is not a count (an integer)"),
    "empty": (b"", "empty, but"),
}


@pytest.mark.parametrize("shape", BROKEN_STATES)
def test_a_broken_state_json_is_one_line_and_repair_brings_it_back(shape: str, tmp_path: Path, capsys) -> None:
    """A finished sweep, then its state.json broken: one line naming it, the cause and the repair command, exit 2,
    nothing run; ``--repair`` puts its previous good copy back (every trial finished, none run again)."""
    path, out = fake_sweep(tmp_path, sleep=0.0, run_cap=2), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    good = read_state(out)
    raw, why = BROKEN_STATES[shape]
    (out / "state.json").write_bytes(raw)
    capsys.readouterr()
    code = lab_main(["sweep", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    line = one_error_line(code, err, "sweep")
    assert line == err.strip() and line.startswith(f"inception_lab sweep: error: {out / 'state.json'}: {why}"), err
    assert line.endswith(f"`python -m inception_lab sweep {path} --out {out} --repair` rebuilds it from the "
                           f"previous good copy, {out / 'state.json.prev'}")
    assert lab_main(["sweep", str(path), "--out", str(out), "--repair"]) == 0
    assert f"repaired {out / 'state.json'} from its previous good copy" in capsys.readouterr().out
    assert [(t["name"], t["status"], t["starts"]) for t in state_trials(out)] == [
        (t["name"], "finished", 1) for t in good["trials"]]
    assert (out / "state.json.broken").read_bytes() == raw
    assert all(len(runs) == 1 for runs in executions(out).values())


def test_repair_rebuilds_a_lost_state_from_the_run_directories(tmp_path: Path, capsys) -> None:
    """state.json and its previous copy both gone (after two trials ran, one failed): ``--repair`` rebuilds the state
    from the runs' args.json, summaries and trial.log; the finished trial is not run again."""
    path, out = fake_sweep(tmp_path, sleep=0.0, run_cap=2), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    write_run(out / "runs" / "001-a=2", status="failed", error="CUDA out of memory")
    (out / "state.json").unlink()
    (out / "state.json.prev").unlink()
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"rebuilds it from the run directories under {out / 'runs'}")
    assert lab_main(["sweep", str(path), "--out", str(out), "--repair"]) == 1  # the failed trial stays failed
    assert f"repaired {out / 'state.json'} from the run directories" in capsys.readouterr().out
    trials = state_trials(out)
    assert [(t["name"], t["status"], t["starts"]) for t in trials] == [("000-a=1", "finished", 1),
                                                                       ("001-a=2", "failed", 1)]
    assert trials[0]["metrics"] == {"val/acc_best": 1.0} and trials[1]["error"] == "CUDA out of memory"
    assert {name: len(runs) for name, runs in executions(out).items()} == {"000-a=1": 1, "001-a=2": 1}


def test_a_deleted_state_json_is_repaired_from_its_copy(tmp_path: Path, capsys) -> None:
    """state.json deleted with runs/ (to start over) but state.json.prev left: one line, and --repair brings the copy
    back rather than saying there is nothing to repair."""
    path, out = fake_sweep(tmp_path, sleep=0.0, run_cap=2), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    (out / "state.json").unlink()
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    assert f"{out / 'state.json'}: missing" in capsys.readouterr().err
    assert lab_main(["sweep", str(path), "--out", str(out), "--repair"]) == 0
    assert f"repaired {out / 'state.json'} from its previous good copy" in capsys.readouterr().out
    assert [t["status"] for t in state_trials(out)] == ["finished"] * 2


def test_a_filesystem_without_locks_is_one_line(tmp_path: Path, cli: Any, monkeypatch, capsys) -> None:
    """fcntl locks refused (ENOLCK: an NFS mount with no lock daemon, some FUSE mounts): a fit and a sweep end in one
    line naming the file, exit 2, not a traceback."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *SHORT, "--run_dir",
                        str(run_dir)])
    assert one_error_line(code, err, "fit").startswith(
        f"inception_lab fit: error: --run_dir {run_dir}: No locks available: its filesystem offers no POSIX (fcntl) "
        "locks")
    path, out = fake_sweep(tmp_path, sleep=0.0), tmp_path / "out"
    capsys.readouterr()
    code = lab_main(["sweep", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    line = one_error_line(code, err, "sweep")
    assert line == err.strip() and line.startswith(f"inception_lab sweep: error: {out / 'state.json'}: No locks "), err
