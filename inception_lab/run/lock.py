"""Locks that two processes on two nodes agree on: POSIX record locks (``fcntl``), the locks NFS implements (NLM on
v3, in the protocol on v4) and local filesystems all have. The kernel drops a dead process's locks, so a kill at any
instant leaves nothing to clean up; on NFS a dead client's locks go when the server's lease on them ends (v4) or the
client boots again (v3). An NFS mount with ``nolock`` or ``local_lock`` keeps locks on each node: nothing is shared.

A lock is taken on a path, then the path is checked to still name the locked file: a file deleted or replaced
meanwhile (``state.json`` is rewritten by an atomic rename; people delete "stale" lock files) is let go and the file
now at the path is locked instead: a waiter never keeps a lock on a file that is gone. (A file deleted *while* held
is another matter: a newcomer creates and locks a new one. ``state.json`` is never created over a sweep's runs, and
a sweep runner also asks a trial's own record whether its fit lives before reclaiming it.)

POSIX locks belong to the process: closing any descriptor of a locked file in the holder drops its lock, and a
second lock of the same file by the same process always succeeds. Read a locked file through :attr:`PathLock.fd`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from inception_lab.run.layout import RunDir

BUSY = (errno.EACCES, errno.EAGAIN)
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)


class NoLocks(OSError):
    """The filesystem has no POSIX locks (a FUSE or Lustre mount without ``flock``): nothing here is safe to share."""


class PathLock:
    """An exclusive (or ``shared``) lock on ``path``, created if missing (unless not ``create``: FileNotFoundError);
    :meth:`acquire` waits up to ``timeout`` seconds (0: one try, None: for ever) and says whether it got it."""

    def __init__(self, path: Path, shared: bool = False, create: bool = True) -> None:
        self.path, self.shared, self.create = Path(path), shared, create and not shared
        self.fd: int | None = None

    def acquire(self, timeout: float | None = None, poll_s: float = 0.05) -> bool:
        if self.fd is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = os.open(self.path, (os.O_RDONLY if self.shared else os.O_RDWR) | (os.O_CREAT if self.create else 0),
                         0o644)
            try:
                fcntl.lockf(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in NO_LOCKS:
                    raise NoLocks(error.errno, f"{os.strerror(error.errno)}: its filesystem offers no POSIX (fcntl) "
                                  "locks; mount it with locks (NFS: no 'nolock'; Lustre: -o flock) or use another "
                                  "directory", str(self.path)) from None
                if error.errno not in (*BUSY, errno.ESTALE):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(poll_s)
                continue
            if self._names(fd):
                self.fd = fd
                return True
            os.close(fd)  # deleted or replaced while we waited: lock the file that is there now

    def _names(self, fd: int) -> bool:
        try:
            here, held = os.stat(self.path), os.fstat(fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def read(self) -> bytes:
        """The locked file's content, read through the lock's own descriptor."""
        assert self.fd is not None
        chunks, offset = [], 0
        while chunk := os.pread(self.fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing drops the lock

    def __enter__(self) -> PathLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(run_dir: Path) -> PathLock:
    """The lock a fit holds on its run directory for as long as it runs (``<run_dir>/.lock``): one fit per run
    directory, and a sweep runner never reclaims a trial whose fit still holds it."""
    return PathLock(RunDir(run_dir).lock)
