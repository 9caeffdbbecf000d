"""A comparison's verdicts: every cell against the baseline by the rule (``sequential.Design``, through
``cells.verdict``), Holm's correction across the sweep's cells on top of it, and ``report.json``, their
machine-readable record.

Each cell's own verdict holds its error rates for that cell: a false "higher or lower" at most alpha, a false
"equal" at most alpha (at whatever look it stopped, for a sweep grown by looks). Across the cells, Holm's step-down
procedure on the verdicts' p-values (repeated p-values for a sweep grown by looks: valid at the look a cell stopped)
keeps the chance of any false "higher or lower" in the sweep at alpha, and of any false "equal" at alpha: two
families, each at alpha, so a false claim of either kind somewhere in the sweep at most 2 alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inception_lab.compare.cells import Cell, Verdict, describe, holm, paired_difference, verdict
from inception_lab.compare.sequential import CANNOT_TELL, EQUAL, HIGHER, LOWER, SPENDING, Design


@dataclass
class Judgement:
    """One cell against the baseline: the rule's verdict and p-values, and the same with Holm's correction."""

    cell: Cell
    verdict: Verdict
    p: float | None  # of "higher or lower"
    p_equal: float | None  # of "equal within ±δ"
    holm_p: float | None = None
    holm_p_equal: float | None = None
    holm_word: str = CANNOT_TELL

    def holm_text(self) -> str:
        return f"equal within ±{100 * self.verdict.half_width:g}" if self.holm_word == EQUAL else self.holm_word


@dataclass
class Family:
    """Every cell but the baseline judged on ``metric`` by ``design``, with Holm's correction across them."""

    metric: str
    design: Design
    base: Cell
    judged: list[Judgement]

    def of(self, cell: Cell) -> Judgement | None:
        return next((j for j in self.judged if j.cell is cell), None)


def judge(cell_list: list[Cell], base: Cell, metric: str, design: Design) -> Family:
    """Each cell's verdict by ``design`` and its p-values; Holm's adjusted p-values over the cells (those with an
    interval), one family for "higher or lower" and one for "equal", and the verdict each gives at the design's
    alpha: higher / lower where the Holm p of a difference is at most alpha, else equal where that of equivalence is,
    else cannot tell."""
    judged = []
    for cell in (c for c in cell_list if c is not base):
        said = verdict(paired_difference(cell, base, metric, 1 - design.alpha), design)
        judged.append(Judgement(cell, said, *said.p_values()))
    for j, differs, equal in zip(judged, holm([j.p for j in judged]), holm([j.p_equal for j in judged])):
        j.holm_p, j.holm_p_equal = differs, equal
        if differs is not None and differs <= design.alpha and j.verdict.diff is not None:
            j.holm_word = HIGHER if j.verdict.diff.diff > 0 else LOWER
        elif equal is not None and equal <= design.alpha:
            j.holm_word = EQUAL
    return Family(metric, design, base, judged)


def rule_words(design: Design) -> str:
    """The rule in a sentence: what a verdict tests and what it controls."""
    level, delta = f"{design.alpha:g}", f"±{100 * design.half_width:g} points"
    tests = (f"higher / lower: a two-sided paired t test; equal within {delta}: two one-sided t tests (TOST: "
             f"the {100 * (1 - 2 * design.alpha):g}% interval inside {delta})")
    if not design.sequential:
        return f"one look at the seeds there are; {tests}; each at {level}, per cell"
    looks = ", ".join(map(str, design.looks))
    return (f"grown by looks (`sweep --until-resolved`) at {looks} seeds per cell; {tests}, each group-sequential "
            f"over those looks ({SPENDING}), so each keeps its error rate at {level} per cell at whatever look the "
            "cell stopped")


def _number(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)


def _plain(value: Any) -> Any:
    """A cell key's value as JSON: tuples (lists, and dicts as ``freeze`` made them) to lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def record(cell_list: list[Cell], by: list[str], family: Family) -> dict[str, Any]:
    """report.json: the rule, then per cell its runs, n, mean and std of the metric (fractions, as the runs record
    them) and, against the baseline, the difference, the rule's interval, p, the verdict, the method that gave it,
    and Holm's correction."""
    cells = []
    for cell in cell_list:
        stat = cell.stat(family.metric)
        entry: dict[str, Any] = {"cell": describe(cell, by), "values": dict(zip(by, map(_plain, cell.key))),
                                 "baseline": cell is family.base, "runs": [r.name for r in cell.runs], "n": stat.n,
                                 "mean": _number(stat.mean), "std": _number(stat.std)}
        judged = family.of(cell)
        if judged is not None:
            said, diff = judged.verdict, judged.verdict.diff
            entry["against_baseline"] = {
                "difference": None if diff is None else diff.diff, "n": None if diff is None else diff.n,
                "interval": None if diff is None else [_number(said.low), _number(said.high)],
                "equal_interval": None if diff is None else [_number(said.equal_low), _number(said.equal_high)],
                "p": judged.p, "p_equal": judged.p_equal, "verdict": said.word, "method": said.method(),
                "holm": {"p": judged.holm_p, "p_equal": judged.holm_p_equal, "verdict": judged.holm_word}}
        cells.append(entry)
    design = family.design
    return {"metric": family.metric, "units": "as the runs record the metric (top-1 as a fraction)",
            "alpha": design.alpha, "half_width": design.half_width,
            "looks": list(design.looks) if design.sequential else None, "rule": rule_words(design),
            "family": "Holm across the cells, separately for higher/lower (p) and for equal (p_equal)",
            "baseline": describe(family.base, by), "cells": cells}
