"""The CLI as wiring, as a user meets it: the quickstart fit learns and its checkpoint stands alone, every experiment
file runs (and says what and how), the experiment files are deltas of each other whose recipes build as they say, and
--print_config runs nothing. (Resume: tests/run/test_resume.py; bad input: tests/test_errors.py.)"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from inception_lab.cli import parse
from inception_lab.models import googlenet
from inception_lab.run.files import flatten, read_summary
from tests.conftest import QUICKSTART, REPO, clean_env, short
from tests.run.conftest import val_curve

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


# A fresh process with nothing but the checkpoint's path: the model and the data it was trained with, predicted
_LOAD_ALONE = """
import sys, json, torch, lightning as L
from inception_lab.module import InceptionClassifier
from inception_lab.data import DigitsDataModule
model = InceptionClassifier.load_from_checkpoint(sys.argv[1])
data = DigitsDataModule.load_from_checkpoint(sys.argv[1])
trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
probs = torch.cat(trainer.predict(model, datamodule=data))
print(json.dumps(probs.tolist()))
"""


@pytest.mark.slow
def test_quickstart_fit_learns_and_its_checkpoint_stands_alone(tmp_path: Path, run_cli, cli) -> None:
    """The README's main job (``python -m inception_lab fit``): val top-1 >= 97% on the digits and a complete run
    directory; then test and predict on its checkpoint with no experiment file (the CLI in this process), and
    load_from_checkpoint in a fresh process giving the same probabilities as `predict`."""
    run_dir = tmp_path / "run"
    proc = run_cli("fit", "--config", str(QUICKSTART), "--run_dir", str(run_dir), cwd=tmp_path)
    record = read_summary(run_dir)
    assert record["status"] == "finished" and record["variant"] == {} and len(record["attempts"]) == 1
    assert record["metrics"]["val/acc_best"] >= 0.97 and record["metrics"]["test/acc"] >= 0.95  # the held-out answer
    # what the user sees: the result last on stdout; on stderr Lightning's line on why the fit ended, no warning
    assert proc.stdout.strip().splitlines()[-1].startswith(
        f"fit finished: {run_dir}: val/acc_best {record['metrics']['val/acc_best']:.4f}, test/acc "
        f"{record['metrics']['test/acc']:.4f}; 6 epochs in ")
    assert proc.stderr.splitlines() == ["`Trainer.fit` stopped: `max_epochs=6` reached."], proc.stderr
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
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # fit and its test pass; `wandb sync` later

    # the fit's test pass evaluated its best checkpoint by val top-1: `test` of that checkpoint gives the same numbers
    best = str(run_dir / record["best_checkpoint"])
    assert record["best_checkpoint"].startswith("checkpoints/best-")
    code, out, err = cli(["test", "--ckpt_path", best])
    tested = read_summary(run_dir)["evaluations"]["test"]["metrics"]
    assert code == 0 and tested["test/acc"] == pytest.approx(record["metrics"]["test/acc"], abs=1e-6), out[-2000:]
    assert read_summary(run_dir)["metrics"]["test/acc"] == record["metrics"]["test/acc"]  # the fit's own stays

    last = str(run_dir / "checkpoints/last.ckpt")
    code, out, err = cli(["test", "--ckpt_path", last])  # no --config: the checkpoint says it all
    record = read_summary(run_dir)  # test results land in the run the checkpoint came from
    metrics = record["evaluations"]["test"]["metrics"]
    assert code == 0 and record["status"] == "finished" and metrics["test/acc"] >= 0.9, out[-2000:]
    assert out.strip().splitlines()[-1] == (f"test: {last}: test/loss {metrics['test/loss']:.4f}, test/acc "
                                            f"{metrics['test/acc']:.4f}, test/acc_top5 {metrics['test/acc_top5']:.4f} "
                                            f"({run_dir / 'test-summary.json'})")

    code, out, err = cli(["predict", "--ckpt_path", last])
    assert code == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f"predict: {last}: wrote {run_dir / 'predictions.csv'} (300 rows)"
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and list(rows[0]) == ["index", "label", "class", "probability", "top5"]
    hits = sum(r["label"] == r["class"] for r in rows) / len(rows)  # the true labels: predict's accuracy is test's
    assert hits == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert all(0 <= float(r["probability"]) <= 1 and len(r["top5"].split()) == 5 for r in rows)

    alone = subprocess.run([sys.executable, "-c", _LOAD_ALONE, last], cwd=tmp_path, env=clean_env(),
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    probs = torch.tensor(json.loads(alone.stdout.strip().splitlines()[-1]))
    top = probs.max(1)
    assert [int(r["class"]) for r in rows] == top.indices.tolist()
    assert [float(r["probability"]) for r in rows] == pytest.approx(top.values.tolist(), abs=2e-6)


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])  # fast tier: 12 s for all
def test_every_experiment_runs(experiment: Path, tmp_path: Path, tiny_cifar: Path, tiny_imagenet: Path, cli) -> None:
    """fast_dev_run of each experiment file on tiny data in the real on-disk formats."""
    args = ["fit", "--config", str(experiment)]
    if experiment.stem == "ddp":  # ddp.yaml stacks on an experiment; on CPU, gloo stands in for NCCL
        args = ["fit", "--config", str(QUICKSTART), "--config", str(experiment), "--trainer.accelerator=cpu",
                "--trainer.devices=1", "--trainer.precision=32-true",
                "--trainer.strategy.init_args.process_group_backend=gloo"]
    text = experiment.read_text()
    if "cifar" in experiment.stem:
        args += [f"--data.init_args.root={tiny_cifar}", "--data.init_args.batch_size=4",
                 "--data.init_args.val_size=10"]
    if "imagenet" in experiment.stem:
        args += [f"--data.init_args.root={tiny_imagenet}", "--data.init_args.batch_size=2",
                 "--data.init_args.num_workers=0", "--data.init_args.num_classes=3",
                 "--data.init_args.val_size=2"]
    args += ["--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
             "--run_dir", str(tmp_path / "run")]
    code, _, err = cli(args)
    assert code == 0, err[-3000:]
    assert read_summary(tmp_path / "run")["status"] == "finished"
    assert text.startswith("#") and "python -m inception_lab" in text.split("\n\n")[0]  # says what and how


def test_experiment_files_are_deltas() -> None:
    """CIFAR-100 is the CIFAR-10 experiment with another dataset; torchvision's GoogLeNet names its stage table."""
    c10, c100 = (parse(["--config", str(REPO / f"experiments/googlenet_{d}.yaml")])[2] for d in ("cifar10", "cifar100"))
    assert c100.variant == {}
    a, b = flatten(c10.as_dict()), flatten(c100.as_dict())
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"config", "data.init_args.dataset"}
    assert b["data.init_args.dataset"] == "cifar100"
    text = (REPO / "experiments/googlenet_imagenet_torchvision.yaml").read_text()
    assert "stages: torchvision" in text and "ch3x3red" not in text
    torch.manual_seed(0)  # and it builds googlenet("torchvision") as it says, seed for seed (torchvision's init)
    net = parse(["--config", str(REPO / "experiments/googlenet_imagenet_torchvision.yaml")])[0].net
    torch.manual_seed(0)
    preset = googlenet("torchvision").state_dict()
    assert net.state_dict().keys() == preset.keys()
    assert all(torch.equal(t, preset[k]) for k, t in net.state_dict().items())


@pytest.mark.parametrize("experiment", [p for p in EXPERIMENTS if p.stem.startswith("googlenet_")],
                         ids=lambda p: p.stem)
def test_gpu_recipes_step_with_a_fused_optimizer(experiment: Path) -> None:
    """The GPU recipes' SGD updates every parameter group in one fused kernel (fewer launches per step, issue 25);
    torch has the fused kernel on CPUs too, so the recipes also run here unchanged."""
    model, _, _ = parse(["--config", str(experiment)])
    optimizer = model.optimizer(model._param_groups())
    assert type(optimizer) is torch.optim.SGD and [g["fused"] for g in optimizer.param_groups] == [True] * len(
        optimizer.param_groups)


def test_print_config_and_overrides(tmp_path: Path, cli) -> None:
    code, out, _ = cli(["fit", "--config", str(QUICKSTART), "--model.net.init_args.head=fc", "--model.aux_weight=0.1",
                        "--model.net.init_args.filter_sizes=[3, [3, 3]]", "--print_config"])
    config = yaml.safe_load(out)
    net = config["model"]["net"]["init_args"]
    assert code == 0 and net["head"] == "fc" and net["filter_sizes"] == [3, [3, 3]]
    assert config["model"]["aux_weight"] == 0.1
    assert config["data"]["class_path"] == "inception_lab.data.DigitsDataModule"
    assert not (tmp_path / "runs").exists()  # printing a config runs nothing


    # is not refused


@pytest.mark.slow
def test_quiet_keeps_the_result_line_alone(tmp_path: Path, run_cli) -> None:
    """``--quiet``: a fit's stdout is its result line and its stderr empty (the processes it starts too); a refused
    command still says why in one line; an evaluation with no checkpoint named takes the run's best."""
    run_dir = tmp_path / "run"
    proc = run_cli("--quiet", "fit", "--config", str(QUICKSTART), *short(batches=2, val_batches=1), "--run_dir",
                   str(run_dir), cwd=tmp_path)
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"fit finished: {run_dir}: val/acc_best ")
    proc = run_cli("test", "--quiet", "--run_dir", str(run_dir), cwd=tmp_path)
    best = read_summary(run_dir)["best_checkpoint"]
    assert proc.stderr == "" and proc.stdout.startswith(f"test: {run_dir / best}: test/loss "), proc.stdout
    proc = run_cli("test", "--quiet", cwd=tmp_path, check=False)
    assert (proc.returncode, proc.stdout) == (2, "") and proc.stderr.startswith(
        "inception_lab test: error: test evaluates a checkpoint: give --ckpt_path ") and proc.stderr.count("\n") == 1
