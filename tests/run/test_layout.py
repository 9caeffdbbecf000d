"""RunDir: the one place a run directory's file names are spelled."""

from __future__ import annotations

import re
from pathlib import Path

from inception_lab.run.layout import RunDir
from tests.conftest import REPO


def test_a_run_is_found_from_its_checkpoint_wherever_it_is(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert RunDir.of_checkpoint(run.last) == run and run.owns(run.last)
    run.checkpoints.mkdir(parents=True)
    run.config().write_text("{}")
    (run.path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert RunDir.of_checkpoint(run.path / "hpc_ckpt_1.ckpt") == run and run.hpc() == [run.path / "hpc_ckpt_1.ckpt"]
    link = tmp_path / "link"
    link.symlink_to(run.path, target_is_directory=True)
    assert RunDir(link) == run and run.owns(RunDir(link).last)
    assert RunDir.of_checkpoint(tmp_path / "loose.ckpt") is None
    assert run.config("test").name == "test-config.yaml" and run.summary().name == "summary.json"


NAMES = re.compile(r"""["'/](config\.yaml|summary\.json|metrics\.csv|hparams\.yaml|last\.ckpt|best-[^"']*|hpc_ckpt|"""
                   r"""\.heartbeat|\.lock|wandb_run\.json|predictions(\.csv|/)|fit\.sbatch|args\.json|trial(\.stderr)?"""
                   r"""\.log)["'/]|["']checkpoints["'](?!\s*:)""")


def test_no_run_directory_file_name_is_spelled_outside_run() -> None:
    """Every module asks RunDir: no run directory's file name in code outside inception_lab/run/ (docstrings and
    comments aside)."""
    found = []
    for path in (REPO / "inception_lab").rglob("*.py"):
        if path.parent.name == "run":
            continue
        code = re.sub(r'"""(.|\n)*?"""', "", path.read_text())
        for line in code.splitlines():
            if NAMES.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert not found, "\n".join(found)
