"""The real CLI in subprocesses: fit that learns, resume after SIGKILL, every experiment file, bad input."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
# one small epoch of the quickstart: the same network and data, fewer batches
SHORT = ["--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2", "--trainer.max_epochs=1"]


# set by in-process runs (the ddp.yaml smoke test binds MASTER_PORT in this process); a child must pick its own
DIST_ENV = ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_WORLD_SIZE")


def clean_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in DIST_ENV}, "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = clean_env()
    proc = subprocess.run([sys.executable, "-m", "inception_lab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def val_curve(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]


@pytest.mark.slow
def test_quickstart_fit_learns(tmp_path: Path) -> None:
    """The README's main job: val top-1 >= 97% on the digits, and a complete run directory."""
    run_dir = tmp_path / "run"
    run_cli("fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--run_dir", str(run_dir), cwd=tmp_path)
    record = summary(run_dir)
    assert record["status"] == "finished"
    assert record["metrics"]["val/acc_best"] >= 0.97
    assert record["metrics"]["val/acc_best"] == pytest.approx(max(val_curve(run_dir)))
    assert record["params"] > 0 and record["macs"] > 0 and record["throughput_img_per_s"] > 0
    assert record["seed"] == 0 and record["wall_s"] > 0
    with open(run_dir / "metrics.csv") as f:  # per epoch, with val/acc at the same step: the time to an accuracy
        rows = list(csv.DictReader(f))
    wall = [float(r["perf/wall_s"]) for r in rows if r["perf/wall_s"]]
    assert len(wall) == 6 and wall == sorted(wall) and 0 < wall[-1] <= record["wall_s"]
    steps = {r["step"] for r in rows if r["perf/wall_s"]}
    assert steps == {r["step"] for r in rows if r["val/acc"]}
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert list((run_dir / "wandb").glob("offline-run-*"))  # synced later with `wandb sync`

    tested = run_cli("test", "--config", str(REPO / "experiments/quickstart.yaml"),
                     "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), cwd=tmp_path)
    record = summary(run_dir)  # test results land in the run the checkpoint came from
    assert record["status"] == "finished" and record["metrics"]["test/acc"] >= 0.9, tested.stdout[-2000:]

    run_cli("predict", "--config", str(REPO / "experiments/quickstart.yaml"),
            "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), cwd=tmp_path)
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and {"index", "class", "probability", "top5"} <= set(rows[0])
    assert all(0 <= float(r["probability"]) <= 1 and len(r["top5"].split()) == 5 for r in rows)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path: Path) -> None:
    base = ["fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.max_epochs=3",
            "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=3"]
    straight = tmp_path / "straight"
    run_cli(*base, "--run_dir", str(straight), cwd=tmp_path)

    killed = tmp_path / "killed"
    env = clean_env()
    proc = subprocess.Popen([sys.executable, "-m", "inception_lab", *base, "--run_dir", str(killed)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = killed / "checkpoints/last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint after the first epoch"
    assert summary(killed)["status"] == "running"  # killed outright: not finished, not failed
    assert len(val_curve(killed)) < 3

    run_cli(*base, "--run_dir", str(killed), "--ckpt_path", "last", cwd=tmp_path)
    a, b = summary(straight), summary(killed)
    assert b["status"] == "finished"
    for key in ("val/acc", "val/acc_best", "val/loss", "train/loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), key
    assert val_curve(killed)[-1] == pytest.approx(val_curve(straight)[-1], abs=1e-6)


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_when_val_acc_stalls(tmp_path: Path) -> None:
    """With lr=0 val/acc never improves after epoch 0; last.ckpt must still be the last epoch (Lightning 2.6's
    save_last=True alone would leave it at the best one), and a resume goes on from there, keeping the best."""
    import torch

    base = ["fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2", "--model.optimizer.init_args.lr=0", "--run_dir", str(tmp_path / "run")]
    run_cli(*base, "--trainer.max_epochs=3", cwd=tmp_path)
    checkpoints = tmp_path / "run/checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    best = [p.name for p in checkpoints.glob("best-*.ckpt")]
    assert len(best) == 1 and best[0].startswith("best-epoch000-")
    run_cli(*base, "--trainer.max_epochs=4", "--ckpt_path", "last", cwd=tmp_path)
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 8
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == best
    assert len(val_curve(tmp_path / "run")) == 4  # the earlier epochs kept, one more appended


def run_in_process(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                   cwd: Path) -> tuple[int, str]:
    """The CLI in this process (where the tiny CIFAR's md5s are patched in); returns (exit code, stderr)."""
    from inception_lab.cli import cli_main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):  # handlers made under an earlier capture
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.stream = sys.stderr
    code = cli_main(args)
    return code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_runs(experiment: Path, tmp_path: Path, tiny_cifar: Path, tiny_imagenet: Path,
                               capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """fast_dev_run of each experiment file on tiny data in the real on-disk formats."""
    args = ["fit", "--config", str(experiment)]
    if experiment.stem == "ddp":  # ddp.yaml stacks on an experiment; on CPU, gloo stands in for NCCL
        args = ["fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--config", str(experiment),
                "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
                "--trainer.strategy.init_args.process_group_backend=gloo"]
    text = experiment.read_text()
    if "CIFARDataModule" in text:
        args += [f"--data.init_args.root={tiny_cifar}", "--data.init_args.batch_size=4",
                 "--data.init_args.val_size=10"]
    if "ImageNetDataModule" in text:
        args += [f"--data.init_args.root={tiny_imagenet}", "--data.init_args.batch_size=2",
                 "--data.init_args.num_workers=0", "--data.init_args.num_classes=3",
                 "--data.init_args.val_size=2"]
    args += ["--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
             "--run_dir", str(tmp_path / "run")]
    code, err = run_in_process(args, capsys, monkeypatch, tmp_path)
    assert code == 0, err[-3000:]
    assert summary(tmp_path / "run")["status"] == "finished"
    assert text.startswith("#") and "python -m inception_lab" in text.split("\n\n")[0]  # says what and how


def test_print_config_and_overrides(tmp_path: Path) -> None:
    out = run_cli("fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--model.net.init_args.head=fc",
                  "--model.aux_weight=0.1", "--model.net.init_args.filter_sizes=[3, [3, 3]]", "--print_config",
                  cwd=tmp_path).stdout
    import yaml

    config = yaml.safe_load(out)
    net = config["model"]["net"]["init_args"]
    assert net["head"] == "fc" and net["filter_sizes"] == [3, [3, 3]] and config["model"]["aux_weight"] == 0.1
    assert config["data"]["class_path"] == "inception_lab.data.DigitsDataModule"
    assert not (tmp_path / "runs").exists()  # printing a config runs nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.aux_wieght=0.1"], "aux_wieght"),
        (["--model.aux_weight=abc"], "model.aux_weight"),
        (["--model.aux_weight=-0.5"], "model.aux_weight=-0.5: must be a number >= 0"),
        (["--model.net.init_args.head=mlp"], "model.net.init_args.head"),
        (["--model.net.init_args.filter_sizes=[3, 4]"], "filter_sizes=[3, 4]: kernel sizes must be odd"),
        (["--trainer.max_epochs=many"], "trainer.max_epochs"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli("fit", "--config", str(REPO / "experiments/quickstart.yaml"), *args, "--run_dir",
                   str(tmp_path / "run"), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("inception_lab: error:") and message in last, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "summary.json").exists() or summary(tmp_path / "run")["status"] == "failed"


@pytest.mark.parametrize("case", ["missing_cifar", "missing_imagenet", "corrupt_cifar"])
def test_bad_data_is_one_line_error(tmp_path: Path, tiny_cifar: Path, case: str, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "missing_cifar":
        args = ["--config", str(REPO / "experiments/googlenet_cifar10.yaml"),
                f"--data.init_args.root={tmp_path / 'nowhere'}"]
        expect = str(tmp_path / "nowhere")
    elif case == "missing_imagenet":
        args = ["--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                f"--data.init_args.root={tmp_path / 'nowhere'}", "--data.init_args.num_workers=0"]
        expect = str(tmp_path / "nowhere")
    else:
        batch = tiny_cifar / "cifar-10-batches-py" / "data_batch_1"
        batch.write_bytes(batch.read_bytes()[:100])
        args = ["--config", str(REPO / "experiments/googlenet_cifar10.yaml"), f"--data.init_args.root={tiny_cifar}"]
        expect = "data_batch_1"
    run_dir = tmp_path / "run"
    code, err = run_in_process(["fit", *args, "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                                "--run_dir", str(run_dir)], capsys, monkeypatch, tmp_path)
    assert code != 0 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("inception_lab: error:") and expect in last, err[-2000:]
    assert not (run_dir / "summary.json").exists() or summary(run_dir)["status"] == "failed"
