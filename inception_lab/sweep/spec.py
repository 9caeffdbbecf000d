"""The sweep file (W&B's sweep configuration, ``sweeps/<x>.yaml``), loaded and checked with one-line errors, and its
trials as ``state.json`` records them: grid cells, random draws, bayes suggestions and hyperband stops from W&B's
open-source ``sweeps`` engine. Grid and random need no engine (it pins numpy<2): the fallback gives its cells in its
order, and for a seed its draws (one uniform draw per parameter and trial through the inverse CDF, sweeps/params.py)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inception_lab.errors import UserError
from inception_lab.run.files import load_yaml, mix_seed, read_metrics
from inception_lab.run.layout import RunDir

METHODS = ("grid", "random", "bayes")
GRID_TYPES = ("categorical", "constant", "int_uniform", "q_uniform")  # W&B's grid_search_next_runs allows these
DISTRIBUTIONS = ("constant", "categorical", "categorical_w_probabilities", "int_uniform", "uniform", "q_uniform",
                 "log_uniform", "log_uniform_values", "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
                 "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta")
RANDOM_TYPES = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "q_log_uniform",
                "log_uniform_values", "q_log_uniform_values")  # what the fallback draws
ENGINE_HINT = "W&B's sweeps engine: pip install 'inception-lab[sweeps]'"

class SweepError(UserError):
    """A mistake in the sweep file, its directory or the command line."""


@dataclass
class Param:
    name: str
    kind: str  # a W&B distribution name
    spec: dict[str, Any]


@dataclass
class Sweep:
    path: Path
    text: str
    config: dict[str, Any]
    name: str
    method: str
    params: list[Param]  # in W&B's order: sorted by name
    command: list[str]  # [] for the agent's default command
    run_cap: int | None
    metric: str
    goal: str


@dataclass
class Trial:
    name: str
    values: dict[str, Any]
    status: str = "pending"  # pending, running, finished, failed, stopped, interrupted
    starts: int = 0
    returncode: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float | None = None
    owner: str | None = None  # the runner (host:pid) that claimed it, while it runs
    lease_until: float | None = None  # the claim holds until then (epoch seconds); its runner renews it
    claim: str | None = None  # the claim's token: a runner writes only while state.json still holds its token


def read_yaml(path: Path, what: str = "sweep file") -> tuple[str, Any]:
    """A YAML file's text and content, or one line naming it: missing, a directory, binary, not UTF-8, not YAML."""
    if path.is_dir():
        raise SweepError(f"{path}: a directory, not a {what} (sweeps/<x>.yaml)")
    if not path.is_file():
        raise SweepError(f"{path}: no such {what}")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a {what}: not UTF-8 text (a binary file, such as a checkpoint?)") from None
    try:
        return text, load_yaml(text)
    except yaml.YAMLError as error:
        where = f" (line {mark.line + 1})" if (mark := getattr(error, "problem_mark", None)) else ""
        raise SweepError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', None) or error}") from None


def load_sweep(path: Path) -> Sweep:
    text, config = read_yaml(path)
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with method, metric, parameters and command")
    method = config.get("method")
    if method not in METHODS:
        raise SweepError(f"{path}: method={method!r}: allowed methods are {', '.join(METHODS)}")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: parameters: expected a mapping of parameter name to its values or distribution")
    params = [Param(name, _kind(path, name, spec), spec) for name, spec in sorted(parameters.items())]
    for p in params:
        if method == "grid" and p.kind not in GRID_TYPES:
            raise SweepError(f"{path}: parameter {p.name} is {p.kind}: grid allows only {', '.join(GRID_TYPES)} "
                             "parameters (use method: random or bayes for a continuous distribution)")
    command = config.get("command") or []
    if not isinstance(command, list) or not all(isinstance(c, str | int | float) for c in command):
        raise SweepError(f"{path}: command: expected a block list of strings ('- python', '- ${{args_json_file}}')")
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise SweepError(f"{path}: run_cap={run_cap!r}: expected a positive integer")
    metric = config.get("metric") or {}
    if not isinstance(metric, dict) or (config.get("metric") is not None and "name" not in metric):
        raise SweepError(f"{path}: metric: expected {{name: val/acc_best, goal: maximize}}")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise SweepError(f"{path}: metric.goal={goal!r}: expected minimize or maximize")
    early = config.get("early_terminate")
    if early is not None and (not isinstance(early, dict) or early.get("type") != "hyperband"):
        raise SweepError(f"{path}: early_terminate: only {{type: hyperband, ...}} is known to W&B")
    return Sweep(path=path, text=text, config=config, name=str(config.get("name") or path.stem), method=method,
                 params=params, command=[str(c) for c in command], run_cap=run_cap,
                 metric=metric.get("name", "val/acc_best"), goal=goal)


def _kind(path: Path, name: str, spec: Any) -> str:
    """The W&B distribution of a parameter, inferred as W&B's schema does when ``distribution`` is not given."""
    where = f"{path}: parameters.{name}"
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: expected a mapping such as {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        raise SweepError(f"{where}: nested parameter blocks are not supported (W&B's engine drops them when it "
                         "validates); use one parameter whose values are dicts (sweeps/aux_weights.yaml)")
    kind = spec.get("distribution")
    if kind is None:
        if "values" in spec:
            kind = "categorical_w_probabilities" if "probabilities" in spec else "categorical"
        elif "value" in spec:
            kind = "constant"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            kind = "int_uniform" if ints else "uniform"
        else:
            raise SweepError(f"{where}: expected values, value, min/max or a distribution")
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"{where}: distribution={kind!r}: allowed are {', '.join(DISTRIBUTIONS)}")
    need = {"constant": ("value",), "categorical": ("values",), "categorical_w_probabilities": ("values",
            "probabilities")}.get(kind, ("min", "max") if "uniform" in kind else ())
    if missing := [k for k in need if k not in spec]:
        raise SweepError(f"{where}: distribution {kind} needs {', '.join(missing)}")
    if "values" in need and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SweepError(f"{where}: values: expected a non-empty list")
    if "min" in need and not spec["min"] < spec["max"]:
        raise SweepError(f"{where}: min {spec['min']} is not less than max {spec['max']}")
    if kind.endswith("_values") and spec["min"] <= 0:
        raise SweepError(f"{where}: {kind} needs min > 0, got {spec['min']}")
    return kind


def engine(required: bool = False) -> Any | None:
    """The ``sweeps`` module, or None where it is not installed."""
    with warnings.catch_warnings(), contextlib.suppress(ImportError):
        warnings.simplefilter("ignore")  # 0.3.0 declares its pydantic models with v1-style config
        import sweeps
        if hasattr(sweeps, "next_run"):  # not this repository's sweeps/ folder seen as a namespace package
            return sweeps
    if required:
        raise SweepError(f"bayes search and hyperband early termination need {ENGINE_HINT}")
    return None


def grid_values(sweep: Sweep) -> list[dict[str, Any]]:
    """Every cell, in the engine's order: parameters sorted by name, the last fastest, values as listed."""
    if (sweeps := engine()) is not None:
        return [_values(sweep, run) for run in sweeps.next_runs(sweep.config, [], n=sys.maxsize) if run is not None]
    axes: list[Any] = []  # without the engine: its cells
    for p in sweep.params:
        s = p.spec
        if p.kind == "q_uniform":  # numpy.arange(min, max, q): max excluded
            q = s.get("q", 1.0)
            axes.append([s["min"] + k * q for k in range(math.ceil((s["max"] - s["min"]) / q))])
        elif p.kind == "int_uniform":
            axes.append(range(s["min"], s["max"] + 1))
        else:
            axes.append(s["values"] if p.kind == "categorical" else [s["value"]])
    cells: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*axes):  # the engine hashes each value (a whole float as an int), skips a cell seen
        key = json.dumps([int(v) if isinstance(v, float) and v.is_integer() else v for v in combo], sort_keys=True)
        cells.setdefault(key, {p.name: value for p, value in zip(sweep.params, combo)})
    return list(cells.values())


def random_values(sweep: Sweep, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` seeded draws; the first k draws are the same for any n >= k (a larger --run-cap extends a sweep)."""
    if (sweeps := engine()) is not None:
        with _seeded(seed):
            return [_values(sweep, run) for run in sweeps.next_runs(sweep.config, [], n=n)]
    for p in sweep.params:  # without the engine: its draws
        if p.kind not in RANDOM_TYPES:
            raise SweepError(f"parameter {p.name} is {p.kind}: drawing it needs {ENGINE_HINT}")
    rng = random.Random(seed)
    return [{p.name: _ppf(p, rng.uniform(0.0, 1.0)) for p in sweep.params} for _ in range(n)]


def bayes_value(sweep: Sweep, trials: list[Trial], seed: int) -> dict[str, Any] | None:
    """The engine's next suggestion given the trials so far, or None when done."""
    sweeps = engine(required=True)
    with _seeded(mix_seed(seed, len(trials))), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's GP fit: ConvergenceWarning on a handful of trials
        suggestion = sweeps.next_run(sweep.config, [_engine_run(sweeps, sweep, t) for t in trials])
    return None if suggestion is None else _values(sweep, suggestion)


def hyperband_stops(sweep: Sweep, trials: list[tuple[Trial, Path]]) -> set[str]:
    """The names of the trials hyperband stops now, judged on each one's metric history."""
    sweeps = engine(required=True)
    runs = [_engine_run(sweeps, sweep, t, d) for t, d in trials if t.status != "pending"]
    return {run.name for run in sweeps.stop_runs(sweep.config, runs)}


def _engine_run(sweeps: Any, sweep: Sweep, trial: Trial, run_dir: Path | None = None) -> Any:
    metrics = read_metrics(RunDir(run_dir).metrics()) if run_dir else []  # a row per validation: hyperband's iterations
    rows = [{sweep.metric: r[sweep.metric]} for r in metrics if sweep.metric in r]
    state = {"failed": "crashed", "stopped": "killed", "interrupted": "preempted"}.get(trial.status, trial.status)
    return sweeps.SweepRun(name=trial.name, state=state, config={k: {"value": v} for k, v in trial.values.items()},
                           summary_metrics={k: v for k, v in trial.metrics.items() if k == sweep.metric}, history=rows)


def _values(sweep: Sweep, run: Any) -> dict[str, Any]:
    values = {p.name: run.config[p.name]["value"] for p in sweep.params}
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in values.items()}  # numpy scalars: JSON's numbers


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


def _ppf(param: Param, x: float) -> Any:
    """The value at quantile ``x`` of a W&B distribution."""
    s, kind = param.spec, param.kind.removeprefix("q_")
    if kind == "constant":
        return s["value"]
    if kind == "categorical":
        return s["values"][min(int(x * len(s["values"])), len(s["values"]) - 1)]
    if kind == "int_uniform":
        return min(s["min"] + int(x * (s["max"] - s["min"] + 1)), s["max"])
    lo, hi = (math.log(s["min"]), math.log(s["max"])) if kind.endswith("_values") else (s["min"], s["max"])
    value = x * (hi - lo) + lo
    value = value if kind == "uniform" else math.exp(value)  # log_uniform: min and max are logs of the bounds
    if param.kind.startswith("q_"):
        q = s.get("q", 1.0)
        value = round(value / q) * q
        return int(value) if isinstance(q, int) else value
    return value
