"""``python -m inception_lab compare <sweep dir | run dirs...>``: ablation cells, mean ± std over seeds, paired
differences with 95% confidence intervals, plots, and ``report.md`` / ``report.html``.

Works offline from run directories (``summary.json``, ``config.yaml``, ``metrics.csv``); with a W&B server it can
read a W&B sweep instead (``--wandb ENTITY/PROJECT/SWEEP_ID``) and save a W&B workspace grouped by the same keys.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inception_lab.record import read_summary, write_atomic
from inception_lab.tracking import flatten, short_value

ACCURACIES = (("val/acc_best", "val top-1"), ("val/acc_top5", "val top-5"), ("test/acc", "test top-1"),
              ("test/acc_top5", "test top-5"))
COSTS = (("params", "params"), ("macs", "MACs"), ("throughput_img_per_s", "img/s"))
SEED_KEYS = ("seed_everything",)
# keys that differ between any two runs without making them different variants
RUN_KEYS = ("run_dir", "run_name", "experiment", "ckpt_path", "config")
RUN_PREFIXES = ("wandb.", "trainer.logger", "trainer.default_root_dir", "trainer.callbacks")
# two-sided 95% quantiles of Student's t, by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
        25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


class CompareError(Exception):
    """Bad input: reported as one line, exit 2."""


def t975(df: float) -> float:
    """Student's t 97.5% quantile (interpolated in 1/df between tabulated values; 1.96 beyond 120)."""
    if df >= 120:
        return 1.96
    keys = sorted(T975)
    low = max(k for k in keys if k <= df)
    high = min(k for k in keys if k >= df)
    if low == high:
        return T975[low]
    w = (1 / df - 1 / high) / (1 / low - 1 / high)
    return w * T975[low] + (1 - w) * T975[high]


@dataclass
class Run:
    name: str
    status: str
    config: dict[str, Any]  # flattened: "model.net.init_args.head" -> "gap"
    summary: dict[str, Any]
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> val/acc

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.config.get("seed_everything"))

    def metric(self, key: str) -> float | None:
        value = self.summary.get("metrics", {}).get(key, self.summary.get(key))
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Cell:
    key: tuple[Any, ...]
    runs: list[Run]

    def values(self, metric: str) -> list[float]:
        return [v for r in self.runs if (v := r.metric(metric)) is not None]


# ---- loading ------------------------------------------------------------------------------------------------------
def load_run(directory: Path) -> Run:
    summary = read_summary(directory)
    config_file = directory / "config.yaml"
    config = flatten(yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    curve: dict[int, float] = {}
    metrics = directory / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/acc") and row.get("epoch"):
                    curve[int(float(row["epoch"]))] = float(row["val/acc"])
    return Run(summary.get("run_name", directory.name), summary.get("status", "unknown"), config, summary, curve)


def load(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Runs under the given sweep directories / run directories, and the swept keys (from sweep.yaml, if any)."""
    runs: list[Run] = []
    swept: list[str] = []
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"{path}: no such directory")
        if (path / "sweep.yaml").is_file():
            swept += [k for k in sweep_keys(yaml.safe_load((path / "sweep.yaml").read_text())) if k not in swept]
        found = [path] if (path / "summary.json").is_file() else sorted(p.parent for p in path.rglob("summary.json"))
        runs += [load_run(d) for d in found]
    if not runs:
        raise CompareError(f"no run directories (with summary.json) found under {', '.join(map(str, paths))}")
    experiments = sorted({str(r.config.get("experiment", "?")) for r in runs})
    if len(experiments) > 1:
        raise CompareError(f"runs of different experiments mixed: {', '.join(experiments)}; compare one at a time")
    return runs, swept


def sweep_keys(sweep: dict[str, Any]) -> list[str]:
    """The CLI paths a W&B sweep file varies: nested blocks and dict values flattened, seeds left out."""
    keys: list[str] = []
    for name, spec in (sweep.get("parameters") or {}).items():
        if "parameters" in spec:
            keys += [f"{name}.{k}" for k in sweep_keys(spec)]
        elif any(isinstance(v, dict) for v in spec.get("values", [])):
            keys += sorted({k for v in spec["values"] for k in flatten(v, name)})
        else:
            keys.append(name)
    return [k for k in keys if k not in SEED_KEYS and not k.endswith("seed")]


def differing_keys(runs: list[Run]) -> list[str]:
    keys = sorted(set().union(*(r.config for r in runs)))
    return [k for k in keys if k not in RUN_KEYS and not k.startswith(RUN_PREFIXES) and k not in SEED_KEYS
            and len({repr(r.config.get(k)) for r in runs}) > 1]


# ---- cells and statistics -----------------------------------------------------------------------------------------
def cells(runs: list[Run], by: list[str]) -> list[Cell]:
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(_freeze(run.config.get(k)) for k in by)].append(run)
    return [Cell(key, members) for key, members in groups.items()]


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list | tuple) else value


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_difference(cell: Cell, baseline: Cell, metric: str) -> dict[str, Any] | None:
    """Mean difference (cell - baseline) with a 95% CI: paired by seed when the seeds match, else Welch's."""
    a = {r.seed: r.metric(metric) for r in cell.runs if r.metric(metric) is not None}
    b = {r.seed: r.metric(metric) for r in baseline.runs if r.metric(metric) is not None}
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2:
        diffs = [a[s] - b[s] for s in common]
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
        return {"diff": mean, "low": mean - half, "high": mean + half, "n": len(diffs), "method": "paired"}
    if len(a) >= 2 and len(b) >= 2:
        va, vb = statistics.variance(a.values()) / len(a), statistics.variance(b.values()) / len(b)
        mean = statistics.fmean(a.values()) - statistics.fmean(b.values())
        if va + vb == 0:
            return {"diff": mean, "low": mean, "high": mean, "n": min(len(a), len(b)), "method": "welch"}
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        half = t975(df) * math.sqrt(va + vb)
        return {"diff": mean, "low": mean - half, "high": mean + half, "n": min(len(a), len(b)), "method": "welch"}
    return None


# the paper's value of each ablation axis: the default baseline cell
PAPER = {"model.net.init_args.head": "gap", "model.net.init_args.filter_sizes": (3, 5),
         "model.net.init_args.reduce_width_mult": 1.0, "model.net.init_args.pool_proj_mult": 1.0,
         "model.aux_weight": 0.3, "model.net.init_args.aux_positions": ("4a", "4d")}


def pick_baseline(cell_list: list[Cell], by: list[str], baseline: list[str]) -> Cell:
    if not baseline:
        axes = [k for k in by if k in PAPER]
        paper = [c for c in cell_list if axes and all(c.key[by.index(k)] == PAPER[k] for k in axes)]
        return paper[0] if paper else cell_list[0]
    wanted: dict[str, Any] = {}
    for item in baseline:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--baseline {item!r}: expected KEY=VALUE, e.g. model.net.init_args.head=gap")
        if key not in by:
            raise CompareError(f"--baseline {item!r}: {key} is not a grouping key ({', '.join(by)})")
        wanted[key] = _freeze(yaml.safe_load(value))
    for cell in cell_list:
        if all(cell.key[by.index(k)] == v for k, v in wanted.items()):
            return cell
    have = "; ".join(describe(c, by) for c in cell_list)
    raise CompareError(f"--baseline {' '.join(baseline)}: no cell has that value (cells: {have})")


def describe(cell: Cell, by: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in zip(by, cell.key)) or "all runs"


# ---- rendering ----------------------------------------------------------------------------------------------------
def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f} ± —"


def _count(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def table_rows(cell_list: list[Cell], by: list[str], base: Cell) -> tuple[list[str], list[list[str]]]:
    header = ["cell", "n", *(label for _, label in ACCURACIES), *(label for _, label in COSTS),
              "Δ val top-1 vs baseline (95% CI)"]
    rows = []
    for cell in cell_list:
        row = [describe(cell, by) + (" (baseline)" if cell is base else ""), str(len(cell.runs))]
        row += [_pct(*mean_std(cell.values(key))) for key, _ in ACCURACIES]
        row += [_count(mean_std(cell.values(key))[0]) for key, _ in COSTS]
        diff = None if cell is base else paired_difference(cell, base, "val/acc_best")
        if diff is None:
            row.append("—")
        else:
            mark = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
            row.append(f"{100 * diff['diff']:+.2f} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"
                       f" {diff['method']}{mark}")
        rows.append(row)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def plots(cell_list: list[Cell], by: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [describe(c, by) for c in cell_list]
    stats = [mean_std(c.values("val/acc_best")) for c in cell_list]
    means = [100 * (m or 0) for m, _ in stats]
    errs = [100 * (s or 0) for _, s in stats]
    files = []

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 4))
    ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("val top-1 (%), best epoch")
    ax.set_ylim(max(0, min(means) - 3 * max(errs + [1])), min(100, max(means) + 2 * max(errs + [1])))
    ax.set_title("accuracy per cell (mean ± std over seeds)")
    files.append(_save(fig, out / "accuracy.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    macs = [mean_std(c.values("macs"))[0] or 0 for c in cell_list]
    for x, y, e, name in zip(macs, means, errs, names):
        ax.errorbar([x], [y], yerr=[e], fmt="o", capsize=4, label=name)
    if min(macs) > 0 and max(macs) / min(macs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per image")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("accuracy against compute")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "accuracy_vs_macs.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for cell, name in zip(cell_list, names):
        epochs = sorted(set().union(*(r.curve for r in cell.runs)))
        if not epochs:
            continue
        curves = [[100 * r.curve[e] for r in cell.runs if e in r.curve] for e in epochs]
        mean = [statistics.fmean(c) for c in curves]
        std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in curves]
        ax.plot(epochs, mean, label=name)
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("learning curves (mean ± std over seeds)")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "learning_curves.png"))
    return files


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def render(cell_list: list[Cell], by: list[str], base: Cell, excluded: list[Run], images: list[Path],
           title: str) -> tuple[str, str]:
    header, rows = table_rows(cell_list, by, base)
    notes = [f"Cells grouped by {', '.join(f'`{k}`' for k in by) or 'nothing'}; accuracies in %, mean ± sample std "
             f"over seeds (n per cell); Δ is the cell minus the baseline ({describe(base, by)}), paired by seed, with "
             "a 95% t confidence interval; * marks an interval that excludes 0."]
    md = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if excluded:
        md += ["", "## Runs not averaged in", ""]
        md += [f"- `{r.name}`: {r.status}" + (f" ({r.summary.get('error')})" if r.summary.get("error") else "")
               for r in excluded]
    md += ["", *[f"![{p.stem}]({p.name})" for p in images], ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(notes[0])}</p>", "<table border=1 cellpadding=4>",
            "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    body.append("</table>")
    if excluded:
        body += ["<h2>Runs not averaged in</h2><ul>"] + [
            f"<li>{html.escape(r.name)}: {html.escape(r.status)} {html.escape(str(r.summary.get('error', '')))}</li>"
            for r in excluded] + ["</ul>"]
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        body.append(f'<p><img alt="{image.stem}" src="data:image/png;base64,{data}"></p>')
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'>{''.join(body)}</body></html>")
    return "\n".join(md), page


# ---- W&B ----------------------------------------------------------------------------------------------------------
def wandb_runs(path: str) -> tuple[list[Run], list[str]]:
    """The runs of a W&B sweep (``ENTITY/PROJECT/SWEEP_ID``), as the same records as run directories."""
    import wandb

    sweep = wandb.Api(timeout=30).sweep(path)
    runs = []
    for r in sweep.runs:
        summary = dict(r.summary)
        record = {"metrics": summary, "status": "finished" if r.state == "finished" else r.state,
                  **{k: summary.get(k) for k in ("params", "macs", "throughput_img_per_s", "seed")}}
        runs.append(Run(r.name, record["status"], flatten(dict(r.config)), record))
    return runs, sweep_keys(sweep.config)


def build_workspace(entity: str, project: str, sweep_id: str | None, group_keys: list[str],
                    metric: str = "val/acc_best") -> Any:
    """A W&B workspace with the comparison's panels, its runs grouped by ``group_keys`` (saved with ``.save()``)."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise CompareError("a W&B workspace needs wandb-workspaces: pip install 'inception-lab[workspaces]'") from None
    panels = [
        wr.BarPlot(title=f"{metric} per cell", metrics=[metric], groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.ScatterPlot(title="accuracy against compute", x=wr.SummaryMetric("macs"), y=wr.SummaryMetric(metric)),
        wr.LinePlot(title="val top-1 per epoch", x="epoch", y=["val/acc"], groupby_aggfunc="mean",
                    groupby_rangefunc="stddev"),
        wr.ParallelCoordinatesPlot(columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k))
                                            for k in group_keys] + [
            wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))]),
    ]
    filters = f"Metric('SweepName') == '{sweep_id}'" if sweep_id else ""
    return ws.Workspace(
        entity=entity, project=project, name=f"ablation {sweep_id or project}",
        sections=[ws.Section(name="ablation", panels=panels, is_open=True)],
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config(k) for k in group_keys]),
    )


# ---- command ------------------------------------------------------------------------------------------------------
def compare(paths: list[Path], by: list[str] | None = None, baseline: list[str] | None = None,
            out: Path | None = None, wandb_path: str | None = None) -> dict[str, Any]:
    """Load, group, compute and write the report; returns what it computed (for tests and callers)."""
    runs, swept = wandb_runs(wandb_path) if wandb_path else load(paths)
    finished = [r for r in runs if r.status == "finished"]
    excluded = [r for r in runs if r.status != "finished"]
    if not finished:
        raise CompareError(f"no finished runs among {len(runs)} (statuses: "
                           f"{', '.join(sorted({r.status for r in runs}))})")
    keys = by or swept or differing_keys(finished)
    known = set().union(*(r.config for r in finished))
    missing = [k for k in keys if k not in known]
    if missing:
        sample = ", ".join(sorted(k for k in known if k.startswith(("model.", "data.")))[:6])
        raise CompareError(f"--by {missing[0]}: no run has this key (keys look like: {sample}, ...)")
    cell_list = cells(finished, keys)
    base = pick_baseline(cell_list, keys, baseline or [])
    out = out or ((paths[0] / "report") if paths and paths[0].is_dir() else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    images = plots(cell_list, keys, out)
    title = f"inception_lab: {finished[0].config.get('experiment', 'runs')}"
    markdown, page = render(cell_list, keys, base, excluded, images, title)
    write_atomic(out / "report.md", markdown)
    write_atomic(out / "report.html", page)
    header, rows = table_rows(cell_list, keys, base)
    return {"by": keys, "cells": cell_list, "baseline": base, "excluded": excluded, "out": out,
            "table": text_table(header, rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inception_lab compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="a sweep directory, or run directories")
    parser.add_argument("--by", action="append", help="group by this config key (repeatable); default: the swept "
                                                      "keys, else the keys whose values differ")
    parser.add_argument("--baseline", action="append",
                        help="KEY=VALUE of the baseline cell (repeatable); default: the paper's values, else the first")
    parser.add_argument("--out", type=Path, help="report directory (default: <sweep dir>/report)")
    parser.add_argument("--wandb", help="read a W&B sweep instead: ENTITY/PROJECT/SWEEP_ID")
    parser.add_argument("--wandb-workspace", action="store_true",
                        help="also save a W&B workspace grouped by the same keys (needs --wandb)")
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb:
        parser.error("give a sweep directory, run directories, or --wandb ENTITY/PROJECT/SWEEP_ID")
    try:
        result = compare(args.paths, args.by, args.baseline, args.out, args.wandb)
        if args.wandb_workspace:
            if not args.wandb:
                raise CompareError("--wandb-workspace needs --wandb ENTITY/PROJECT/SWEEP_ID")
            entity, project, sweep_id = args.wandb.split("/")
            print(f"W&B workspace: {build_workspace(entity, project, sweep_id, result['by']).save().url}")
    except CompareError as error:
        print(f"inception_lab compare: error: {error}", file=sys.stderr)
        return 2
    print(result["table"])
    for run in result["excluded"]:
        error = f": {run.summary['error']}" if run.summary.get("error") else ""
        print(f"not averaged in: {run.name} ({run.status}{error})")
    print(f"report: {result['out'] / 'report.md'}, {result['out'] / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
