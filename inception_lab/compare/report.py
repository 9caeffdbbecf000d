"""What ``compare`` shows: the tables (on the terminal, and in markdown for a W&B report too), the plots as PNG bytes
(matplotlib's Agg canvas), ``report.md`` (images linked) and a self-contained ``report.html`` (images inlined)."""

from __future__ import annotations

import base64
import io
import math
import statistics
from datetime import datetime
from html import escape as esc
from pathlib import Path
from typing import Any

import markdown

from inception_lab.compare.cells import (
    PRIMARY,
    Cell,
    Difference,
    Stat,
    describe,
    holm,
    holm_levels,
    paired_difference,
    verdict,
)
from inception_lab.compare.runs import Run

ACCURACIES = (("val/acc_best", "val top-1"), ("val/acc_top5", "val top-5"), ("test/acc", "test top-1"),
              ("test/acc_top5", "test top-5"))  # PRIMARY first: the cell table's Δ column is its difference
COSTS = (("params", "params"), ("macs", "MACs"), ("throughput_img_per_s", "img/s"))
Table = tuple[str, list[str], list[list[str]]]  # heading ("" for none), header, rows


def _pct(stat: Stat) -> str:
    std = "—" if stat.std is None else f"{100 * stat.std:.2f}"
    return "—" if stat.mean is None else f"{100 * stat.mean:.2f} ± {std}"


def count(value: float | None) -> str:
    """A count as people read it: 3 significant digits and an SI prefix (32M, 276M, 1.5G, 250k, 12), by matplotlib's
    ``EngFormatter`` (the plots' axes use it too); — for none."""
    from matplotlib.ticker import EngFormatter

    return "—" if value is None else EngFormatter(sep="")(float(f"{value:.3g}"))


def _cost(stat: Stat) -> str:  # params and MACs are fixed per architecture: a spread is shown only if there is one
    return f"{count(stat.mean)} ± {count(stat.std)}" if stat.std else count(stat.mean)


def format_difference(diff: Difference | None) -> str:
    if diff is None:
        return "—"
    return (f"{100 * diff.diff:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] {diff.method} n={diff.n}"
            + " *" * diff.excludes_zero)


def tables(cell_list: list[Cell], by: list[str], base: Cell) -> list[Table]:
    """One row per cell (accuracies in %, Δ val top-1 against the baseline); then, when there are other cells, the Δ
    of every accuracy in percentage points. Test accuracies only when tested."""
    accuracies = [(k, label) for k, label in ACCURACIES if k == PRIMARY or any(c.values(k) for c in cell_list)]
    rows, differences = [], []
    for cell in cell_list:
        diffs = [None if cell is base else paired_difference(cell, base, key) for key, _ in accuracies]
        rows.append([describe(cell, by) + (" (baseline)" if cell is base else ""), str(len(cell.runs)),
                     *(_pct(cell.stat(key)) for key, _ in accuracies), *(_cost(cell.stat(key)) for key, _ in COSTS),
                     format_difference(diffs[0])])
        if cell is not base:
            notes = sorted({d.note for d in diffs if d is not None and d.note})
            differences.append([describe(cell, by), *map(format_difference, diffs), "; ".join(notes)])
    header = ["cell", "n", *(label for _, label in (*accuracies, *COSTS)), "Δ val top-1 vs baseline [95% CI]"]
    dheader = ["cell", *(f"Δ {label}" for _, label in accuracies), "note"]
    return [("", header, rows), *([("Differences against the baseline", dheader, differences)] if differences else [])]


def text_table(table: Table) -> str:
    _, header, rows = table
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def notes(by: list[str], base: Cell, cell_list: list[Cell]) -> str:
    paired = all(d is None or d.method == "paired" for c in cell_list if c is not base
                 for d in [paired_difference(c, base)])
    welch = "." if paired else "; Welch's interval (unequal variances) where the seeds do not pair."
    return (f"Cells grouped by {', '.join(f'`{k}`' for k in by) or 'nothing (one cell)'}. Accuracies in %, mean ± "
            "sample std over the finished runs of a cell (n; — when n = 1). Δ is the cell minus the baseline "
            f"({describe(base, by)}) in percentage points with a 95% confidence interval from Student's t: paired "
            f"by seed{welch} * marks an interval that excludes 0.")


def tables_markdown(cell_list: list[Cell], by: list[str], base: Cell) -> list[str]:
    """The notes and the tables as markdown lines (the W&B report shows them too)."""
    lines = [notes(by, base, cell_list)]
    for heading, header, rows in tables(cell_list, by, base):
        lines += ["", *([f"## {heading}", ""] if heading else []), "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    return lines


EFFECT = 0.005  # δ of a verdict's "equal within ±δ" (compare --half-width): 0.5 points, the size of the paper's claims
HOLM_NOTE = ("The verdicts above judge each comparison alone. Across the family, Holm's step-down procedure keeps the "
             "chance of any false \"higher\" or \"lower\" at alpha: the Holm p is the adjusted p-value, the Holm "
             "interval each cell's interval at its step's level.")
METRIC_WORDS = {"val/acc_best": "val top-1 (`val/acc_best`: the best validation top-1 over a run's epochs)"}


def _distinct(values: list[Any]) -> str:
    seen = list(dict.fromkeys(str(v) for v in values if v is not None))
    return ", ".join(seen) if seen else "—"


def _when(runs: list[Run]) -> str:
    """First start to last end of the runs' attempts, and the sum of their fits' wall times."""
    stamps = []
    for run in runs:
        for attempt in run.summary.get("attempts") or []:
            for key in ("start", "end"):
                try:
                    stamps.append(datetime.strptime(str(attempt.get(key)), "%Y-%m-%dT%H:%M:%S%z"))
                except ValueError:
                    pass
    walls = [w for r in runs if isinstance(w := r.summary.get("wall_s"), int | float)]
    span = (f"{min(stamps):%Y-%m-%d %H:%M} to {max(stamps):%Y-%m-%d %H:%M} {min(stamps):%Z}".rstrip()
            if stamps else "not recorded")
    return span + (f"; {sum(walls) / 60:.1f} min of fits over {len(walls)} runs" if walls else "")


def title(runs: list[Run], by: list[str], base: Cell, sweep: dict[str, Any] | None) -> str:
    """``head_gap_vs_fc.digits: val top-1 by head``: the sweep (else the experiment's runs) and what it compares."""
    keys = ", ".join(part.split("=")[0] for part in describe(base, by).split(", ")) if by else ""
    what = f"{METRIC_WORDS.get(PRIMARY, PRIMARY).split(' (')[0]}{' by ' + keys if keys else ''}"
    source = str(sweep.get("name")) if sweep else f"runs of {runs[0].experiment}"
    return f"{source}: {what}"


def header(runs: list[Run], sweep: dict[str, Any] | None, paths: list[str]) -> list[str]:
    """What a reader needs before the numbers: the sweep or the run directories, the metric, the protocol (experiment,
    epochs, seeds, data) and when the runs ran."""
    lines = []
    if sweep:
        lines.append(f"Sweep: `{sweep.get('name')}` ({', '.join(f'`{p}`' for p in paths)})"
                     + (f": {sweep['description']}" if sweep.get("description") else ""))
    else:
        shown = ", ".join(f"`{p}`" for p in paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
        lines.append(f"Run directories: {shown}")
    lines.append(f"Metric: {METRIC_WORDS.get(PRIMARY, f'`{PRIMARY}`')}, in %; higher is better.")
    config = [r.config for r in runs]
    seeds = sorted({r.seed for r in runs if r.seed is not None}, key=repr)
    data = _distinct([str(c.get("data.class_path", "")).rsplit(".", 1)[-1] or None for c in config])
    sizes = [f"{k} {_distinct([c.get(f'data.init_args.{k}') for c in config])}"
             for k in ("dataset", "batch_size", "image_size", "val_size", "test_size")
             if any(f"data.init_args.{k}" in c for c in config)]
    epochs = _distinct([c.get("trainer.max_epochs") for c in config])
    data += f" ({', '.join(sizes)})" if sizes else ""
    lines.append(f"Protocol: experiment `{runs[0].experiment}`; {epochs} epochs; seeds "
                 f"{', '.join(map(str, seeds)) or '—'}; data {data}.")
    lines.append(f"Ran: {_when(runs)}.")
    return lines


def verdicts(cell_list: list[Cell], by: list[str], base: Cell, half_width: float = EFFECT,
             alpha: float = 0.05) -> list[str]:
    """One line per cell against the baseline, the verdict of ``cells.verdict`` (the rule ``sweep
    --until-resolved`` stops by): higher / lower (the interval excludes 0), equal within ±δ (it includes 0 and is no
    wider than ±δ), or cannot tell (n, and the seeds per cell a ±δ interval would need at this spread)."""
    lines = []
    for cell in cell_list:
        if cell is base:
            continue
        name, diff = f"{describe(cell, by)} vs {describe(base, by)}", paired_difference(cell, base,
                                                                                         confidence=1 - alpha)
        if diff is None:
            lines.append(f"- {name}: no interval (a cell with fewer than 2 runs): cannot tell.")
            continue
        said = verdict(diff, half_width)
        interval = (f"{100 * diff.diff:+.2f} points [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}], "
                    f"{'paired over' if diff.method == 'paired' else 'Welch, unpaired,'} n = {diff.n}")
        level = f"{100 * (1 - alpha):g}%"
        if said.word in ("higher", "lower"):
            lines.append(f"- {name}: {interval}. **{said.word}**: the interval excludes 0 ({said.word} than the "
                         f"baseline at the {level} level).")
        elif said.word == "equal":
            lines.append(f"- {name}: {interval}. **{said.text()} points**: the interval includes 0 and its "
                         f"half-width ({100 * diff.half_width:.2f}) is at most {100 * half_width:g}.")
        else:
            need = diff.seeds_needed(half_width)
            spread = (f" At this spread (sd of the differences {100 * diff.sd:.2f} points) a ±{100 * half_width:g}"
                      f"-point interval needs about {need if need is not None else 'more than 100,000'} seeds per "
                      f"cell ({max(0, need - diff.n) if need is not None else 'many'} more)." if diff.sd else "")
            lines.append(f"- {name}: {interval}. **cannot tell** at n = {diff.n}: the interval includes 0 and is "
                         f"wider than ±{100 * half_width:g}." + spread)
    return lines


def holm_table(cell_list: list[Cell], by: list[str], base: Cell, half_width: float = EFFECT,
               alpha: float = 0.05) -> Table | None:
    """Holm's correction over the family of the sweep's comparisons with the baseline: each cell's raw p and
    interval, its Holm-adjusted p, and its interval at Holm's step-down level (1 - alpha / (m - i + 1) for the i-th
    smallest p), with the verdict each gives. None for fewer than two comparisons."""
    others = [c for c in cell_list if c is not base]
    diffs = [paired_difference(c, base, confidence=1 - alpha) for c in others]
    if sum(d is not None and d.p is not None for d in diffs) < 2:
        return None
    ps = [d.p if d is not None else None for d in diffs]
    adjusted, levels = holm(ps), holm_levels(ps, alpha)
    rows = []
    for cell, diff, p, level in zip(others, diffs, adjusted, levels):
        wide = paired_difference(cell, base, confidence=level) if level is not None else None
        rows.append([describe(cell, by), format_difference(diff), "—" if diff is None or diff.p is None else
                     f"{diff.p:.3g}", "—" if p is None else f"{p:.3g}",
                     "—" if wide is None else f"[{100 * wide.low:+.2f}, {100 * wide.high:+.2f}] at "
                     f"{100 * level:.2f}%", verdict(diff, half_width).text(), verdict(wide, half_width).text()])
    header = ["cell", f"Δ val top-1 [{100 * (1 - alpha):g}% CI]", "p", "Holm p", "Holm interval",
              "verdict", "verdict (Holm)"]
    return (f"Holm's correction over the {len(others)} comparisons with the baseline", header, rows)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plots(cell_list: list[Cell], by: list[str], base: Cell) -> dict[str, bytes]:
    """PNG images by file name: accuracy per cell, accuracy against MACs, val top-1 learning curves."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe to call from any process or thread
    from matplotlib.ticker import MaxNLocator

    names = [describe(c, by) for c in cell_list]
    images: dict[str, bytes] = {}

    series = [(k, label) for k, label in (("val/acc_best", "val top-1"), ("test/acc", "test top-1"))
              if any(c.values(k) for c in cell_list)]
    ax = Figure(figsize=(max(5.0, 1.4 * len(names)), 4)).subplots()
    width = 0.8 / max(1, len(series))
    ys: list[float] = []  # what the y axis must show
    for j, (key, label) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(cell_list))]
        stats = [c.stat(key) for c in cell_list]
        means, errs = [100 * (s.mean or 0) for s in stats], [100 * (s.std or 0) for s in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=4, alpha=0.75, label=label)
        for x, cell in zip(xs, cell_list):  # the seeds themselves
            values = [100 * v for v in cell.values(key)]
            ax.plot([x] * len(values), values, "k.", ms=4)
            ys += values
        ys += [m - e for m, e in zip(means, errs)] + [m + e for m, e in zip(means, errs)]
    low, high = min(ys, default=0), max(ys, default=100)
    span = max(1.0, high - low)
    ax.set_ylim(max(0.0, low - 0.5 * span), min(100.0, high + 0.3 * span))
    ax.set_xticks(range(len(names)), [n + (" *" if c is base else "") for n, c in zip(names, cell_list)],
                  rotation=20, ha="right")
    ax.set(ylabel="top-1 accuracy (%)", title="accuracy per cell (mean ± std over seeds; * baseline)")
    ax.legend(fontsize=8)
    images["accuracy.png"] = _png(ax.figure)

    ax = Figure(figsize=(6, 4)).subplots()
    macs = [c.stat("macs").mean for c in cell_list]
    known = [m for m in macs if m]
    log = bool(known) and min(known) > 0 and max(known) / min(known) > 10  # a wide range of cost: log scale
    where = (lambda m: math.log(m)) if log else (lambda m: m)
    span = (where(max(known)) - where(min(known))) or 1.0 if known else 1.0
    for i, (cell, name, x) in enumerate(zip(cell_list, names, macs)):
        stat = cell.stat(PRIMARY)
        if x is None or stat.mean is None:
            continue
        ax.errorbar([x], [100 * stat.mean], yerr=[100 * (stat.std or 0)], fmt="o", capsize=4, label=name)
        ax.annotate(name + " *" * (cell is base), (x, 100 * stat.mean), textcoords="offset points",
                    xytext=(5, 5 if i % 2 == 0 else -12), fontsize=7)  # neighbours alternate above and below
    ax.margins(x=0.2, y=0.1)  # room for the labels
    if log:
        ax.set_xscale("log")
    if known:  # ticks at the cells' own costs, in the units people read (32M, not 3.2 x 1e7), none crowding another
        ticks: list[float] = []
        for m in sorted(set(known)):
            if not ticks or (where(m) - where(ticks[-1])) / span > 0.06:
                ticks.append(m)
        ax.set_xticks(ticks, [count(t) for t in ticks], rotation=30 if len(ticks) > 3 else 0)
        ax.minorticks_off()
    ax.set(xlabel="multiply-adds per image", ylabel="val top-1 (%)",
           title="accuracy against compute (mean ± std; * baseline)")
    images["accuracy_vs_macs.png"] = _png(ax.figure)

    ax = Figure(figsize=(6, 4)).subplots()
    for cell, name in zip(cell_list, names):
        epochs = sorted(set().union(*(r.curve for r in cell.runs)))
        if not epochs:
            continue
        per_epoch = [[100 * r.curve[e] for r in cell.runs if e in r.curve] for e in epochs]
        mean = [statistics.fmean(v) for v in per_epoch]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
        line = ax.plot(epochs, mean, label=name + " (baseline)" * (cell is base), lw=2.5 if cell is base else 1.5)[0]
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
    if ax.lines:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="learning curves (mean ± std over seeds)")
        ax.legend(fontsize=8)
        images["learning_curves.png"] = _png(ax.figure)
    return images


def render(cell_list: list[Cell], by: list[str], base: Cell, excluded: list[Run], images: dict[str, bytes],
           title: str, head: list[str] | None = None, half_width: float = EFFECT,
           alpha: float = 0.05) -> tuple[str, str]:
    """``report.md`` (images linked) and ``report.html``, the same markdown rendered by the ``markdown`` library,
    self-contained (images as data URIs): the title, the ``head`` lines (sweep, metric, protocol, when), the tables,
    a verdict per cell, the plots."""
    members = [f"{describe(c, by)}: {', '.join(r.name for r in c.runs)}" for c in cell_list]
    left_out = [f"{r.name}: {r.status}" + (f" ({r.error_tail})" if r.error_tail else "") for r in excluded]
    head, said = head or [], verdicts(cell_list, by, base, half_width, alpha)
    family = holm_table(cell_list, by, base, half_width, alpha)
    level = f"{100 * (1 - alpha):g}% confidence, ±{100 * half_width:g} points"

    md = [f"# {title}", "", *(f"- {line}" for line in head), *([""] if head else []),
          *tables_markdown(cell_list, by, base), ""]
    md += [f"## Verdicts (against the baseline, {level})", "", *said, ""] if said else []
    if family is not None:
        md += [f"## {family[0]}", "", HOLM_NOTE, "", "| " + " | ".join(family[1]) + " |", "|" + "---|" * len(family[1]),
               *("| " + " | ".join(r) + " |" for r in family[2]), ""]
    md += ["## Runs not averaged in", "", *(f"- `{x}`" for x in left_out), ""] if left_out else []
    md += ["## Plots", "", *(f"![{Path(n).stem}]({n})\n" for n in images), "## Runs per cell", "",
           *(f"- {m}" for m in members), ""]

    text = "\n".join(md)
    inlined = text  # report.html: the same text, its images as data URIs (self-contained)
    for name, data in images.items():
        inlined = inlined.replace(f"]({name})", f"](data:image/png;base64,{base64.b64encode(data).decode()})")
    body = markdown.markdown(inlined, extensions=["tables"], output_format="html")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}img{max-width:100%}")
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n{body}\n</body></html>\n")
    return text, page
