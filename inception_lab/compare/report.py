"""What ``compare`` shows: the tables (on the terminal, and in markdown for a W&B report too), the plots as PNG bytes
(matplotlib's Agg canvas), ``report.md`` (images linked) and a self-contained ``report.html`` (images inlined); the
verdicts themselves are ``compare.verdicts``'."""

from __future__ import annotations

import base64
import io
import math
import re
import statistics
from collections import Counter
from datetime import datetime
from html import escape as esc
from pathlib import Path
from typing import Any

import markdown

from inception_lab.compare.cells import PRIMARY, Cell, Difference, Stat, describe, paired_difference
from inception_lab.compare.runs import Run
from inception_lab.compare.sequential import CANNOT_TELL, EQUAL, HIGHER, LOWER
from inception_lab.compare.verdicts import Family, Judgement, rule_words

ACCURACIES = (("val/acc_best", "val top-1"), ("val/acc_top5", "val top-5"), ("test/acc", "test top-1"),
              ("test/acc_top5", "test top-5"))
COSTS = (("params", "params"), ("macs", "MACs"), ("throughput_img_per_s", "img/s"))
Table = tuple[str, list[str], list[list[str]]]  # heading ("" for none), header, rows


def code(text: Any) -> str:
    """``text`` as a markdown code span whatever backticks it holds (an error's tail may hold an odd number): fenced
    by one more backtick than its longest run, padded where it starts or ends with one."""
    text = str(text)
    fence = "`" * (1 + max(map(len, re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _pct(stat: Stat) -> str:
    std = "—" if stat.std is None else f"{100 * stat.std:.2f}"
    return "—" if stat.mean is None else f"{100 * stat.mean:.2f} ± {std}"


def count(value: float | None) -> str:
    """A count as people read it: 3 significant digits and an SI prefix (32M, 276M, 1.5G, 250k, 12), by matplotlib's
    ``EngFormatter`` (the plots' axes use it too); — for none."""
    from matplotlib.ticker import EngFormatter

    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 1 else EngFormatter(sep="")(float(f"{value:.3g}"))  # 0.297, not 297m


def _cost(stat: Stat) -> str:  # params and MACs are fixed per architecture: a spread is shown only if there is one
    return f"{count(stat.mean)} ± {count(stat.std)}" if stat.std else count(stat.mean)


def format_difference(diff: Difference | None) -> str:
    if diff is None:
        return "—"
    return (f"{100 * diff.diff:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] {diff.method} n={diff.n}"
            + " *" * diff.excludes_zero)


def metric_label(metric: str) -> str:
    """A metric as the tables name it: ``val top-1`` for ``val/acc_best``; other keys as they are."""
    return dict(ACCURACIES).get(metric, metric)


def format_verdict(judged: Judgement | None) -> str:
    """The rule's difference and interval, * where that interval excludes 0 (the rule says higher or lower)."""
    diff = None if judged is None else judged.verdict.diff
    if judged is None or diff is None:
        return "—"
    said = judged.verdict
    return (f"{100 * diff.diff:+.2f} [{100 * said.low:+.2f}, {100 * said.high:+.2f}] {diff.method} n={diff.n}"
            + " *" * (said.word in (HIGHER, LOWER)))


def tables(cell_list: list[Cell], by: list[str], family: Family) -> list[Table]:
    """One row per cell (accuracies in %, the judged metric's Δ against the baseline with the rule's interval);
    then, when there are other cells, every accuracy's Δ in percentage points, each with a plain interval. Test
    accuracies only when tested."""
    base, metric = family.base, family.metric
    accuracies = [(k, name) for k, name in ACCURACIES if k == metric or any(c.values(k) for c in cell_list)]
    accuracies = accuracies if metric in dict(accuracies) else [(metric, metric), *accuracies]
    rows, differences = [], []
    for cell in cell_list:
        diffs = [None if cell is base else paired_difference(cell, base, key) for key, _ in accuracies]
        rows.append([describe(cell, by) + (" (baseline)" if cell is base else ""), str(len(cell.runs)),
                     *(_pct(cell.stat(key)) for key, _ in accuracies), *(_cost(cell.stat(key)) for key, _ in COSTS),
                     format_verdict(family.of(cell))])
        if cell is not base:
            notes = sorted({d.note for d in diffs if d is not None and d.note})
            differences.append([describe(cell, by), *map(format_difference, diffs), "; ".join(notes)])
    level = f"{100 * (1 - family.design.alpha):g}% CI" + ", corrected for the looks" * family.design.sequential
    header = ["cell", "n", *(name for _, name in (*accuracies, *COSTS)),
              f"Δ {metric_label(metric)} vs baseline [{level}]"]
    dheader = ["cell", *(f"Δ {name}" for _, name in accuracies), "note"]
    return [("", header, rows), *([("Differences against the baseline", dheader, differences)] if differences else [])]


def text_table(table: Table) -> str:
    _, header, rows = table
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def notes(by: list[str], family: Family) -> str:
    paired = all(j.verdict.diff is None or j.verdict.diff.method == "paired" for j in family.judged)
    welch = "." if paired else "; Welch's interval (unequal variances) where the seeds do not pair."
    level = f"{100 * (1 - family.design.alpha):g}%"
    interval = (f"its {level} interval by the rule, corrected for the looks the cells grew by (a repeated "
                "confidence interval: see the verdicts)" if family.design.sequential
                else f"a {level} confidence interval from Student's t")
    return (f"Cells grouped by {', '.join(f'`{k}`' for k in by) or 'nothing (one cell)'}. Accuracies in %, mean ± "
            "sample std over the finished runs of a cell (n; — when n = 1). Δ is the cell minus the baseline "
            f"({describe(family.base, by)}) in percentage points with {interval}: paired by seed{welch} The "
            "differences table gives every accuracy a plain 95% t interval of its own, uncorrected. In every table, * "
            "marks an interval that excludes 0 (where the interval is the rule's: a verdict of higher or lower).")


def tables_markdown(cell_list: list[Cell], by: list[str], family: Family) -> list[str]:
    """The notes and the tables as markdown lines (the W&B report shows them too)."""
    lines = [notes(by, family)]
    for heading, header, rows in tables(cell_list, by, family):
        lines += ["", *([f"## {heading}", ""] if heading else []), "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    return lines


EFFECT = 0.005  # δ of a verdict's "equal within ±δ" (compare --half-width): 0.5 points, the size of the paper's claims
METRIC_WORDS = {"val/acc_best": "val top-1 (`val/acc_best`: the best validation top-1 over a run's epochs, on the "
                                "split the fit selected its checkpoint by, so it is optimistic)",
                "test/acc": "test top-1 (`test/acc`: the checkpoint each fit selected on val, tested at the fit's end "
                            "on the test split, which nothing selected on)"}


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


def title(runs: list[Run], by: list[str], base: Cell, sweep: dict[str, Any] | None, metric: str = PRIMARY) -> str:
    """``head_gap_vs_fc.digits: val top-1 by head``: the sweep (else the experiment's runs) and what it compares."""
    keys = ", ".join(part.split("=")[0] for part in describe(base, by).split(", ")) if by else ""
    what = f"{metric_label(metric)}{' by ' + keys if keys else ''}"
    source = str(sweep.get("name")) if sweep else f"runs of {runs[0].experiment}"
    return f"{source}: {what}"


def header(runs: list[Run], sweep: dict[str, Any] | None, paths: list[str], metric: str = PRIMARY) -> list[str]:
    """What a reader needs before the numbers: the sweep or the run directories, the metric, the protocol (experiment,
    epochs, seeds, data) and when the runs ran."""
    lines = []
    if sweep:
        lines.append(f"Sweep: {code(sweep.get('name'))} ({', '.join(map(code, paths))})"
                     + (f": {sweep['description']}" if sweep.get("description") else ""))
    else:
        shown = ", ".join(map(code, paths[:6])) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
        lines.append(f"Run directories: {shown}")
    lines.append(f"Metric: {METRIC_WORDS.get(metric, f'`{metric}`')}, in %; higher is better.")
    config = [r.config for r in runs]
    seeds = sorted({r.seed for r in runs if r.seed is not None}, key=repr)
    data = _distinct([str(c.get("data.class_path", "")).rsplit(".", 1)[-1] or None for c in config])
    sizes = [f"{k} {_distinct([c.get(f'data.init_args.{k}') for c in config])}"
             for k in ("dataset", "batch_size", "image_size", "val_size", "test_size")
             if any(f"data.init_args.{k}" in c for c in config)]
    epochs = _distinct([c.get("trainer.max_epochs") for c in config])
    data += f" ({', '.join(sizes)})" if sizes else ""
    lines.append(f"Protocol: experiment `{runs[0].experiment}`; {epochs} epoch{'s' * (epochs != '1')}; seeds "
                 f"{', '.join(map(str, seeds)) or '—'}; data {data}.")
    lines.append(f"Seeds vary: {varied(config)}.")
    lines.append(f"Ran: {_when(runs)}.")
    return lines


def varied(config: list[dict[str, Any]]) -> str:
    """What a run's seed varied (Bouthillier et al. 2021: every source of variation, the data split too): always the
    initial weights and the draws of training; the data split where ``split_seed`` is null (it follows the seed)."""
    drawn = "the initial weights, the batch order, the augmentation and dropout draws"
    splits = [c.get("data.init_args.split_seed") for c in config if "data.init_args.split_seed" in c]
    fixed = ", ".join(sorted({str(s) for s in splits if s is not None}))
    if not splits:
        return drawn
    if all(s is None for s in splits):
        return f"{drawn}, and the data split (`split_seed: null`)"
    if None in splits:
        return f"{drawn}; the data split in some runs only (`split_seed`: null in some, {fixed} in others)"
    return f"{drawn}; not the data split (`split_seed` {fixed})"


def _interval(low: float, high: float) -> str:
    return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def verdicts(by: list[str], family: Family) -> list[str]:
    """One line per cell against the baseline: the rule's verdict and what it tested. higher / lower: the rule's
    interval excludes 0 (the t test rejects no difference); equal within ±δ: TOST's interval lies inside ±δ (both
    one-sided tests reject a difference of δ or more); cannot tell: neither, with the ``power`` command that says
    how often more seeds would answer at this spread."""
    lines, design = [], family.design
    delta = f"{100 * design.half_width:g}"
    for judged in family.judged:
        name, said = f"{describe(judged.cell, by)} vs {describe(family.base, by)}", judged.verdict
        diff = said.diff
        if diff is None:
            lines.append(f"- {name}: no interval (a cell with fewer than 2 runs): cannot tell.")
            continue
        interval = (f"{100 * diff.diff:+.2f} points {_interval(said.low, said.high)}, "
                    f"{'paired over' if diff.method == 'paired' else 'Welch, unpaired,'} n = {diff.n}")
        p = "" if judged.p is None else f"p = {judged.p:.3g}"
        equal = f"TOST's interval {_interval(said.equal_low, said.equal_high)}"
        if said.word in (HIGHER, LOWER):
            lines.append(f"- {name}: {interval}. **{said.word}**: the interval excludes 0 (the t test rejects no "
                         f"difference at {design.alpha:g}; {p}).")
        elif said.word == EQUAL:
            lines.append(f"- {name}: {interval}. **{said.text()} points**: both one-sided t tests reject a difference "
                         f"of {delta} points or more at {design.alpha:g} ({equal} lies inside ±{delta}; p = "
                         f"{judged.p_equal:.3g}).")
        else:
            plan = (f" `python -m inception_lab power --sd {100 * diff.sd:.2f} --half-width {delta} --seeds {diff.n}` "
                    "gives the chance of each verdict with more seeds at this spread." if diff.sd else "")
            lines.append(f"- {name}: {interval}. **cannot tell** at n = {diff.n}: the interval includes 0 and "
                         f"{equal} reaches beyond ±{delta}." + plan)
    return lines


def holm_table(by: list[str], family: Family) -> Table | None:
    """Holm's correction over the sweep's comparisons with the baseline: each cell's p-values by the rule (of higher
    or lower, of equal within ±δ), their Holm-adjusted values, and the verdict each gives. None for fewer than two
    comparisons."""
    if sum(j.p is not None for j in family.judged) < 2:
        return None
    def p(value: float | None) -> str:
        return "—" if value is None else f"{value:.3g}"
    rows = [[describe(j.cell, by), format_verdict(j), p(j.p), p(j.holm_p), p(j.p_equal), p(j.holm_p_equal),
             j.verdict.text(), j.holm_text()] for j in family.judged]
    design = family.design
    level = f"{100 * (1 - design.alpha):g}% CI" + ", corrected for the looks" * design.sequential
    header = ["cell", f"Δ {metric_label(family.metric)} [{level}]", "p", "Holm p",
              f"p (equal ±{100 * design.half_width:g})", "Holm p (equal)", "verdict", "verdict (Holm)"]
    return (f"Holm's correction over the {len(family.judged)} comparisons with the baseline", header, rows)


def holm_note(family: Family) -> str:
    kind = ("repeated p-values (valid at whatever look a cell stopped)" if family.design.sequential
            else "the t tests' p-values")
    return (f"Each verdict above keeps its own error rates for its cell: a false higher or lower at most "
            f"{family.design.alpha:g}, a false equal at most {family.design.alpha:g}. Across the sweep's cells, Holm's "
            f"step-down procedure on the rule's {kind} keeps the chance of any false higher or lower among them at "
            f"{family.design.alpha:g}, and of any false equal at {family.design.alpha:g}: p tests a difference, p "
            "(equal) an equivalence, each column a family of its own.")


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plots(cell_list: list[Cell], by: list[str], base: Cell, metric: str = PRIMARY) -> dict[str, bytes]:
    """:func:`figures` as PNG images by file name."""
    return {name: _png(fig) for name, fig in figures(cell_list, by, base, metric).items()}


def figures(cell_list: list[Cell], by: list[str], base: Cell, metric: str = PRIMARY) -> dict[str, Any]:
    """matplotlib figures by file name: accuracy per cell (bars from 0), accuracy against MACs, val top-1 learning
    curves (a point per epoch: a 1-epoch run is one). The baseline is named "(baseline)" in words: * is the tables'
    (an interval that excludes 0)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe to call from any process or thread
    from matplotlib.ticker import MaxNLocator

    names = [describe(c, by) for c in cell_list]
    figs: dict[str, Any] = {}

    series = [(k, label) for k, label in (("val/acc_best", "val top-1"), ("test/acc", "test top-1"))
              if any(c.values(k) for c in cell_list)]
    ax = Figure(figsize=(max(5.0, 1.4 * len(names)), 4)).subplots()
    width = 0.8 / max(1, len(series))
    for j, (key, label) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(cell_list))]
        stats = [c.stat(key) for c in cell_list]
        means, errs = [100 * (s.mean or 0) for s in stats], [100 * (s.std or 0) for s in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=4, alpha=0.75, label=label)
        for x, cell in zip(xs, cell_list):  # the seeds themselves
            values = [100 * v for v in cell.values(key)]
            ax.plot([x] * len(values), values, "k.", ms=4)
    ax.set_ylim(bottom=0)  # a bar's height is its value: an axis from 0, with no break
    ax.set_xticks(range(len(names)), [n + ("\n(baseline)" if c is base else "") for n, c in zip(names, cell_list)],
                  rotation=20, ha="right")
    ax.set(ylabel="top-1 accuracy (%)", title="accuracy per cell (mean ± std; dots: the seeds)")
    ax.legend(fontsize=8)
    figs["accuracy.png"] = ax.figure

    ax = Figure(figsize=(6, 4)).subplots()
    macs = [c.stat("macs").mean for c in cell_list]
    known = [m for m in macs if m]
    log = bool(known) and min(known) > 0 and max(known) / min(known) > 10  # a wide range of cost: log scale
    where = (lambda m: math.log(m)) if log else (lambda m: m)
    span = (where(max(known)) - where(min(known))) or 1.0 if known else 1.0
    for i, (cell, name, x) in enumerate(zip(cell_list, names, macs)):
        stat = cell.stat(metric)
        if x is None or stat.mean is None:
            continue
        ax.errorbar([x], [100 * stat.mean], yerr=[100 * (stat.std or 0)], fmt="o", capsize=4, label=name)
        ax.annotate(name + " (baseline)" * (cell is base), (x, 100 * stat.mean), textcoords="offset points",
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
    ax.set(xlabel="multiply-adds per image", ylabel=f"{metric_label(metric)} (%)",
           title="accuracy against compute (mean ± std over seeds)")
    figs["accuracy_vs_macs.png"] = ax.figure

    ax = Figure(figsize=(6, 4)).subplots()
    every = sorted(set().union(*(r.curve for c in cell_list for r in c.runs)))
    for i, (cell, name) in enumerate(zip(cell_list, names)):
        epochs = sorted(set().union(*(r.curve for r in cell.runs)))
        if not epochs:
            continue
        per_epoch = [[100 * r.curve[e] for r in cell.runs if e in r.curve] for e in epochs]
        mean = [statistics.fmean(v) for v in per_epoch]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
        if len(every) == 1:  # one epoch: a point per cell, side by side, its spread as an error bar
            ax.errorbar([e + 0.1 * (i - (len(cell_list) - 1) / 2) for e in epochs], mean, yerr=std, fmt="o",
                        capsize=4, label=name + " (baseline)" * (cell is base))
            continue
        line = ax.plot(epochs, mean, marker="o", ms=3, label=name + " (baseline)" * (cell is base),
                       lw=2.5 if cell is base else 1.5)[0]
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
    if every:
        if len(every) <= 10:
            ax.set_xticks(every)
            ax.set_xlim(every[0] - 0.5, every[-1] + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="learning curves (mean ± std over seeds)")
        ax.legend(fontsize=8)
        figs["learning_curves.png"] = ax.figure
    return figs


def headline(cell_list: list[Cell], by: list[str], family: Family, out: Path) -> str:
    """``compare``'s last line: where the report is, its cells and their verdicts against the baseline."""
    line = f"compare: {out / 'report.html'}: {len(cell_list)} cell{'s' * (len(cell_list) != 1)}"
    if not family.judged:
        return f"{line}, the baseline alone: nothing to compare"
    words = Counter(j.verdict.word for j in family.judged)
    return (f"{line}; against the baseline {describe(family.base, by)} on {metric_label(family.metric)}: "
            f"{words[HIGHER]} higher, {words[LOWER]} lower, {words[EQUAL]} equal within "
            f"±{100 * family.design.half_width:g} points, {words[CANNOT_TELL]} cannot tell")


def render(cell_list: list[Cell], by: list[str], family: Family, excluded: list[Run], images: dict[str, bytes],
           title: str, head: list[str] | None = None) -> tuple[str, str]:
    """``report.md`` (images linked) and ``report.html``, the same markdown rendered by the ``markdown`` library,
    self-contained (images as data URIs): the title, the ``head`` lines (sweep, metric, protocol, when), the rule,
    the tables, a verdict per cell, Holm's table, the plots."""
    members = [f"{describe(c, by)}: {', '.join(r.name for r in c.runs)}" for c in cell_list]
    left_out = [f"{r.name}: {r.status}" + (f" ({r.error_tail})" if r.error_tail else "") for r in excluded]
    head, said, family_table = head or [], verdicts(by, family), holm_table(by, family)
    design = family.design
    level = f"{100 * (1 - design.alpha):g}% confidence, ±{100 * design.half_width:g} points"

    md = [f"# {title}", "", *(f"- {line}" for line in head), f"- Rule: {rule_words(design)}.", "",
          *tables_markdown(cell_list, by, family), ""]
    md += [f"## Verdicts (against the baseline, {level})", "", *said, ""] if said else []
    if family_table is not None:
        md += [f"## {family_table[0]}", "", holm_note(family), "", "| " + " | ".join(family_table[1]) + " |",
               "|" + "---|" * len(family_table[1]), *("| " + " | ".join(r) + " |" for r in family_table[2]), ""]
    md += ["## Runs not averaged in", "", *(f"- {code(x)}" for x in left_out), ""] if left_out else []
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
