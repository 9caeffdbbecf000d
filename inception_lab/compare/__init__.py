"""``python -m inception_lab compare <sweep dir | run dirs...>``: ablation cells, mean ± std over seeds, paired
differences with their intervals, a verdict per cell (higher, lower, equal within ±δ, cannot tell) with Holm's
correction across the cells, plots, and ``report.md`` / ``report.html`` / ``report.json``.

Reads run directories (``summary.json``, ``config.yaml``, ``metrics.csv``) offline, or a W&B sweep (``--wandb``),
and can save a W&B workspace or report grouped by the same keys. A cell is the runs of one identity (the resolved
``config.yaml`` less the seed and bookkeeping: ``inception_lab.run.identity``), named by the keys that differ among the
runs compared; the baseline is the experiment as its file was written when the runs started (their recorded variant
sets none of those keys), else the first cell. The verdicts are the rule's (``compare.sequential``): a sweep directory
that ``sweep --until-resolved`` grew is judged by the looks it grew by (its state.json keeps the rule), on the rule's
metric, δ and alpha unless ``--metric``, ``--half-width`` or ``--alpha`` say otherwise; the rounds of a W&B one
(``--wandb`` once a round) by ``--looks``; anything else looked once.

    python -m inception_lab compare runs/sweeps/head_gap_vs_fc.digits
    python -m inception_lab compare runs/quickstart/a runs/quickstart/b --by model.net.init_args.head
    python -m inception_lab compare runs/sweeps/reduce_widths --baseline reduce_width_mult=1.0 --out report/
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inception_lab import console
from inception_lab.compare.cells import PRIMARY, Cell, group, grouping_keys, pick_baseline, sweep_order
from inception_lab.compare.report import (
    EFFECT,
    header,
    headline,
    plots,
    render,
    tables,
    tables_markdown,
    text_table,
    title,
)
from inception_lab.compare.runs import CompareError, Run, load, parse_wandb_path, wandb_rounds
from inception_lab.compare.sequential import Design
from inception_lab.compare.verdicts import Family, judge, record
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
    family: Family  # the verdicts


def grown_by(paths: list[Path]) -> tuple[Any, Design] | None:
    """The --until-resolved rule (``sweep.resolve.Rule``) and looks of one sweep directory given alone (or its
    ``runs/``), as its state.json recorded them; None for anything else."""
    if len(paths) != 1:
        return None
    from inception_lab.sweep.resolve import recorded_design

    path = paths[0]
    return recorded_design(path) or (recorded_design(path.parent) if path.name == "runs" else None)


def compare(paths: list[Path], by: list[str] | None = None, baseline: list[str] | None = None,
            out: Path | None = None, wandb_path: str | list[str] | None = None, api: Any = None,
            half_width: float | None = None, alpha: float | None = None, metric: str | None = None,
            looks: tuple[int, ...] | None = None) -> Comparison:
    """Load, group, judge, plot and write the report; raises CompareError on bad input. ``half_width`` (δ, a
    fraction), ``alpha`` and ``metric``: the rule's (``sequential.Design``); None: what an --until-resolved sweep
    directory recorded, else 0.5 points, 0.05 and ``cells.PRIMARY``. Holm's families are at ``alpha`` too.
    ``wandb_path``: a W&B sweep, or the rounds of one (a list); ``looks``: the seeds per cell a sweep grown by looks
    may stop at, where nothing recorded them (W&B rounds); None: a sweep directory's, else one look."""
    wandb_paths = [wandb_path] if isinstance(wandb_path, str) else wandb_path or []
    runs, swept, sweep = wandb_rounds(wandb_paths, api) if wandb_paths else load(paths)
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
    grown = None if wandb_paths else grown_by(paths)
    rule = grown[0] if grown else None
    design = Design(alpha if alpha is not None else rule.alpha if rule else 0.05,
                    half_width if half_width is not None else rule.half_width if rule else EFFECT,
                    looks if looks is not None else grown[1].looks if grown else ())
    metric = metric or (rule.metric if rule else PRIMARY)
    if not any(cell.values(metric) for cell in cell_list):
        recorded = {key for run in finished for key in run.summary.get("metrics", {}) if run.metric(key) is not None}
        known = ", ".join(sorted(recorded))
        hint = "" if metric != PRIMARY else ("; a fit records it at its end (--test_after_fit, the default): for runs "
                                             "before that, `python -m inception_lab test --run_dir RUN` each, or "
                                             "--metric val/acc_best")
        raise CompareError(f"--metric {metric}: no finished run records it (they record: {known or 'none'}){hint}")
    family = judge(cell_list, base, metric, design)
    if out is None:  # <sweep dir>/report for one sweep directory, else ./report
        one_sweep = len(paths) == 1 and paths[0].is_dir() and not RunDir(paths[0]).summary().is_file()
        out = paths[0] / "report" if one_sweep else Path("report")
    images = plots(cell_list, keys, base, metric)
    head = header(finished, sweep, wandb_paths or [str(p) for p in paths], metric)
    markdown, page = render(cell_list, keys, family, excluded, images, title(finished, keys, base, sweep, metric), head)
    summary = json.dumps(record(cell_list, keys, family), indent=2, ensure_ascii=False) + "\n"
    write_all_atomic({out / name: data for name, data in [*images.items(), ("report.md", markdown),
                                                          ("report.html", page), ("report.json", summary)]})
    return Comparison(keys, cell_list, base, excluded, out, text_table(tables(cell_list, keys, family)[0]),
                      "\n".join(tables_markdown(cell_list, keys, family)), family)


def parse_looks(text: str) -> tuple[int, ...]:
    """``--looks 5,7,9``: increasing seed counts, the first at least 2 (an interval needs 2 seeds)."""
    try:
        looks = tuple(int(part) for part in text.split(","))
    except ValueError:
        looks = ()
    if not looks or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise CompareError(f"--looks {text}: expected increasing seed counts per cell, the first at least 2, e.g. "
                           "5,7,9")
    return looks


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m inception_lab compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="a sweep directory, or run directories")
    parser.add_argument("--by", action="append", metavar="KEY",
                        help="group by this config key first, e.g. model.net.init_args.head or head (repeatable); "
                             "the keys where the runs' configs differ (bookkeeping and seed aside) always group")
    parser.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                        help="the baseline cell (repeatable); default: the experiment as written, else the first cell")
    parser.add_argument("--out", type=Path, help="report directory (default: <sweep dir>/report, else ./report)")
    parser.add_argument("--wandb", action="append", metavar="ENTITY/PROJECT/SWEEP_ID",
                        help="read a W&B sweep instead of directories; repeated, the rounds of one --until-resolved "
                             "sweep (its first, then each --emit-followup sweep), judged together")
    parser.add_argument("--looks", metavar="N,N,...",
                        help="the seeds per cell at which a sweep grown by looks may stop (its --until-resolved rule: "
                             "the file's seeds, then --seeds-per-round more up to --max-seeds; --emit-followup "
                             "prints them); a sweep directory records its own")
    parser.add_argument("--metric", metavar="KEY",
                        help=f"the runs' summary metric the verdicts judge (default: an --until-resolved sweep's, else "
                             f"{PRIMARY})")
    parser.add_argument("--half-width", type=float, metavar="POINTS",
                        help="δ of the verdict 'equal within ±δ' (two one-sided tests reject a difference of δ or "
                             f"more), in points of top-1 (default: an --until-resolved sweep's, else {100 * EFFECT:g})")
    parser.add_argument("--alpha", type=float,
                        help="each verdict's error rate (a false higher-or-lower, a false equal) and Holm's family "
                             "level (default: an --until-resolved sweep's, else 0.05)")
    parser.add_argument("--wandb-workspace", action="store_true",
                        help="also save a W&B workspace of the sweep grouped by the same keys (needs --wandb)")
    parser.add_argument("--wandb-report", action="store_true",
                        help="also save a W&B report: this table above the grouped panels (needs --wandb)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.paths) == bool(args.wandb):
        raise CompareError("give a sweep directory or run directories, or --wandb ENTITY/PROJECT/SWEEP_ID (not both)")
    if (args.wandb_workspace or args.wandb_report) and len(args.wandb or ()) != 1:
        raise CompareError("--wandb-workspace and --wandb-report need --wandb ENTITY/PROJECT/SWEEP_ID, once (a "
                           "workspace shows one sweep)")
    looks = None if args.looks is None else parse_looks(args.looks)
    if args.half_width is not None and not args.half_width > 0:
        raise CompareError(f"--half-width {args.half_width}: expected points of top-1 > 0, e.g. 0.5")
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise CompareError(f"--alpha {args.alpha}: expected a level in (0, 1), e.g. 0.05")
    if args.metric is not None and not args.metric.strip():
        raise CompareError(f"--metric {args.metric!r}: expected a key of the runs' summary metrics, e.g. test/acc")
    result = compare(args.paths, args.by, args.baseline, args.out, args.wandb, metric=args.metric,
                     half_width=None if args.half_width is None else args.half_width / 100, alpha=args.alpha,
                     looks=looks)
    print(result.table)
    for run in result.excluded:
        print(f"not averaged in: {run.name} ({run.status}{': ' + run.error_tail if run.error_tail else ''})")
    if args.wandb_workspace or args.wandb_report:
        where = (*parse_wandb_path(args.wandb[0]), result.by)  # entity, project, sweep id, grouping keys
        metric = result.family.metric
        views = [("workspace", build_workspace(*where, metric=metric))] if args.wandb_workspace else []
        if args.wandb_report:
            views.append(("report", build_report(*where, result.tables_markdown, metric=metric)))
        for kind, view in views:
            try:
                print(f"W&B {kind}: {view.save().url}")
            except Exception as error:  # the server refused or cannot be reached
                first = (str(error).strip().splitlines() or [""])[0]
                raise CompareError(f"saving the W&B {kind} failed: {type(error).__name__}: {first}") from None
    console.result(headline(result.cells, result.by, result.family, result.out))  # last; --quiet keeps it alone
    return 0
