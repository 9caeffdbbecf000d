"""The sweep file: W&B's sweep configuration (``sweeps/<x>.yaml``), loaded and checked with one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grid", "random", "bayes")
GRID_TYPES = ("categorical", "constant", "int_uniform", "q_uniform")  # W&B's grid_search_next_runs allows these
DISTRIBUTIONS = (
    "constant", "categorical", "categorical_w_probabilities", "int_uniform", "uniform", "q_uniform",
    "log_uniform", "log_uniform_values", "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
    "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta",
)
ENGINE_HINT = "W&B's sweeps engine: pip install 'inception-lab[sweeps]'"


class SweepError(Exception):
    """A mistake in the sweep file or the command line: one line on stderr, exit 2."""


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


def load_sweep(path: Path) -> Sweep:
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    text = path.read_text()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SweepError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', None) or error}") from None
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
    missing = [k for k in need if k not in spec]
    if missing:
        raise SweepError(f"{where}: distribution {kind} needs {', '.join(missing)}")
    if "values" in need and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SweepError(f"{where}: values: expected a non-empty list")
    if "min" in need and not spec["min"] < spec["max"]:
        raise SweepError(f"{where}: min {spec['min']} is not less than max {spec['max']}")
    if kind.endswith("_values") and spec["min"] <= 0:
        raise SweepError(f"{where}: {kind} needs min > 0, got {spec['min']}")
    return kind
