"""sweep/claim.py: the check a trial's fit makes of its own claim, under state.json's lock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inception_lab.errors import UserError
from inception_lab.sweep import claim
from inception_lab.sweep.claim import CLAIM_ENV, check_trial_claim
from tests.conftest import REPO

_HOLD = ("import sys, time; from inception_lab.run.lock import PathLock; lock = PathLock(sys.argv[1]); "
         "assert lock.acquire(0); print('held', flush=True); time.sleep(float(sys.argv[2]))")


def _refused(message: str) -> None:
    """check_trial_claim refuses in one line, ``message`` (ending in "(" where it goes on with a parser's words)."""
    with pytest.raises(UserError) as refused:
        check_trial_claim()
    line = str(refused.value)
    assert "\n" not in line and (line.startswith(message) if message.endswith("(") else line == message), line


def test_a_trials_claim_is_checked_under_the_state_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit a runner started checks, under ``state.json``'s lock, that the trial is still its runner's claim: one
    line otherwise (the state unreadable, its lock held too long, another claim); a fit no runner started checks
    nothing."""
    state = tmp_path / "state.json"
    monkeypatch.delenv(CLAIM_ENV, raising=False)
    check_trial_claim()  # no runner, no state: nothing to check
    monkeypatch.setenv(CLAIM_ENV, json.dumps({"state": str(state), "trial": "000", "claim": "mine"}))
    _refused(f"sweep trial 000: cannot check its claim in {state}: No such file or directory")
    state.write_text('{"trials": [')
    _refused(f"sweep trial 000: cannot check its claim in {state}: not a sweep state (")
    state.write_text(json.dumps({"trials": [{"name": "000", "values": {}, "claim": "theirs"}]}))
    _refused(f"sweep trial 000: another runner holds it now ({state}); this fit stops before writing anything")
    state.write_text(json.dumps({"trials": [{"name": "000", "values": {}, "claim": "mine"}]}))
    check_trial_claim()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(state), "3"], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "held\n"
    monkeypatch.setattr(claim, "LOCK_WAIT_S", 1.0)
    _refused(f"sweep trial 000: cannot check its claim in {state}: its lock was held for 1 s")
    monkeypatch.setattr(claim, "LOCK_WAIT_S", 30.0)
    check_trial_claim()  # once the holder is done
    assert holder.wait(timeout=120) == 0
