"""Cells: the keys that tell the runs apart (where their identities, the config less seed and bookkeeping, differ;
``--by`` first), one cell per combination of values, the baseline cell (the experiment as its file was written, or
``--baseline``); and the statistics of cells: mean ± sample std over seeds, cell - baseline with its t interval
(paired by seed where at least two seeds pair, Welch's otherwise), and its verdict by the rule
(``sequential.Design``: one implementation for ``compare``, ``sweep --until-resolved`` and ``power``)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import yaml

from inception_lab.compare.runs import CompareError, Run
from inception_lab.compare.sequential import CANNOT_TELL, EQUAL, Design, t_quantile, t_tail
from inception_lab.run.files import flatten, short_value
from inception_lab.run.identity import identity

# the metric a cell is judged by, unless --metric names another: the test top-1 of the checkpoint each fit selected
# on val (``fit --test_after_fit``, the default), a split nothing selected on; "val/acc_best" stays a --metric away
PRIMARY = "test/acc"


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
    """cell - baseline, with a two-sided t interval at ``confidence`` (each alone: the verdict's own interval, which
    a sweep grown by looks corrects, is :class:`Verdict`'s)."""

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
    se: float | None = None  # standard error of ``diff`` (None: read from the interval)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def standard_error(self) -> float:
        return self.se if self.se is not None else self.half_width / t_quantile((1 - self.confidence) / 2, self.df)


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
    verdicts, ``sweep --until-resolved``'s stopping rule and ``power``'s check share."""
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
    if paired:
        diffs = [u - v for u, v in zip(x, y)]
        diff, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        se, df = sd / math.sqrt(len(diffs)), float(len(diffs) - 1)
    else:  # Welch-Satterthwaite
        vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
        diff, sd = statistics.fmean(x) - statistics.fmean(y), math.sqrt(statistics.variance(x) + statistics.variance(y))
        se = math.sqrt(vx + vy)
        df = ((vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)) if se > 0
              else float(len(x) + len(y) - 2))
    half = t_quantile((1 - confidence) / 2, df) * se  # scipy (~2 s to import) only now: bad input fails at once
    p = 2 * t_tail(abs(diff) / se, df) if se > 0 else None
    return Difference(diff, diff - half, diff + half, min(len(x), len(y)), df, "paired" if paired else "welch", note,
                      sd, p, confidence, se)


@dataclass
class Verdict:
    """What the rule (``design``) says of one cell against the baseline: ``higher`` or ``lower`` (its interval for
    the difference, ``low``-``high``, excludes 0), ``equal`` (within ±δ: TOST's interval, ``equal_low``-``equal_high``,
    lies inside ±δ), or ``cannot tell``."""

    word: str
    diff: Difference | None
    design: Design
    low: float = math.nan
    high: float = math.nan
    equal_low: float = math.nan
    equal_high: float = math.nan

    @property
    def resolved(self) -> bool:
        return self.word != CANNOT_TELL

    @property
    def half_width(self) -> float:
        return self.design.half_width

    def text(self) -> str:
        return f"equal within ±{100 * self.half_width:g}" if self.word == EQUAL else self.word

    def method(self) -> str:
        """What gave the verdict: the difference's kind and the test (report.md and report.json say it)."""
        if self.diff is None:
            return "no interval (a cell with fewer than 2 runs)"
        kind = f"paired by seed over {self.diff.n} seeds" if self.diff.method == "paired" else (
            f"Welch's (unpaired, unequal variances), n = {self.diff.n}")
        return f"{kind}: {self.design.describe(self.diff.n)}"

    def p_values(self) -> tuple[float | None, float | None]:
        """(p of higher-or-lower, p of equal within ±δ) at this cell's look: ``Design.p_values``."""
        if self.diff is None or not math.isfinite(self.diff.diff):
            return None, None
        return self.design.p_values(self.diff.diff, self.diff.standard_error, self.diff.n, self.diff.df)


def verdict(diff: Difference | None, design: Design) -> Verdict:
    """The rule ``compare`` reports, ``sweep --until-resolved`` stops by and ``power`` simulates: ``design.decide`` on
    the difference, with the intervals it decided by."""
    if diff is None or not math.isfinite(diff.diff) or not math.isfinite(diff.standard_error):
        return Verdict(CANNOT_TELL, diff, design)
    se = diff.standard_error
    differs, equal = design.critical(diff.n, diff.df)
    return Verdict(design.decide(diff.diff, se, diff.n, diff.df), diff, design, diff.diff - differs * se,
                   diff.diff + differs * se, diff.diff - equal * se, diff.diff + equal * se)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of a family (None stays None and is not counted): the i-th smallest of m
    is max over j <= i of min(1, (m - j + 1) p_(j)). (scipy.stats has Benjamini-Hochberg, not Holm.)"""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, adjusted, running = len(order), list(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
