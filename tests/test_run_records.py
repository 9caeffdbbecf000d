"""Run records that stay true: an evaluation never changes the fit's record, a dead fit reads as killed, a full or
read-only disk gives one line and leaves a record that resumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inception_lab.run.files import STALE_S, RunSummary, process_start, read_summary, safe_name, write_atomic
from inception_lab.run.resume import resume_checkpoint
from tests.conftest import QUICKSTART, clean_env, short


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (the tests run as root in CI); skipped where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def fit_record(run_dir: Path, pid: int, host: str, status: str = "running") -> None:
    attempt = {"start": "2026-12-01T10:00:00+0000", "status": status, "host": host, "pid": pid,
               "pid_start": process_start(pid)}
    RunSummary(status=status, run_name=run_dir.name, metrics={"val/acc": 0.5}, variant={},
               attempts=[attempt]).save(run_dir)


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
    assert json.loads((tmp_path / "dead/summary.json").read_text())["status"] == "running"  # a reader writes nothing
    fit_record(tmp_path / "reused", os.getpid(), here)
    summary = json.loads((tmp_path / "reused/summary.json").read_text())
    summary["attempts"][-1]["pid_start"] += 1  # the pid now belongs to a process started at another time
    (tmp_path / "reused/summary.json").write_text(json.dumps(summary))
    assert read_summary(tmp_path / "reused")["status"] == "killed"
    fit_record(tmp_path / "finished", dead_pid(), here, status="finished")
    assert read_summary(tmp_path / "finished")["status"] == "finished"

    fit_record(tmp_path / "elsewhere", 1234, "another-node")
    beat = tmp_path / "elsewhere/.heartbeat"
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
    (run / "validate-summary.json").write_text("{ cut short")  # says nothing about the fit
    record = read_summary(run)
    assert record["status"] == "finished" and record["metrics"] == {"val/acc": 0.5, "test/acc": 0.9, "test/loss": 0.3}
    assert record["evaluations"]["test"]["checkpoint"] == "checkpoints/last.ckpt"
    (run / "summary.json").write_text('{"status": "finished", "metrics": [1]}')
    assert read_summary(run)["status"] == "unreadable"


def _checkpoint(path: Path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step}, path)


def test_a_resume_without_last_ckpt_takes_the_newest_readable_checkpoint(tmp_path: Path, capsys) -> None:
    """last.ckpt missing (a full disk stopped its write) or unreadable: the newest readable checkpoint of the run."""
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints/best-epoch000-acc0.5000.ckpt", 10)
    time.sleep(0.01)
    _checkpoint(run / "checkpoints/best-epoch001-acc0.6000.ckpt", 20)
    (run / "checkpoints/best-epoch002-acc0.7000.ckpt").write_bytes(b"cut short")
    assert resume_checkpoint(run) == run / "checkpoints/best-epoch001-acc0.6000.ckpt"
    assert "last.ckpt does not exist; resuming from the newest readable checkpoint" in capsys.readouterr().err
    _checkpoint(run / "checkpoints/last.ckpt", 20)
    assert resume_checkpoint(run) == run / "checkpoints/last.ckpt"


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "64k") as disk:
        write_atomic(disk / "summary.json", '{"status": "running"}')
        with pytest.raises(OSError) as error:
            write_atomic(disk / "summary.json", "x" * 200_000)
        assert error.value.filename == str(disk / "summary.json") and error.value.errno == 28
        assert (disk / "summary.json").read_text() == '{"status": "running"}'
        assert sorted(p.name for p in disk.iterdir()) == ["summary.json"]


SHORT = short(epochs=None, batches=2, val_batches=1)


@pytest.mark.slow
def test_a_fit_on_a_full_disk_says_so_and_resumes_once_freed(tmp_path: Path, cli) -> None:
    """A run directory on a disk with room for one checkpoint (2.6 MB each): the fit fails in one line naming the
    file and ENOSPC, records "failed", leaves no temporary file; once the disk has room, ``--ckpt_path last`` resumes
    from the best checkpoint of the same epoch (last.ckpt was never written). On a read-only disk, ``test`` fails in
    one line naming EROFS."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        run_dir = disk / "run"
        fit = ["fit", "--config", str(QUICKSTART), *SHORT, "--trainer.max_epochs=2", "--run_dir", str(run_dir)]
        code, _, err = cli(fit)
        assert code == 1 and "Traceback" not in err, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert f"inception_lab fit: error: {run_dir}/checkpoints/last.ckpt: No space left on device (ENOSPC)" in line
        record = read_summary(run_dir)
        assert record["status"] == "failed" and "No space left on device (ENOSPC)" in record["error"]
        assert not [p for p in run_dir.rglob("*.tmp")]
        assert [p.name[:14] for p in (run_dir / "checkpoints").iterdir()] == ["best-epoch000-"]  # no last.ckpt

        remount(disk, "size=40m")
        code, _, err = cli([*fit, "--ckpt_path", "last"])
        assert code == 0, err[-3000:]
        assert "checkpoints/last.ckpt does not exist; resuming from the newest readable checkpoint" in err
        record = read_summary(run_dir)
        assert record["status"] == "finished"
        assert [(a["status"], a["first_epoch"]) for a in record["attempts"]] == [("failed", 0), ("finished", 1)]

        with small_disk(tmp_path / "readonly", "40m") as readonly:  # a copy: W&B's service may hold files open
            shutil.copytree(run_dir, readonly / "run", ignore=shutil.ignore_patterns("wandb"))
            remount(readonly, "ro")
            run_dir = readonly / "run"
            before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
            code, _, err = cli(["test", "--ckpt_path", str(run_dir / "checkpoints/last.ckpt")])
            assert code == 1 and "Traceback" not in err
            assert "Read-only file system (EROFS)" in err.strip().splitlines()[-1]
            assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_test_during_the_fit_adds_its_metrics_and_changes_nothing_of_the_fits(tmp_path: Path, cli) -> None:
    """``test`` on the first epoch's checkpoint while the fit trains on: the fit ends "finished" with all its epochs
    in one attempt, and the run's record has the test's metrics beside the fit's (each process its own file)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "inception_lab", "fit", "--config", str(QUICKSTART),
                             *short(epochs=3, batches=4), "--run_dir", str(run_dir)],
                            cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        last = run_dir / "checkpoints/last.ckpt"
        deadline = time.time() + 300
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), "no checkpoint after the first epoch"
        code, _, err = cli(["test", "--ckpt_path", str(last)])
        assert code == 0, err[-3000:]
        assert proc.poll() is None, "the fit ended before the test did: nothing concurrent was tested"
        assert read_summary(run_dir)["status"] == "running"  # the fit's, while it trains
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    finally:
        proc.kill()
    record = read_summary(run_dir)
    assert record["status"] == "finished" and "error" not in record
    assert [(a["status"], a["epochs"]) for a in record["attempts"]] == [("finished", 3)]
    assert {"val/acc", "val/acc_best", "test/acc", "test/loss"} <= set(record["metrics"])
    fit_only = json.loads((run_dir / "summary.json").read_text())
    assert not [k for k in fit_only["metrics"] if k.startswith("test/")]
    assert record["evaluations"]["test"]["status"] == "finished"
