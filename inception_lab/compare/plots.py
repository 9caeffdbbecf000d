"""The comparison's plots as PNG bytes (matplotlib's Agg canvas): accuracy per cell, accuracy against compute, and
learning curves."""

from __future__ import annotations

import io
import statistics
from typing import Any

from inception_lab.compare.grouping import describe
from inception_lab.compare.stats import PRIMARY, Cell


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
    fig = Figure(figsize=(max(5.0, 1.4 * len(names)), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    ys: list[float] = []  # what the y axis must show
    for j, (key, label) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(cell_list))]
        stats = [c.stat(key) for c in cell_list]
        means = [100 * (s.mean or 0) for s in stats]
        errs = [100 * (s.std or 0) for s in stats]
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
    images["accuracy.png"] = _png(fig)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    macs = [c.stat("macs").mean for c in cell_list]
    for cell, name, x in zip(cell_list, names, macs):
        stat = cell.stat(PRIMARY)
        if x is None or stat.mean is None:
            continue
        ax.errorbar([x], [100 * stat.mean], yerr=[100 * (stat.std or 0)], fmt="o", capsize=4, label=name)
        ax.annotate(name, (x, 100 * stat.mean), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.margins(x=0.2, y=0.1)  # room for the labels
    known = [m for m in macs if m]
    if known and min(known) > 0 and max(known) / min(known) > 10:  # a wide range of cost: log scale
        ax.set_xscale("log")
    ax.set(xlabel="multiply-adds per image", ylabel="val top-1 (%)", title="accuracy against compute")
    images["accuracy_vs_macs.png"] = _png(fig)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    drawn = False
    for cell, name in zip(cell_list, names):
        epochs = sorted(set().union(*(r.curve for r in cell.runs)))
        if not epochs:
            continue
        per_epoch = [[100 * r.curve[e] for r in cell.runs if e in r.curve] for e in epochs]
        mean = [statistics.fmean(v) for v in per_epoch]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
        line = ax.plot(epochs, mean, label=name)[0]
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
        drawn = True
    if drawn:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="learning curves (mean ± std over seeds)")
        ax.legend(fontsize=8)
        images["learning_curves.png"] = _png(fig)
    return images
