"""A finished run, made once per session by the real CLI (one short quickstart fit, in this process), copied into
each test that needs one: tests then resume, move, evaluate and break copies of a real run directory."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sys
from pathlib import Path

import pytest

from inception_lab.run.layout import RunDir
from tests.conftest import QUICKSTART, REPO, in_process, short


@pytest.fixture(scope="session")
def finished_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    run_dir = root / "runs" / "quickstart" / "r"
    args = ["fit", "--config", str(QUICKSTART), *short(wandb=False), "--run_dir", str(run_dir.relative_to(root))]
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()) as err:
        patch.chdir(root)  # in this process (no second start-up of torch), as `python -m inception_lab` runs it
        patch.setattr(sys, "argv", [str(REPO / "inception_lab" / "__main__.py"), *args])
        code = in_process(args)
    assert code == 0, err.getvalue()[-3000:]
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
