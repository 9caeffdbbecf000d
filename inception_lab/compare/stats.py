"""Statistics of cells: mean ± sample std over seeds, and cell - baseline with a two-sided 95% t interval from
``scipy.stats``, paired by seed where at least two seeds pair, Welch's (unequal variances) otherwise."""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import Any

from inception_lab.compare.runs import Run

PRIMARY = "val/acc_best"  # the metric a cell is judged by


@dataclass
class Stat:
    n: int
    mean: float | None
    std: float | None  # sample std (ddof=1); None when n < 2


@dataclass
class Cell:
    """The finished runs that share one combination of grouping values."""

    key: tuple[Any, ...]
    runs: list[Run]

    def values(self, metric: str) -> list[float]:
        return [v for r in self.runs if (v := r.metric(metric)) is not None]

    def stat(self, metric: str) -> Stat:
        return mean_std(self.values(metric))


@dataclass
class Difference:
    """cell - baseline, with a two-sided 95% confidence interval."""

    diff: float
    low: float
    high: float
    n: int  # pairs (paired) or the smaller group (Welch)
    df: float
    method: str  # "paired" or "welch"
    note: str = ""

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def mean_std(values: list[float]) -> Stat:
    if not values:
        return Stat(0, None, None)
    return Stat(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def _by_seed(runs: list[Run], metric: str) -> dict[Any, float] | None:
    """seed -> value, or None when a seed is missing or repeated (the runs cannot be paired)."""
    pairs = [(r.seed, v) for r in runs if (v := r.metric(metric)) is not None]
    seeds = [s for s, _ in pairs]
    if None in seeds or len(set(map(repr, seeds))) < len(seeds):
        return None
    return dict(pairs)


def paired_difference(cell: Cell, baseline: Cell, metric: str = PRIMARY) -> Difference | None:
    """Mean of cell - baseline with a 95% t interval: paired by seed when >= 2 seeds pair, else Welch's (unequal
    variances); None when a side has fewer than 2 values."""
    a, b = _by_seed(cell.runs, metric), _by_seed(baseline.runs, metric)
    common = [s for s in a if s in b] if a is not None and b is not None else []
    if paired := len(common) >= 2:
        assert a is not None and b is not None
        x, y, n = [a[s] for s in common], [b[s] for s in common], len(common)
        unpaired = len(a) + len(b) - 2 * n
        note = f"{unpaired} unpaired run(s) left out" if unpaired else ""
    else:
        x, y, note = cell.values(metric), baseline.values(metric), "seeds do not pair"
        if len(x) < 2 or len(y) < 2:
            return None
        n = min(len(x), len(y))
    from scipy import stats  # ~2 s to import: only when an interval is computed, so that bad input fails at once

    with warnings.catch_warnings():  # equal values: scipy warns of precision loss, the interval has zero width
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel(x, y) if paired else stats.ttest_ind(x, y, equal_var=False)
        interval = test.confidence_interval(0.95)
    diff = statistics.fmean(u - v for u, v in zip(x, y)) if paired else statistics.fmean(x) - statistics.fmean(y)
    return Difference(diff, float(interval.low), float(interval.high), n, float(test.df),
                      "paired" if paired else "welch", note)
