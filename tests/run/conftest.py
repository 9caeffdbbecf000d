"""A finished run, made once per session by the real CLI (one short quickstart fit), copied into each test that
needs one: tests then resume, move, evaluate and break copies of a real run directory."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inception_lab.run.layout import RunDir
from tests.conftest import QUICKSTART, clean_env, short


@pytest.fixture(scope="session")
def finished_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    run_dir = root / "runs" / "quickstart" / "r"
    proc = subprocess.run([sys.executable, "-m", "inception_lab", "fit", "--config", str(QUICKSTART),
                           *short(wandb=False), "--run_dir", str(run_dir.relative_to(root))],
                          cwd=root, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def finished_run(finished_run_template: Path, tmp_path: Path) -> Path:
    """A copy of a finished one-epoch quickstart run at ``tmp_path/runs/quickstart/r`` (its config.yaml still names
    the run_dir it was made in: a run moved elsewhere)."""
    run_dir = tmp_path / "runs" / "quickstart" / "r"
    shutil.copytree(finished_run_template, run_dir, symlinks=True)
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory, byte for byte (the lock file aside: it is no record)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def val_curve(run_dir: Path) -> list[float]:
    """The run's val/acc, epoch by epoch, as its metrics.csv holds it."""
    with open(RunDir(run_dir).metrics()) as f:
        return [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
