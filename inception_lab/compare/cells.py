"""Cells: the keys that tell the runs apart (where their identities, the config less seed and bookkeeping, differ;
``--by`` first), one cell per combination of values, the baseline cell (the experiment as its file was written, or
``--baseline``); and the statistics of cells: mean ± sample std over seeds, and cell - baseline with a two-sided 95% t
interval from ``scipy.stats``, paired by seed where at least two seeds pair, Welch's (unequal variances) otherwise."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Any

import yaml

from inception_lab.compare.runs import CompareError, Run
from inception_lab.run.files import flatten, short_value
from inception_lab.run.identity import identity

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
        values = self.values(metric)
        return Stat(len(values), statistics.fmean(values) if values else None,
                    statistics.stdev(values) if len(values) > 1 else None)


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
    sd: float | None = None  # of the paired differences; Welch: sqrt(var cell + var baseline), as if unpaired
    p: float | None = None  # two-sided p of the t test (None: the differences did not vary)
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def seeds_needed(self, half_width: float) -> int | None:
        """Seeds per cell (pairs) for an interval of this one's confidence to be at most ±``half_width`` wide at the
        spread these differences had: the smallest n with t((1 + confidence) / 2, n - 1) * sd / sqrt(n) <=
        half_width. Such an interval resolves the cell whatever the true difference (it excludes 0, or says equal
        within ±δ). None without a spread; 2 when the differences did not vary."""
        if self.sd is None:
            return None
        if self.sd == 0:
            return 2
        from scipy import stats

        for n in range(2, 100_001):
            if stats.t.ppf((1 + self.confidence) / 2, n - 1) * self.sd / math.sqrt(n) <= half_width:
                return n
        return None


def freeze(value: Any) -> Any:
    """Lists to tuples and dicts to tuples of items, so that config values can key a cell."""
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in sorted(value.items()))
    return tuple(freeze(v) for v in value) if isinstance(value, list | tuple) else value


def _order(value: Any) -> tuple[Any, ...]:
    """A sort key for mixed config values: None, then numbers by value, then strings, then lists."""
    if isinstance(value, tuple):
        return (3, tuple(_order(v) for v in value))
    return (0,) if value is None else (1, float(value)) if isinstance(value, int | float) else (2, str(value))


def resolve_key(key: str, known: list[str]) -> str | None:
    """``key`` itself, or the one known key it is a dotted suffix of (``head`` -> ``model.net.init_args.head``)."""
    matches = [k for k in known if k.endswith("." + key)]
    return key if key in known else matches[0] if len(matches) == 1 else None


def differing_keys(runs: list[Run]) -> list[str]:
    """The keys that tell the runs apart, sorted: those of their identities (the config less the seed and what every
    run records as bookkeeping) that every run has and whose values are not all equal."""
    bookkeeping = set.intersection(*(set(r.bookkeeping) for r in runs))
    shared = identity(dict.fromkeys(set.intersection(*(set(r.config) for r in runs))), bookkeeping)
    return sorted(k for k in shared if len({freeze(r.config[k]) for r in runs}) > 1)


def grouping_keys(runs: list[Run], by: list[str] | None, swept: list[str]) -> list[str]:
    """``--by`` (full keys or unique suffixes) first, then every key that tells the runs apart (in the order of the
    sweep file's parameters, then sorted): runs whose identities differ never share a cell."""
    varied = differing_keys(runs)
    keys = [k for k in swept if k in varied] + [k for k in varied if k not in swept]
    known = sorted(set().union(*(r.config for r in runs)))
    resolved = {key: resolve_key(key, known) for key in by or []}
    if missing := [key for key, full in resolved.items() if full is None]:
        sample = ", ".join((varied + [k for k in known if k.startswith("model.") and k not in varied])[:6])
        raise CompareError(f"--by {missing[0]}: no run has this key (available keys include: {sample}, ...)")
    chosen = list(dict.fromkeys(k for k in resolved.values() if k is not None))
    return chosen + [k for k in keys if k not in chosen]


def group(runs: list[Run], by: list[str]) -> list[Cell]:
    """One cell per distinct combination of the ``by`` values, sorted by those values (0.25 < 0.5 < 1 < naive)."""
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(freeze(run.config.get(k)) for k in by), []).append(run)
    return [Cell(key, groups[key]) for key in sorted(groups, key=_order)]


def sweep_order(cell_list: list[Cell], by: list[str], parameters: dict[str, Any]) -> list[Cell]:
    """The cells in the order the sweep file lists its values: per parameter, a cell ranks as the listed value that
    matches it on the most grouping keys (a dict value such as ``{aux_weight: 0.0, net: ...}`` on each key it
    sets); cells that match no listed value follow, in their sorted order."""
    def rank(cell: Cell) -> list[int]:
        ranks = []
        for name, spec in parameters.items():
            values = spec.get("values") if isinstance(spec, dict) else None
            if not isinstance(values, list):
                continue
            best, matched = len(values), 0
            for i, value in enumerate(values):
                shared = [(k, v) for k, v in flatten(value, name).items() if k in by]
                if len(shared) > matched and all(freeze(v) == cell.key[by.index(k)] for k, v in shared):
                    best, matched = i, len(shared)
            ranks.append(best)
        return ranks
    return sorted(cell_list, key=rank)  # stable: equal ranks keep the sorted order


def describe(cell: Cell, by: list[str]) -> str:
    """``head=fc, filter_sizes=3x3``: each key by its shortest dotted suffix that no other key shares."""
    def short(key: str) -> str:
        parts = key.split(".")
        suffixes = (".".join(parts[-i:]) for i in range(1, len(parts) + 1))
        return next((n for n in suffixes if not any(k != key and (k == n or k.endswith("." + n)) for k in by)), key)
    return ", ".join(f"{short(k)}={short_value(v)}" for k, v in zip(by, cell.key)) or "all runs"


def _parse_value(text: str) -> Any:
    try:
        return freeze(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def pick_baseline(cell_list: list[Cell], by: list[str], baseline: list[str] | None = None) -> Cell:
    """The cell named by ``KEY=VALUE`` items; default: the first cell (in sweep order) of the experiment as its file
    was written when the runs started (runs whose recorded variant sets none of the grouping keys), else the first
    cell."""
    if not baseline:
        written = (c for c in cell_list if all(r.variant is not None and not set(by) & set(r.variant) for r in c.runs))
        return next(written, cell_list[0])
    wanted: dict[str, str] = {}
    for item in baseline:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CompareError(f"--baseline {item!r}: expected KEY=VALUE, e.g. model.net.init_args.head=gap")
        if (resolved := resolve_key(key.strip(), by)) is None:
            raise CompareError(f"--baseline {item!r}: {key} is not a grouping key (grouping keys: {', '.join(by)})")
        wanted[resolved] = value.strip()
    for cell in cell_list:  # the value as YAML (1.0, [3, 5], gap) or as the table writes it (3x5)
        if all((have := cell.key[by.index(k)]) == _parse_value(v) or short_value(have) == v for k, v in wanted.items()):
            return cell
    have = "; ".join(describe(c, by) for c in cell_list)
    raise CompareError(f"--baseline {' '.join(baseline)}: no cell has that value (cells: {have})")


def _by_seed(runs: list[Run], metric: str) -> dict[Any, float]:
    """seed -> value; empty when a seed is missing or repeated (the runs cannot be paired)."""
    pairs = [(r.seed, v) for r in runs if (v := r.metric(metric)) is not None]
    seeds = [s for s, _ in pairs]
    return {} if None in seeds or len(set(map(repr, seeds))) < len(seeds) else dict(pairs)


def paired_difference(cell: Cell, baseline: Cell, metric: str = PRIMARY, confidence: float = 0.95) -> Difference | None:
    """Mean of cell - baseline with a ``confidence`` t interval: paired by seed when >= 2 seeds pair, else Welch's
    (unequal variances); None when a side has fewer than 2 values. The one implementation ``compare``'s tables and
    verdicts and ``sweep --until-resolved``'s stopping rule share."""
    a, b = _by_seed(cell.runs, metric), _by_seed(baseline.runs, metric)
    common = [s for s in a if s in b]
    if paired := len(common) >= 2:
        x, y = [a[s] for s in common], [b[s] for s in common]
        unpaired = len(a) + len(b) - 2 * len(common)
        note = f"{unpaired} unpaired run(s) left out" if unpaired else ""
    else:
        x, y, note = cell.values(metric), baseline.values(metric), "seeds do not pair"
        if len(x) < 2 or len(y) < 2:
            return None
    from scipy import stats  # ~2 s to import: only when an interval is computed, so that bad input fails at once

    with warnings.catch_warnings():  # equal values: scipy warns of precision loss, the interval has zero width
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel(x, y) if paired else stats.ttest_ind(x, y, equal_var=False)
        interval = test.confidence_interval(confidence)
    diff = statistics.fmean(u - v for u, v in zip(x, y)) if paired else statistics.fmean(x) - statistics.fmean(y)
    sd = (statistics.stdev(u - v for u, v in zip(x, y)) if paired
          else math.sqrt(statistics.variance(x) + statistics.variance(y)))
    p = float(test.pvalue) if math.isfinite(test.pvalue) else None
    return Difference(diff, float(interval.low), float(interval.high), min(len(x), len(y)), float(test.df),
                      "paired" if paired else "welch", note, sd, p, confidence)


@dataclass
class Verdict:
    """What one cell's interval against the baseline says: ``higher`` or ``lower`` (it excludes 0), ``equal``
    (within ±``half_width``: it includes 0 and is no wider than that either side), or ``cannot tell``."""

    word: str
    diff: Difference | None
    half_width: float  # δ, a fraction (0.005: half a point of top-1)

    @property
    def resolved(self) -> bool:
        return self.word != "cannot tell"

    def text(self) -> str:
        delta = f"{100 * self.half_width:g}"
        return f"equal within ±{delta}" if self.word == "equal" else self.word


def verdict(diff: Difference | None, half_width: float) -> Verdict:
    """The rule ``compare`` reports and ``sweep --until-resolved`` stops by: resolved when the interval excludes 0
    (higher / lower) or its half-width is at most ``half_width`` (equal within ±δ)."""
    if diff is None or diff.low != diff.low:  # no interval, or one of NaNs
        return Verdict("cannot tell", diff, half_width)
    if diff.excludes_zero:
        return Verdict("higher" if diff.diff > 0 else "lower", diff, half_width)
    if diff.half_width <= half_width:
        return Verdict("equal", diff, half_width)
    return Verdict("cannot tell", diff, half_width)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of a family (None stays None and is not counted): the i-th smallest of m
    is max over j <= i of min(1, (m - j + 1) p_(j)). (scipy.stats has Benjamini-Hochberg, not Holm.)"""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, adjusted, running = len(order), list(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def holm_levels(p_values: list[float | None], alpha: float = 0.05) -> list[float | None]:
    """Each comparison's confidence level in Holm's step-down procedure: 1 - alpha / (m - i + 1) for the i-th
    smallest p (an interval at that level excludes 0 exactly when Holm rejects at ``alpha``, the steps before it
    having rejected)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    levels: list[float | None] = [None] * len(p_values)
    for rank, (_, i) in enumerate(order):
        levels[i] = 1 - alpha / (len(order) - rank)
    return levels
