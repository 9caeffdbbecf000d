"""``slurm fit`` and ``sweep --slurm`` on a real SLURM (tests/slurm_cluster.py: slurmctld + slurmd on localhost, CPU
jobs): a job runs to finished; a job preempted by a real ``scancel -s USR1`` mid-epoch is requeued by SLURM through
the real ``scontrol`` and ends as the uninterrupted fit; a 2-task sweep array runs every trial once, and a plain
``scancel`` of one task cancels it for good. They skip where SLURM cannot start (not root, not installed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from inception_lab.run.files import read_summary
from tests.conftest import QUICKSTART, REPO, clean_env, fit_command, probe_path, short, state_trials, write_sweep

# one worker under `-n 2 --dist loadgroup`: one cluster (a session fixture), not one per worker on 2 cores
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

FIT = ["--config", str(QUICKSTART), *short(epochs=2), "--gpus-per-node", "0"]


def _env(cluster: Any, **extra: str) -> dict[str, str]:
    """The job's environment (sbatch exports it): this cluster's, W&B off, the test callbacks importable."""
    env = {**clean_env(), **{k: v for k, v in cluster.env.items() if k == "SLURM_CONF"}, "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": probe_path(), **extra}
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) or k == "SLURM_CONF"}


def _submit(args: list[str], env: dict[str, str], cwd: Path = REPO) -> int:
    done = subprocess.run([sys.executable, "-m", "inception_lab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return int(done.stdout.rsplit("submitted job ", 1)[1].split()[0])


def _wait_for(condition: Any, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.3)


def test_a_job_runs_and_a_preempted_one_ends_as_if_never_stopped(tmp_path: Path, slurm_cluster: Any) -> None:
    """Two ``slurm fit`` CPU jobs at once (1 CPU each). The first runs to finished. The second is paused at step 4
    (tests/ddp_probe.PauseAt), gets a real ``scancel -s USR1`` there, saves hpc_ckpt_1.ckpt, requeues itself with the
    real scontrol and exits; SLURM starts it again (released at once rather than after BeginTime's two minutes)
    with SLURM_RESTART_COUNT=1, and it resumes its run by itself: finished, two attempts, the first job's metrics."""
    cluster, plain, preempted = slurm_cluster, tmp_path / "plain", tmp_path / "preempted"
    first = _submit(["slurm", "fit", *FIT, "--run_dir", str(plain)], _env(cluster))
    second = _submit(["slurm", "fit", *FIT, "--trainer.callbacks+=ddp_probe.PauseAt", "--run_dir", str(preempted)],
                     _env(cluster, PAUSE_AT_STEP="4", WANDB_MODE="offline"))
    job = cluster.job(second)
    assert (job["JobName"], job["NumCPUs"], job.get("TresPerNode", "")) == ("preempted.fit", "1", "")
    _wait_for(lambda: (preempted / "paused0").exists(), "pause at step 4")
    cluster.cancel(second, "-s", "USR1")
    time.sleep(1.0)  # delivered (the handler only sets a flag)
    (preempted / "paused0").unlink()
    _wait_for(lambda: cluster.job(second).get("Restarts") == "1" and cluster.state(second) == "PENDING", "requeue")
    assert read_summary(preempted)["error"] == "interrupted: requeued by SLURM after step 4 (hpc_ckpt_1.ckpt)"
    hpc = torch.load(preempted / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 4 and not (preempted / "checkpoints" / "last.ckpt").exists()
    wandb_id = json.loads((preempted / "wandb_run.json").read_text())["id"]
    cluster.release(second)
    for job_id in (first, second):
        record = cluster.wait(job_id, timeout=900)
        assert record["JobState"] == "COMPLETED", (record, cluster.log_tails())
    log = (preempted / f"slurm-{second}.out").read_text()
    assert "requeued by SLURM after step 4 (hpc_ckpt_1.ckpt): the job resumes by itself" in log and \
        f"SLURM job requeued (restart 1): resuming {preempted} from {preempted / 'hpc_ckpt_1.ckpt'}" in log
    assert "Traceback" not in log and "resume with --ckpt_path last" not in log
    expected, record = read_summary(plain), read_summary(preempted)
    assert expected["status"] == "finished" and [a["status"] for a in expected["attempts"]] == ["finished"]
    assert record["status"] == "finished" and [a["status"] for a in record["attempts"]] == ["interrupted", "finished"]
    for key in ("val/loss", "val/acc", "val/acc_best", "train/loss"):
        assert record["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-6), key
    assert torch.load(preempted / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 12
    assert json.loads((preempted / "wandb_run.json").read_text())["id"] == wandb_id  # the same W&B run, resumed
    assert {p.name.rsplit("-", 1)[-1] for p in (preempted / "wandb").glob("offline-run-*")} == {wandb_id}


def _sweep(tmp_path: Path, name: str, parameters: dict[str, Any]) -> Path:
    return write_sweep(tmp_path / f"{name}.yaml", {"trainer.limit_train_batches": {"value": 2},
                                                   "trainer.limit_val_batches": {"value": 2}, **parameters},
                       fit_command(experiment=QUICKSTART))


def test_a_sweep_array_runs_every_trial_once_and_a_cancel_cancels(tmp_path: Path, slurm_cluster: Any) -> None:
    """``sweep --slurm --array-parallelism 2 --gpus-per-trial 0``: two runners (array tasks, 1 CPU each) on one
    sweep directory run the 4 trials, each once. Then, on a sweep of long trials, ``scancel <array>_1`` while both
    tasks run a trial: that task is cancelled for good (not requeued: a cancel is SIGTERM, the time-limit warning
    is USR1), its trial recorded interrupted for a later run to resume; no trial failed."""
    cluster = slurm_cluster
    path, out = _sweep(tmp_path, "pair", {"trainer.max_epochs": {"value": 1}, "model.net.init_args.head": {
        "values": ["gap", "fc"]}, "seed_everything": {"values": [0, 1]}}), tmp_path / "pair"
    array = _submit(["sweep", str(path), "--out", str(out), "--slurm", "--array-parallelism", "2",
                     "--gpus-per-trial", "0"], _env(cluster))
    records = cluster.wait_all(array, timeout=900)
    assert [r["JobState"] for r in records] == ["COMPLETED"] * 2, (records, cluster.log_tails())
    assert {r["JobName"] for r in records} == {"pair.sweep"}
    trials = state_trials(out)
    assert [(t["status"], t["starts"]) for t in trials] == [("finished", 1)] * 4
    assert all((out / "runs" / t["name"] / "trial.log").read_text().count("# start ") == 1 for t in trials)

    path, out = _sweep(tmp_path, "long", {"trainer.max_epochs": {"value": 200},
                                          "seed_everything": {"values": [0, 1]}}), tmp_path / "long"
    array = _submit(["sweep", str(path), "--out", str(out), "--slurm", "--array-parallelism", "2",
                     "--gpus-per-trial", "0"], _env(cluster))
    _wait_for(lambda: [t["status"] for t in state_trials(out)] == ["running"] * 2 and
              all((out / "runs" / t["name"] / "metrics.csv").is_file() for t in state_trials(out)),
              "two running trials")
    task = f"{array}_1"
    cluster.cancel(task)
    assert cluster.wait(task, timeout=600)["JobState"] == "CANCELLED"
    time.sleep(5)
    record = cluster.job(task)
    assert (record["JobState"], record["Restarts"]) == ("CANCELLED", "0"), record
    assert "running" in [t["status"] for t in state_trials(out)]  # task 0's trial goes on
    cluster.cancel(array)
    cluster.wait_all(array, timeout=600)  # CANCELLED is shown as the signals go out: the runners may still record
    _wait_for(lambda: [t["status"] for t in state_trials(out)] == ["interrupted"] * 2, "both trials interrupted")
    trials = state_trials(out)
    assert all(t["owner"] is None for t in trials), trials
    log = (out / f"slurm-{array}_1.out").read_text()
    assert "stopped (SIGTERM: a cancel); run the same command again to carry on" in log, log[-2000:]
