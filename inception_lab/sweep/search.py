"""Which trials a sweep runs: grid cells, random draws, bayes suggestions and hyperband stops, from W&B's open-source
``sweeps`` engine where it is installed; grid and random fall back to ``fallback.py`` without it."""

from __future__ import annotations

import contextlib
import csv
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inception_lab.sweep import fallback
from inception_lab.sweep.spec import ENGINE_HINT, Sweep, SweepError

if TYPE_CHECKING:
    from inception_lab.sweep.state import Trial


def engine(required: bool = False) -> Any | None:
    """The ``sweeps`` module, or None where it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 0.3.0 declares its pydantic models with v1-style config
            import sweeps
    except ImportError:
        sweeps = None
    if not hasattr(sweeps, "next_run"):  # absent, or this repository's sweeps/ folder seen as a namespace package
        if required:
            raise SweepError(f"bayes search and hyperband early termination need {ENGINE_HINT}")
        return None
    return sweeps


def grid_values(sweep: Sweep) -> list[dict[str, Any]]:
    """Every cell, in the engine's order: parameters sorted by name, the last fastest, values as listed."""
    sweeps = engine()
    if sweeps is None:
        return fallback.grid_values(sweep)
    return [_values(sweep, run) for run in sweeps.next_runs(sweep.config, [], n=sys.maxsize) if run is not None]


def random_values(sweep: Sweep, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` seeded draws; the first k draws are the same for any n >= k (a larger --run-cap extends a sweep)."""
    sweeps = engine()
    if sweeps is None:
        return fallback.random_values(sweep, n, seed)
    with _seeded(seed):
        return [_values(sweep, run) for run in sweeps.next_runs(sweep.config, [], n=n)]


def bayes_value(sweep: Sweep, trials: list[tuple[Trial, Path]], seed: int) -> dict[str, Any] | None:
    """The engine's next suggestion given the trials so far (and their run directories), or None when done."""
    sweeps = engine(required=True)
    with _seeded(seed * 1_000_003 + len(trials)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's GP fit: ConvergenceWarning on a handful of trials
        suggestion = sweeps.next_run(sweep.config, [_engine_run(sweeps, sweep, t, d) for t, d in trials])
    return None if suggestion is None else _values(sweep, suggestion)


def hyperband_stops(sweep: Sweep, trials: list[tuple[Trial, Path]]) -> set[str]:
    """The names of the trials hyperband stops now, judged on each one's metric history (metrics.csv)."""
    sweeps = engine(required=True)
    runs = [_engine_run(sweeps, sweep, t, d, history=True) for t, d in trials if t.status != "pending"]
    return {run.name for run in sweeps.stop_runs(sweep.config, runs)}


def _engine_run(sweeps: Any, sweep: Sweep, trial: Trial, run_dir: Path, history: bool = False) -> Any:
    rows = []
    if history and (run_dir / "metrics.csv").is_file():  # one row per validation epoch: hyperband's iterations
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = [{sweep.metric: float(r[sweep.metric])} for r in csv.DictReader(f) if r.get(sweep.metric)]
    state = {"failed": "crashed", "stopped": "killed"}.get(trial.status, trial.status)  # W&B's run states
    return sweeps.SweepRun(name=trial.name, state=state, config={k: {"value": v} for k, v in trial.values.items()},
                           summary_metrics={k: v for k, v in trial.metrics.items() if k == sweep.metric}, history=rows)


def _values(sweep: Sweep, run: Any) -> dict[str, Any]:
    """A suggested run's values by parameter, numpy scalars as Python numbers (for JSON)."""
    values = {p.name: run.config[p.name]["value"] for p in sweep.params}
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in values.items()}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The engine draws from the global ``random`` and ``numpy.random`` states: seed them, then put them back."""
    import numpy as np

    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
