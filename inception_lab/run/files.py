"""What run records are made of, with no torch import (so `compare` and a sweep runner start in a second): dotted
config keys, what makes a run a variant of its experiment, short value names, atomic writes, reading a run's
record."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``{"model": {"aux_weight": 0.3}}`` -> ``{"model.aux_weight": 0.3}``)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# Keys that say where or how a run happens, not what it is: never part of a run's variant (the seed is recorded on
# its own, as summary.json's "seed").
BOOKKEEPING = ("config", "run_dir", "run_name", "experiment", "ckpt_path", "weights_only", "print_config",
               "seed_everything")
BOOKKEEPING_PREFIXES = ("trainer.", "wandb.", "data.init_args.root", "data.init_args.num_workers",
                        "data.init_args.download", "data.init_args.pin_memory", "data.init_args.persistent_workers")


def is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING or key.startswith(BOOKKEEPING_PREFIXES)


# Trainer settings that change what a run computes: a resume must keep them (the rest of trainer.*: the length of
# training, devices, logging, progress bars, may change). The seed too: a resumed run is the same seed's run.
RESUME_KEEPS = ("seed_everything", "trainer.precision", "trainer.accumulate_grad_batches",
                "trainer.gradient_clip_val", "trainer.gradient_clip_algorithm")


def resume_differences(run: dict[str, Any], resume: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The flat keys where a resume's resolved config differs from the run's own (``config.yaml``): key -> (the
    run's value, the resume's). Bookkeeping keys (where the run is, how long it trains, how it logs) may differ, and
    a key only one of them has (an argument the code gained or lost since the run started) is not compared."""
    keys = [k for k in run if k in resume and (k in RESUME_KEEPS or not is_bookkeeping(k))]
    return {k: (run[k], resume[k]) for k in keys if run[k] != resume[k]}


def variant(resolved: dict[str, Any], experiment: dict[str, Any]) -> dict[str, Any]:
    """What makes a run differ from its experiment file: the flat keys of the resolved config whose value is not the
    experiment's own (both resolved, defaults included), bookkeeping keys aside."""
    return {key: value for key, value in resolved.items()
            if not is_bookkeeping(key) and (key not in experiment or experiment[key] != value)}


def variant_name(values: dict[str, Any]) -> str:
    """A variant as it reads in run names and W&B tags: ``head=fc-filter_sizes=3x3x3`` ("" for none)."""
    return "-".join(f"{key.rsplit('.', 1)[-1]}={short_value(value)}" for key, value in values.items())


def safe_name(*parts: str) -> str:
    """Non-empty parts joined with "-" into a run, trial or experiment name: one path component. Runs of other
    characters than letters, digits and ``_.=+-`` (spaces, "/", quotes) become "_"; leading and trailing dots and
    underscores go (no "..", no hidden directory): ``"Grüße run/v2"`` -> ``Grüße_run_v2``, ``"../x"`` -> ``x``."""
    return re.sub(r"[^\w.=+-]+", "_", "-".join(p for p in parts if p)).strip("._")


def short_value(value: Any) -> str:
    """A value as it reads in run and trial names: ``[3, [3, 3]]`` -> ``3x3x3``, ``[]`` -> ``none``."""
    if isinstance(value, list | tuple):
        return re.sub(r"[\s\[\]()'\"]+", "", str(list(value)).replace(", ", "x")) or "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary.json, or {} when there is none (yet) or it cannot be read."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def holds_run(run_dir: Path) -> bool:
    """Whether a directory holds a run's record (a sweep runner's ``args.json`` and ``trial.log`` alone do not)."""
    run_dir = Path(run_dir)
    return any((run_dir / name).is_file() for name in ("config.yaml", "summary.json")) or \
        any((run_dir / "checkpoints").glob("*.ckpt"))
