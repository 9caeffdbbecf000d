"""Run records for ``compare``: run directories (summary.json, config.yaml, metrics.csv) and the runs of a W&B sweep
read through ``wandb.Api``, and the keys a sweep file varies."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inception_lab.errors import UserError
from inception_lab.run.files import flatten, read_metrics, read_summary
from inception_lab.run.identity import bookkeeping_keys
from inception_lab.run.layout import RunDir

METRIC_PREFIXES = ("val/", "test/", "train/")


class CompareError(UserError):
    """Bad input to ``compare``: runs, keys or a W&B path."""


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
    def variant(self) -> dict[str, Any] | None:
        """``{dotted config key: value}`` where the run departed from its experiment file as that file was when the
        run started (it may have changed since: cells are not grouped by it); None in older records."""
        return variant if isinstance(variant := self.summary.get("variant"), dict) else None

    @property
    def bookkeeping(self) -> list[str]:
        """The config keys the fit recorded as bookkeeping (summary.json's "bookkeeping"), else the default list."""
        recorded = self.summary.get("bookkeeping")
        return recorded if isinstance(recorded, list) else bookkeeping_keys()

    @property
    def error_tail(self) -> str:
        lines = [ln for ln in str(self.summary.get("error") or "").strip().splitlines() if ln.strip()]
        return lines[-1][-200:] if lines else ""

    def metric(self, key: str) -> float | None:
        value = self.summary.get("metrics", {}).get(key, self.summary.get(key))
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if number else None


def read_curve(path: Path) -> dict[int, float]:
    """epoch -> val/acc from a CSVLogger ``metrics.csv`` (sparse rows; the last value of an epoch wins)."""
    return {int(row["epoch"]): row["val/acc"] for row in read_metrics(path) if "val/acc" in row and "epoch" in row}


def load_run(directory: Path) -> Run:
    """A run directory as a record (``read_summary``: the fit's, with its evaluations' metrics; a fit whose process
    died is "killed"); an unreadable summary.json gives a run with status "unreadable"."""
    summary = read_summary(directory)
    try:
        config = flatten(yaml.safe_load(RunDir(directory).config().read_text()) or {})
    except (OSError, ValueError, yaml.YAMLError):  # missing, not UTF-8, not YAML: grouped by nothing it holds
        config = {}
    return Run(str(summary.get("run_name") or directory.name), str(summary.get("status", "unknown")), config,
               summary, read_curve(RunDir(directory).metrics()), str(directory))


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
            keys += dict.fromkeys(k for v in spec["values"] for k in flatten(v, name))
        else:
            keys.append(name)
    return [k for k in keys if k != "seed_everything" and not k.endswith("seed")]


def check_one_experiment(runs: list[Run]) -> None:
    counts = Counter(r.experiment for r in runs)
    if len(counts) > 1:
        names = ", ".join(f"{e} ({n} run{'s' * (n > 1)})" for e, n in sorted(counts.items()))
        raise CompareError(f"runs of different experiments mixed: {names}; compare one experiment at a time")


def load(paths: list[Path]) -> tuple[list[Run], list[str], dict[str, Any] | None]:
    """Runs under the given sweep / run directories, the swept keys (from sweep.yaml, if any) and the first sweep
    file found (its name, description, parameters and command go into the report)."""
    directories: dict[Path, Path] = {}  # resolved -> as given: a run reached twice is read once
    swept: list[str] = []
    sweep_file: dict[str, Any] | None = None
    for path in paths:
        found = [path] if RunDir(path).summary().is_file() else sorted(
            p.parent for p in path.rglob(RunDir(path).summary().name)  # not a sweep's runs/.discarded/ attempts
            if not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not found:
            missing = "" if path.is_dir() else ": not a directory" if path.exists() else ": no such directory"
            raise CompareError(f"no run directories (with summary.json) found under {path}{missing}")
        # the sweep.yaml of a sweep directory, or of the sweep a runs/ directory belongs to
        specs = [path / "sweep.yaml", *([path.parent / "sweep.yaml"] if path.name == "runs" else [])]
        if (spec := next((s for s in specs if s.is_file()), None)) is not None:
            try:
                config = yaml.safe_load(spec.read_text()) or {}
                keys = sweep_keys(config)
            except (yaml.YAMLError, AttributeError, TypeError, ValueError, OSError) as error:
                what = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else type(error).__name__
                raise CompareError(f"{spec}: not a W&B sweep file ({what})") from None
            swept += [k for k in keys if k not in swept]
            sweep_file = sweep_file or {**config, "name": config.get("name") or spec.parent.name}
        for directory in found:
            directories.setdefault(directory.resolve(), directory)
    runs = [load_run(d) for d in directories.values()]
    check_one_experiment(runs)
    return runs, swept, sweep_file


def parse_wandb_path(path: str) -> tuple[str, str, str]:
    parts = path.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise CompareError(f"--wandb {path!r}: expected ENTITY/PROJECT/SWEEP_ID, e.g. me/inception-lab/abc123")
    return parts[0], parts[1], parts[2]


def wandb_run(run: Any) -> Run:
    """A W&B public-API run (config + summary) as the record a run directory gives."""
    summary = {k: v for k, v in run.summary_metrics.items() if not k.startswith("_")}  # plain JSON, nested dicts too
    record = {**{k: v for k, v in summary.items() if not k.startswith(METRIC_PREFIXES)},
              "metrics": {k: v for k, v in summary.items() if k.startswith(METRIC_PREFIXES)}, "status": run.state}
    config = flatten({k: v for k, v in dict(run.config).items() if not k.startswith("_")})
    try:
        curve = {int(row["epoch"]): float(row["val/acc"]) for row in run.scan_history(keys=["epoch", "val/acc"])
                 if isinstance(row.get("val/acc"), int | float) and row.get("epoch") is not None}
    except Exception:  # a run without history, or a flaky server: the curve is optional
        curve = {}
    return Run(str(run.name), str(run.state), config, record, curve, f"wandb:{getattr(run, 'id', run.name)}")


def wandb_rounds(paths: list[str], api: Any = None) -> tuple[list[Run], list[str], dict[str, Any] | None]:
    """The runs of one W&B sweep, or of the rounds of one --until-resolved sweep judged together (its first sweep,
    then each follow-up ``sweep --emit-followup`` wrote: a W&B sweep holds one round); their swept keys and the first
    one's sweep file."""
    loaded = [wandb_runs(path, api) for path in paths]
    runs = [run for one in loaded for run in one[0]]
    if len(loaded) > 1:
        check_one_experiment(runs)
    return runs, list(dict.fromkeys(key for one in loaded for key in one[1])), loaded[0][2]


def wandb_runs(path: str, api: Any = None) -> tuple[list[Run], list[str], dict[str, Any] | None]:
    """The runs of a W&B sweep (``ENTITY/PROJECT/SWEEP_ID``), its swept keys and its sweep file."""
    parse_wandb_path(path)
    try:
        if api is None:
            import wandb
            api = wandb.Api(timeout=30)
        sweep = api.sweep(path)
        runs = [wandb_run(r) for r in sweep.runs]
        sweep_file = {**(sweep.config or {}), "name": (sweep.config or {}).get("name") or path}
        swept = sweep_keys(sweep_file)
    except Exception as error:  # no API key, no server, no such sweep: one line, not a traceback
        first = (str(error).strip().splitlines() or [""])[0]
        raise CompareError(f"--wandb {path}: cannot read the sweep ({type(error).__name__}: {first})") from None
    if not runs:
        raise CompareError(f"--wandb {path}: the sweep has no runs")
    check_one_experiment(runs)
    return runs, swept, sweep_file
