"""compare/power.py (``python -m inception_lab power``): the rule's operating characteristics, the same, sweep by
sweep, as the sweep's own judge gives them; its error rates at every sd; bad options in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inception_lab.__main__ import main as lab_main
from inception_lab.sweep import resolve
from tests.compare.conftest import simulated_sweeps
from tests.conftest import REPO, one_error_line

RULE = ["--half-width", "1", "--seeds", "5", "--seeds-per-round", "2", "--max-seeds", "12", "--alpha", "0.05"]


def _power(capsys: pytest.CaptureFixture, *argv: str) -> object:
    capsys.readouterr()
    assert lab_main(["power", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_power_json_is_what_the_sweeps_judge_says(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A true difference of δ (1 point) at a paired sd of 1.5 points (every verdict has a share): power's fractions
    and mean seeds against 300 sweeps grown and judged as ``sweep --until-resolved`` judges them (run records
    through ``resolve.judge_runs``), on the same draws: the same verdict in every sweep, up to rounding."""
    said = _power(capsys, "--diff", "1", "--sd", "1.5", *RULE, "--sims", "300")
    assert set(said) == {"higher", "lower", "equal", "cannot_tell", "mean_seeds"}
    outcomes = simulated_sweeps(tmp_path, 0.01, 0.015, resolve.Rule(half_width=0.01, max_seeds=12, step=2), 300)
    direct = {key: sum(word == w for word, _ in outcomes) / 300
              for key, w in (("higher", "higher"), ("lower", "lower"), ("equal", "equal"),
                             ("cannot_tell", "cannot tell"))}
    assert min(direct["higher"], direct["cannot_tell"]) > 0.2 and direct["equal"] > 0  # a spread of verdicts
    for key, value in direct.items():
        assert said[key] == pytest.approx(value, abs=1 / 300 + 1e-9), key
    assert said["mean_seeds"] == pytest.approx(sum(n for _, n in outcomes) / 300, abs=0.03)


def test_the_rule_keeps_its_error_rates_at_every_sd(capsys: pytest.CaptureFixture) -> None:
    """No true difference: P(higher or lower) at most alpha at every sd of the grid (4,000 sweeps each: 5% + 3.3
    standard errors); a true difference of 1.5δ: P(equal) at most alpha. Without --diff and --sd, a grid of both."""
    grid = _power(capsys, *RULE, "--sims", "4000")
    assert [(row["diff"], row["sd"]) for row in grid][:6] == [(0.0, 0.5), (0.5, 0.5), (1.0, 0.5), (1.5, 0.5),
                                                               (2.0, 0.5), (0.0, 1.0)]
    assert len(grid) == 25 and all(sum(row[k] for k in ("higher", "lower", "equal", "cannot_tell")) ==
                                   pytest.approx(1) for row in grid)
    for row in grid:
        if row["diff"] == 0:
            assert row["higher"] + row["lower"] <= 0.0615, row
        if row["diff"] == 1.5:
            assert row["equal"] <= 0.0615, row
    capsys.readouterr()
    assert lab_main(["power", "--sd", "2", *RULE, "--sims", "200"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("power: 200 simulated sweeps a setting") and "looks at 5, 7, 9, 11, 12 seeds" in table[0]
    assert table[1].split() == ["diff", "sd", "P(higher)", "P(lower)", "P(equal", "±1)", "P(cannot", "tell)", "mean",
                                "seeds"]
    assert [line.split()[:2] for line in table[2:]] == [["+0.00", "2.00"], ["+0.50", "2.00"], ["+1.00", "2.00"],
                                                        ["+1.50", "2.00"], ["+2.00", "2.00"]]


def test_quiet_keeps_the_json_and_the_table(cli) -> None:
    """--quiet (every command's): power's result stays on stdout, the JSON as the whole of it, the table less its
    preamble; nothing on stderr."""
    code, out, err = cli(["power", "--diff", "1", "--sd", "1", *RULE, "--sims", "50", "--json", "--quiet"], cwd=REPO)
    assert code == 0 and set(json.loads(out)) == {"higher", "lower", "equal", "cannot_tell", "mean_seeds"}
    assert len(out.splitlines()) == 1 and err == ""
    code, out, err = cli(["power", "--diff", "1", "--sd", "1", *RULE, "--sims", "50", "--quiet"], cwd=REPO)
    assert [line.split()[:2] for line in out.splitlines()] == [["diff", "sd"], ["+1.00", "1.00"]]
    assert err == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "1"], "--seeds 1: expected an integer >= 2"),
    (["--seeds", "8", "--max-seeds", "6"], "--max-seeds 6: fewer than --seeds 8"),
    (["--sd", "0"], "--sd 0.0: expected points of top-1 > 0, e.g. 1.0"),
    (["--half-width", "-1"], "--half-width -1.0: expected points of top-1 > 0, e.g. 1.0"),
    (["--alpha", "1"], "--alpha 1.0: expected a level in (0, 1), e.g. 0.05"),
    (["--sims", "0"], "--sims 0: expected an integer >= 1"),
    (["--diff", "nan"], "--diff nan: expected points of top-1, e.g. 0.5"),
    (["--sims", "many"], "argument --sims: invalid int value: 'many'"),
])
def test_bad_options_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code, err = lab_main(["power", *argv]), capsys.readouterr().err
    assert one_error_line(code, err, "power").startswith(f"inception_lab power: error: {message}")
