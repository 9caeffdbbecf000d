"""``python -m inception_lab compare <sweep dir | run dirs...>``: ablation cells, mean ± std over seeds, paired
differences with 95% confidence intervals, plots, and ``report.md`` / ``report.html``.

Works offline from run directories (``summary.json``, ``config.yaml``, ``metrics.csv``); with a W&B server it can
read a W&B sweep instead (``--wandb ENTITY/PROJECT/SWEEP_ID``) and save a W&B workspace or report grouped by the
same keys (``--wandb-workspace``, ``--wandb-report``).

    python -m inception_lab compare runs/sweeps/head_gap_vs_fc.digits
    python -m inception_lab compare runs/quickstart/a runs/quickstart/b --by model.net.init_args.head
    python -m inception_lab compare runs/sweeps/reduce_widths --baseline reduce_width_mult=1.0 --out report/
"""

from __future__ import annotations

import argparse
import base64
import csv
import functools
import html
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inception_lab.runfiles import flatten, short_value, write_atomic

PRIMARY = "val/acc_best"
ACCURACIES = (("val/acc_best", "val top-1"), ("val/acc_top5", "val top-5"), ("test/acc", "test top-1"),
              ("test/acc_top5", "test top-5"))
COSTS = (("params", "params"), ("macs", "MACs"), ("throughput_img_per_s", "img/s"))
SEED_KEYS = ("seed_everything",)
# keys that say where or how a run happened, not which variant it is: never grouping keys by default
RUN_KEYS = ("config", "experiment", "print_config", "weights_only")
RUN_PREFIXES = ("wandb.", "trainer.logger", "trainer.callbacks", "trainer.default_root_dir")
RUN_WORDS = ("dir", "path", "name")  # in the last component of a key: run_dir, ckpt_path, run_name, dirpath
# the paper's value of each ablation axis: the default baseline cell
PAPER: dict[str, Any] = {
    "model.net.init_args.head": "gap", "model.net.init_args.filter_sizes": (3, 5),
    "model.net.init_args.reduce_width_mult": 1.0, "model.net.init_args.pool_proj_mult": 1.0,
    "model.net.init_args.width_mult": 1.0, "model.net.init_args.aux_positions": ("4a", "4d"),
    "model.net.init_args.dropout": 0.4, "model.net.init_args.aux_dropout": 0.7, "model.aux_weight": 0.3,
}


class CompareError(Exception):
    """Bad input: reported as one line on stderr, exit 2."""


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by Lentz's continued fraction (Numerical Recipes 6.4)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


@functools.lru_cache(maxsize=256)
def t975(df: float) -> float:
    """Student's t 97.5% quantile (two-sided 95%) for ``df`` >= 1 degrees of freedom, fractional df (Welch) too."""
    # scipy is not a dependency: bisect P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2) = 0.05
    if not df >= 1:
        raise ValueError(f"df={df}: needs at least 1 degree of freedom")
    low, high = 0.0, 20.0  # t975(1) = 12.706 is the largest
    for _ in range(80):
        mid = (low + high) / 2
        if _betainc(df / 2, 0.5, df / (df + mid * mid)) > 0.05:
            low = mid
        else:
            high = mid
    return (low + high) / 2


# ---- records ------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run, from a run directory or a W&B run."""

    name: str
    status: str
    config: dict[str, Any]  # flattened: "model.net.init_args.head" -> "gap"
    summary: dict[str, Any]
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> val/acc (fraction)
    source: str = ""  # run directory or W&B path

    @property
    def seed(self) -> Any:
        seed = self.summary.get("seed")
        return self.config.get("seed_everything") if seed is None else seed

    @property
    def experiment(self) -> str:
        return str(self.summary.get("experiment") or self.config.get("experiment") or "?")

    @property
    def error_tail(self) -> str:
        lines = [ln for ln in str(self.summary.get("error") or "").strip().splitlines() if ln.strip()]
        return lines[-1][-200:] if lines else ""

    def metric(self, key: str) -> float | None:
        value = self.summary.get("metrics", {}).get(key, self.summary.get(key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)


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


def read_curve(path: Path) -> dict[int, float]:
    """epoch -> val/acc from a CSVLogger ``metrics.csv`` (sparse rows; the last value of an epoch wins)."""
    curve: dict[int, float] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/acc") and row.get("epoch"):
                    curve[int(float(row["epoch"]))] = float(row["val/acc"])
    except (OSError, ValueError, csv.Error):
        return {}
    return curve


def load_run(directory: Path) -> Run:
    """A run directory as a record; an unreadable summary.json gives a run with status "unreadable"."""
    try:
        summary = json.loads((directory / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        summary = {"status": "unreadable", "error": f"summary.json: {error}"}
    config: dict[str, Any] = {}
    try:
        config = flatten(yaml.safe_load((directory / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        pass
    return Run(str(summary.get("run_name") or directory.name), str(summary.get("status", "unknown")), config,
               summary, read_curve(directory / "metrics.csv"), str(directory))


def run_dirs(path: Path) -> list[Path]:
    """The run directories at or under ``path`` (directories holding a summary.json), sorted."""
    if (path / "summary.json").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("summary.json"))


def sweep_file(path: Path) -> Path | None:
    """``sweep.yaml`` of a sweep directory (or of the sweep a ``runs/`` directory belongs to)."""
    for candidate in (path / "sweep.yaml", path.parent / "sweep.yaml" if path.name == "runs" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def load(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Runs under the given sweep / run directories, and the swept keys (from sweep.yaml, if any)."""
    runs: list[Run] = []
    swept: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"no run directories (with summary.json) found under {path}: no such directory")
        found = run_dirs(path)
        if not found:
            raise CompareError(f"no run directories (with summary.json) found under {path}")
        if (spec := sweep_file(path)) is not None:
            try:
                keys = sweep_keys(yaml.safe_load(spec.read_text()) or {})
            except (yaml.YAMLError, AttributeError, TypeError) as error:
                raise CompareError(f"{spec}: not a W&B sweep file ({type(error).__name__})") from None
            swept += [k for k in keys if k not in swept]
        for directory in found:
            if directory.resolve() not in seen:
                seen.add(directory.resolve())
                runs.append(load_run(directory))
    check_one_experiment(runs)
    return runs, swept


def check_one_experiment(runs: list[Run]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[run.experiment] += 1
    if len(counts) > 1:
        names = ", ".join(f"{e} ({n} run{'s' * (n > 1)})" for e, n in sorted(counts.items()))
        raise CompareError(f"runs of different experiments mixed: {names}; compare one experiment at a time")


def is_seed(key: str) -> bool:
    return key in SEED_KEYS or key.endswith("seed")


def sweep_keys(sweep: dict[str, Any]) -> list[str]:
    """The CLI paths a W&B sweep file varies: nested blocks and dict values flattened; seeds and constants left out."""
    keys: list[str] = []
    for name, spec in (sweep.get("parameters") or {}).items():
        if not isinstance(spec, dict):
            keys.append(name)
        elif "parameters" in spec:
            keys += [f"{name}.{k}" for k in sweep_keys(spec)]
        elif "value" in spec and "values" not in spec:
            continue  # a constant varies nothing
        elif any(isinstance(v, dict) for v in spec.get("values", [])):
            keys += [k for k in dict.fromkeys(k for v in spec["values"] for k in flatten(v, name))]
        else:
            keys.append(name)
    return [k for k in keys if not is_seed(k)]


def is_run_specific(key: str) -> bool:
    """Keys that differ between any two runs without making them different variants (seeds, names, paths)."""
    last = key.rsplit(".", 1)[-1].lower()
    return (key in RUN_KEYS or key.startswith(RUN_PREFIXES) or is_seed(key) or "ckpt" in last
            or any(word in last for word in RUN_WORDS))


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between the runs, run-specific keys left out."""
    keys = sorted(set().union(*(r.config for r in runs)))
    return [k for k in keys if not is_run_specific(k) and len({repr(r.config.get(k)) for r in runs}) > 1]


def resolve_key(key: str, known: Iterable[str]) -> str | None:
    """``key`` itself, or the one known key it is a dotted suffix of (``head`` -> ``model.net.init_args.head``)."""
    known = list(known)
    if key in known:
        return key
    matches = [k for k in known if k.endswith("." + key)]
    return matches[0] if len(matches) == 1 else None


def grouping_keys(finished: list[Run], by: list[str] | None, swept: list[str]) -> list[str]:
    """``--by`` (full keys or unique suffixes), else the swept keys, else the keys whose values differ."""
    known = sorted(set().union(*(r.config for r in finished)))
    sample = ", ".join(([k for k in known if k.startswith("model.") and not is_run_specific(k)] or known)[:6])
    if by:
        keys = []
        for key in by:
            resolved = resolve_key(key, known)
            if resolved is None:
                raise CompareError(f"--by {key}: no run has this key (available keys include: {sample}, ...)")
            keys.append(resolved)
        return list(dict.fromkeys(keys))
    if swept:
        missing = [k for k in swept if k not in known]
        if missing:
            raise CompareError(f"sweep.yaml parameter {missing[0]} is in no run's config.yaml; group with --by KEY "
                               f"(available keys include: {sample}, ...)")
        return swept
    return differing_keys(finished)


# ---- cells and statistics -----------------------------------------------------------------------------------------
def freeze(value: Any) -> Any:
    """Lists to tuples, so that config values can key a cell."""
    return tuple(freeze(v) for v in value) if isinstance(value, list | tuple) else value


def _order(value: Any) -> tuple[Any, ...]:
    """A sort key for mixed config values: None, then numbers by value, then strings, then lists."""
    if value is None:
        return (0,)
    if isinstance(value, int | float):
        return (1, float(value))
    if isinstance(value, tuple):
        return (3, tuple(_order(v) for v in value))
    return (2, str(value))


def cells(runs: list[Run], by: list[str]) -> list[Cell]:
    """One cell per distinct combination of the ``by`` values, sorted by those values (0.25 < 0.5 < 1 < naive)."""
    groups: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(freeze(run.config.get(k)) for k in by)].append(run)
    return [Cell(key, groups[key]) for key in sorted(groups, key=_order)]


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
    """Mean of cell - baseline with a 95% t interval: paired by seed when >= 2 seeds pair, else Welch's."""
    a, b = _by_seed(cell.runs, metric), _by_seed(baseline.runs, metric)
    common = [s for s in a if s in b] if a is not None and b is not None else []
    if len(common) >= 2:
        assert a is not None and b is not None
        diffs = [a[s] - b[s] for s in common]
        mean, sd, df = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs) - 1
        half = t975(df) * sd / math.sqrt(len(diffs))
        unpaired = len(a) + len(b) - 2 * len(common)
        note = f"{unpaired} unpaired run(s) left out" if unpaired else ""
        return Difference(mean, mean - half, mean + half, len(diffs), df, "paired", note)
    return welch(cell.values(metric), baseline.values(metric))


def welch(x: list[float], y: list[float]) -> Difference | None:
    """mean(x) - mean(y) with Welch's 95% interval (unequal variances), or None with fewer than 2 values a side."""
    if len(x) < 2 or len(y) < 2:
        return None
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    mean = statistics.fmean(x) - statistics.fmean(y)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)) if vx + vy > 0 else len(x) + len(y) - 2
    half = t975(df) * math.sqrt(vx + vy)
    return Difference(mean, mean - half, mean + half, min(len(x), len(y)), df, "welch", "seeds do not pair")


def short_names(by: list[str]) -> list[str]:
    """The shortest dotted suffix of each key that no other key shares (``model.net.init_args.head`` -> ``head``)."""
    names = []
    for key in by:
        parts = key.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[-i:])
            if not any(k != key and (k == name or k.endswith("." + name)) for k in by):
                break
        names.append(name)
    return names


def describe(cell: Cell, by: list[str]) -> str:
    return ", ".join(f"{n}={short_value(v)}" for n, v in zip(short_names(by), cell.key)) or "all runs"


def _parse_value(text: str) -> Any:
    try:
        return freeze(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def pick_baseline(cell_list: list[Cell], by: list[str], baseline: list[str] | None = None) -> Cell:
    """The cell named by ``KEY=VALUE`` items; default: the paper's values of the grouping keys, else the first."""
    if not baseline:
        axes = [k for k in by if k in PAPER]
        paper = [c for c in cell_list if axes and all(c.key[by.index(k)] == PAPER[k] for k in axes)]
        return paper[0] if paper else cell_list[0]
    wanted: dict[str, str] = {}
    for item in baseline:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CompareError(f"--baseline {item!r}: expected KEY=VALUE, e.g. model.net.init_args.head=gap")
        resolved = resolve_key(key.strip(), by)
        if resolved is None:
            raise CompareError(f"--baseline {item!r}: {key} is not a grouping key (grouping keys: {', '.join(by)})")
        wanted[resolved] = value.strip()
    for cell in cell_list:
        values = {k: cell.key[by.index(k)] for k in wanted}
        # the value as YAML (1.0, [3, 5], gap) or as the table writes it (3x5)
        if all(values[k] == _parse_value(v) or short_value(values[k]) == v for k, v in wanted.items()):
            return cell
    have = "; ".join(describe(c, by) for c in cell_list)
    raise CompareError(f"--baseline {' '.join(baseline)}: no cell has that value (cells: {have})")


# ---- rendering ----------------------------------------------------------------------------------------------------
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
    lows, highs = [], []
    for j, (key, label) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(cell_list))]
        stats = [c.stat(key) for c in cell_list]
        means = [100 * (s.mean or 0) for s in stats]
        errs = [100 * (s.std or 0) for s in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=4, alpha=0.75, label=label)
        for x, cell in zip(xs, cell_list):  # the seeds themselves
            values = [100 * v for v in cell.values(key)]
            ax.plot([x] * len(values), values, "k.", ms=4)
            lows += values
            highs += values
        lows += [m - e for m, e in zip(means, errs)]
        highs += [m + e for m, e in zip(means, errs)]
    span = max(1.0, max(highs, default=100) - min(lows, default=0))
    ax.set_ylim(max(0.0, min(lows, default=0) - 0.5 * span), min(100.0, max(highs, default=100) + 0.3 * span))
    ax.set_xticks(range(len(names)), [n + (" *" if c is base else "") for n, c in zip(names, cell_list)],
                  rotation=20, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy per cell (mean ± std over seeds; * baseline)")
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
    ax.set_xlabel("multiply-adds per image")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("accuracy against compute")
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
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title("learning curves (mean ± std over seeds)")
        ax.legend(fontsize=8)
        images["learning_curves.png"] = _png(fig)
    return images


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


# ---- W&B ----------------------------------------------------------------------------------------------------------
def parse_wandb_path(path: str) -> tuple[str, str, str]:
    parts = path.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise CompareError(f"--wandb {path!r}: expected ENTITY/PROJECT/SWEEP_ID, e.g. me/inception-lab/abc123")
    return parts[0], parts[1], parts[2]


def wandb_run(run: Any) -> Run:
    """A W&B public-API run (config + summary) as the record a run directory gives."""
    summary = {k: v for k, v in dict(run.summary.items()).items() if not k.startswith("_")}
    record = {k: v for k, v in summary.items() if not k.startswith(("val/", "test/", "train/"))}
    record["metrics"] = {k: v for k, v in summary.items() if k.startswith(("val/", "test/", "train/"))}
    config = flatten({k: v for k, v in dict(run.config).items() if not k.startswith("_")})
    curve: dict[int, float] = {}
    try:
        for row in run.scan_history(keys=["epoch", "val/acc"]):
            if isinstance(row.get("val/acc"), int | float) and row.get("epoch") is not None:
                curve[int(row["epoch"])] = float(row["val/acc"])
    except Exception:  # a run without history, or a flaky server: the curve is optional
        curve = {}
    record["status"] = run.state
    return Run(str(run.name), str(run.state), config, record, curve, f"wandb:{getattr(run, 'id', run.name)}")


def wandb_runs(path: str, api: Any = None) -> tuple[list[Run], list[str]]:
    """The runs of a W&B sweep (``ENTITY/PROJECT/SWEEP_ID``) and its swept keys."""
    parse_wandb_path(path)
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=30)
        sweep = api.sweep(path)
        runs = [wandb_run(r) for r in sweep.runs]
        swept = sweep_keys(sweep.config or {})
    except CompareError:
        raise
    except Exception as error:  # no API key, no server, no such sweep: one line, not a traceback
        first = (str(error).strip().splitlines() or [""])[0]
        raise CompareError(f"--wandb {path}: cannot read the sweep ({type(error).__name__}: {first})") from None
    if not runs:
        raise CompareError(f"--wandb {path}: the sweep has no runs")
    check_one_experiment(runs)
    return runs, swept


def _wandb_modules() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise CompareError("W&B workspaces and reports need wandb-workspaces: "
                           "pip install 'inception-lab[workspaces]'") from None
    return wr, ws


def _panels(wr: Any, group_keys: list[str], metric: str) -> list[Any]:
    return [
        wr.BarPlot(title=f"{metric} per cell", metrics=[metric], groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.ScatterPlot(title="accuracy against compute", x=wr.SummaryMetric("macs"), y=wr.SummaryMetric(metric)),
        wr.LinePlot(title="val top-1 per epoch", x="epoch", y=["val/acc"], groupby_aggfunc="mean",
                    groupby_rangefunc="stddev"),
        wr.ParallelCoordinatesPlot(title="grouping keys against the metric", columns=[
            *(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in group_keys),
            wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))]),
    ]


def build_workspace(entity: str, project: str, sweep_id: str | None, group_keys: list[str],
                    metric: str = PRIMARY) -> Any:
    """A W&B workspace of the sweep's runs grouped by ``group_keys``; built offline, ``.save()`` needs a server."""
    wr, ws = _wandb_modules()
    # Config("a.b.c") reads the nested config that the runs log (W&B's backend key a.value.b.c)
    return ws.Workspace(
        entity=entity, project=project, name=f"compare {sweep_id or project}",
        sections=[ws.Section(name="ablation", panels=_panels(wr, group_keys, metric), is_open=True)],
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Sweep") == sweep_id] if sweep_id else "",
                                          groupby=[ws.Config(k) for k in group_keys]),
    )


def build_report(entity: str, project: str, sweep_id: str | None, group_keys: list[str], table_markdown: str = "",
                 metric: str = PRIMARY) -> Any:
    """A W&B report: the comparison's table (with the paired CIs W&B cannot compute) above the grouped panels."""
    wr, ws = _wandb_modules()
    runset = wr.Runset(entity=entity, project=project, name=f"sweep {sweep_id}" if sweep_id else "runs",
                       filters=[ws.Metric("Sweep") == sweep_id] if sweep_id else "",
                       groupby=[f"config.{k}" for k in group_keys])
    blocks = [wr.H1(f"Ablation: {', '.join(group_keys) or project}")]
    if table_markdown:
        blocks.append(wr.MarkdownBlock(text=table_markdown))
    blocks.append(wr.PanelGrid(runsets=[runset], panels=_panels(wr, group_keys, metric)))
    return wr.Report(project=project, entity=entity, title=f"compare {sweep_id or project}",
                     description="made by python -m inception_lab compare", blocks=blocks)


# ---- command ------------------------------------------------------------------------------------------------------
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
    files: list[Path]


def default_out(paths: list[Path]) -> Path:
    """``<sweep dir>/report`` for one sweep directory, else ``./report``."""
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "summary.json").is_file():
        return paths[0] / "report"
    return Path("report")


def compare(paths: list[Path], by: list[str] | None = None, baseline: list[str] | None = None,
            out: Path | None = None, wandb_path: str | None = None, api: Any = None) -> Comparison:
    """Load, group, compute, plot and write the report; raises CompareError on bad input."""
    runs, swept = wandb_runs(wandb_path, api) if wandb_path else load(paths)
    finished = [r for r in runs if r.status == "finished"]
    excluded = [r for r in runs if r.status != "finished"]
    if not finished:
        statuses = ", ".join(sorted({r.status for r in runs}))
        raise CompareError(f"no finished runs among {len(runs)} (statuses: {statuses})")
    keys = grouping_keys(finished, by, swept)
    cell_list = cells(finished, keys)
    base = pick_baseline(cell_list, keys, baseline)
    out = out or default_out(paths)
    images = plots(cell_list, keys, base)
    title = f"inception_lab compare: {finished[0].experiment}"
    markdown, page = render(cell_list, keys, base, excluded, images, title)
    files = []
    for name, data in [*images.items(), ("report.md", markdown), ("report.html", page)]:
        write_atomic(out / name, data)
        files.append(out / name)
    header, rows = table_rows(cell_list, keys, base)
    return Comparison(keys, cell_list, base, excluded, out, text_table(header, rows),
                      "\n".join(tables_markdown(cell_list, keys, base)), files)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inception_lab compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="a sweep directory, or run directories")
    parser.add_argument("--by", action="append", metavar="KEY",
                        help="group by this config key, e.g. model.net.init_args.head or head (repeatable); default: "
                             "the swept keys, else the keys whose values differ between runs")
    parser.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                        help="the baseline cell (repeatable); default: the paper's values, else the first cell")
    parser.add_argument("--out", type=Path, help="report directory (default: <sweep dir>/report, else ./report)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT/SWEEP_ID", help="read a W&B sweep instead of directories")
    parser.add_argument("--wandb-workspace", action="store_true",
                        help="also save a W&B workspace of the sweep grouped by the same keys (needs --wandb)")
    parser.add_argument("--wandb-report", action="store_true",
                        help="also save a W&B report: this table above the grouped panels (needs --wandb)")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser.error("give a sweep directory or run directories, or --wandb ENTITY/PROJECT/SWEEP_ID (not both)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if (args.wandb_workspace or args.wandb_report) and not args.wandb:
            raise CompareError("--wandb-workspace and --wandb-report need --wandb ENTITY/PROJECT/SWEEP_ID")
        if args.wandb:
            parse_wandb_path(args.wandb)
        result = compare(args.paths, args.by, args.baseline, args.out, args.wandb)
        print(result.table)
        for run in result.excluded:
            print(f"not averaged in: {run.name} ({run.status}{': ' + run.error_tail if run.error_tail else ''})")
        print(f"report: {result.out / 'report.md'}, {result.out / 'report.html'}")
        if args.wandb_workspace or args.wandb_report:
            entity, project, sweep_id = parse_wandb_path(args.wandb)
            built = []
            if args.wandb_workspace:
                built.append(("workspace", build_workspace(entity, project, sweep_id, result.by)))
            if args.wandb_report:
                built.append(("report", build_report(entity, project, sweep_id, result.by, result.tables_markdown)))
            for kind, view in built:
                try:
                    print(f"W&B {kind}: {view.save().url}")
                except Exception as error:  # the server refused or cannot be reached
                    first = (str(error).strip().splitlines() or [""])[0]
                    raise CompareError(f"saving the W&B {kind} failed: {type(error).__name__}: {first}") from None
    except CompareError as error:
        print(f"inception_lab compare: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
