"""The writers (``run/record.py``): an evaluation adds its own files and metrics and never rewrites what the fit
wrote (config.yaml, hparams.yaml, metrics.csv, checkpoints, summary.json), also while the fit still trains; the
record is enough to repeat the run. (The manifest: tests/run/test_files.py; atomic writes: the same; checkpoints on
a full disk and last.ckpt's epoch: tests/run/test_resume.py.)"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inception_lab.run.files import read_metrics, read_summary
from tests.conftest import QUICKSTART, clean_env, short


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
def test_test_during_the_fit_adds_its_metrics_and_changes_nothing_of_the_fits(tmp_path: Path, cli) -> None:
    """``test`` on the first epoch's checkpoint while the fit trains on: the fit ends "finished" with all its epochs
    in one attempt, and the run's record has the test's metrics beside the fit's (each process its own file)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "inception_lab", "fit", "--config", str(QUICKSTART),
                             *short(epochs=3, batches=4), "--test_after_fit=false", "--run_dir", str(run_dir)],
                            cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        last = run_dir / "checkpoints/last.ckpt"
        deadline = time.time() + 600
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
    fit_only = json.loads((run_dir / "summary.json").read_text())  # --test_after_fit=false: the fit tested nothing
    assert not [k for k in fit_only["metrics"] if k.startswith("test/")]
    assert record["evaluations"]["test"]["status"] == "finished"


def test_a_fit_tests_its_best_checkpoint_at_its_end(tmp_path: Path, cli) -> None:
    """``--test_after_fit`` (the default): the fit's best checkpoint by val top-1, tested on the test split at the
    fit's end, is the fit's held-out answer: test/* in its own summary.json (one attempt, finished after the test,
    the best checkpoint named) and a row of metrics.csv; ``test`` of that checkpoint gives the same numbers."""
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(QUICKSTART), *short(epochs=2, batches=2, val_batches=1, wandb=False),
                        "--run_dir", str(run_dir)])
    assert code == 0, err[-3000:]
    fit = json.loads((run_dir / "summary.json").read_text())
    assert fit["status"] == "finished" and [(a["status"], a["epochs"]) for a in fit["attempts"]] == [("finished", 2)]
    assert {"test/acc", "test/loss", "test/acc_top5", "val/acc_best"} <= set(fit["metrics"])
    tested = [row for row in read_metrics(run_dir / "metrics.csv") if "test/acc" in row]
    assert [row["test/acc"] for row in tested] == [pytest.approx(fit["metrics"]["test/acc"])]
    best = run_dir / fit["best_checkpoint"]
    assert fit["tested_checkpoint"] == best.name
    code, _, err = cli(["test", "--ckpt_path", str(best), "--trainer.limit_test_batches=1"])
    assert code == 0, err[-3000:]
    again = read_summary(run_dir)["evaluations"]["test"]["metrics"]
    assert {k: again[k] for k in ("test/acc", "test/loss")} == pytest.approx(
        {k: fit["metrics"][k] for k in ("test/acc", "test/loss")}, abs=1e-6)


def test_a_stage_whose_loop_lightning_skips_still_ends(tmp_path: Path, cli) -> None:
    """``limit_test_batches=0`` (or ``limit_val_batches=0``, ``limit_predict_batches=0``): Lightning skips the loop and
    calls none of its end hooks. The fit's record ends "finished" with no test/* (none was computed, no checkpoint
    named tested), and so does each evaluation's: "running" (read later as killed) was left behind."""
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(QUICKSTART), *short(epochs=1, batches=2, val_batches=1, wandb=False),
                        "--trainer.limit_test_batches=0", "--run_dir", str(run_dir)])
    assert code == 0, err[-3000:]
    fit = json.loads((run_dir / "summary.json").read_text())
    assert (fit["status"], [a["status"] for a in fit["attempts"]]) == ("finished", ["finished"])
    assert "tested_checkpoint" not in fit and not any(k.startswith("test/") for k in fit["metrics"])
    for stage in ("validate", "test", "predict"):
        limit = "val" if stage == "validate" else stage
        code, _, err = cli([stage, f"--trainer.limit_{limit}_batches=0", "--wandb.enabled=false", "--run_dir",
                            str(run_dir)])
        assert code == 0, err[-3000:]
        assert json.loads((run_dir / f"{stage}-summary.json").read_text())["status"] == "finished", stage
    assert read_summary(run_dir)["status"] == "finished"
