"""Which run a fit writes and whether it may (``run/resume.py``): a directory holds one run; a resume is the same run
(only its length of training may change) and goes on where its last checkpoint left off, after SIGKILL, SIGINT or
SIGTERM as if uninterrupted, from the newest readable checkpoint when last.ckpt is missing or cut short, on a disk
that was full; a resume by a checkpoint's path follows the run wherever it is now; a second fit of one run never
runs beside the first (even with its lock file gone); a resume of another network is one line; what a writer killed
mid-write left is cleaned up by the next command. (A SLURM requeue's resume: tests/test_slurm*.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from inception_lab.run.files import RunSummary, process_start, read_summary
from inception_lab.run.layout import RunDir
from inception_lab.run.resume import live_fit, resume_checkpoint
from tests.conftest import QUICKSTART, clean_env, one_error_line, remount, short, small_disk, write_run
from tests.run.conftest import snapshot, val_curve


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
    line, exit 2, and the record stays byte for byte; once that process is gone, the record holds nothing."""
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
    assert live_fit(finished_run) is None  # its process gone: the record no longer holds the run (a resume goes on)


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


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path: Path, run_cli, cli) -> None:
    base = ["fit", "--config", str(QUICKSTART), *short(epochs=3, batches=8, val_batches=3)]
    straight = tmp_path / "straight"
    code, _, err = cli([*base, "--run_dir", str(straight)])  # in this process; the killed run and its resume not
    assert code == 0, err[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "inception_lab", *base, "--run_dir", str(killed)], cwd=tmp_path,
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = killed / "checkpoints/last.ckpt"
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint after the first epoch"
    assert read_summary(killed)["status"] == "killed"  # its process gone without an end: not finished, not failed
    assert len(val_curve(killed)) < 3
    # an evaluation of the killed run's checkpoint adds its own record and leaves the fit's as it was
    fit_record = RunDir(killed).summary().read_bytes()
    code, _, err = cli(["test", "--ckpt_path", str(last)])
    assert code == 0, err[-3000:]
    record = read_summary(killed)
    assert record["status"] == "killed" and "test/acc" in record["metrics"]
    assert RunDir(killed).summary().read_bytes() == fit_record
    fit_wandb = json.loads((killed / "wandb_run.json").read_text())["id"]
    test_wandb = json.loads((killed / "test-summary.json").read_text())["wandb_run"]
    assert test_wandb != fit_wandb  # the test logs to a W&B run of its own, never into (and closing) the fit's

    run_cli(*base, "--run_dir", str(killed), "--ckpt_path", "last", cwd=tmp_path)
    a, b = read_summary(straight), read_summary(killed)
    assert b["status"] == "finished"
    # the attempts add up: the killed one's epochs are those its last checkpoint holds (its record lagged one)
    attempts = [(t["status"], t["first_epoch"], t["epochs"]) for t in b["attempts"]]
    assert attempts[0][:2] == ("killed", 0) and attempts[1][0] == "finished", attempts
    assert attempts[0][2] == attempts[1][1] and attempts[1][1] + attempts[1][2] == 3, attempts
    for key in ("val/acc", "val/acc_best", "val/loss", "train/loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), key
    assert val_curve(killed)[-1] == pytest.approx(val_curve(straight)[-1], abs=1e-6)


@pytest.mark.slow
def test_interrupted_is_not_failed(tmp_path: Path, cli) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM (a scheduler, the sweep runner):
    exit 130 and 143, the run recorded "interrupted" with the attempt, and ``--ckpt_path last`` finishes it. The
    attempts add up: every epoch trained once, but for the one in flight at an interruption."""
    run_dir = tmp_path / "run"
    base = ["fit", "--config", str(QUICKSTART), *short(epochs=3, batches=4, wandb=False), "--run_dir", str(run_dir)]
    last = run_dir / "checkpoints/last.ckpt"
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        seen = last.stat().st_mtime_ns if last.exists() else None
        proc = subprocess.Popen([sys.executable, "-m", "inception_lab", *base,
                                 *(["--ckpt_path", "last"] if seen else [])], cwd=tmp_path, env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 600
        while (not last.exists() or last.stat().st_mtime_ns == seen) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # an epoch ended (a new last.ckpt): interrupt the next one
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == code, err[-3000:]
        assert err.strip().splitlines()[-1].startswith(f"inception_lab: interrupted ({signum.name})"), err[-2000:]
        record = read_summary(run_dir)
        assert record["status"] == "interrupted" and record["error"] == f"interrupted by {signum.name}"
        assert record["attempts"][-1]["status"] == "interrupted" and record["attempts"][-1]["end"]
    code, _, err = cli([*base, "--ckpt_path", "last"])
    assert code == 0, err[-3000:]
    record = read_summary(run_dir)
    attempts = record["attempts"]
    assert record["status"] == "finished" and "error" not in record
    assert [a["status"] for a in attempts] == ["interrupted", "interrupted", "finished"]
    assert [a["ckpt_path"] is None for a in attempts] == [True, False, False]  # the resumes say where from
    for before, after in zip(attempts, attempts[1:]):  # each resume starts where the last checkpoint left off
        assert after["first_epoch"] == before["first_epoch"] + before["epochs"]
    assert sum(a["epochs"] for a in attempts) == 3 and len(val_curve(run_dir)) == 3
    assert record["wall_s"] == pytest.approx(sum(a["wall_s"] for a in attempts), abs=0.05)
    assert "sum of its attempts" in record["wall_s_is"]


def test_a_directory_holds_one_run(tmp_path: Path, cli) -> None:
    """A fit into a directory that holds a run is refused before anything is written, naming how to resume it."""
    run_dir = write_run(tmp_path / "run", {"seed_everything": 0}, status="finished", metrics={"val/acc": 0.9})
    RunDir(run_dir).checkpoints.mkdir()
    (RunDir(run_dir).checkpoints / "best-epoch002-acc0.9000.ckpt").write_bytes(b"weights")
    before = snapshot(run_dir)
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--model.optimizer.init_args.lr=0.0001",
                        "--wandb.enabled=false", "--run_dir", str(run_dir)])
    assert one_error_line(code, err, "fit") == (
        f"inception_lab fit: error: --run_dir {run_dir}: already holds a run (status: finished); resume it with "
        "--ckpt_path last, or start a new run in a new --run_dir")
    assert snapshot(run_dir) == before and not RunDir(run_dir).lock.exists()


@pytest.mark.slow
def test_a_resume_is_the_same_run(tmp_path: Path, cli) -> None:
    """``--ckpt_path last`` on a run trained otherwise is refused, naming the keys, the run left byte for byte; a
    longer training is allowed; an unreadable last.ckpt falls back to the newest readable checkpoint, and with none
    left the resume fails in one line, the record as it was."""
    fit = ["fit", "--config", str(QUICKSTART), *short(epochs=None, batches=3, wandb=False)]
    assert cli([*fit, "--trainer.max_epochs=1", "--model.net.init_args.head=fc"])[0] == 0
    (run_dir,) = (tmp_path / "runs/quickstart").iterdir()
    before = snapshot(run_dir)
    code, _, err = cli([*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"])  # the newest run: the fc one
    line = one_error_line(code, err, "fit")
    assert f"a resume is the same run, but this config differs from {run_dir.relative_to(tmp_path)}/config.yaml in " \
           "model.net.init_args.head: run fc, now gap; only the length of training" in line, line
    code, _, err = cli([*fit, "--model.net.init_args.head=fc", "--model.optimizer.init_args.lr=0.5",
                        "--ckpt_path", "last", "--run_dir", str(run_dir)])
    assert "model.optimizer.init_args.lr: run 0.004, now 0.5" in one_error_line(code, err, "fit")
    # the same, the checkpoint named by its path (with the experiment file, and with none: the run's config.yaml)
    named = ["--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), "--run_dir", str(run_dir)]
    for config in (["--config", str(QUICKSTART), "--model.net.init_args.head=fc"], []):
        code, _, err = cli(["fit", *config, *short(epochs=None, batches=3, wandb=False),
                            "--model.optimizer.init_args.lr=0.5", *named])
        assert "model.optimizer.init_args.lr: run 0.004, now 0.5" in one_error_line(code, err, "fit")
    # an evaluation of a checkpoint by path takes the command line's model values over the checkpoint's
    losses = []
    for smoothing in ([], ["--model.label_smoothing=0.5"]):
        code, _, err = cli(["test", "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), *smoothing])
        assert code == 0, err[-3000:]
        losses.append(read_summary(run_dir)["evaluations"]["test"]["metrics"]["test/loss"])  # (not the fit's own)
    assert losses[1] != pytest.approx(losses[0], abs=1e-3)
    after = snapshot(run_dir)  # the refusals wrote nothing, the tests only their own files
    assert {k: after[k] for k in before} == before
    assert all(k.startswith(("test-", "predictions", "wandb")) for k in set(after) - set(before)), set(after)

    last = run_dir / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    resume = [*fit, "--model.net.init_args.head=fc", "--trainer.max_epochs=2", "--ckpt_path", "last",
              "--run_dir", str(run_dir)]
    code, _, err = cli(resume)
    assert code == 0, err[-3000:]
    assert f"resuming from the newest readable checkpoint, {run_dir / 'checkpoints'}/best-epoch000-" in err
    record = read_summary(run_dir)
    assert record["status"] == "finished" and [a["first_epoch"] for a in record["attempts"]] == [0, 1]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1  # written whole again

    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = snapshot(run_dir)
    code, _, err = cli([*resume[:-4], "--trainer.max_epochs=3", "--ckpt_path", "last", "--run_dir", str(run_dir)])
    line = one_error_line(code, err, "fit")
    assert line.endswith("and the run has no other readable checkpoint to resume from")
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_when_val_acc_stalls(tmp_path: Path, cli) -> None:
    """With lr=0 val/acc never improves after epoch 0; last.ckpt must still be the last epoch (Lightning 2.6's
    save_last=True alone would leave it at the best one), and a resume goes on from there, keeping the best."""
    base = ["fit", "--config", str(QUICKSTART), *short(epochs=None, batches=2, wandb=False),
            "--model.optimizer.init_args.lr=0", "--run_dir", str(tmp_path / "run")]
    assert cli([*base, "--trainer.max_epochs=3"])[0] == 0
    checkpoints = tmp_path / "run/checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    best = [p.name for p in checkpoints.glob("best-*.ckpt")]
    assert len(best) == 1 and best[0].startswith("best-epoch000-")
    assert cli([*base, "--trainer.max_epochs=4", "--ckpt_path", "last"])[0] == 0
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == best
    assert len(val_curve(tmp_path / "run")) == 4  # the earlier epochs kept, one more appended


def test_a_run_stopped_before_its_first_checkpoint_is_refused_with_one_way_out(tmp_path: Path, cli) -> None:
    """A fit killed before its first checkpoint: with and without --ckpt_path last the refusals used to point at each
    other; both now say that nothing resumes it and to start a new run in a new --run_dir."""
    run_dir = write_run(tmp_path / "run", status="interrupted")
    for extra in ([], ["--ckpt_path", "last"]):
        code, _, err = cli(["fit", "--config", str(QUICKSTART), "--run_dir", str(run_dir), *extra])
        last = one_error_line(code, err, "fit")
        assert "nothing resumes it: start a new run in a new --run_dir" in last, err
        assert "resume it with --ckpt_path last" not in last


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


@pytest.mark.parametrize("content", ["", "{\"id\": 5}", "[1]"])
def test_an_unreadable_wandb_run_id_is_one_line_naming_it(content: str, finished_run: Path, cli) -> None:
    """A resume that logs to W&B reads the run's id from wandb_run.json: one that cannot be read is one line naming
    the file and what to do, before the fit writes anything."""
    id_file = RunDir(finished_run).wandb_run
    id_file.write_text(content)
    before = snapshot(finished_run)
    code, _, err = cli(["fit", "--config", str(QUICKSTART), *short(epochs=2, wandb=False), "--wandb.enabled=true",
                        "--ckpt_path", "last", "--run_dir", str(finished_run)])
    line = one_error_line(code, err, "fit")
    assert line.startswith(f"inception_lab fit: error: {id_file}: ") and "a new W&B run" in line, line
    assert snapshot(finished_run) == before
