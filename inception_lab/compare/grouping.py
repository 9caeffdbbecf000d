"""Cells: the keys that group the runs (what the runs record as their variant, or ``--by``), one cell per combination
of values, and the baseline cell (the experiment as its file is written, or ``--baseline``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import yaml

from inception_lab.compare.runs import CompareError, Run
from inception_lab.compare.stats import Cell
from inception_lab.runfiles import short_value


def freeze(value: Any) -> Any:
    """Lists to tuples and dicts to tuples of items, so that config values can key a cell."""
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in sorted(value.items()))
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


def resolve_key(key: str, known: list[str]) -> str | None:
    """``key`` itself, or the one known key it is a dotted suffix of (``head`` -> ``model.net.init_args.head``)."""
    matches = [k for k in known if k.endswith("." + key)]
    return key if key in known else matches[0] if len(matches) == 1 else None


def grouping_keys(runs: list[Run], by: list[str] | None, swept: list[str]) -> list[str]:
    """``--by`` (full keys or unique suffixes), else every key that some run's variant sets, in the order of the
    sweep file's parameters, then sorted."""
    varied: set[str] = set().union(*(r.variant or {} for r in runs))
    if by:
        known = sorted(varied.union(*(r.config for r in runs)))
        sample = ", ".join((sorted(varied) + [k for k in known if k.startswith("model.") and k not in varied])[:6])
        keys = []
        for key in by:
            resolved = resolve_key(key, known)
            if resolved is None:
                raise CompareError(f"--by {key}: no run has this key (available keys include: {sample}, ...)")
            keys.append(resolved)
        return list(dict.fromkeys(keys))
    if (old := next((r for r in runs if r.variant is None), None)) is not None:
        raise CompareError(f"{old.source or old.name}: the run records no \"variant\" (written by an older "
                           "inception_lab); name the grouping keys with --by KEY")
    return [k for k in swept if k in varied] + sorted(varied - set(swept))


def cells(runs: list[Run], by: list[str]) -> list[Cell]:
    """One cell per distinct combination of the ``by`` values, sorted by those values (0.25 < 0.5 < 1 < naive)."""
    groups: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(freeze(run.value(k)) for k in by)].append(run)
    return [Cell(key, groups[key]) for key in sorted(groups, key=_order)]


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
    """The cell named by ``KEY=VALUE`` items; default: the cell of the experiment as written (runs whose variant sets
    none of the grouping keys), else the first cell."""
    if not baseline:
        written = (c for c in cell_list if all(r.variant is not None and not set(by) & set(r.variant) for r in c.runs))
        return next(written, cell_list[0])
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
