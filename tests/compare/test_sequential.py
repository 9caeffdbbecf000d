"""compare/sequential.py: the rule as data; its boundaries against the published O'Brien-Fleming values, its
repeated p-values against its own verdicts, a fixed sweep's plain t test, and the looks a count of seeds falls on."""

from __future__ import annotations

import pytest

from inception_lab.compare.sequential import Design, boundaries, t_quantile


def test_boundaries_reproduce_the_published_obrien_fleming_values() -> None:
    """With many seeds a look the t statistic is normal, and the boundaries are Lan-DeMets O'Brien-Fleming's for
    five equally spaced looks at two-sided 0.05 (gsDesign's sfLDOF; Jennison & Turnbull 2000, Table 2.7's
    spending-function counterpart): 4.877, 3.357, 2.680, 2.290, 2.031. The first is a t quantile; the later ones
    are calibrated on 200,000 null paths."""
    got = boundaries((1000, 2000, 3000, 4000, 5000), 0.05, 2)
    assert got[0] == pytest.approx(4.877, abs=0.04)  # t(999) at a tail of 5e-7: 4.907
    assert got[1:] == pytest.approx((3.357, 2.680, 2.290, 2.031), abs=0.02)
    assert list(got) == sorted(got, reverse=True)


def test_a_fixed_sweep_is_a_plain_t_test() -> None:
    """One look (no looks planned, or a file whose seeds are the cap): the two-sided 95% t quantile and TOST's
    one-sided 95%, at any n."""
    for design in (Design(), Design.grown(12, 2, 12)):
        assert not design.sequential and design.levels(7) == (0.05, 0.05)
        assert design.critical(5, 4.0) == pytest.approx((2.7764, 2.1318), rel=1e-4)  # printed t tables


def test_the_looks_a_count_of_seeds_is_judged_at() -> None:
    design = Design.grown(5, 2, 12)
    assert design.looks == (5, 7, 9, 11, 12) and design.sequential
    assert [design.look(n) for n in (3, 5, 6, 7, 12, 14)] == [0, 0, 0, 1, 4, 4]
    assert "look 2 of 5" in design.describe(7) and "8 seeds judged at the 7-seed boundary" in design.describe(8)
    # the later the look, the lower the bar; far above a plain interval's at the first look
    differs = [design.critical(n, n - 1)[0] for n in design.looks]
    assert differs == sorted(differs, reverse=True) and differs[0] > 2 * t_quantile(0.025, 4)


@pytest.mark.parametrize("n", [5, 9, 12])
def test_repeated_p_values_agree_with_the_verdicts(n: int) -> None:
    """The p of a difference (of equivalence) is at most alpha exactly when the verdict says higher (equal): a
    statistic 1% inside and 1% outside each boundary."""
    design = Design.grown(5, 2, 12, half_width=1.0)
    differs, equal = design.critical(n, n - 1)
    for scale, inside in ((1.01, True), (0.99, False)):
        diff = scale * differs  # se 1
        assert (design.decide(diff, 1.0, n, n - 1) == "higher") == inside
        assert (design.p_values(diff, 1.0, n, n - 1)[0] <= 0.05) == inside
        se = 1.0 / (equal * scale)  # TOST's interval 0 ± equal * se inside ±1 exactly when scale > 1
        assert (design.decide(0.0, se, n, n - 1) == "equal") == inside
        assert (design.p_values(0.0, se, n, n - 1)[1] <= 0.05) == inside
