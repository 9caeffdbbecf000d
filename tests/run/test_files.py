"""The run's record as its readers see it: a stage whose process is gone reads ``killed`` (a fit's and an
evaluation's alike), and a heartbeat from the future cannot keep a dead fit ``running``; what a fit records about
what produced it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch

from inception_lab.run.files import STALE_S, RunSummary, read_summary
from inception_lab.run.layout import RunDir


def test_a_killed_evaluation_reads_killed(tmp_path: Path) -> None:
    RunSummary(status="running", extra={"host": socket.gethostname(), "pid": 999_999_999}).save(tmp_path, "test")
    evaluation = read_summary(tmp_path)["evaluations"]["test"]
    assert evaluation["status"] == "killed" and "999999999" in evaluation["error"]
    RunSummary(status="running", extra={"host": socket.gethostname(), "pid": os.getpid()}).save(tmp_path, "test")
    assert read_summary(tmp_path)["evaluations"]["test"]["status"] == "running"  # alive: as it is


def test_a_heartbeat_from_the_future_cannot_keep_a_dead_fit_running(tmp_path: Path) -> None:
    """A fit on another host whose clock runs ahead: its heartbeat within STALE_S of now reads alive, one further
    ahead than STALE_S (clocks out of step) is taken as stale."""
    RunSummary(status="running", attempts=[{"status": "running", "host": "elsewhere", "pid": 1}]).save(tmp_path)
    beat = RunDir(tmp_path).heartbeat
    beat.touch()
    for ahead, status in ((STALE_S / 2, "running"), (STALE_S * 100, "killed")):
        os.utime(beat, (time.time() + ahead,) * 2)
        assert read_summary(tmp_path)["status"] == status, ahead


def test_a_fit_records_what_produced_it_and_its_best_checkpoint(finished_run: Path) -> None:
    record = read_summary(finished_run)
    manifest = record["manifest"]
    assert torch.__version__.startswith(manifest["versions"]["torch"]) and "lightning" in manifest["versions"]
    assert manifest["host"] == socket.gethostname() and manifest["devices"]["accelerator"] == "cpu"
    assert manifest["command"][1] == "fit" and "--run_dir" in manifest["command"]
    assert len(manifest["git_commit"]) == 40 and isinstance(manifest["git_dirty"], bool)
    assert (finished_run / record["best_checkpoint"]).is_file()
    assert "data.init_args.num_workers" in record["bookkeeping"]
