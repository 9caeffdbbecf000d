"""The comparison as tables: the terminal table, ``report.md`` (images linked) and a self-contained ``report.html``
(images inlined), and the markdown tables a W&B report shows."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from inception_lab.compare.grouping import describe
from inception_lab.compare.runs import Run
from inception_lab.compare.stats import PRIMARY, Cell, Difference, Stat, paired_difference

ACCURACIES = (("val/acc_best", "val top-1"), ("val/acc_top5", "val top-5"), ("test/acc", "test top-1"),
              ("test/acc_top5", "test top-5"))
COSTS = (("params", "params"), ("macs", "MACs"), ("throughput_img_per_s", "img/s"))


def _pct(stat: Stat) -> str:
    if stat.mean is None:
        return "—"
    return f"{100 * stat.mean:.2f} ± " + (f"{100 * stat.std:.2f}" if stat.std is not None else "—")


def _count(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _cost(stat: Stat) -> str:
    if not stat.std:
        return _count(stat.mean)  # params and MACs are fixed per architecture: a spread is shown only if there is one
    return f"{_count(stat.mean)} ± {_count(stat.std)}"


def format_difference(diff: Difference | None) -> str:
    if diff is None:
        return "—"
    mark = " *" if diff.excludes_zero else ""
    return (f"{100 * diff.diff:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] {diff.method} n={diff.n}{mark}")


def shown_accuracies(cell_list: list[Cell]) -> list[tuple[str, str]]:
    """Accuracy columns that some run has (test/* only when tested)."""
    return [(k, label) for k, label in ACCURACIES if k == PRIMARY or any(c.values(k) for c in cell_list)]


def table_rows(cell_list: list[Cell], by: list[str], base: Cell) -> tuple[list[str], list[list[str]]]:
    """The report's table: one row per cell, accuracies in percent, Δ val top-1 against the baseline."""
    accuracies = shown_accuracies(cell_list)
    header = ["cell", "n", *(label for _, label in accuracies), *(label for _, label in COSTS),
              "Δ val top-1 vs baseline [95% CI]"]
    rows = []
    for cell in cell_list:
        row = [describe(cell, by) + (" (baseline)" if cell is base else ""), str(len(cell.runs))]
        row += [_pct(cell.stat(key)) for key, _ in accuracies]
        row += [_cost(cell.stat(key)) for key, _ in COSTS]
        row.append("—" if cell is base else format_difference(paired_difference(cell, base, PRIMARY)))
        rows.append(row)
    return header, rows


def difference_rows(cell_list: list[Cell], by: list[str], base: Cell) -> tuple[list[str], list[list[str]]]:
    """Δ of every accuracy (percentage points) against the baseline, one row per other cell."""
    accuracies = shown_accuracies(cell_list)
    header = ["cell", *(f"Δ {label}" for _, label in accuracies), "note"]
    rows = []
    for cell in cell_list:
        if cell is base:
            continue
        diffs = [paired_difference(cell, base, key) for key, _ in accuracies]
        notes = sorted({d.note for d in diffs if d is not None and d.note})
        rows.append([describe(cell, by), *map(format_difference, diffs), "; ".join(notes)])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def notes(by: list[str], base: Cell, cell_list: list[Cell]) -> str:
    paired = all(d is None or d.method == "paired" for c in cell_list if c is not base
                 for d in [paired_difference(c, base)])
    text = (f"Cells grouped by {', '.join(f'`{k}`' for k in by) or 'nothing (one cell)'}. Accuracies in %, mean ± "
            "sample std over the finished runs of a cell (n; — when n = 1). Δ is the cell minus the baseline "
            f"({describe(base, by)}) in percentage points with a 95% confidence interval from Student's t: paired "
            "by seed")
    return text + ("." if paired else "; Welch's interval (unequal variances) where the seeds do not pair.") + (
        " * marks an interval that excludes 0.")


def tables_markdown(cell_list: list[Cell], by: list[str], base: Cell) -> list[str]:
    """The notes, the cell table and the differences table as markdown lines (the W&B report shows them too)."""
    header, rows = table_rows(cell_list, by, base)
    dheader, drows = difference_rows(cell_list, by, base)
    lines = [notes(by, base, cell_list), "", *_md_table(header, rows)]
    if drows:
        lines += ["", "## Differences against the baseline", "", *_md_table(dheader, drows)]
    return lines


def render(cell_list: list[Cell], by: list[str], base: Cell, excluded: list[Run], images: dict[str, bytes],
           title: str) -> tuple[str, str]:
    """``report.md`` (images linked) and a self-contained ``report.html`` (images as data URIs)."""
    header, rows = table_rows(cell_list, by, base)
    dheader, drows = difference_rows(cell_list, by, base)
    note = notes(by, base, cell_list)
    members = [f"{describe(c, by)}: {', '.join(r.name for r in c.runs)}" for c in cell_list]
    left_out = [f"{r.name}: {r.status}" + (f" ({r.error_tail})" if r.error_tail else "") for r in excluded]

    md = [f"# {title}", "", *tables_markdown(cell_list, by, base), ""]
    if left_out:
        md += ["## Runs not averaged in", "", *(f"- `{x}`" for x in left_out), ""]
    md += ["## Plots", "", *(f"![{Path(n).stem}]({n})\n" for n in images), "## Runs per cell", "",
           *(f"- {m}" for m in members), ""]

    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(note)}</p>", _html_table(header, rows)]
    if drows:
        body += ["<h2>Differences against the baseline</h2>", _html_table(dheader, drows)]
    if left_out:
        body += ["<h2>Runs not averaged in</h2><ul>", *(f"<li>{html.escape(x)}</li>" for x in left_out), "</ul>"]
    body.append("<h2>Plots</h2>")
    body += [f'<p><img alt="{html.escape(Path(n).stem)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
             "</p>" for n, data in images.items()]
    body += ["<h2>Runs per cell</h2><ul>", *(f"<li>{html.escape(m)}</li>" for m in members), "</ul>"]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}img{max-width:100%}")
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    return "\n".join(md), page
