"""The CLI as a user meets it: a fit that learns, checkpoints that stand alone, resume after SIGKILL, every experiment
file, and bad input reported in one line (in-process, but for what needs a process of its own)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from inception_lab.cli import UserError, parse
from inception_lab.run.files import flatten, read_summary
from tests.conftest import QUICKSTART, REPO, clean_env, short

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def val_curve(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]


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
    run_cli("fit", "--config", str(QUICKSTART), "--run_dir", str(run_dir), cwd=tmp_path)
    record = read_summary(run_dir)
    assert record["status"] == "finished" and record["variant"] == {}
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

    last = str(run_dir / "checkpoints/last.ckpt")
    code, out, err = cli(["test", "--ckpt_path", last])  # no --config: the checkpoint says it all
    record = read_summary(run_dir)  # test results land in the run the checkpoint came from
    assert code == 0 and record["status"] == "finished" and record["metrics"]["test/acc"] >= 0.9, out[-2000:]

    code, _, err = cli(["predict", "--ckpt_path", last])
    assert code == 0, err[-3000:]
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and {"index", "class", "probability", "top5"} <= set(rows[0])
    assert all(0 <= float(r["probability"]) <= 1 and len(r["top5"].split()) == 5 for r in rows)

    alone = subprocess.run([sys.executable, "-c", _LOAD_ALONE, last], cwd=tmp_path, env=clean_env(),
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    probs = torch.tensor(json.loads(alone.stdout.strip().splitlines()[-1]))
    top = probs.max(1)
    assert [int(r["class"]) for r in rows] == top.indices.tolist()
    assert [float(r["probability"]) for r in rows] == pytest.approx(top.values.tolist(), abs=2e-6)


@pytest.mark.slow
def test_evaluating_a_run_never_rewrites_what_the_fit_wrote(tmp_path: Path, cli) -> None:
    """validate, test (twice) and predict on a run's checkpoint add to the run under their own names; the fit's
    metrics.csv, config.yaml, hparams.yaml, checkpoints and val metrics stay byte for byte. A resume of the finished
    run, which trains and logs nothing, leaves metrics.csv as it was (the CSV logger used to delete it)."""
    run_dir = tmp_path / "run"
    fit = ["fit", "--config", str(QUICKSTART), *short(epochs=2, batches=4, wandb=False), "--run_dir", str(run_dir)]
    assert cli(fit)[0] == 0
    files = ["metrics.csv", "config.yaml", "hparams.yaml",
             *(f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").iterdir())]
    before = {name: (run_dir / name).read_bytes() for name in files}
    fit_metrics = read_summary(run_dir)["metrics"]
    last = str(run_dir / "checkpoints/last.ckpt")
    for stage in ("validate", "test", "test", "predict"):
        code, _, err = cli([stage, "--ckpt_path", last, "--wandb.enabled=false"])
        assert code == 0, err[-2000:]
    assert {name: (run_dir / name).read_bytes() for name in files} == before
    record = read_summary(run_dir)
    assert record["status"] == "finished" and {k: record["metrics"][k] for k in fit_metrics} == fit_metrics
    assert {"test/acc", "validate/acc"} <= set(record["metrics"])
    assert {"validate-config.yaml", "test-config.yaml", "predict-config.yaml", "predictions.csv"} <= {
        p.name for p in run_dir.iterdir()}
    with open(run_dir / "test-metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # one row per test run, appended
    assert cli([*fit, "--ckpt_path", "last"])[0] == 0
    assert (run_dir / "metrics.csv").read_bytes() == before["metrics.csv"]
    # the record is enough to repeat the run: its config.yaml, in a new directory, gives the same metrics
    again = tmp_path / "again"
    code, _, err = cli(["fit", "--config", str(run_dir / "config.yaml"), "--run_dir", str(again)])
    assert code == 0, err[-2000:]
    repeated = read_summary(again)
    assert repeated["variant"] == record["variant"] and repeated["seed"] == record["seed"]
    for key in ("val/acc", "val/acc_best", "val/loss", "train/loss"):
        assert repeated["metrics"][key] == pytest.approx(fit_metrics[key], abs=1e-6), key


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
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint after the first epoch"
    assert read_summary(killed)["status"] == "killed"  # its process gone without an end: not finished, not failed
    assert len(val_curve(killed)) < 3
    # an evaluation of the killed run's checkpoint adds its own record and leaves the fit's as it was
    fit_record = (killed / "summary.json").read_bytes()
    code, _, err = cli(["test", "--ckpt_path", str(last)])
    assert code == 0, err[-3000:]
    record = read_summary(killed)
    assert record["status"] == "killed" and "test/acc" in record["metrics"]
    assert (killed / "summary.json").read_bytes() == fit_record
    fit_wandb = json.loads((killed / "wandb_run.json").read_text())["id"]
    test_wandb = json.loads((killed / "test-summary.json").read_text())["wandb_run"]
    assert test_wandb != fit_wandb  # the test logs to a W&B run of its own, never into (and closing) the fit's

    run_cli(*base, "--run_dir", str(killed), "--ckpt_path", "last", cwd=tmp_path)
    a, b = read_summary(straight), read_summary(killed)
    assert b["status"] == "finished"
    for key in ("val/acc", "val/acc_best", "val/loss", "train/loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), key
    assert val_curve(killed)[-1] == pytest.approx(val_curve(straight)[-1], abs=1e-6)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


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
        deadline = time.time() + 300
        while (not last.exists() or last.stat().st_mtime_ns == seen) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # an epoch ended (a new last.ckpt): interrupt the next one
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
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
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed_everything: 0\n")
    (run_dir / "summary.json").write_text('{"status": "finished", "metrics": {"val/acc": 0.9}}')
    (run_dir / "checkpoints/best-epoch002-acc0.9000.ckpt").write_bytes(b"weights")
    before = _snapshot(run_dir)
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--model.optimizer.init_args.lr=0.0001",
                        "--wandb.enabled=false", "--run_dir", str(run_dir)])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"inception_lab fit: error: --run_dir {run_dir}: already holds a run (status: finished); resume it with "
        "--ckpt_path last, or start a new run in a new --run_dir")
    assert _snapshot(run_dir) == before


def test_a_fit_trains(tmp_path: Path, cli) -> None:
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--trainer.max_epochs=0", "--run_dir", str(tmp_path / "r")])
    assert code == 2 and err.strip().splitlines()[-1].startswith("inception_lab fit: error: trainer.max_epochs=0: ")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_resume_is_the_same_run(tmp_path: Path, cli) -> None:
    """``--ckpt_path last`` on a run trained otherwise is refused, naming the keys, the run left byte for byte; a
    longer training is allowed; an unreadable last.ckpt falls back to the newest readable checkpoint, and with none
    left the resume fails in one line, the record as it was."""
    fit = ["fit", "--config", str(QUICKSTART), *short(epochs=None, batches=3, wandb=False)]
    assert cli([*fit, "--trainer.max_epochs=1", "--model.net.init_args.head=fc"])[0] == 0
    (run_dir,) = (tmp_path / "runs/quickstart").iterdir()
    before = _snapshot(run_dir)
    code, _, err = cli([*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"])  # the newest run: the fc one
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert f"a resume is the same run, but this config differs from {run_dir.relative_to(tmp_path)}/config.yaml in " \
           "model.net.init_args.head: run fc, now gap; only the length of training" in line, line
    code, _, err = cli([*fit, "--model.net.init_args.head=fc", "--model.optimizer.init_args.lr=0.5",
                        "--ckpt_path", "last", "--run_dir", str(run_dir)])
    assert code == 2 and "model.optimizer.init_args.lr: run 0.004, now 0.5" in err.strip().splitlines()[-1]
    # the same, the checkpoint named by its path (with the experiment file, and with none: the run's config.yaml)
    named = ["--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), "--run_dir", str(run_dir)]
    for config in (["--config", str(QUICKSTART), "--model.net.init_args.head=fc"], []):
        code, _, err = cli(["fit", *config, *short(epochs=None, batches=3, wandb=False),
                            "--model.optimizer.init_args.lr=0.5", *named])
        assert code == 2 and "model.optimizer.init_args.lr: run 0.004, now 0.5" in err.strip().splitlines()[-1], err
    # an evaluation of a checkpoint by path takes the command line's model values over the checkpoint's
    losses = []
    for smoothing in ([], ["--model.label_smoothing=0.5"]):
        code, _, err = cli(["test", "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), *smoothing])
        assert code == 0, err[-3000:]
        losses.append(read_summary(run_dir)["metrics"]["test/loss"])
    assert losses[1] != pytest.approx(losses[0], abs=1e-3)
    after = _snapshot(run_dir)  # the refusals wrote nothing, the tests only their own files
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
    before = _snapshot(run_dir)
    code, _, err = cli([*resume[:-4], "--trainer.max_epochs=3", "--ckpt_path", "last", "--run_dir", str(run_dir)])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("and the run has no other readable checkpoint to resume from")
    assert _snapshot(run_dir) == before


def test_names_are_one_path_component(tmp_path: Path) -> None:
    """A given run or experiment name is made one directory name, the same way as generated names."""
    from jsonargparse import Namespace

    from inception_lab.cli import resolve_run

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


def test_summary_names_the_smallest_input(cli) -> None:
    code, _, err = cli(["summary", "--image-size", "17"])
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("inception_lab summary: error: --image-size 17: too small for this network; the smallest "
                           "input it runs at is 31")
    code, out, _ = cli(["summary", "--image-size", "31"])
    assert code == 0 and "total" in out


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


def test_variant_is_what_differs_from_the_experiment(tmp_path: Path) -> None:
    """The one definition of a variant: resolved values that differ from the experiment file's own (seed and
    bookkeeping aside), whether set on the command line or by a sweep's second --config."""
    trial = tmp_path / "trial.json"
    trial.write_text(json.dumps({"model.aux_weight": 0.1, "seed_everything": 3, "model.net.init_args.head": "gap"}))
    _, _, config = parse(["fit", "--config", str(QUICKSTART), "--config", str(trial), "--run_dir", "x",
                          "--model.net.init_args.filter_sizes=[3, [3, 3]]", "--trainer.max_epochs", "2"])
    assert config.variant == {"model.aux_weight": 0.1, "model.net.init_args.filter_sizes": [3, [3, 3]]}
    assert config.seed_everything == 3
    assert parse(["--config", str(QUICKSTART), "--model.net.init_args.head=gap"])[2].variant == {}  # its own value


@pytest.mark.parametrize("experiment", [p for p in EXPERIMENTS if p.stem != "ddp"], ids=lambda p: p.stem)
def test_hyperparameters_load_as_plain_data(experiment: Path) -> None:
    """What a checkpoint stores to rebuild its model and data (the parsed config, links applied) loads with
    torch.load(weights_only=True): no config-type objects (jsonargparse's PositiveInt, ...) inside."""
    import io

    model, data, _ = parse(["--config", str(experiment)])
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": dict(data.hparams)}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["hyper_parameters"]["net"]["init_args"]["num_classes"] == data.num_classes


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


def _bad_yaml(tmp_path: Path) -> tuple[list[str], str]:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  aux_weight: [0.3\n")
    return ["--config", str(QUICKSTART), "--config", str(bad)], f"--config {bad}: not valid YAML at line 3"


def _not_a_checkpoint(tmp_path: Path) -> tuple[list[str], str]:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    return ["--config", str(QUICKSTART), "--ckpt_path", str(text)], f"--ckpt_path {text}: not a checkpoint (a text file"


def _truncated_checkpoint(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, path)
    path.write_bytes(path.read_bytes()[:-200])
    return ["--config", str(QUICKSTART), "--ckpt_path", str(path)], (
        f"--ckpt_path {path}: not a checkpoint (a torch.save archive cut short")


def _duplicate_key(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "twice.yaml"
    path.write_text("model:\n  aux_weight: 0.3\n  label_smoothing: 0.1\n  aux_weight: 1.0\n")
    return ["--config", str(QUICKSTART), "--config", str(path)], (
        f"--config {path}: not valid YAML at line 4, column 3: duplicate key 'aux_weight'")


def _checkpoint_as_config(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(10)}, "epoch": 0}, path)
    return ["--config", str(path)], f"--config {path}: not a YAML config: not UTF-8 text"


def _directory_as_config(tmp_path: Path) -> tuple[list[str], str]:
    return ["--config", str(tmp_path)], f"--config {tmp_path}: a directory, not a config file"


def _gpu(tmp_path: Path) -> tuple[list[str], str]:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return ["--config", str(QUICKSTART), "--trainer.accelerator=gpu"], "No supported gpu backend found"


BAD = {
    "unknown key": (["--config", str(QUICKSTART), "--model.aux_wieght=0.1"], "aux_wieght"),
    "not a number": (["--config", str(QUICKSTART), "--model.aux_weight=abc"], "model.aux_weight"),
    "negative weight": (["--config", str(QUICKSTART), "--model.aux_weight=-0.5"], "model.aux_weight"),
    "smoothing of 1.5": (["--config", str(QUICKSTART), "--model.label_smoothing=1.5"], "model.label_smoothing"),
    "dropout of 1": (["--config", str(QUICKSTART), "--model.net.init_args.dropout=1"], "model.net.init_args.dropout"),
    "too many held out": (["--config", str(QUICKSTART), "--data.init_args.val_size=1500"],
                          "data.init_args.test_size=300, data.init_args.val_size=1500: leaves no training images"),
    "unknown head": (["--config", str(QUICKSTART), "--model.net.init_args.head=mlp"], "model.net.init_args.head"),
    "width": (["--config", str(QUICKSTART), "--model.net.init_args.width_mult=0"], "model.net.init_args.width_mult"),
    "even kernel": (["--config", str(QUICKSTART), "--model.net.init_args.filter_sizes=[3, 4]"],
                    "model.net.init_args.filter_sizes=[3, 4]: kernel sizes must be odd"),
    "epochs": (["--config", str(QUICKSTART), "--trainer.max_epochs=many"], "trainer.max_epochs"),
    "interval": (["--config", str(QUICKSTART), "--model.lr_interval=epoch"],
                 "model.lr_interval='epoch': does not fit lr_scheduler"),
    "resume of no run": (["--config", str(QUICKSTART), "--ckpt_path", "last"], "--ckpt_path last: "),
    "negative lr": (["--config", str(QUICKSTART), "--model.optimizer.init_args.lr=-1"],
                    "model.optimizer.init_args.lr=-1.0: Invalid learning rate: -1"),
    "nan lr": (["--config", str(QUICKSTART), "--model.optimizer.init_args.lr", "nan"],
               "model.optimizer.init_args.lr: expected float | Tensor; got 'nan'"),
    "invalid yaml": _bad_yaml,
    "text file as checkpoint": _not_a_checkpoint,
    "truncated checkpoint": _truncated_checkpoint,
    "checkpoint as config": _checkpoint_as_config,
    "duplicate key": _duplicate_key,
    "directory as config": _directory_as_config,
    "no gpu": _gpu,
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_error(tmp_path: Path, case: str, cli) -> None:
    args, message = BAD[case](tmp_path) if callable(BAD[case]) else BAD[case]
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", *args, *short(batches=1, val_batches=1, wandb=False), "--run_dir", str(run_dir)])
    assert code == 2 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("inception_lab fit: error:") and message in last, err[-2000:]
    assert not run_dir.exists()  # refused before anything is written: the corrected command with the same --run_dir
    # is not refused


def test_parse_reports_one_line() -> None:
    with pytest.raises(UserError, match=r"^model.net.init_args.head: "):
        parse(["fit", "--config", str(QUICKSTART), "--model.net.init_args.head=mlp"])


@pytest.mark.parametrize("case", ["missing_cifar", "missing_imagenet", "corrupt_cifar"])
def test_bad_data_is_one_line_error(tmp_path: Path, tiny_cifar: Path, case: str, cli) -> None:
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
    code, _, err = cli(["fit", *args, "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                        "--wandb.enabled=false", "--run_dir", str(run_dir)])
    assert code != 0 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("inception_lab fit: error:") and expect in last, err[-2000:]
    assert not run_dir.exists()  # refused before the run is written: the data's source is checked first


def test_a_run_stopped_before_its_first_checkpoint_is_refused_with_one_way_out(tmp_path: Path, cli) -> None:
    """A fit killed before its first checkpoint: with and without --ckpt_path last the refusals used to point at each
    other; both now say that nothing resumes it and to start a new run in a new --run_dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "metrics": {}}))
    for extra in ([], ["--ckpt_path", "last"]):
        code, _, err = cli(["fit", "--config", str(QUICKSTART), "--run_dir", str(run_dir), *extra])
        last = err.strip().splitlines()[-1]
        assert code == 2 and "nothing resumes it: start a new run in a new --run_dir" in last, err
        assert "resume it with --ckpt_path last" not in last
