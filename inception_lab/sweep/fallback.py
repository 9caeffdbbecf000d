"""Grid and random search where W&B's ``sweeps`` engine is not installed (it pins numpy<2): the engine's trials.

Grid: the engine's order (parameters sorted by name, the last fastest, values as the sweep file lists them) and its
de-duplication. Random: one uniform draw per parameter and trial, in that order, through the inverse CDF of the
distribution (``HyperParameter.ppf`` in sweeps/params.py), so a seed gives the engine's values.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

from inception_lab.sweep.spec import ENGINE_HINT, Param, Sweep, SweepError

RANDOM_TYPES = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "q_log_uniform",
                "log_uniform_values", "q_log_uniform_values")


def grid_values(sweep: Sweep) -> list[dict[str, Any]]:
    axes: list[Any] = []
    for p in sweep.params:
        s = p.spec
        if p.kind == "q_uniform":  # numpy.arange(min, max, q): max excluded
            q = s.get("q", 1.0)
            axes.append([s["min"] + k * q for k in range(math.ceil((s["max"] - s["min"]) / q))])
        elif p.kind == "int_uniform":
            axes.append(range(s["min"], s["max"] + 1))
        else:
            axes.append(s["values"] if p.kind == "categorical" else [s["value"]])
    cells, seen = [], set()
    for combo in itertools.product(*axes):
        key = json.dumps([int(v) if isinstance(v, float) and v.is_integer() else v for v in combo], sort_keys=True)
        if key not in seen:  # the engine hashes each value (a whole float as an int) and skips a cell it has seen
            seen.add(key)
            cells.append({p.name: value for p, value in zip(sweep.params, combo)})
    return cells


def random_values(sweep: Sweep, n: int, seed: int) -> list[dict[str, Any]]:
    for p in sweep.params:
        if p.kind not in RANDOM_TYPES:
            raise SweepError(f"parameter {p.name} is {p.kind}: drawing it needs {ENGINE_HINT}")
    rng = random.Random(seed)
    return [{p.name: ppf(p, rng.uniform(0.0, 1.0)) for p in sweep.params} for _ in range(n)]


def ppf(param: Param, x: float) -> Any:
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
