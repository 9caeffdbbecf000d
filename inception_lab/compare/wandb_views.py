"""W&B views of a sweep grouped by the comparison's keys: a workspace, and a report with the comparison's tables above
the grouped panels. Built offline with ``wandb-workspaces``; saving them needs a W&B server."""

from __future__ import annotations

from typing import Any

from inception_lab.compare.cells import PRIMARY
from inception_lab.compare.runs import CompareError


def _wandb_modules() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise CompareError("W&B workspaces and reports need wandb-workspaces: "
                           "pip install 'inception-lab[workspaces]'") from None
    return wr, ws


def _panels(wr: Any, group_keys: list[str], metric: str) -> list[Any]:
    return [
        wr.BarPlot(title=f"{metric} per cell", metrics=[metric], groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.ScatterPlot(title="accuracy against compute", x=wr.SummaryMetric("macs"), y=wr.SummaryMetric(metric)),
        wr.LinePlot(title="val top-1 per epoch", x="epoch", y=["val/acc"], groupby_aggfunc="mean",
                    groupby_rangefunc="stddev"),
        wr.ParallelCoordinatesPlot(title="grouping keys against the metric", columns=[
            *(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in group_keys),
            wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))]),
    ]


def build_workspace(entity: str, project: str, sweep_id: str | None, group_keys: list[str],
                    metric: str = PRIMARY) -> Any:
    """A W&B workspace of the sweep's runs grouped by ``group_keys``; built offline, ``.save()`` needs a server."""
    wr, ws = _wandb_modules()
    # Config("a.b.c") reads the nested config that the runs log (W&B's backend key a.value.b.c)
    return ws.Workspace(
        entity=entity, project=project, name=f"compare {sweep_id or project}",
        sections=[ws.Section(name="ablation", panels=_panels(wr, group_keys, metric), is_open=True)],
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Sweep") == sweep_id] if sweep_id else "",
                                          groupby=[ws.Config(k) for k in group_keys]))


def build_report(entity: str, project: str, sweep_id: str | None, group_keys: list[str], table_markdown: str = "",
                 metric: str = PRIMARY) -> Any:
    """A W&B report: the comparison's table (with the paired CIs W&B cannot compute) above the grouped panels."""
    wr, ws = _wandb_modules()
    runset = wr.Runset(entity=entity, project=project, name=f"sweep {sweep_id}" if sweep_id else "runs",
                       filters=[ws.Metric("Sweep") == sweep_id] if sweep_id else "",
                       groupby=[f"config.{k}" for k in group_keys])
    blocks = [wr.H1(f"Ablation: {', '.join(group_keys) or project}"),
              *([wr.MarkdownBlock(text=table_markdown)] if table_markdown else []),
              wr.PanelGrid(runsets=[runset], panels=_panels(wr, group_keys, metric))]
    return wr.Report(project=project, entity=entity, title=f"compare {sweep_id or project}",
                     description="made by python -m inception_lab compare", blocks=blocks)

