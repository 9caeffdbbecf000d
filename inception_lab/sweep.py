"""``python -m inception_lab sweep sweeps/<x>.yaml``: run a W&B sweep file locally, with no W&B server.

Each trial runs the command line the W&B agent (wandb 0.31, ``wandb_agent.py``) would run for it, as a subprocess:
``${args_json_file}`` is a JSON file of the trial's values (``json.dumps({name: value})``, what the agent writes),
``${args}`` is ``--name=str(value)``, ``${env}`` is ``/usr/bin/env``; ``python`` and ``${interpreter}`` become this
interpreter. The runner then appends ``--run_dir <sweep dir>/runs/<trial>`` and ``--wandb.group <sweep name>``.

The sweep directory (default ``runs/sweeps/<sweep file stem>/``; ``compare`` reads it)::

    sweep.yaml             the sweep file as run
    state.json             the runner's state: every trial's values, status, starts, metrics or error
    runs/<trial>/          the trial's run directory (summary.json, config.yaml, metrics.csv, checkpoints/)
        args.json          the ${args_json_file} of the trial
        trial.log          its stdout, after one header line per start
        trial.stderr.log   its stderr

Start it again after a crash or a kill and it carries on: finished trials are kept, an interrupted trial resumes
from its ``checkpoints/last.ckpt`` (``--ckpt_path last``) or restarts. Every trial's config is validated by the CLI
before anything runs. ``grid`` and ``random`` need nothing more; ``bayes`` and hyperband ``early_terminate`` use
W&B's open-source engine (``pip install 'inception-lab[sweeps]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import itertools
import json
import logging
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inception_lab.record import read_summary
from inception_lab.runfiles import flatten, short_value, write_atomic

SWEEPS_ROOT = Path("runs/sweeps")
METHODS = ("grid", "random", "bayes")
GRID_TYPES = ("categorical", "constant", "int_uniform", "q_uniform")  # W&B's grid_search_next_runs allows these
DISTRIBUTIONS = (
    "constant", "categorical", "categorical_w_probabilities", "int_uniform", "uniform", "q_uniform",
    "log_uniform", "log_uniform_values", "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
    "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta",
)
MACROS = ("env", "interpreter", "program", "args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags",
          "args_json", "args_json_file", "args_append_hydra", "args_override_hydra")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # the agent's, when a sweep names none
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
ERROR_TAIL_LINES = 20
POLL_S = 0.5
INSTALL_HINT = "pip install 'inception-lab[sweeps]'"


class SweepError(Exception):
    """A mistake in the sweep file or the command line: one line on stderr, exit 2."""


# ---- the sweep file ---------------------------------------------------------------------------------------------
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
    command: list[str]
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
    params = [Param(name, *_param_kind(path, name, spec)) for name, spec in sorted(parameters.items())]
    if method == "grid":
        for p in params:
            if p.kind not in GRID_TYPES:
                raise SweepError(f"{path}: parameter {p.name} is {p.kind}: grid allows only {', '.join(GRID_TYPES)} "
                                 "parameters (use method: random or bayes for a continuous distribution)")
    command = config.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, str | int | float) for c in command):
        raise SweepError(f"{path}: command: expected a block list of strings ('- python', '- ${{args_json_file}}')")
    command = [str(c) for c in command]
    for token in command:
        macro = re.fullmatch(r"\$\{(\w+)\}", token)
        if macro and macro.group(1) not in MACROS:
            raise SweepError(f"{path}: command: unknown macro {token}; the agent knows "
                             f"{', '.join('${' + m + '}' for m in MACROS)}")
    if "${program}" in command and not config.get("program"):
        raise SweepError(f"{path}: command uses ${{program}} but the sweep file sets no program")
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
                 params=params, command=command, run_cap=run_cap, metric=metric.get("name", "val/acc_best"),
                 goal=goal)


def _param_kind(path: Path, name: str, spec: Any) -> tuple[str, dict[str, Any]]:
    """The W&B distribution of a parameter, inferred as W&B's schema does when ``distribution`` is not given."""
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: parameters.{name}: expected a mapping such as {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        raise SweepError(f"{path}: parameters.{name}: nested parameter blocks are not supported (W&B's engine drops "
                         "them when it validates); use one parameter whose values are dicts (sweeps/aux_weights.yaml)")
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
            raise SweepError(f"{path}: parameters.{name}: expected values, value, min/max or a distribution")
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"{path}: parameters.{name}: distribution={kind!r}: allowed are {', '.join(DISTRIBUTIONS)}")
    need = {"constant": ("value",), "categorical": ("values",), "categorical_w_probabilities": ("values",
            "probabilities")}.get(kind, ("min", "max") if "uniform" in kind else ())
    missing = [k for k in need if k not in spec]
    if missing:
        raise SweepError(f"{path}: parameters.{name}: distribution {kind} needs {', '.join(missing)}")
    if "values" in need and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SweepError(f"{path}: parameters.{name}: values: expected a non-empty list")
    if "min" in need and not spec["min"] < spec["max"]:
        raise SweepError(f"{path}: parameters.{name}: min {spec['min']} is not less than max {spec['max']}")
    if kind.endswith("_values") and spec["min"] <= 0:
        raise SweepError(f"{path}: parameters.{name}: {kind} needs min > 0, got {spec['min']}")
    return kind, spec


# ---- trials: grid and random as W&B draws them --------------------------------------------------------------------
def grid_values(sweep: Sweep) -> list[dict[str, Any]]:
    """Every cell, in the order of W&B's ``grid_search_next_runs``: parameters sorted by name, the last fastest."""
    axes: list[tuple[str, list[Any]]] = []
    constants: dict[str, Any] = {}
    for p in sweep.params:
        if p.kind == "constant":
            constants[p.name] = p.spec["value"]
        elif p.kind == "categorical":
            axes.append((p.name, p.spec["values"]))
        elif p.kind == "int_uniform":
            axes.append((p.name, list(range(p.spec["min"], p.spec["max"] + 1))))
        else:  # q_uniform: numpy.arange(min, max, q), max excluded
            lo, hi, q = p.spec["min"], p.spec["max"], p.spec.get("q", 1.0)
            axes.append((p.name, [lo + k * q for k in range(math.ceil((hi - lo) / q))]))
    cells, seen = [], set()
    for combo in itertools.product(*(values for _, values in axes)):
        key = json.dumps([int(v) if isinstance(v, float) and v.is_integer() else v for v in combo], sort_keys=True)
        if key in seen:  # W&B hashes each value (a whole float as an int) and skips a cell it has seen
            continue
        seen.add(key)
        values = {**constants, **dict(zip((name for name, _ in axes), combo))}
        cells.append({p.name: values[p.name] for p in sweep.params})
    return cells



def sample(param: Param, rng: random.Random) -> Any:
    """One draw of a W&B distribution (the formulas of sweeps/params.py ``HyperParameter.ppf``)."""
    s, kind = param.spec, param.kind
    mu, sigma, q = s.get("mu", 0.0), s.get("sigma", 1.0), s.get("q", 1.0)

    def quantize(x: float) -> Any:
        x = round(x / q) * q
        return int(x) if isinstance(q, int) else x

    if kind == "constant":
        return s["value"]
    if kind == "categorical":
        return s["values"][rng.randrange(len(s["values"]))]
    if kind == "categorical_w_probabilities":
        return rng.choices(s["values"], weights=s["probabilities"])[0]
    if kind == "int_uniform":
        return rng.randint(s["min"], s["max"])
    if kind in ("uniform", "q_uniform"):
        x = rng.uniform(s["min"], s["max"])
        return quantize(x) if kind == "q_uniform" else x
    if kind in ("log_uniform", "q_log_uniform"):  # min/max are natural logs of the bounds
        x = math.exp(rng.uniform(s["min"], s["max"]))
        return quantize(x) if kind.startswith("q_") else x
    if kind in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
        return quantize(x) if kind.startswith("q_") else x
    if kind == "inv_log_uniform":
        return math.exp(-rng.uniform(s["min"], s["max"]))
    if kind == "inv_log_uniform_values":
        return math.exp(-rng.uniform(-math.log(s["max"]), -math.log(s["min"])))
    if kind in ("normal", "q_normal"):
        x = rng.gauss(mu, sigma)
        return quantize(x) if kind == "q_normal" else x
    if kind in ("log_normal", "q_log_normal"):
        x = math.exp(rng.gauss(mu, sigma))
        return quantize(x) if kind == "q_log_normal" else x
    x = rng.betavariate(s.get("a", 1.0), s.get("b", 1.0))  # beta, q_beta
    return quantize(x) if kind == "q_beta" else x


def random_values(sweep: Sweep, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` seeded draws; the first k draws are the same for any n >= k (a larger --run-cap extends a sweep)."""
    rng = random.Random(seed)
    return [{p.name: sample(p, rng) for p in sweep.params} for _ in range(n)]


def trial_name(index: int, values: dict[str, Any]) -> str:
    """``003-filter_sizes=3x3x3-seed1``: the index keeps names unique, the values make them readable."""
    parts = []
    for name, value in values.items():
        if name == "seed_everything":
            parts.append(f"seed{value}")
            continue
        flat = flatten(value, name)
        parts += [f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in flat.items()]
    name = re.sub(r"[^\w.=+-]+", "", "-".join([f"{index:03d}", *parts]))
    return name[:120]


# ---- the command line, as the agent renders it -------------------------------------------------------------------
def sweep_vars(values: dict[str, Any]) -> dict[str, list[str]]:
    """wandb 0.31 ``sweeps/utils.create_sweep_command_args``: ``str()`` of each value, JSON for the JSON forms."""
    flags = [f"{k}={v}" for k, v in values.items()]
    return {
        "args": [f"--{f}" for f in flags],
        "args_no_equals": [x for k, v in values.items() for x in (f"--{k}", str(v))],
        "args_no_hyphens": flags,
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}" for k, v in values.items() if v is not False],
        "args_json": [json.dumps(values)],
        "args_append_hydra": [f"+{f}" for f in flags],
        "args_override_hydra": [f"++{f}" for f in flags],
    }


def render_command(template: list[str], values: dict[str, Any], args_json_file: Path,
                   program: str | None = None) -> list[str]:
    """The argument list the agent (``Agent._command_run``) runs, with ``python`` as this interpreter."""
    macros = sweep_vars(values)
    macros["env"] = ["/usr/bin/env"] if Path("/usr/bin/env").exists() else []
    macros["interpreter"] = [sys.executable]
    macros["program"] = [program] if program else []
    macros["args_json_file"] = [str(args_json_file)]
    command: list[str] = []
    for token in template:
        token = ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), token)
        if token.startswith("${") and token.endswith("}"):
            command += macros.get(token[2:-1], [])
        else:
            command.append(sys.executable if token == "python" else token)
    return command


def write_args_json(path: Path, values: dict[str, Any]) -> None:
    """The agent writes ``sweep_vars["args_json"][0]``: ``json.dumps`` of the values, no newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, sweep_vars(values)["args_json"][0])


def cli_args(command: list[str]) -> list[str] | None:
    """The arguments after ``-m inception_lab`` (what ``check_config`` takes), or None for another program."""
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == "inception_lab":
            return command[i + 2:]
    return None


# ---- state on disk --------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    name: str
    values: dict[str, Any]
    status: str = "pending"  # pending, running, finished, failed, stopped
    starts: int = 0
    returncode: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float | None = None


class State:
    """``state.json``: rewritten atomically after every change, so a kill at any moment leaves a readable file."""

    def __init__(self, directory: Path, sweep: Sweep, seed: int) -> None:
        self.path = directory / "state.json"
        self.sweep, self.seed = sweep, seed
        self.trials: list[Trial] = []
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            self.seed = data.get("seed", seed)
            self.trials = [Trial(**t) for t in data["trials"]]

    def save(self) -> None:
        data = {"sweep": self.sweep.name, "sweep_file": str(self.sweep.path), "method": self.sweep.method,
                "metric": {"name": self.sweep.metric, "goal": self.sweep.goal}, "seed": self.seed,
                "trials": [t.__dict__ for t in self.trials]}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")

    def trial(self, name: str) -> Trial | None:
        return next((t for t in self.trials if t.name == name), None)


# ---- running trials -------------------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGKILL this trial when the runner dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl took effect
        os._exit(1)


@dataclass
class Running:
    trial: Trial
    proc: subprocess.Popen
    slot: str
    started: float
    out: Any
    err: Any


def run_dir_of(directory: Path, trial: Trial) -> Path:
    return directory / "runs" / trial.name


def trial_command(sweep: Sweep, directory: Path, trial: Trial) -> list[str]:
    run_dir = run_dir_of(directory, trial)
    command = render_command(sweep.command, trial.values, run_dir / "args.json", sweep.config.get("program"))
    return [*command, "--run_dir", str(run_dir), "--wandb.group", sweep.name]


def error_tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    """The last lines of a log, progress-bar redraws (``\\r``) reduced to their final state."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.splitlines()]
    return "\n".join([ln for ln in kept if ln.strip()][-lines:])


def start_trial(sweep: Sweep, directory: Path, trial: Trial, slot: str, env: dict[str, str]) -> Running:
    run_dir = run_dir_of(directory, trial)
    write_args_json(run_dir / "args.json", trial.values)
    command = trial_command(sweep, directory, trial)
    summary = read_summary(run_dir)
    if summary.get("status") == "running" and (run_dir / "checkpoints" / "last.ckpt").is_file():
        command += ["--ckpt_path", "last"]  # interrupted: resume from its last checkpoint
    trial.starts += 1
    trial.status, trial.error, trial.returncode = "running", None, None
    out = open(run_dir / "trial.log", "a")  # noqa: SIM115 (closed when the trial ends)
    out.write(f"# start {trial.starts} {time.strftime('%Y-%m-%d %H:%M:%S')} slot={slot}: "
              f"{subprocess.list2cmdline(command)}\n")
    out.flush()
    err = open(run_dir / "trial.stderr.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))
    return Running(trial, proc, slot, time.monotonic(), out, err)


def finish_trial(directory: Path, running: Running, returncode: int, metric: str) -> None:
    running.out.close()
    running.err.close()
    trial = running.trial
    run_dir = run_dir_of(directory, trial)
    summary = read_summary(run_dir)
    trial.returncode = returncode
    trial.wall_s = round(time.monotonic() - running.started, 1)
    trial.metrics = summary.get("metrics", {})
    if trial.status == "stopped":
        trial.error = f"stopped by hyperband early termination; {metric}={trial.metrics.get(metric)}"
    elif returncode == 0 and summary.get("status") == "finished":
        trial.status = "finished"
    else:
        trial.status = "failed"
        reason = summary.get("error") or f"exit code {returncode}"
        if returncode == 0:
            reason = f"exited 0 but its summary.json says status={summary.get('status')!r}"
        tail = error_tail(run_dir / "trial.stderr.log")
        trial.error = f"{reason}\n{tail}".strip()


def reconcile(state: State, directory: Path) -> None:
    """After a kill: a trial recorded as running either finished meanwhile (keep it) or will resume / restart."""
    for trial in state.trials:
        if trial.status != "running":
            continue
        summary = read_summary(run_dir_of(directory, trial))
        if summary.get("status") == "finished":
            trial.status, trial.metrics = "finished", summary.get("metrics", {})
        else:
            trial.status = "pending"


def validate(sweep: Sweep, values: list[dict[str, Any]], names: list[str], directory: Path) -> None:
    """Every trial's command line through the CLI's own parser, before anything runs; writes nothing."""
    from inception_lab.cli import UserError, check_config

    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, vals) in enumerate(zip(names, values)):
            json_file = Path(tmp) / f"{i}.json"
            write_args_json(json_file, vals)
            command = render_command(sweep.command, vals, json_file, sweep.config.get("program"))
            args = cli_args(command)
            if args is None:
                continue  # not the inception_lab CLI: nothing to check it with
            args += ["--run_dir", str(directory / "runs" / name), "--wandb.group", sweep.name]
            logging.disable(logging.INFO)  # "Seed set to ..." per trial
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    check_config(args)
            except UserError as error:
                raise SweepError(f"trial {name} ({_describe(vals)}): {error}") from None
            finally:
                logging.disable(logging.NOTSET)


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def _engine() -> Any:
    try:
        import sweeps  # W&B's open-source engine; pins numpy<2, hence optional
    except ImportError:
        sweeps = None
    if not hasattr(sweeps, "next_run"):  # absent, or this repository's sweeps/ folder seen as a namespace package
        raise SweepError(f"bayes search and hyperband early termination need W&B's sweeps engine: {INSTALL_HINT}")
    return sweeps


def _engine_run(sweep: Sweep, directory: Path, trial: Trial, history: bool) -> Any:
    sweeps = _engine()
    state = {"pending": "pending", "running": "running", "finished": "finished", "failed": "crashed",
             "stopped": "killed"}[trial.status]
    rows = metric_history(run_dir_of(directory, trial), sweep.metric) if history else []
    summary = {sweep.metric: trial.metrics[sweep.metric]} if sweep.metric in trial.metrics else {}
    return sweeps.SweepRun(name=trial.name, state=state, config={k: {"value": v} for k, v in trial.values.items()},
                           summary_metrics=summary, history=rows)


def metric_history(run_dir: Path, metric: str) -> list[dict[str, float]]:
    """One row per logged value of the metric (per validation epoch) from metrics.csv: hyperband's iterations."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{metric: float(row[metric])} for row in csv.DictReader(f) if row.get(metric)]


def slots_for(parallel: int, devices: list[str] | None) -> tuple[list[str], dict[str, dict[str, str]]]:
    """One slot per concurrent trial: a GPU (``CUDA_VISIBLE_DEVICES``) or a share of the CPU threads."""
    if devices:
        if parallel > len(devices):
            raise SweepError(f"--parallel {parallel} needs as many --devices, got {len(devices)}: "
                             f"{','.join(devices)}")
        chosen = devices[:parallel]
        return [f"gpu{d}" for d in chosen], {f"gpu{d}": {"CUDA_VISIBLE_DEVICES": d} for d in chosen}
    if parallel == 1:
        return ["cpu0"], {"cpu0": {}}
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return [f"cpu{i}" for i in range(parallel)], {f"cpu{i}": env for i in range(parallel)}


# ---- the runner -------------------------------------------------------------------------------------------------
def run(argv: list[str]) -> int:
    args = parse_args(argv)
    sweep = load_sweep(Path(args.sweep_file))
    run_cap = args.run_cap or sweep.run_cap
    if sweep.method in ("random", "bayes") and not run_cap:
        raise SweepError(f"{sweep.path}: method {sweep.method} draws without end: set run_cap in the sweep file "
                         "or pass --run-cap N")
    if sweep.method == "bayes" or sweep.config.get("early_terminate"):
        _engine()
    directory = Path(args.out) if args.out else SWEEPS_ROOT / sweep.path.stem
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    parallel = args.parallel or (len(devices) if devices else 1)
    slots, slot_env = slots_for(parallel, devices)

    copy = directory / "sweep.yaml"
    if copy.is_file() and copy.read_text() != sweep.text:
        raise SweepError(f"{directory} holds a different sweep ({copy} differs from {sweep.path}): pass --out DIR "
                         "for a new sweep directory, or delete the old one")
    state = State(directory, sweep, args.seed)

    if sweep.method == "grid":
        planned = grid_values(sweep)[:run_cap] if run_cap else grid_values(sweep)
    elif sweep.method == "random":
        planned = random_values(sweep, run_cap, state.seed)
    else:  # bayes: each draw depends on the results so far; check the first one, and each before it runs
        planned = []
    names = [trial_name(i, v) for i, v in enumerate(planned)]
    for trial in state.trials:
        if trial.name in names and trial.values != planned[names.index(trial.name)]:
            raise SweepError(f"{state.path}: trial {trial.name} has other values than the sweep file gives it")

    if args.dry_run:
        for name, values in zip(names, planned):
            trial = state.trial(name) or Trial(name, values)
            status = f"  [{trial.status}]" if state.trial(name) else ""
            print(f"{name}{status}\n  {subprocess.list2cmdline(trial_command(sweep, directory, trial))}")
    if sweep.method == "bayes":
        first = _engine().next_run(sweep.config, [])
        planned_check, names_check = [{k: v["value"] for k, v in first.config.items()}], ["bayes-first-draw"]
    else:
        todo = [(n, v) for n, v in zip(names, planned) if not (state.trial(n) and state.trial(n).status == "finished")]
        names_check, planned_check = [n for n, _ in todo], [v for _, v in todo]
    print(f"sweep {sweep.name}: validating {len(planned_check)} trial config(s) with the CLI ...", flush=True)
    validate(sweep, planned_check, names_check, directory)
    if args.dry_run:
        total = f"{len(planned)} trials" if sweep.method != "bayes" else f"up to {run_cap} bayes trials"
        print(f"sweep {sweep.name}: {total}, all valid; dry run: nothing started, nothing written")
        return 0

    (directory / "runs").mkdir(parents=True, exist_ok=True)
    if not copy.is_file():
        write_atomic(copy, sweep.text)
    for name, values in zip(names, planned):
        if state.trial(name) is None:
            state.trials.append(Trial(name, values))
    reconcile(state, directory)
    if args.retry_failed:
        for trial in state.trials:
            if trial.status in ("failed", "stopped"):
                trial.status = "pending"
    state.save()
    return loop(sweep, directory, state, slots, slot_env, run_cap)


def loop(sweep: Sweep, directory: Path, state: State, slots: list[str], slot_env: dict[str, dict[str, str]],
         run_cap: int | None) -> int:
    running: list[Running] = []
    free = list(slots)
    base_env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID")}
    done = sum(t.status != "pending" for t in state.trials)
    print(f"sweep {sweep.name}: {len(state.trials)} trials, {done} done before; slots {', '.join(slots)}; "
          f"{directory}", flush=True)
    try:
        while True:
            while free and (trial := next_trial(sweep, state, directory, run_cap)) is not None:
                slot = free.pop(0)
                running.append(start_trial(sweep, directory, trial, slot, {**base_env, **slot_env[slot]}))
                state.save()
                print(f"[{_index(state, trial)}] start {trial.name} ({slot}, start {trial.starts})", flush=True)
            if not running:
                break
            time.sleep(POLL_S)
            if sweep.config.get("early_terminate"):
                early_terminate(sweep, directory, state, running)
            for r in list(running):
                code = r.proc.poll()
                if code is None:
                    continue
                finish_trial(directory, r, code, sweep.metric)
                running.remove(r)
                free.append(r.slot)
                state.save()
                print(f"[{_index(state, r.trial)}] {r.trial.status} {r.trial.name} {_result(r.trial, sweep)}",
                      flush=True)
    except KeyboardInterrupt:
        for r in running:  # their own sessions: Ctrl-C did not reach them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
        for r in running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
        print(f"sweep {sweep.name}: interrupted; run the same command again to carry on", file=sys.stderr)
        return 130
    print(table(sweep, state))
    return 1 if any(t.status == "failed" for t in state.trials) else 0


def next_trial(sweep: Sweep, state: State, directory: Path, run_cap: int | None) -> Trial | None:
    pending = next((t for t in state.trials if t.status == "pending"), None)
    if pending is not None or sweep.method != "bayes" or len(state.trials) >= (run_cap or 0):
        return pending
    runs = [_engine_run(sweep, directory, t, history=False) for t in state.trials]
    suggestion = _engine().next_run(sweep.config, runs)
    if suggestion is None:
        return None
    values = {k: v["value"] for k, v in sorted(suggestion.config.items())}
    trial = Trial(trial_name(len(state.trials), values), values)
    validate(sweep, [values], [trial.name], directory)
    state.trials.append(trial)
    return trial


def early_terminate(sweep: Sweep, directory: Path, state: State, running: list[Running]) -> None:
    """Hyperband through W&B's engine: the running trials it names are stopped (SIGTERM to their group)."""
    sweeps = _engine()
    runs = [_engine_run(sweep, directory, t, history=True) for t in state.trials if t.status != "pending"]
    for stopped in sweeps.stop_runs(sweep.config, runs):
        r = next((r for r in running if r.trial.name == stopped.name and r.trial.status == "running"), None)
        if r is not None:
            r.trial.status = "stopped"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)


def _index(state: State, trial: Trial) -> str:
    return f"{state.trials.index(trial) + 1}/{len(state.trials)}"


def _result(trial: Trial, sweep: Sweep) -> str:
    if trial.status == "finished":
        value = trial.metrics.get(sweep.metric)
        return f"{sweep.metric}={value:.4f} ({trial.wall_s} s)" if value is not None else f"({trial.wall_s} s)"
    return (trial.error or "").splitlines()[0] if trial.error else ""


def table(sweep: Sweep, state: State) -> str:
    """Per trial, then per cell (the values other than the seed) as mean ± std over seeds."""
    lines = [f"sweep {sweep.name}: {sweep.metric} ({sweep.goal})", f"{'trial':<60} {'status':<9} {sweep.metric}"]
    groups: dict[str, list[float]] = {}
    for t in state.trials:
        value = t.metrics.get(sweep.metric) if t.status == "finished" else None
        shown = f"{value:.4f}" if isinstance(value, float) else (t.error or "").splitlines()[0][:60] if t.error else ""
        lines.append(f"{t.name:<60} {t.status:<9} {shown}")
        cell = _describe({k: v for k, v in t.values.items() if k != "seed_everything"}) or "(all)"
        if isinstance(value, float):
            groups.setdefault(cell, []).append(value)
    if groups and any(len(v) > 1 for v in groups.values()):
        lines.append(f"per cell, mean ± std over seeds ({sweep.metric}):")
        for cell, values in groups.items():
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"  {statistics.fmean(values):.4f} ± {std:.4f} (n={len(values)})  {cell}")
    failed = [t for t in state.trials if t.status == "failed"]
    for t in failed:
        lines.append(f"failed {t.name}: {t.error}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inception_lab sweep",
        description="Run a W&B sweep file locally, no W&B server: every trial is the command line the W&B agent "
                    "would run; state survives kills (run the same command again to carry on).")
    parser.add_argument("sweep_file", help="a W&B sweep file (sweeps/<x>.yaml)")
    parser.add_argument("--out", help="sweep directory (default: runs/sweeps/<sweep file stem>)")
    parser.add_argument("--parallel", type=int, help="trials at once (default: one per --devices entry, else 1)")
    parser.add_argument("--devices", help="GPU ids, one trial per GPU (CUDA_VISIBLE_DEVICES), e.g. 0,1; without "
                                          "it, --parallel N splits the CPU threads between N trials")
    parser.add_argument("--dry-run", action="store_true", help="print and validate every trial; run nothing")
    parser.add_argument("--run-cap", type=int, help="at most N trials (overrides the sweep file's run_cap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random / bayes draws (kept in state.json)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed and stopped trials again")
    args = parser.parse_args(argv)
    for flag in ("parallel", "run_cap"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SweepError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except SweepError as error:
        print(f"inception_lab sweep: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
