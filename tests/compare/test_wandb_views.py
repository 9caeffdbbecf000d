"""compare/wandb_views.py: a W&B workspace and report built offline, and the one line where the optional package is
missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from inception_lab.compare.wandb_views import build_report, build_workspace
from tests.compare.conftest import HEAD
from tests.conftest import one_error_line


def test_wandb_workspace_and_report_built_offline() -> None:
    pytest.importorskip("wandb_workspaces")
    keys = [HEAD, "model.aux_weight"]
    workspace = build_workspace("me", "inception-lab", "abc123", keys)
    assert (workspace.entity, workspace.project) == ("me", "inception-lab")
    assert [g.name for g in workspace.runset_settings.groupby] == keys
    assert "Sweep" in str(workspace.runset_settings.filters) and "abc123" in str(workspace.runset_settings.filters)
    panels = workspace.sections[0].panels
    titles = [p.title for p in panels]
    assert titles[:3] == ["test/acc per cell", "accuracy against compute", "val top-1 per epoch"]
    assert panels[0].metrics == ["test/acc"] and panels[0].groupby_rangefunc == "stddev"
    assert panels[1].x.name == "macs" and panels[1].y.name == "test/acc"
    assert [c.metric.name for c in panels[3].columns] == [*keys, "test/acc"]

    report = build_report("me", "inception-lab", "abc123", keys, "| cell | n |\n|---|---|\n| head=gap | 2 |")
    assert report.project == "inception-lab" and "| head=gap | 2 |" in report.blocks[1].text
    grid = report.blocks[-1]
    assert grid.runsets[0].groupby == [f"config.{k}" for k in keys] and len(grid.panels) == 4


def test_missing_wandb_workspaces_is_one_line(monkeypatch, cli, sweep_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)
    with pytest.raises(Exception, match=r"pip install 'inception-lab\[workspaces\]'"):
        build_workspace("me", "p", "abc", [HEAD])
    code, _, err = cli(["compare", str(sweep_dir), "--wandb-workspace"])
    assert "--wandb-workspace and --wandb-report need --wandb" in one_error_line(code, err, "compare")
