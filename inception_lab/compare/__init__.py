"""``python -m inception_lab compare <sweep dir | run dirs...>``: ablation cells, mean ± std over seeds, paired
differences with 95% confidence intervals, plots, and ``report.md`` / ``report.html``.

Reads run directories (``summary.json``, ``config.yaml``, ``metrics.csv``) offline, or a W&B sweep (``--wandb``),
and can save a W&B workspace or report grouped by the same keys. A cell is the runs of one identity (the resolved
``config.yaml`` less the seed and bookkeeping: ``inception_lab.run.identity``), named by the keys that differ among the
runs compared; the baseline is the experiment as its file was written when the runs started (their recorded variant
sets none of those keys), else the first cell.

    python -m inception_lab compare runs/sweeps/head_gap_vs_fc.digits
    python -m inception_lab compare runs/quickstart/a runs/quickstart/b --by model.net.init_args.head
    python -m inception_lab compare runs/sweeps/reduce_widths --baseline reduce_width_mult=1.0 --out report/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inception_lab.compare.cells import Cell, group, grouping_keys, pick_baseline, sweep_order
from inception_lab.compare.report import EFFECT, header, plots, render, tables, tables_markdown, text_table, title
from inception_lab.compare.runs import CompareError, Run, load, parse_wandb_path, wandb_runs
from inception_lab.compare.wandb_views import build_report, build_workspace
from inception_lab.errors import ArgumentParser
from inception_lab.run.files import write_all_atomic
from inception_lab.run.layout import RunDir


@dataclass
class Comparison:
    """What ``compare`` computed and wrote."""

    by: list[str]
    cells: list[Cell]
    baseline: Cell
    excluded: list[Run]
    out: Path
    table: str  # the terminal table
    tables_markdown: str


def compare(paths: list[Path], by: list[str] | None = None, baseline: list[str] | None = None,
            out: Path | None = None, wandb_path: str | None = None, api: Any = None, half_width: float = EFFECT,
            alpha: float = 0.05) -> Comparison:
    """Load, group, compute, plot and write the report; raises CompareError on bad input. ``half_width`` (δ, a
    fraction) and ``alpha``: the verdicts' rule (``cells.verdict``) and Holm's family level."""
    runs, swept, sweep = wandb_runs(wandb_path, api) if wandb_path else load(paths)
    finished = [r for r in runs if r.status == "finished"]
    excluded = [r for r in runs if r.status != "finished"]
    if not finished:
        statuses = ", ".join(sorted({r.status for r in runs}))
        raise CompareError(f"no finished runs among {len(runs)} (statuses: {statuses})")
    keys = grouping_keys(finished, by, swept)
    cell_list = group(finished, keys)
    if sweep:  # the cells as the sweep file lists them
        cell_list = sweep_order(cell_list, keys, sweep.get("parameters") or {})
    base = pick_baseline(cell_list, keys, baseline)
    if out is None:  # <sweep dir>/report for one sweep directory, else ./report
        one_sweep = len(paths) == 1 and paths[0].is_dir() and not RunDir(paths[0]).summary().is_file()
        out = paths[0] / "report" if one_sweep else Path("report")
    images = plots(cell_list, keys, base)
    head = header(finished, sweep, [wandb_path] if wandb_path else [str(p) for p in paths])
    markdown, page = render(cell_list, keys, base, excluded, images, title(finished, keys, base, sweep), head,
                            half_width, alpha)
    write_all_atomic({out / name: data for name, data in [*images.items(), ("report.md", markdown),
                                                          ("report.html", page)]})
    return Comparison(keys, cell_list, base, excluded, out, text_table(tables(cell_list, keys, base)[0]),
                      "\n".join(tables_markdown(cell_list, keys, base)))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m inception_lab compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="a sweep directory, or run directories")
    parser.add_argument("--by", action="append", metavar="KEY",
                        help="group by this config key first, e.g. model.net.init_args.head or head (repeatable); "
                             "the keys where the runs' configs differ (bookkeeping and seed aside) always group")
    parser.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                        help="the baseline cell (repeatable); default: the experiment as written, else the first cell")
    parser.add_argument("--out", type=Path, help="report directory (default: <sweep dir>/report, else ./report)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT/SWEEP_ID", help="read a W&B sweep instead of directories")
    parser.add_argument("--half-width", type=float, default=100 * EFFECT, metavar="POINTS",
                        help="δ of the verdict 'equal within ±δ' (an interval that includes 0 and is no wider than "
                             "±δ), in points of top-1 (default 0.5)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="1 - the intervals' confidence, and Holm's family level (default 0.05)")
    parser.add_argument("--wandb-workspace", action="store_true",
                        help="also save a W&B workspace of the sweep grouped by the same keys (needs --wandb)")
    parser.add_argument("--wandb-report", action="store_true",
                        help="also save a W&B report: this table above the grouped panels (needs --wandb)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.paths) == bool(args.wandb):
        raise CompareError("give a sweep directory or run directories, or --wandb ENTITY/PROJECT/SWEEP_ID (not both)")
    if (args.wandb_workspace or args.wandb_report) and not args.wandb:
        raise CompareError("--wandb-workspace and --wandb-report need --wandb ENTITY/PROJECT/SWEEP_ID")
    if not args.half_width > 0:
        raise CompareError(f"--half-width {args.half_width}: expected points of top-1 > 0, e.g. 0.5")
    if not 0 < args.alpha < 1:
        raise CompareError(f"--alpha {args.alpha}: expected a level in (0, 1), e.g. 0.05")
    result = compare(args.paths, args.by, args.baseline, args.out, args.wandb, half_width=args.half_width / 100,
                     alpha=args.alpha)
    print(result.table)
    for run in result.excluded:
        print(f"not averaged in: {run.name} ({run.status}{': ' + run.error_tail if run.error_tail else ''})")
    print(f"report: {result.out / 'report.md'}, {result.out / 'report.html'}")
    if args.wandb_workspace or args.wandb_report:
        where = (*parse_wandb_path(args.wandb), result.by)  # entity, project, sweep id, grouping keys
        views = [("workspace", build_workspace(*where))] if args.wandb_workspace else []
        if args.wandb_report:
            views.append(("report", build_report(*where, result.tables_markdown)))
        for kind, view in views:
            try:
                print(f"W&B {kind}: {view.save().url}")
            except Exception as error:  # the server refused or cannot be reached
                first = (str(error).strip().splitlines() or [""])[0]
                raise CompareError(f"saving the W&B {kind} failed: {type(error).__name__}: {first}") from None
    return 0
