"""The rule a cell is judged by against its baseline, as data (:class:`Design`): its level, δ and the looks at which
it may stop; and the one implementation of its verdicts, used by ``compare``, ``sweep --until-resolved`` and
``power`` alike.

A cell's verdict is one of four words. **higher** / **lower**: the difference's interval excludes 0 (a two-sided t
test at ``alpha``). **equal** (within ±δ): two one-sided t tests, each at ``alpha``, reject ``difference <= -δ`` and
``difference >= +δ`` (TOST, Schuirmann 1987: the 1 - 2 alpha interval lies inside ±δ). **cannot tell**: neither.

A sweep with a fixed number of seeds looks once: plain t intervals. A sweep grown by looks (``--until-resolved``: the
file's seeds n0, then ``step`` more a round, up to ``max_seeds``) looks at planned seed counts, and a plain interval at
every look would say "higher" falsely far more often than ``alpha`` (the more looks, the more often). Its boundaries
are group-sequential instead (Lan & DeMets 1983): ``alpha`` is spent over the planned looks by the O'Brien-Fleming-type
function ``2 - 2 Phi(z(1 - a/2) / sqrt(t))`` per side (``a``: ``alpha`` one-sided, ``alpha / 2`` a side two-sided;
``t``: the look's seeds over ``max_seeds``), with each look's boundary calibrated on the paired t statistic itself
(its null law is free of the sd), not on a normal approximation of it, which at 5 seeds is not close enough.
The test for a difference spends two-sided, each of TOST's one-sided tests spends one-sided, so the chance of a false
"higher or lower", and of a false "equal", is at most ``alpha`` at whatever look a cell stops. Stopping for a verdict
only ever removes later looks, so the rates hold when a cell stops early for either (the boundaries are non-binding).
An anytime-valid confidence sequence would allow any look, unplanned ones too, at a much higher cost in seeds at the
few seeds a cell has here (sweeps/results/README.md measures both). Torch-free; numpy, and scipy when a verdict needs
a quantile.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

HIGHER, LOWER, EQUAL, CANNOT_TELL = "higher", "lower", "equal", "cannot tell"  # a cell against its baseline
SPENDING = "Lan & DeMets' O'Brien-Fleming-type alpha spending"


@dataclass(frozen=True)
class Design:
    """How a cell is judged: ``alpha`` (of each test: a false "higher or lower", and a false "equal"), ``half_width``
    (δ of "equal within ±δ", in the metric's units: 0.005 is half a point of top-1) and ``looks``, the seeds per cell
    at which a sweep grown by looks may stop (``()``: one look, at whatever seeds there are: a fixed sweep)."""

    alpha: float = 0.05
    half_width: float = 0.005
    looks: tuple[int, ...] = ()

    @classmethod
    def grown(cls, first: int, step: int, most: int, alpha: float = 0.05, half_width: float = 0.005) -> Design:
        """The looks of ``sweep --until-resolved``: ``first`` seeds, then ``step`` more a round up to ``most``."""
        return cls(alpha, half_width, (*range(first, most, step), most))

    @property
    def sequential(self) -> bool:
        return len(self.looks) > 1

    def look(self, n: int) -> int:
        """The index of the planned look whose boundary judges ``n`` seeds: the last planned look at or below ``n``
        (the first for fewer seeds than it, e.g. a failed seed); 0 for a fixed sweep."""
        return max(0, sum(1 for planned in self.looks if planned <= n) - 1)

    def levels(self, n: int) -> tuple[float, float]:
        """The nominal levels at ``n`` seeds: two-sided for "higher or lower", one-sided for each TOST test."""
        if not self.sequential:
            return self.alpha, self.alpha
        k = self.look(n)
        return nominal(self.looks, self.alpha, 2)[k], nominal(self.looks, self.alpha, 1)[k]

    def critical(self, n: int, df: float) -> tuple[float, float]:
        """The t quantiles at ``n`` seeds and ``df`` degrees of freedom: the interval for a difference is ``diff ±
        differs * se``, TOST's ``diff ± equal * se``."""
        two, one = self.levels(n)
        return t_quantile(two / 2, df), t_quantile(one, df)

    def decide(self, diff: Any, se: Any, n: int, df: float) -> Any:
        """The verdict of a difference ``diff`` with standard error ``se`` at ``n`` seeds and ``df`` degrees of
        freedom: a word, or an array of words for arrays of ``diff`` and ``se`` (``power``'s simulated sweeps). NaNs,
        and nothing to judge, say cannot tell."""
        differs, equal = self.critical(n, df)
        diff, se = np.asarray(diff, dtype=float), np.asarray(se, dtype=float)
        with np.errstate(invalid="ignore"):
            higher, lower = diff - differs * se > 0, diff + differs * se < 0
            inside = (diff - equal * se > -self.half_width) & (diff + equal * se < self.half_width)
        words = np.select([higher, lower, inside], [HIGHER, LOWER, EQUAL], CANNOT_TELL)
        return str(words) if words.ndim == 0 else words

    def p_values(self, diff: float, se: float, n: int, df: float) -> tuple[float, float]:
        """(p of "higher or lower", p of "equal within ±δ"): the smallest ``alpha`` of this design (the same looks)
        at which the verdict would say so at this look; for a fixed sweep the t test's two-sided p and TOST's p.
        Sequential ones are Jennison & Turnbull's repeated p-values: valid at whatever look a cell stopped, so Holm's
        procedure may take them."""
        if not se > 0:  # every seed gave the same difference
            return float(diff != 0), float(abs(diff) < self.half_width)
        differs, equal = 2 * t_tail(abs(diff) / se, df), t_tail((self.half_width - abs(diff)) / se, df)
        if not self.sequential:
            return differs, equal
        return repeated_p(self.looks, self.look(n), differs, 2), repeated_p(self.looks, self.look(n), equal, 1)

    def describe(self, n: int) -> str:
        """What the verdict at ``n`` seeds tested, in words (report.md, report.json's "method")."""
        level, equal = f"{self.alpha:g}", f"two one-sided t tests (TOST) against ±{self.half_width:g}"
        if not self.sequential:
            return f"a t test at {level} (one look, a fixed number of seeds); equal: {equal}, each at {level}"
        k = self.look(n)
        where = f"look {k + 1} of {len(self.looks)}" + ("" if n == self.looks[k] else
                                                        f", {n} seeds judged at the {self.looks[k]}-seed boundary")
        return (f"a group-sequential t test at {level} over the looks at {_seeds(self.looks)} seeds ({SPENDING}; "
                f"{where}); equal: {equal}, each at {level} over the same looks")


def t_quantile(tail: float, df: float) -> float:
    """The t quantile with ``tail`` above it (scipy.special's Student t: stats.t's, without its overhead)."""
    from scipy.special import stdtrit

    return float(-stdtrit(df, tail))


def t_tail(x: float, df: float) -> float:
    """P(T >= x) for Student's t with ``df`` degrees of freedom."""
    from scipy.special import stdtr

    return float(stdtr(df, -x))


def _seeds(looks: tuple[int, ...]) -> str:
    return ", ".join(map(str, looks))


def spent(fraction: float, alpha: float) -> float:
    """The O'Brien-Fleming-type spending function of a one-sided test at ``alpha``: the error it has spent by
    information fraction ``fraction`` (2 - 2 Phi(z(1 - alpha/2) / sqrt(t)); Lan & DeMets 1983)."""
    from scipy.special import ndtr, ndtri

    return float(2 * ndtr(ndtri(alpha / 2) / math.sqrt(fraction)))


PATHS = 200_000  # null paths of the t statistic the boundaries are calibrated on: ±0.05% (1 SE) on a 5% level


def null_paths(looks: tuple[int, ...]) -> np.ndarray:
    """The paired t statistic at each look (columns) on ``PATHS`` sweeps of a cell whose true difference is 0 (rows):
    under the null its joint law is the same whatever the sd, so one sample serves every sd. Drawn exactly, two draws
    a look: a block of m new seeds adds a normal sum of variance m and, within the block, an independent chi-square of
    m - 1 degrees of freedom to the sum of squares. A fixed seed: the same boundaries in every process."""
    rng = np.random.default_rng(20_231_035)
    total = squares = np.zeros(PATHS)
    stats, before = np.empty((PATHS, len(looks))), 0
    for k, n in enumerate(looks):
        block = rng.standard_normal(PATHS) * math.sqrt(n - before)
        within = rng.chisquare(n - before - 1, PATHS) if n - before > 1 else 0.0
        total, squares = total + block, squares + block * block / (n - before) + within
        variance = np.maximum(squares - total * total / n, 1e-300) / (n - 1)
        stats[:, k], before = total / np.sqrt(n * variance), n
    return stats


@functools.lru_cache(maxsize=4)  # a sweep's one design, both sides: 200,000 x looks x 16 bytes each
def ranked(looks: tuple[int, ...], sides: int) -> tuple[np.ndarray, np.ndarray]:
    """Per look (rows), the null paths in descending order of the statistic a boundary is put on (|T| for ``sides``
    2, T for 1): their indices and their values."""
    paths = null_paths(looks)
    stat = np.abs(paths) if sides == 2 else paths
    order = np.argsort(-stat, axis=0, kind="stable").T
    return order, np.take_along_axis(stat, order.T, axis=0).T


@functools.lru_cache(maxsize=4096)
def boundaries(looks: tuple[int, ...], alpha: float, sides: int) -> tuple[float, ...]:
    """The t boundaries c_k over ``looks`` (seeds) that spend ``alpha`` by :func:`spent`: under the null, the first
    look at which |T_k| >= c_k (``sides`` 2) or T_k >= c_k (``sides`` 1) is look k with probability ``sides`` x
    (spent(t_k) - spent(t_(k-1))), each side spending ``alpha / sides`` (gsDesign's sfLDOF convention: a two-sided
    0.05 test has the one-sided 0.025 boundaries). The first look's is the t quantile; each later one is calibrated
    on :func:`null_paths` (the paths not stopped before it), which makes them exact for the t statistic at every
    look, where the usual conversion of normal boundaries to t quantiles gives 5.4% for 5% at 5 seeds."""
    order, values = ranked(looks, sides)
    side, result = alpha / sides, []
    going = np.ones(PATHS, dtype=bool)
    for k, n in enumerate(looks):
        target = sides * (spent(n / looks[-1], side) - (spent(looks[k - 1] / looks[-1], side) if k else 0.0))
        if k == 0:
            bound = t_quantile(target / sides, n - 1)
        else:  # the value above which target x PATHS of the paths still going lie (interpolated between two)
            alive = going[order[k]]
            ranks = np.cumsum(alive)
            if ranks[-1] == 0:
                bound = float("inf")
            else:
                at = np.flatnonzero(alive)
                bound = float(np.interp(target * PATHS, ranks[at], values[k][at]))
        stopped = order[k][: int(np.searchsorted(-values[k], -bound, side="right"))]  # the paths at or above it
        going[stopped] = False
        result.append(bound)
    return tuple(result)


@functools.lru_cache(maxsize=4096)
def nominal(looks: tuple[int, ...], alpha: float, sides: int) -> tuple[float, ...]:
    """Each look's nominal level: the t tail beyond its boundary at the look's degrees of freedom (a count of seeds
    off the plan is judged at the same level with its own degrees of freedom)."""
    return tuple(sides * t_tail(c, n - 1) for c, n in zip(boundaries(looks, alpha, sides), looks))


def repeated_p(looks: tuple[int, ...], look: int, nominal_p: float, sides: int) -> float:
    """The smallest ``alpha`` whose design rejects at ``look`` a statistic of nominal p-value ``nominal_p``: the
    ``alpha`` at which that look's nominal level equals it (the level grows with ``alpha``). Below about 10 /
    ``PATHS`` the calibration cannot tell levels apart: such a p reads as that bound."""
    from scipy import optimize

    def gap(log_alpha: float) -> float:
        return math.log(max(nominal(looks, math.exp(log_alpha), sides)[look], 1e-300)) - math.log(nominal_p)

    low, high = math.log(10 / PATHS), math.log(0.99)  # near alpha = 1 every error is spent at the first look
    if gap(high) <= 0:
        return 1.0
    if gap(low) >= 0:
        return 10 / PATHS
    return float(math.exp(optimize.brentq(gap, low, high, xtol=1e-3)))
