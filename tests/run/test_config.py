"""Where a run's config comes from (``run/config.py``): the experiment file, a second --config and the command line
make one config whose variant is what differs from the experiment; a checkpoint's hyperparameters load as plain data;
an evaluation's network and weights into a run's directory are one of that run's checkpoints (the best when none is
given), never an untrained network's metrics in a fit's record; a checkpoint of another network is one line before
anything is written."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from inception_lab.cli import parse
from inception_lab.errors import UserError
from inception_lab.run.config import check_checkpoint_network
from inception_lab.run.files import read_summary
from inception_lab.run.layout import RunDir
from tests.conftest import QUICKSTART, REPO, one_error_line, short
from tests.run.conftest import snapshot

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
EVAL = ["--trainer.limit_test_batches=2", "--trainer.limit_val_batches=2", "--wandb.enabled=false"]


def test_an_evaluation_into_a_run_evaluates_its_best_checkpoint(finished_run: Path, cli) -> None:
    """``test --config X --run_dir R`` with no ``--ckpt_path``: the run's best checkpoint (summary.json's
    ``best_checkpoint``), not an untrained network."""
    record = read_summary(finished_run)
    best = finished_run / record["best_checkpoint"]
    assert best.is_file() and best.parent == RunDir(finished_run).checkpoints and best.name.startswith("best-")
    code, _, err = cli(["test", "--config", str(QUICKSTART), "--run_dir", str(finished_run), *EVAL])
    assert code == 0, err[-3000:]
    evaluation = read_summary(finished_run)["evaluations"]["test"]
    assert Path(evaluation["checkpoint"]).resolve() == best.resolve() and evaluation["metrics"]["test/acc"] >= 0


def test_an_evaluation_into_a_run_refuses_another_runs_checkpoint(finished_run: Path, cli, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    before = snapshot(finished_run)
    code, _, err = cli(["validate", "--config", str(QUICKSTART), "--run_dir", str(finished_run),
                        "--ckpt_path", str(RunDir(other).last), *EVAL])
    assert "not a checkpoint of the run in --run_dir" in one_error_line(code, err, "validate")
    assert snapshot(finished_run) == before


def test_a_checkpoint_of_another_network_is_one_line(finished_run: Path, cli) -> None:
    before = snapshot(finished_run)
    code, _, err = cli(["test", "--config", str(QUICKSTART), "--ckpt_path", str(RunDir(finished_run).last),
                        "--model.net.init_args.head=fc", *EVAL])
    line = one_error_line(code, err, "test")
    assert "a checkpoint of another network than the config's (model.net.init_args.head: checkpoint gap, config fc)" \
        in line
    assert snapshot(finished_run) == before


def test_an_evaluation_of_a_run_with_no_checkpoint_is_refused(finished_run: Path, cli) -> None:
    shutil.rmtree(RunDir(finished_run).checkpoints)
    before = snapshot(finished_run)
    code, _, err = cli(["test", "--config", str(QUICKSTART), "--run_dir", str(finished_run), *short(None), *EVAL])
    assert "holds a run with no checkpoint to test" in one_error_line(code, err, "test")
    assert snapshot(finished_run) == before


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
    model, data, _ = parse(["--config", str(experiment)])
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": dict(data.hparams)}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["hyper_parameters"]["net"]["init_args"]["num_classes"] == data.num_classes


def test_a_network_config_with_nested_namespaces_matches_its_checkpoint() -> None:
    """jsonargparse keeps list items as Namespaces (``stages:``): as plain data they equal the checkpoint's dicts."""
    stages = [{"name": "3a", "ch1x1": 64}, {"kernel_size": 3, "stride": 2}]
    checkpoint = {"hyper_parameters": {"net": {"class_path": "X", "init_args": {"stages": stages}}}, "state_dict": {}}
    config = Namespace(class_path="X", init_args=Namespace(stages=[Namespace(**s) for s in stages]))
    check_checkpoint_network("c.ckpt", checkpoint, config.as_dict(), {})
    config.init_args.stages[0].ch1x1 = 32
    with pytest.raises(UserError, match=r"model.net.init_args.stages: checkpoint"):
        check_checkpoint_network("c.ckpt", checkpoint, config.as_dict(), {})
