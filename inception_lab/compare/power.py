"""``python -m inception_lab power``: what the rule of ``sweep --until-resolved`` and ``compare`` answers, and at what
cost in seeds, before any GPU hour is spent.

It simulates sweeps of one cell against its baseline whose paired differences are normal (mean ``--diff``, sd
``--sd``, in points of top-1), grows each as ``sweep --until-resolved`` does (``--seeds`` first, then
``--seeds-per-round`` more a round while the cell is unresolved, up to ``--max-seeds``) and judges each look by the
same decision code (``sequential.Design.decide``, which ``cells.verdict`` calls): the chance of each verdict and the
seeds a cell spends on average.

    python -m inception_lab power --diff 0 --sd 2 --half-width 1 --seeds 5 --seeds-per-round 2 --max-seeds 12
    python -m inception_lab power --half-width 0.5 --seeds 5 --max-seeds 20      # a table over diffs and sds
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from inception_lab import console
from inception_lab.compare.sequential import CANNOT_TELL, EQUAL, HIGHER, LOWER, Design
from inception_lab.errors import ArgumentParser, UserError

SDS = (0.5, 1.0, 1.5, 2.0, 3.0)  # points: the digits cells' paired sds are 1 to 3.5
DIFFS = (0.0, 0.5, 1.0, 1.5, 2.0)  # in units of --half-width: 0, δ/2, δ, 1.5 δ, 2 δ


class PowerError(UserError):
    """Bad options to ``power``."""


@dataclass
class Chances:
    """The verdicts' frequencies over simulated sweeps, and the seeds a cell spent on average."""

    higher: float
    lower: float
    equal: float
    cannot_tell: float
    mean_seeds: float

    def as_json(self) -> dict[str, float]:
        return {"higher": self.higher, "lower": self.lower, "equal": self.equal, "cannot_tell": self.cannot_tell,
                "mean_seeds": self.mean_seeds}


def simulate(design: Design, diff: float, sd: float, sims: int, seed: int = 0) -> Chances:
    """``sims`` sweeps of one cell against its baseline: row i of ``default_rng(seed).normal(diff, sd, (sims,
    max seeds))`` is sweep i's paired differences by seed, in the design's units; each is judged at every look
    until its verdict is not cannot tell, or at the last look."""
    draws = np.random.default_rng(seed).normal(diff, sd, size=(sims, design.looks[-1]))
    words, seeds = np.full(sims, CANNOT_TELL, dtype=object), np.zeros(sims)
    going = np.arange(sims)
    for n in design.looks:
        sample = draws[going, :n]
        said = np.atleast_1d(design.decide(sample.mean(axis=1), sample.std(axis=1, ddof=1) / np.sqrt(n), n, n - 1))
        words[going], seeds[going] = said, n
        going = going[said == CANNOT_TELL]
    return Chances(*(float(np.mean(words == w)) for w in (HIGHER, LOWER, EQUAL, CANNOT_TELL)), float(seeds.mean()))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m inception_lab power", description=__doc__.split("\n\n")[0])
    parser.add_argument("--diff", type=float, metavar="POINTS",
                        help="the true difference, cell - baseline (default: a grid of 0, δ/2, δ, 1.5δ, 2δ)")
    parser.add_argument("--sd", type=float, metavar="POINTS",
                        help=f"the sd of the paired differences over seeds (default: a grid of {SDS})")
    parser.add_argument("--half-width", type=float, default=0.5, metavar="POINTS",
                        help="δ of 'equal within ±δ' (default 0.5, as compare's)")
    parser.add_argument("--seeds", type=int, default=5, help="the sweep file's seeds per cell (default 5)")
    parser.add_argument("--seeds-per-round", type=int, default=2, help="seeds added per round (default 2)")
    parser.add_argument("--max-seeds", type=int, default=20, help="seeds per cell at most (default 20)")
    parser.add_argument("--alpha", type=float, default=0.05, help="each verdict's error rate (default 0.05)")
    parser.add_argument("--sims", type=int, default=10_000, help="simulated sweeps per setting (default 10000)")
    parser.add_argument("--json", action="store_true", help="print the fractions as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for flag, value, least in (("seeds", args.seeds, 2), ("seeds-per-round", args.seeds_per_round, 1),
                               ("sims", args.sims, 1)):
        if value < least:
            raise PowerError(f"--{flag} {value}: expected an integer >= {least}")
    if args.max_seeds < args.seeds:
        raise PowerError(f"--max-seeds {args.max_seeds}: fewer than --seeds {args.seeds}")
    for flag, value in (("half-width", args.half_width), ("sd", args.sd)):
        if value is not None and not value > 0:
            raise PowerError(f"--{flag} {value}: expected points of top-1 > 0, e.g. 1.0")
    if args.diff is not None and not np.isfinite(args.diff):
        raise PowerError(f"--diff {args.diff}: expected points of top-1, e.g. 0.5")
    if not 0 < args.alpha < 1:
        raise PowerError(f"--alpha {args.alpha}: expected a level in (0, 1), e.g. 0.05")
    design = Design.grown(args.seeds, args.seeds_per_round, args.max_seeds, args.alpha, args.half_width)
    diffs = [args.diff] if args.diff is not None else [k * args.half_width for k in DIFFS]
    settings = [(d, s) for s in ([args.sd] if args.sd is not None else SDS) for d in diffs]
    results = [(d, s, simulate(design, d, s, args.sims)) for d, s in settings]
    if args.json:
        single = args.diff is not None and args.sd is not None
        console.result(json.dumps(results[0][2].as_json() if single else  # one line, the whole stdout
                                  [{"diff": d, "sd": s, **r.as_json()} for d, s, r in results]))
        return 0
    delta = f"{args.half_width:g}"
    print(f"power: {args.sims} simulated sweeps a setting of one cell against its baseline (normal paired "
          f"differences, points of top-1); looks at {', '.join(map(str, design.looks))} seeds; "
          f"{'group-sequential ' * design.sequential}t test at {args.alpha:g}, equal within ±{delta} by TOST")
    header = ["diff", "sd", "P(higher)", "P(lower)", f"P(equal ±{delta})", "P(cannot tell)", "mean seeds"]
    rows = [[f"{d:+.2f}", f"{s:.2f}", *(f"{100 * p:.1f}%" for p in (r.higher, r.lower, r.equal, r.cannot_tell)),
             f"{r.mean_seeds:.1f}"] for d, s, r in results]
    widths = [max(len(x) for x in column) for column in zip(header, *rows)]
    console.result("\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in (header, *rows)))
    return 0
