"""Where an evaluation's network and weights come from: into a run's directory, one of that run's checkpoints (the
best when none is given), never an untrained network's metrics in a fit's record; a checkpoint of another network is
one line before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

from inception_lab.run.files import read_summary
from inception_lab.run.layout import RunDir
from tests.conftest import QUICKSTART, one_error_line, short
from tests.run.conftest import snapshot

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
