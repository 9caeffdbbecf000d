"""SLURM job files (compared with golden files, and parsed), their submission, and what a one-node SLURM cannot
show: a 2-node job's ranks (srun's variables, a fake ``scontrol``), sbatch refusing a job. The real SLURM's tests are
in test_slurm_jobs.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inception_lab.run.files import read_summary
from tests.conftest import QUICKSTART, REPO, clean_env, one_error_line, probe_path, short

GOLDEN = Path(__file__).parent / "golden"


def _sbatch_options(text: str) -> dict[str, str]:
    options = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


def _generic(text: str, **paths: str) -> str:
    """A job file with this machine's paths replaced by names, as the golden files hold it."""
    for name, path in paths.items():
        text = text.replace(path, f"<{name}>")
    return text


def test_fit_job_file(tmp_path: Path, cli) -> None:
    run_dir = tmp_path / "run"
    code, out, err = cli(["slurm", "fit", "--config", str(QUICKSTART), "--nodes", "2", "--gpus-per-node", "4",
                          "--partition", "gpu", "--time", "1-00:00:00", "--account", "lab", "--sbatch", "--qos=high",
                          "--model.net.init_args.head=fc", "--run_dir", str(run_dir), "--dry-run"])
    assert code == 0, err
    text = (run_dir / "fit.sbatch").read_text()
    assert f"wrote {run_dir / 'fit.sbatch'}; dry run: nothing submitted" in out
    assert _generic(text, python=sys.executable, run_dir=str(run_dir), repo=str(REPO), cwd=str(tmp_path)) == \
        (GOLDEN / "fit.sbatch").read_text()
    options = _sbatch_options(text)
    assert (options["--nodes"], options["--ntasks-per-node"], options["--gpus-per-node"]) == ("2", "4", "4")
    assert options["--signal"] == "USR1@90" and "--requeue" in options and options["--qos"] == "high"
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "--trainer.num_nodes=2 --trainer.devices=4" in srun and f"--run_dir {run_dir}" in srun
    assert not (run_dir / "config.yaml").exists()  # written by the job, not by this command


def test_sweep_array_job_file(tmp_path: Path, cli) -> None:
    out = tmp_path / "sweep"
    code, _, err = cli(["sweep", "sweeps/head_gap_vs_fc.digits.yaml", "--out", str(out), "--slurm",
                        "--array-parallelism", "3", "--gpus-per-trial", "2", "--time", "4:00:00", "--dry-run"],
                       cwd=REPO)
    assert code == 0, err
    text = (out / "sweep.sbatch").read_text()
    assert _generic(text, python=sys.executable, out=str(out), repo=str(REPO)) == \
        (GOLDEN / "sweep.sbatch").read_text()
    options = _sbatch_options(text)
    assert options["--array"] == "0-2" and options["--gpus-per-node"] == "2" and options["--signal"] == "B:USR1@120"
    assert re.search(r"^exec .* -m inception_lab sweep .* --out \S+ --seed 0 --gpus-per-trial 2$", text, re.M)
    assert not (out / "state.json").exists()


def test_cpu_jobs_ask_for_cpus_not_gpus(tmp_path: Path, cli) -> None:
    """--gpus-per-node 0 / --gpus-per-trial 0: CPU jobs (no GRES, which a CPU cluster rejects), --cpus-per-task."""
    run_dir = tmp_path / "run"
    code, _, err = cli(["slurm", "fit", "--config", str(QUICKSTART), "--gpus-per-node", "0", "--cpus-per-task", "2",
                        "--run_dir", str(run_dir), "--dry-run"])
    assert code == 0, err
    options = _sbatch_options(text := (run_dir / "fit.sbatch").read_text())
    assert "--gpus-per-node" not in options and (options["--cpus-per-task"], options["--ntasks-per-node"]) == ("2", "1")
    assert "--trainer.accelerator=cpu --trainer.devices=1" in text
    out = tmp_path / "sweep"
    code, _, err = cli(["sweep", "sweeps/head_gap_vs_fc.digits.yaml", "--out", str(out), "--slurm",
                        "--gpus-per-trial", "0", "--dry-run"], cwd=REPO)
    assert code == 0, err
    options = _sbatch_options((out / "sweep.sbatch").read_text())
    assert "--gpus-per-node" not in options and options["--cpus-per-task"] == "1"


@pytest.mark.parametrize(("option", "value"), [
    *(("--time", t) for t in ("garbage", "1:2:3:4", "2-", "00:01:30", "10:00 00")), ("--cpus-per-task", "-4"),
    ("--cpus-per-task", "0"), ("--nodes", "0"), ("--array-parallelism", "0"), ("--partition", "gpu a"),
    ("--account", ""), ("--sbatch", "--qos=high\n#SBATCH --x"), ("--sbatch", "qos")])
def test_a_bad_job_option_is_one_line(option: str, value: str, tmp_path: Path, cli) -> None:
    """Every option the job file takes, for `slurm fit` and `sweep --slurm` alike: one line naming it, no file."""
    if option != "--array-parallelism":
        code, _, err = cli(["slurm", "fit", "--config", str(QUICKSTART), option, value, "--run_dir",
                            str(tmp_path / "run"), "--dry-run"])
        assert one_error_line(code, err, "slurm").startswith(f"inception_lab slurm: error: {option} ")
        assert not (tmp_path / "run").exists()
    if option != "--nodes":
        code, _, err = cli(["sweep", "sweeps/head_gap_vs_fc.digits.yaml", "--out", str(tmp_path / "sweep"),
                            "--slurm", option, value, "--dry-run"], cwd=REPO)
        assert one_error_line(code, err, "sweep").startswith(f"inception_lab sweep: error: {option} ")
        assert not (tmp_path / "sweep").exists()


def test_a_job_option_is_written_as_sbatch_reads_it(tmp_path: Path, cli) -> None:
    """``--time ' 10:00:00'`` is checked and written stripped (sbatch would not read the space)."""
    code, _, err = cli(["slurm", "fit", "--config", str(QUICKSTART), "--time", " 10:00:00 ", "--partition", " gpu",
                        "--run_dir", str(tmp_path / "run"), "--dry-run"])
    assert code == 0, err
    options = _sbatch_options((tmp_path / "run" / "fit.sbatch").read_text())
    assert (options["--time"], options["--partition"]) == ("10:00:00", "gpu")


def test_sbatch_refusing_a_job_is_one_line(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' "
                                    ">&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run_dir = tmp_path / "run"
    code, _, err = cli(["slurm", "fit", "--config", str(QUICKSTART), "--account", "nope", "--run_dir", str(run_dir)])
    assert one_error_line(code, err, "slurm") == (
        f"inception_lab slurm: error: sbatch {run_dir / 'fit.sbatch'}: Batch job submission failed: Invalid account")


def test_job_file_is_submitted_with_sbatch(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'sbatch.args'}\n"
                                    "echo 'Submitted batch job 4242'\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run_dir = tmp_path / "run"
    code, out, err = cli(["slurm", "fit", "--config", str(QUICKSTART), "--run_dir", str(run_dir)])
    assert code == 0, err
    assert "submitted job 4242" in out and (tmp_path / "sbatch.args").read_text().strip() == str(run_dir / "fit.sbatch")


_SLURM = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NAME": "fit", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
          "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
          "SLURM_NODELIST": "localhost"}


@pytest.mark.slow
def test_two_slurm_tasks_train_one_fit(tmp_path: Path) -> None:
    """Two processes with the variables srun gives the tasks of a 2-node, 1-task-per-node job: Lightning's
    SLURMEnvironment makes them ranks 0 and 1 of one DDP fit (gloo): one run directory, one W&B run, the same
    weights on both ranks at the end. Then the same job preempted mid-epoch with SLURM's signal on rank 1 alone: both
    ranks save at the same step, one ``scontrol requeue``, and the requeued job (each rank restoring its own RNG
    state and shard position) ends with the uninterrupted fit's weights and validation metrics."""
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.calls'}\n")
    scontrol.chmod(0o755)

    def job(run_dir: Path, **env: str) -> tuple[list[int], list[str]]:
        command = [sys.executable, "-m", "inception_lab", "fit", "--config", str(QUICKSTART),
                   "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.num_nodes=2",
                   "--trainer.devices=1", *short(epochs=2, batches=4), "--trainer.callbacks+=ddp_probe.RankProbe",
                   "--trainer.callbacks+=ddp_probe.PreemptAt", "--run_dir", str(run_dir)]
        variables = {**_SLURM, "SLURM_JOB_ID": "777", "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
                     "SLURM_NODELIST": "node[1-2]", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
                     "MASTER_PORT": str(29500 + os.getpid() % 1000), "PATH": f"{scontrol.parent}:{os.environ['PATH']}",
                     "PYTHONPATH": probe_path(), **env}
        procs = [subprocess.Popen(command, cwd=tmp_path, env={**clean_env(), **variables, "SLURM_PROCID": str(rank),
                                                              "SLURM_NODEID": str(rank)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
        errors = [p.communicate(timeout=540)[1] for p in procs]
        return [p.returncode for p in procs], errors

    plain = tmp_path / "plain"
    codes, errors = job(plain)
    assert codes == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    ranks = [json.loads((plain / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)] and ranks[0]["backend"] == "gloo"
    assert (plain / "weights0.sha").read_text() == (plain / "weights1.sha").read_text()
    assert read_summary(plain)["status"] == "finished"
    assert len(list((plain / "wandb").glob("offline-run-*"))) == 1

    run_dir = tmp_path / "requeued"
    codes, errors = job(run_dir, PREEMPT_AT_STEP="5", PREEMPT_RANK="1")  # step 5 of 8: in the second epoch
    assert codes == [143, 143], errors[0][-2000:] + errors[1][-2000:]
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "777"]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)["global_step"] == 5
    codes, errors = job(run_dir, SLURM_RESTART_COUNT="1")
    assert codes == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    record, expected = read_summary(run_dir), read_summary(plain)
    assert [a["status"] for a in record["attempts"]] == ["interrupted", "finished"]
    assert (run_dir / "weights0.sha").read_text() == (run_dir / "weights1.sha").read_text() == \
        (plain / "weights0.sha").read_text()
    for key in ("val/loss", "val/acc", "val/acc_best"):
        assert record["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-6), key


def test_nodes_that_disagree_with_the_allocation_are_one_line(tmp_path: Path, cli, monkeypatch) -> None:
    """Lightning checks trainer.num_nodes x devices against srun's tasks: one line naming both."""
    for key, value in {**_SLURM, "SLURM_NTASKS": "2", "SLURM_NNODES": "2"}.items():
        monkeypatch.setenv(key, value)
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--trainer.accelerator=cpu", "--trainer.strategy=ddp",
                        "--trainer.num_nodes=1", "--trainer.devices=1", "--run_dir", str(tmp_path / "run")])
    line = one_error_line(code, err, "fit")
    assert "num_nodes" in line and "2" in line, line


def test_wandb_agent_array_job_file(tmp_path: Path, cli) -> None:
    """With a W&B server: each array task is a `wandb agent --count N` on the server's sweep."""
    out = tmp_path / "sweep"
    code, _, err = cli(["sweep", "sweeps/head_gap_vs_fc.yaml", "--out", str(out), "--slurm", "--array-parallelism", "8",
                        "--wandb-sweep", "lab/inception-lab/abc123", "--count", "4", "--partition", "gpu",
                        "--dry-run"], cwd=REPO)
    assert code == 0, err
    text = (out / "sweep.sbatch").read_text()
    options = _sbatch_options(text)
    assert options["--array"] == "0-7" and options["--partition"] == "gpu" and "--requeue" in options
    assert text.rstrip().splitlines()[-1] == f"exec {sys.executable} -m wandb agent --count 4 lab/inception-lab/abc123"


def test_a_job_requeued_before_its_first_checkpoint_starts_again(tmp_path: Path, cli, monkeypatch) -> None:
    """SLURM started the job again (SLURM_RESTART_COUNT=1) but its first attempt saved no checkpoint: the fit starts
    again in the same run directory, its attempts say so; not refused as a directory that holds a run."""
    run_dir = tmp_path / "run"
    base = ["fit", "--config", str(QUICKSTART), *short(batches=2, val_batches=1, wandb=False), "--run_dir",
            str(run_dir)]
    code, _, err = cli(base)
    assert code == 0, err[-2000:]
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()  # as if it had been stopped before its first epoch ended
    for key, value in {**_SLURM, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(key, value)
    code, _, err = cli(base)
    assert code == 0, err[-2000:]
    assert f"SLURM job requeued: {run_dir} has no checkpoint yet; starting it again" in err
    assert [a["status"] for a in read_summary(run_dir)["attempts"]] == ["finished", "finished"]
