"""Which run a fit writes and whether it may: a resume by a checkpoint's path follows the run wherever it is now, a
second fit of one run never runs beside the first (even with its lock file gone), a resume of another network is
one line, and what a writer killed mid-write left is cleaned up by the next command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inception_lab.run.files import RunSummary, process_start, read_summary
from inception_lab.run.layout import RunDir
from tests.conftest import one_error_line, short
from tests.run.conftest import snapshot


@pytest.mark.slow
def test_resume_by_checkpoint_path_follows_a_moved_run(finished_run: Path, cli, tmp_path: Path) -> None:
    """``mv runs/x/r runs/x/r2`` then ``fit --ckpt_path runs/x/r2/checkpoints/last.ckpt``: r2 goes on (two
    attempts, its name kept), and nothing appears at the old path; through a symlink likewise."""
    moved = finished_run.with_name("r2")
    finished_run.rename(moved)
    code, _, err = cli(["fit", "--ckpt_path", str(RunDir(moved).last), *short(epochs=2, wandb=False)])
    assert code == 0, err[-3000:]
    assert not finished_run.exists()
    record = read_summary(moved)
    assert [a["first_epoch"] for a in record["attempts"]] == [0, 1] and record["run_name"] == "r"
    link = tmp_path / "link"
    link.symlink_to(moved, target_is_directory=True)
    code, _, err = cli(["fit", "--ckpt_path", str(RunDir(link).last), *short(epochs=3, wandb=False)])
    assert code == 0, err[-3000:]
    record = read_summary(moved)
    assert len(record["attempts"]) == 3 and record["run_name"] == "r" and not finished_run.exists()


def test_a_fit_the_record_says_lives_refuses_a_second_even_without_its_lock(finished_run: Path, cli) -> None:
    """The lock file deleted while a fit runs ("a stale lock"): the record names a live process, so a resume is one
    line, exit 2, and the record stays byte for byte."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = RunSummary.load(finished_run)
        record.status = "running"
        record.attempts[-1].update(status="running", pid=sleeper.pid, host=socket.gethostname(),
                                   pid_start=process_start(sleeper.pid))
        record.save(finished_run)
        RunDir(finished_run).lock.unlink(missing_ok=True)
        before = snapshot(finished_run)
        code, _, err = cli(["fit", "--run_dir", str(finished_run), "--ckpt_path", "last",
                            *short(epochs=2, wandb=False)])
        line = one_error_line(code, err, "fit")
        assert f"a fit is running in it (pid {sleeper.pid} on {socket.gethostname()}" in line
        assert snapshot(finished_run) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    code, _, err = cli(["fit", "--run_dir", str(finished_run), "--ckpt_path", "last", *short(epochs=2, wandb=False)])
    assert code == 0, err[-3000:]  # its process gone: the resume goes on, and records the lost attempt as killed
    assert [a["status"] for a in read_summary(finished_run)["attempts"]] == ["killed", "finished"]


def test_resume_of_another_network_is_one_line(finished_run: Path, cli) -> None:
    """``config.yaml`` edited to another network, then a resume: one line naming the key, nothing written."""
    config = RunDir(finished_run).config()
    edited = yaml.safe_load(config.read_text())
    edited["model"]["net"]["init_args"]["width_mult"] = 0.25
    config.write_text(yaml.safe_dump(edited))
    before = snapshot(finished_run)
    code, _, err = cli(["fit", "--ckpt_path", str(RunDir(finished_run).last), *short(epochs=2, wandb=False)])
    line = one_error_line(code, err, "fit")
    assert "a checkpoint of another network than the config's (model.net.init_args.width_mult: checkpoint" in line
    assert snapshot(finished_run) == before


@pytest.mark.slow
def test_a_killed_writers_temporary_file_goes_with_the_next_command(finished_run: Path, cli) -> None:
    """A kill during a checkpoint write leaves ``.last.ckpt.<pid>.tmp``; the next command on the run removes it
    (a live writer's stays, and so does a minute-young one: a write in flight on another host)."""
    run = RunDir(finished_run)
    dead = run.checkpoints / ".last.ckpt.999999999.tmp"
    dead.write_bytes(b"PK\x03\x04 cut short")
    live = run.checkpoints / f".last.ckpt.{os.getppid()}.tmp"
    live.write_bytes(b"being written")
    young = run.checkpoints / ".summary.json.999999998.tmp"  # another host's write in flight: its pid says nothing
    young.write_bytes(b"{")
    for path in (dead, live):
        os.utime(path, (time.time() - 120,) * 2)
    assert run.temporaries() == sorted([dead, live, young])
    code, _, err = cli(["fit", "--run_dir", str(finished_run), "--ckpt_path", "last", *short(epochs=2, wandb=False)])
    assert code == 0, err[-3000:]
    assert run.temporaries() == sorted([live, young])
    shutil.rmtree(finished_run)
