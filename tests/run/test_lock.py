"""``run/lock.py``: a lock has one holder across processes, a dead holder's lock goes with it, and a waiter locks the
file now at the path, never one that was replaced while it waited. (A fit's hold on its run, the lock and the
record together: tests/run/test_resume.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from inception_lab.run.layout import RunDir
from inception_lab.run.lock import PathLock, run_lock

_HOLD = ("import sys, time; from inception_lab.run.lock import PathLock; lock = PathLock(sys.argv[1]); "
         "assert lock.acquire(0); print('held', flush=True); time.sleep(600)")


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_has_one_holder_and_goes_with_a_dead_one(tmp_path: Path) -> None:
    assert run_lock(tmp_path).path == RunDir(tmp_path).lock
    path = tmp_path / ".lock"
    holder = _holder(path)
    try:
        assert not PathLock(path).acquire(0) and not PathLock(path, shared=True).acquire(0.1)
    finally:
        holder.kill()
        holder.wait()
    lock = PathLock(path)  # the kernel dropped the killed holder's lock: nothing to clean up
    assert lock.acquire(0) and lock.acquire(0)  # held: a second acquire says so
    lock.release()
    shared = PathLock(path, shared=True)
    assert lock.fd is None and shared.acquire(0)
    shared.release()


def test_a_waiter_locks_the_file_now_at_the_path(tmp_path: Path) -> None:
    """The file replaced while a waiter waits (an atomic rename over it): once its holder lets go, the waiter holds
    the file that is at the path now, not the one that was replaced."""
    path = tmp_path / "state.json"
    path.write_text("old")
    holder = _holder(path)
    waiter, got = PathLock(path), []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=600)))
    thread.start()
    try:
        (tmp_path / "new").write_text("new")
        os.replace(tmp_path / "new", path)
    finally:
        holder.kill()  # the replaced file's lock goes; the new file was never locked
        holder.wait()
    thread.join(60)
    assert got == [True] and os.fstat(waiter.fd).st_ino == path.stat().st_ino and waiter.read() == b"new"
    waiter.release()
