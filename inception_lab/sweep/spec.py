"""The sweep file (W&B's sweep configuration, ``sweeps/<x>.yaml``), loaded and checked as W&B's engine checks it (by
the engine too, where it is installed) with one-line errors, and its trials as ``state.json`` records them: grid
cells, random draws, bayes suggestions and hyperband stops from W&B's open-source ``sweeps`` engine. Grid and random
need no engine (it pins numpy<2): the fallback gives its cells in its order, and for a seed its draws (one uniform draw
per parameter and trial through the inverse CDF, sweeps/params.py)."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import re
import reprlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inception_lab.errors import UserError
from inception_lab.run.files import load_yaml, mix_seed, read_metrics
from inception_lab.run.layout import RunDir

METHODS = ("grid", "random", "bayes")
GRID_TYPES = ("categorical", "constant", "int_uniform", "q_uniform")  # W&B's grid_search_next_runs allows these
# W&B's sweep schema (sweeps 0.3.0, config/schema.json) key by key, for the fallback: a JSON type, a type and its bound
# ("number>0": exclusiveMinimum 0; "array>=1": minItems 1) or the allowed values; tests/sweep/test_spec.py derives these
# tables from the engine's schema. An "integer" is a YAML int (the schema also takes 5.0). Where the engine is
# installed, its own validation follows these checks.
TOP_KEYS = {"apiVersion": "string", "kind": ("sweep",), "controller": "object", "description": "string",
            "program": "string", "job": "string", "image_uri": "string", "entity": "string", "project": "string",
            "method": ("bayes", "random", "grid", "custom"), "command": "array", "name": "string",
            "run_cap": "integer>0", "metric": "object", "metrics": "array>=2", "scheduler": "object",
            "early_terminate": "object", "parameters": "object>=1"}
METRIC_KEYS = {"name": "string", "goal": ("minimize", "maximize"), "target": "number",
               "impute": ("latest", "best", "worst"), "impute_while_running": ("latest", "best", "worst", "false")}
HYPERBAND_KEYS = {"type": ("hyperband",), "max_iter": "integer", "min_iter": "integer>=1", "s": "number",
                  "eta": "number>1", "strict": "boolean"}
PARAMETER_NAME = "[A-Za-z_][A-Za-z0-9_.-]*"
_BOUNDS, _Q = {"min": "number", "max": "number"}, {"q": "number>0"}
_VALUES, _NORMAL, _BETA = {"min": "number>0", "max": "number"}, {"mu": "number", "sigma": "number>=0"}, {
    "a": "number>=0", "b": "number>=0"}
PARAMETER_KEYS = {  # each distribution's keys besides `distribution`; those with no default in the schema are required
    "constant": {"value": "any"}, "categorical": {"values": "array>=1"},
    "categorical_w_probabilities": {"values": "array>=1", "probabilities": "array>=1"},
    "int_uniform": {"min": "integer", "max": "integer"}, "uniform": _BOUNDS, "q_uniform": {**_BOUNDS, **_Q},
    "log_uniform_values": _VALUES, "q_log_uniform_values": {**_VALUES, **_Q}, "inv_log_uniform_values": _VALUES,
    "normal": _NORMAL, "q_normal": {**_NORMAL, **_Q}, "log_normal": _NORMAL, "q_log_normal": {**_NORMAL, **_Q},
    "beta": _BETA, "q_beta": {**_BETA, **_Q}}
DEFAULTED = ("mu", "sigma", "q", "a", "b")
DEPRECATED = ("log_uniform", "q_log_uniform", "inv_log_uniform")  # min/max as base-e exponents: W&B refuses them
RANDOM_TYPES = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values",
                "q_log_uniform_values")  # what the fallback draws
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
    failures: int = 0  # how often its program failed: an --until-resolved sweep reruns it once (State.rerun)
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
    """A sweep file, checked as W&B's engine checks it (by the engine itself too, where it is installed), or one line
    naming the file, the key and what is allowed."""
    text, config = read_yaml(path)
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with method, metric, parameters and command")
    method = config.get("method")
    if method not in METHODS:
        raise SweepError(f"{path}: method={method!r}: allowed methods are {', '.join(METHODS)}")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: parameters: expected a mapping of parameter name to its values or distribution")
    _check(path, config, TOP_KEYS, "a W&B sweep file")
    if custom := [k for k in ("metrics", "scheduler") if k in config]:
        raise SweepError(f"{path}: {custom[0]}: for a custom scheduler (method: custom), which W&B's sweeps engine "
                         "does not run; use method grid, random or bayes and one metric: {name: val/acc_best, goal: "
                         "maximize}")
    if bad := [n for n in parameters if not (isinstance(n, str) and re.fullmatch(PARAMETER_NAME, n))]:
        raise SweepError(f"{path}: parameters.{bad[0]}: W&B's parameter names match {PARAMETER_NAME}")
    params = [Param(name, _kind(path, name, spec), spec) for name, spec in sorted(parameters.items())]
    for p in params:
        if method == "grid" and p.kind not in GRID_TYPES:
            raise SweepError(f"{path}: parameter {p.name} is {p.kind}: grid allows only {', '.join(GRID_TYPES)} "
                             "parameters (use method: random or bayes for a continuous distribution)")
    command = config.get("command") or []
    if not all(isinstance(c, str | int | float) for c in command):
        raise SweepError(f"{path}: command: expected a block list of strings ('- python', '- ${{args_json_file}}')")
    metric, early = config.get("metric"), config.get("early_terminate")
    if metric is not None:
        _check(path, metric, METRIC_KEYS, "metric", "metric.", ["name"])
    elif method == "bayes" or early is not None:
        raise SweepError(f"{path}: {'bayes search' if method == 'bayes' else 'hyperband'} needs the metric it "
                         "optimizes: metric: {name: val/acc_best, goal: maximize}")
    if early is not None:
        _check(path, early, HYPERBAND_KEYS, "early_terminate", "early_terminate.", ["type"])
        if "min_iter" not in early and not {"max_iter", "s"} <= early.keys():
            raise SweepError(f"{path}: early_terminate: hyperband needs min_iter (the first validation it may stop "
                             "a trial at), or max_iter and s")
    if "controller" in config:
        _check(path, config["controller"], {"type": ("local", "cloud")}, "controller", "controller.", ["type"],
               closed=False)
    if refusal := _engine_refusal(config):
        raise SweepError(f"{path}: W&B's sweeps engine refuses it: {refusal}")
    # no metric: the sweep reads val/acc_best, an accuracy; a metric named without a goal: W&B's minimize
    goal = metric.get("goal", "minimize") if metric else "maximize"
    metric = metric or {}
    return Sweep(path=path, text=text, config=config, name=str(config.get("name") or path.stem), method=method,
                 params=params, command=[str(c) for c in command], run_cap=config.get("run_cap"),
                 metric=metric.get("name", "val/acc_best"), goal=goal)


def _kind(path: Path, name: str, spec: Any) -> str:
    """The W&B distribution of a parameter, inferred as W&B's schema does when ``distribution`` is not given."""
    where = f"{path}: parameters.{name}"
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: expected a mapping such as {{values: [...]}}, got {reprlib.repr(spec)}")
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
            raise SweepError(f"{where}: has {', '.join(map(str, spec)) or 'no key'}: expected values, value, min and "
                             "max, or a distribution")
    if kind in DEPRECATED:
        raise SweepError(f"{where}: distribution {kind} (min and max as base-e exponents) is refused by W&B: use "
                         f"{kind}_values with the limits themselves")
    if not isinstance(kind, str) or kind not in PARAMETER_KEYS:
        raise SweepError(f"{where}: distribution={kind!r}: allowed are {', '.join(PARAMETER_KEYS)}")
    keys = PARAMETER_KEYS[kind]
    _check(path, spec, {**keys, "distribution": (kind,)}, f"a {kind} parameter", f"parameters.{name}.",
           [k for k in keys if k not in DEFAULTED])
    if "min" in spec and not spec["min"] < spec["max"]:
        raise SweepError(f"{where}: min {spec['min']} is not less than max {spec['max']}")
    if (odds := spec.get("probabilities")) and (len(odds) != len(spec["values"]) or not all(
            _fits(p, "number>=0") for p in odds) or abs(sum(odds) - 1) > 1e-5 + 1e-8):  # numpy.isclose's, as W&B's
        raise SweepError(f"{where}.probabilities: expected a number >= 0 per value, summing to 1")
    return kind


_RULE = re.compile(r"([a-z]+)(>=?)?(.*)")


def _check(path: Path, block: Any, rules: dict[str, Any], what: str, prefix: str = "",
           required: Sequence[str] = (), closed: bool = True) -> None:
    """A mapping of the sweep file against its ``rules`` (W&B's schema), or one line naming the key."""
    where = f"{path}: {prefix.rstrip('.')}" if prefix else str(path)
    if not isinstance(block, dict):
        raise SweepError(f"{where}: expected a mapping of {', '.join(rules)}, got {reprlib.repr(block)}")
    if closed and (extra := [k for k in block if k not in rules]):
        raise SweepError(f"{where}: {extra[0]!r} is not a key of {what}; allowed: {', '.join(rules)}")
    if missing := [k for k in required if k not in block]:
        raise SweepError(f"{where}: {what} needs {' and '.join(missing)}")
    for key, value in block.items():
        if key in rules and not _fits(value, rules[key]):
            raise SweepError(f"{path}: {prefix}{key}={reprlib.repr(value)}: expected {_describe(rules[key])}")


def _fits(value: Any, rule: str | tuple) -> bool:
    if isinstance(rule, tuple):
        return value in rule
    kind, op, bound = _RULE.fullmatch(rule).groups()
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": int | float}
    if kind != "any" and (not isinstance(value, types[kind]) or isinstance(value, bool) and kind != "boolean"):
        return False
    size = len(value) if kind in ("object", "array") else value
    return not op or (size > float(bound) if op == ">" else size >= float(bound))


def _describe(rule: str | tuple) -> str:
    if isinstance(rule, tuple):
        return f"one of {', '.join(map(str, rule))}"
    kind, op, bound = _RULE.fullmatch(rule).groups()
    noun = {"object": "a mapping", "array": "a list", "integer": "an integer", "boolean": "true or false"}
    return noun.get(kind, f"a {kind}") + (f" of {op} {bound} items" if op and kind in ("object", "array") else
                                         f" {op} {bound}" if op else "")


def _engine_refusal(config: dict[str, Any]) -> str | None:
    """What W&B's engine, where installed, says against the sweep file: its schema, then the checks its search and
    hyperband make before they run (None: it takes the file)."""
    if (sweeps := engine()) is None:
        return None
    import jsonschema  # the engine's

    try:
        with _seeded(0), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sweeps.next_run(config, [], validate=True)
            if "early_terminate" in config:
                sweeps.stop_runs(config, [], validate=True)
    except (jsonschema.ValidationError, ValueError, TypeError, KeyError, AssertionError) as error:
        return str(getattr(error, "message", error)).strip().splitlines()[0]
    return None


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
    axes: list[list[Any]] = []  # without the engine: its cells
    for p in sweep.params:
        s = p.spec
        if p.kind == "q_uniform":  # numpy.arange(min, max, q): max excluded
            q = s.get("q", 1.0)
            axis = [s["min"] + k * q for k in range(math.ceil((s["max"] - s["min"]) / q))]
        elif p.kind == "int_uniform":
            axis = list(range(s["min"], s["max"] + 1))
        else:
            axis = s["values"] if p.kind == "categorical" else [s["value"]]
        # values equal by the engine's yaml_hash (a whole float is its int): one, where the first is, as the last is
        axes.append(list({yaml.safe_dump(int(v) if isinstance(v, float) and v.is_integer() else v,
                                         default_flow_style=True, sort_keys=True): v for v in axis}.values()))
    return [{p.name: value for p, value in zip(sweep.params, combo)} for combo in itertools.product(*axes)]


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
    if kind == "uniform":
        value = x * (s["max"] - s["min"]) + s["min"]
    else:  # log_uniform_values
        value = math.exp(x * (math.log(s["max"]) - math.log(s["min"])) + math.log(s["min"]))
    if param.kind.startswith("q_"):
        q = s.get("q", 1.0)
        value = round(value / q) * q
        return int(value) if isinstance(q, int) else value
    return value
