"""What run records are made of, with no torch import (so `compare` starts in a second): dotted config keys,
short value names, atomic writes."""

from __future__ import annotations

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
