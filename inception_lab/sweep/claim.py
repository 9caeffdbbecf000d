"""A sweep trial's claim, as its fit checks it once it holds its run directory: all of the sweep the CLI imports (the
lock and the sweep's error, nothing that imports the CLI back)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from inception_lab.run.lock import PathLock
from inception_lab.sweep.spec import SweepError

LOCK_WAIT_S = float(os.environ.get("INCEPTION_LAB_SWEEP_LOCK_WAIT_S", 300))  # state.json's lock; then a one-line error
CLAIM_ENV = "INCEPTION_LAB_SWEEP_CLAIM"  # a trial's claim, for its fit: {"state", "trial", "claim"} (start_trial)


def check_trial_claim() -> None:
    """In a fit started by a runner (``CLAIM_ENV`` set), once it holds its run directory: one line (SweepError) unless
    the sweep's ``state.json``, read under its lock, still gives the trial to its runner's claim (another runner may
    have reclaimed it while its runner was stopped); the fit then writes nothing. Any other fit: nothing to check."""
    if not os.environ.get(CLAIM_ENV):
        return
    claim = json.loads(os.environ[CLAIM_ENV])
    trial, path = claim["trial"], Path(claim["state"])
    lock = PathLock(path, shared=True)
    try:
        if not lock.acquire(timeout=LOCK_WAIT_S):
            raise OSError(errno.EAGAIN, f"its lock was held for {LOCK_WAIT_S:.0f} s")
        entries = json.loads(lock.read()).get("trials", [])
        holds = any(isinstance(e, dict) and (e.get("name"), e.get("claim")) == (trial, claim["claim"]) for e in entries)
    except (OSError, ValueError, AttributeError) as error:
        why = error.strerror if isinstance(error, OSError) else f"not a sweep state ({error})"
        raise SweepError(f"sweep trial {trial}: cannot check its claim in {path}: {why}") from None
    finally:
        lock.release()
    if not holds:
        raise SweepError(f"sweep trial {trial}: another runner holds it now ({path}); this fit stops before writing "
                         "anything")
