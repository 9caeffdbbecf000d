"""``run/files.py``: the run's record as its readers see it (a stage whose process is gone reads ``killed``, a fit's
and an evaluation's alike; a heartbeat too old, or from the future, cannot keep a dead fit ``running``; evaluations
read beside the fit, never written into it), what a fit records about what produced it, atomic writes on a full disk,
and names cut to one path component the disk takes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from inception_lab.errors import UserError
from inception_lab.run.files import STALE_S, RunSummary, process_start, read_summary, safe_name, write_atomic
from inception_lab.run.layout import RunDir
from tests.conftest import QUICKSTART, small_disk, write_run


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


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def fit_record(run_dir: Path, pid: int, host: str, status: str = "running", pid_start: int | None = None) -> None:
    """A fit's record of one attempt by process ``pid`` on ``host`` (started when ``pid_start`` says: by default
    when that process did)."""
    attempt = {"start": "2026-12-01T10:00:00+0000", "status": status, "host": host, "pid": pid,
               "pid_start": process_start(pid) if pid_start is None else pid_start}
    write_run(run_dir, status=status, run_name=run_dir.name, metrics={"val/acc": 0.5}, variant={}, attempts=[attempt])


def test_a_long_run_name_is_cut_to_a_directory_name_the_disk_takes(tmp_path: Path) -> None:
    """A 300-character --run_name (or a long automatic one) used to end in "File name too long": names are cut to 150
    bytes, ending in a digest of the whole, so that two long names stay two directories."""
    long = "head=fc-" + "model.net.init_args.stage_widths=" * 9
    a, b = safe_name(long, "seed0"), safe_name(long, "seed1")
    assert a != b and len(a.encode()) <= 150 and len(safe_name("ü" * 300).encode()) <= 150
    assert a.startswith("head=fc-model.net.init_args.stage_widths=") and safe_name("short") == "short"
    (tmp_path / f"{a}.start3-2").mkdir()  # with room for what a sweep adds to it (.discarded/<name>.start3-2)


def test_a_fit_whose_process_is_gone_reads_as_killed(tmp_path: Path) -> None:
    """On the fit's host, a dead pid (or a pid reused by another process) is a killed fit; from another host, a
    heartbeat older than STALE_S is. A live fit, and a fit that recorded its end, read as they are."""
    here = socket.gethostname()
    fit_record(tmp_path / "alive", os.getpid(), here)
    assert read_summary(tmp_path / "alive")["status"] == "running"
    fit_record(tmp_path / "dead", dead_pid(), here)
    record = read_summary(tmp_path / "dead")
    assert record["status"] == "killed" and "ended without recording an end" in record["error"]
    assert json.loads(RunDir(tmp_path / "dead").summary().read_text())["status"] == "running"  # a reader writes nothing
    # the pid now belongs to a process started at another time
    fit_record(tmp_path / "reused", os.getpid(), here, pid_start=process_start(os.getpid()) + 1)
    assert read_summary(tmp_path / "reused")["status"] == "killed"
    fit_record(tmp_path / "finished", dead_pid(), here, status="finished")
    assert read_summary(tmp_path / "finished")["status"] == "finished"

    fit_record(tmp_path / "elsewhere", 1234, "another-node")
    beat = RunDir(tmp_path / "elsewhere").heartbeat
    beat.touch()
    assert read_summary(tmp_path / "elsewhere")["status"] == "running"
    os.utime(beat, (time.time() - STALE_S - 60,) * 2)
    record = read_summary(tmp_path / "elsewhere")
    assert record["status"] == "killed" and "no heartbeat from another-node" in record["error"]


def test_evaluations_are_read_with_the_fit_never_written_into_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit_record(run, dead_pid(), socket.gethostname(), status="finished")
    RunSummary(status="finished", metrics={"test/acc": 0.9, "test/loss": 0.3}, checkpoint="checkpoints/last.ckpt"
               ).save(run, "test")
    RunDir(run).summary("validate").write_text("{ cut short")  # says nothing about the fit
    record = read_summary(run)
    assert record["status"] == "finished" and record["metrics"] == {"val/acc": 0.5, "test/acc": 0.9, "test/loss": 0.3}
    assert record["evaluations"]["test"]["checkpoint"] == "checkpoints/last.ckpt"
    RunDir(run).summary().write_text('{"status": "finished", "metrics": [1]}')  # no writer writes this
    assert read_summary(run)["status"] == "unreadable"


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "64k") as disk:
        write_atomic(disk / "summary.json", '{"status": "running"}')
        with pytest.raises(OSError) as error:
            write_atomic(disk / "summary.json", "x" * 200_000)
        assert error.value.filename == str(disk / "summary.json") and error.value.errno == 28
        assert (disk / "summary.json").read_text() == '{"status": "running"}'
        assert sorted(p.name for p in disk.iterdir()) == ["summary.json"]


def test_names_are_one_path_component(tmp_path: Path) -> None:
    """A given run or experiment name is made one directory name, the same way as generated names."""
    from jsonargparse import Namespace

    from inception_lab.run.resume import resolve_run

    def resolved(**given: str | None) -> Namespace:
        config = Namespace(experiment=None, run_name=None, run_dir=None, ckpt_path=None, seed_everything=0)
        config.update(Namespace(**given))
        resolve_run(config, "fit", {}, str(QUICKSTART))
        return config

    assert resolved(run_name="Grüße run/v2").run_dir == "runs/quickstart/Grüße_run_v2"
    assert resolved(run_name="../../etc").run_dir == "runs/quickstart/etc"
    assert resolved(run_name="a", experiment="../up").run_dir == "runs/up/a"
    with pytest.raises(UserError, match=r"^--run_name '\.\./': no usable characters"):
        resolved(run_name="../")
