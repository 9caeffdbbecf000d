"""compare/cells.py: runs grouped into cells by their resolved configs (bookkeeping aside), the baseline, the
paired and Welch intervals against printed t tables and by hand, the verdicts (equivalence as two one-sided tests)
and Holm's correction."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path

import pytest
import yaml

from inception_lab.compare import compare
from inception_lab.compare.cells import Cell, Difference, holm, paired_difference, verdict
from inception_lab.compare.sequential import Design
from tests.compare.conftest import FILTERS, HEAD, make_run, run, write_variants
from tests.conftest import REPO, write_sweep


def test_intervals_use_the_printed_t_quantiles() -> None:
    # printed tables of t(0.975, df); a paired interval over n = df + 1 seeds has half-width t * sd / sqrt(n)
    for df, t in ((1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980)):
        diffs = [0.01 * (s % 3) - 0.004 for s in range(df + 1)]
        base = Cell(("a",), [run(s, 0.5) for s in range(df + 1)])
        diff = paired_difference(Cell(("b",), [run(s, 0.5 + d) for s, d in enumerate(diffs)]), base)
        half = t * statistics.stdev(diffs) / math.sqrt(df + 1)
        assert diff is not None and diff.method == "paired" and diff.df == df and diff.n == df + 1
        assert diff.diff == pytest.approx(statistics.fmean(diffs))
        assert (diff.high - diff.diff, diff.diff - diff.low) == pytest.approx((half, half), rel=2.5e-4)
    # Welch's: fractional Welch-Satterthwaite df, half-width t(0.975, df) * sqrt(vx / nx + vy / ny)
    x, y = [0.80, 0.83, 0.81], [0.90, 0.91, 0.90, 0.92, 0.95]
    vx, vy = statistics.variance(x) / 3, statistics.variance(y) / 5
    df = (vx + vy) ** 2 / (vx ** 2 / 2 + vy ** 2 / 4)
    diff = paired_difference(Cell(("x",), [run(10 + i, v) for i, v in enumerate(x)]),
                             Cell(("y",), [run(20 + i, v) for i, v in enumerate(y)]))
    half = pytest.importorskip("scipy.stats").t.ppf(0.975, df) * math.sqrt(vx + vy)
    assert diff is not None and diff.method == "welch" and diff.n == 3 and diff.df == pytest.approx(df)
    assert df != int(df) and diff.diff == pytest.approx(statistics.fmean(x) - statistics.fmean(y))
    assert (diff.low, diff.high) == pytest.approx((diff.diff - half, diff.diff + half), rel=1e-9)
    # equal differences on every seed: a zero-width interval, and no warning on the terminal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = paired_difference(Cell(("c",), [run(s, 0.6) for s in range(3)]),
                                 Cell(("a",), [run(s, 0.5) for s in range(3)]))
    assert same is not None and same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1)


def test_paired_and_welch_intervals_by_hand() -> None:
    base = Cell(("a",), [run(0, 0.90), run(1, 0.92), run(2, 0.91)])
    other = Cell(("b",), [run(0, 0.85), run(1, 0.88), run(2, 0.86)])
    diff = paired_difference(other, base)
    diffs = [-0.05, -0.04, -0.05]
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert diff is not None and diff.method == "paired" and diff.n == 3 and diff.excludes_zero
    assert (diff.diff, diff.high) == pytest.approx((statistics.fmean(diffs), statistics.fmean(diffs) + half), rel=1e-4)

    # seeds 5, 6 against 0, 1: no pairs; equal variances and n give Welch df = 2
    lone = Cell(("c",), [run(5, 0.80), run(6, 0.82)])
    two = Cell(("a",), base.runs[:2])
    welch = paired_difference(lone, two)
    assert welch is not None and welch.method == "welch" and welch.df == pytest.approx(2)
    half = 4.303 * math.sqrt(0.02 ** 2 / 2 / 2 + 0.02 ** 2 / 2 / 2)
    assert (welch.diff, welch.low) == pytest.approx((-0.10, -0.10 - half), rel=1e-4) and "do not pair" in welch.note
    assert paired_difference(Cell(("d",), [run(0, 0.5)]), two) is None  # one run: no interval


def _diff(low: float, high: float) -> Difference:
    """A paired difference over 5 seeds whose 95% t interval is [low, high] (its standard error read from it)."""
    return Difference((low + high) / 2, low, high, 5, 4.0, "paired", sd=0.01, p=0.5)


def test_the_verdicts() -> None:
    """The 95% interval excludes 0: higher / lower; TOST's 90% interval inside ±δ: equal within ±δ; else cannot
    tell. The verdict keeps the intervals it decided by."""
    assert verdict(_diff(0.001, 0.02), Design()).word == "higher"
    assert verdict(_diff(-0.02, -0.001), Design()).word == "lower"
    said = verdict(_diff(-0.004, 0.005), Design())  # 90%: +0.05 ± 0.45 x t(0.95, 4) / t(0.975, 4) = ±0.35 points
    assert said.word == "equal" and said.resolved and said.text() == "equal within ±0.5"
    assert (said.low, said.high) == pytest.approx((-0.004, 0.005))
    assert (said.equal_low, said.equal_high) == pytest.approx((0.0005 - 0.0045 * 2.1318 / 2.7764,
                                                                0.0005 + 0.0045 * 2.1318 / 2.7764), rel=1e-4)
    assert not verdict(_diff(-0.004, 0.007), Design()).resolved
    assert verdict(None, Design()).word == "cannot tell"
    assert "TOST" in said.method() and "one look" in said.method()


def test_equal_is_two_one_sided_tests_not_a_narrow_interval() -> None:
    """Schuirmann's TOST: equal within ±δ only when the 1 - 2 alpha interval lies inside ±δ. An interval of
    half-width 0.9 centred on +0.5 includes 0 and is narrower than ±1, but its 90% interval reaches +1.19: a true
    difference of +1 is not ruled out, so it is not "equal within ±1"."""
    said = verdict(_diff(-0.004, 0.014), Design(half_width=0.01))
    assert said.word == "cannot tell" and said.equal_high == pytest.approx(0.005 + 0.009 * 2.1318 / 2.7764, rel=1e-4)
    assert said.equal_high > 0.01
    assert verdict(_diff(-0.004, 0.014), Design(half_width=0.012)).word == "equal"  # ±1.2 holds [-0.19, +1.19]
    # the boundary is the 90% interval, and a p below alpha where it is inside
    inside = verdict(_diff(-0.0055, 0.0055), Design(half_width=0.0043))
    outside = verdict(_diff(-0.0055, 0.0055), Design(half_width=0.0042))
    assert (inside.word, outside.word) == ("equal", "cannot tell")  # 0.55 x 2.1318 / 2.7764 = 0.4223 points
    assert inside.p_values()[1] < 0.05 < outside.p_values()[1]


def test_compare_says_equal_only_where_both_one_sided_tests_reject(tmp_path: Path) -> None:
    """Run directories whose paired differences have mean +0.5 points and a 95% interval of ±0.9 over 5 seeds:
    the report says cannot tell at ±1, not "equal within ±1", and says what was tested."""
    sd = 0.009 * math.sqrt(5) / 2.7764  # a 95% half-width of 0.9 points over 5 seeds
    for seed, z in enumerate(k / math.sqrt(2.5) for k in (-2, -1, 0, 1, 2)):  # mean 0, sd 1
        make_run(tmp_path / "runs", f"gap-{seed}", "gap", seed, 0.90 + 0.01 * seed)
        make_run(tmp_path / "runs", f"fc-{seed}", "fc", seed, 0.90 + 0.01 * seed + 0.005 + sd * z)
    compare([tmp_path / "runs"], out=tmp_path / "out", half_width=0.01)
    md = (tmp_path / "out" / "report.md").read_text()
    line = md.split("- head=fc vs head=gap: ")[1].splitlines()[0]
    assert line.startswith("+0.50 points [-0.40, +1.40], paired over n = 5. **cannot tell** at n = 5"), line
    assert "TOST's interval [-0.19, +1.19] reaches beyond ±1" in line
    assert "equal within" not in line.split("**")[1]


def test_holm_against_a_hand_computed_family() -> None:
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03,
    2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06; the levels 1 - 0.05 / 4, / 3, / 2, / 1 in that order."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == pytest.approx([1.0, None, 1.0])  # m = 2: 2 x 0.5 = 1, then max(1, 0.9)
    assert holm([0.04, 0.5]) == pytest.approx([0.08, 0.5])


def test_cells_follow_the_sweep_files_order() -> None:
    from inception_lab.compare.cells import sweep_order

    by = ["model.aux_weight", "model.net.init_args.aux_positions"]
    heads = ("4a", "4d")
    sorted_cells = [Cell(k, []) for k in ((0.0, ()), (0.0, heads), (0.1, heads), (0.3, heads), (1.0, heads))]
    parameters = yaml.safe_load((REPO / "sweeps" / "aux_weights.digits.yaml").read_text())["parameters"]
    ordered = [c.key for c in sweep_order(sorted_cells, by, parameters)]
    # 0.0 with its heads, 0.1, 0.3, 1.0, then {aux_weight: 0.0, net: {aux_positions: []}}: the most specific match
    assert ordered == [(0.0, heads), (0.1, heads), (0.3, heads), (1.0, heads), (0.0, ())]

    by = [FILTERS]
    cells = [Cell(k, []) for k in (((3, 3),), ((3, 5),), ((3, (3, 3)),), ((5, 5),))]  # (5, 5): not in the file
    parameters = yaml.safe_load((REPO / "sweeps" / "filter_sizes.digits.yaml").read_text())["parameters"]
    assert [c.key for c in sweep_order(cells, by, parameters)] == [((3, 5),), ((3, 3),), ((3, (3, 3)),), ((5, 5),)]


def test_groups_by_the_runs_variants_without_a_sweep_file(sweep_dir: Path, tmp_path: Path) -> None:
    runs = sorted((sweep_dir / "runs").glob("*"))  # fc-* first; seeds, names, dirs and wandb.group differ too
    result = compare(runs, out=tmp_path / "out")
    assert result.by == [HEAD]
    assert result.baseline.key == ("gap",)  # the experiment as written is the default baseline, not the first cell
    assert [c.key for c in result.cells] == [("fc",), ("gap",)]
    result = compare(runs, baseline=["model.net.init_args.head=fc"], out=tmp_path / "out")
    assert result.baseline.key == ("fc",)


def test_cells_and_default_baseline_come_from_the_variants(tmp_path: Path) -> None:
    paths = write_variants(tmp_path / "sweep" / "runs")
    assert json.loads((paths["fc-0"] / "summary.json").read_text())["variant"] == {HEAD: "fc"}
    assert json.loads((paths["own-0"] / "summary.json").read_text())["variant"] == {}
    result = compare(list(paths.values()), out=tmp_path / "out")
    assert result.by == [FILTERS, HEAD]  # the keys where the runs' configs differ, sorted
    # a key a run's variant lacks takes the run's config.yaml value (the experiment's own)
    assert [c.key for c in result.cells] == [((3, 3), "gap"), ((3, 5), "fc"), ((3, 5), "gap")]
    assert [sorted(r.name for r in c.runs) for c in result.cells] == [["3x3-0", "3x3-1"], ["fc-0", "fc-1"],
                                                                      ["own-0", "own-1"]]
    assert result.baseline is result.cells[2]  # the runs with an empty variant: not the first cell
    assert "filter_sizes=3x5, head=gap (baseline)" in result.table

    # a sweep file orders the grouping keys as it lists them
    parameters = {HEAD: {"values": ["gap", "fc"]}, FILTERS: {"values": [[3, 5], [3, 3]]}, "seed_everything": {}}
    write_sweep(tmp_path / "sweep" / "sweep.yaml", parameters, name=None, method=None, metric=None)
    assert compare([tmp_path / "sweep"], out=tmp_path / "out").by == [HEAD, FILTERS]

    # --by names the first grouping key; the runs whose configs differ otherwise (3x3 and own) still do not mix
    result = compare(list(paths.values()), by=["head"], out=tmp_path / "out")
    assert result.by == [HEAD, FILTERS]
    assert [(c.key, len(c.runs)) for c in result.cells] == [(("fc", (3, 5)), 2), (("gap", (3, 3)), 2),
                                                            (("gap", (3, 5)), 2)]
    assert result.baseline is result.cells[2]
    # --by a bookkeeping key splits by it too
    result = compare([paths[n] for n in ("own-0", "own-1")], by=["trainer.devices"], out=tmp_path / "out")
    assert result.by == ["trainer.devices"] and [c.key for c in result.cells] == [(1,), (2,)]

    # no run as the experiment file has it: the first cell
    result = compare([paths[n] for n in ("fc-0", "fc-1", "3x3-0", "3x3-1")], out=tmp_path / "out")
    assert result.baseline.key == ((3, 3), "gap") and result.baseline is result.cells[0]


def test_the_experiments_own_value_is_the_baseline_not_the_papers(tmp_path: Path) -> None:
    # an experiment file whose own head is fc: the gap runs are the variant, the fc runs the baseline
    paths = write_variants(tmp_path / "runs", own={HEAD: "fc", FILTERS: [3, 5]})
    runs = [paths[n] for n in ("fc-0", "fc-1", "own-0", "own-1")]
    assert json.loads((paths["own-0"] / "summary.json").read_text())["variant"] == {HEAD: "gap"}
    result = compare(runs, out=tmp_path / "out")
    assert result.by == [HEAD] and result.baseline.key == ("fc",)
    assert "head=fc (baseline)" in result.table


def test_a_trainer_setting_that_changes_the_run_splits_cells(tmp_path: Path) -> None:
    """2-epoch and 30-epoch runs (a sweep over trainer.max_epochs) are two cells, not seeds of one."""
    for epochs in (2, 30):
        for seed in (0, 1):
            make_run(tmp_path / "runs", f"e{epochs}-{seed}", "gap", seed, 0.5 + epochs / 100 + seed / 100,
                     config={"trainer.max_epochs": epochs})
    result = compare([tmp_path / "runs"], out=tmp_path / "out")
    assert result.by == ["trainer.max_epochs"] and [c.key for c in result.cells] == [(2,), (30,)]
    assert [sorted(r.name for r in c.runs) for c in result.cells] == [["e2-0", "e2-1"], ["e30-0", "e30-1"]]
    assert "max_epochs=2 (baseline)" in result.table and "max_epochs=30" in result.table


def test_runs_of_an_edited_experiment_file_are_not_one_cell(tmp_path: Path) -> None:
    """The experiment file's width changed between two fits: both record ``variant: {}``, their config.yaml differ,
    and the cells' names show the key that differs."""
    for width in (0.125, 0.25):
        for seed in (0, 1):
            make_run(tmp_path / "runs", f"w{width}-{seed}", "gap", seed, 0.8 + width / 10 + seed / 100,
                     config={"model.net.init_args.width_mult": width})
    assert {json.loads(p.read_text())["variant"] == {} for p in (tmp_path / "runs").glob("*/summary.json")} == {True}
    result = compare([tmp_path / "runs"], out=tmp_path / "out")
    assert result.by == ["model.net.init_args.width_mult"]
    assert [(c.key, len(c.runs)) for c in result.cells] == [((0.125,), 2), ((0.25,), 2)]
    assert "width_mult=0.125 (baseline)" in result.table and "width_mult=0.25 " in result.table


def test_bookkeeping_differences_share_a_cell(tmp_path: Path) -> None:
    """Runs that differ only in where and how they ran (run directory and name, loader workers, W&B, devices) are
    seeds of one cell; a precision change beside them is its own cell."""
    where = [{}, {"data.init_args.num_workers": 2, "data.init_args.resident": False},
             {"wandb.project": "elsewhere", "wandb.mode": "offline", "wandb.tags": ["x"]},
             {"trainer.devices": 2, "trainer.accelerator": "gpu", "trainer.strategy": "ddp", "trainer.num_nodes": 2}]
    for seed, config in enumerate(where):
        make_run(tmp_path / "runs" / f"site{seed}", "r", "gap", seed, 0.8 + seed / 100, config=config)
    for seed in (0, 1):
        make_run(tmp_path / "runs", f"bf16-{seed}", "gap", seed, 0.7, config={"trainer.precision": "bf16-mixed"})
    result = compare([tmp_path / "runs"], out=tmp_path / "out")
    assert result.by == ["trainer.precision"]
    assert [(c.key, len(c.runs)) for c in result.cells] == [((None,), 4), (("bf16-mixed",), 2)]
    assert result.cells[0].stat("val/acc_best").n == 4


def test_older_runs_without_a_variant_group_by_their_configs(tmp_path: Path) -> None:
    for seed in (0, 1):
        for head in ("gap", "fc"):
            make_run(tmp_path / "runs", f"{head}-{seed}", head, seed, 0.8 + 0.01 * seed + 0.02 * len(head), legacy=True)
    result = compare([tmp_path / "runs"], out=tmp_path / "out")
    assert result.by == [HEAD] and [c.key for c in result.cells] == [("fc",), ("gap",)]
    assert result.baseline.key == ("fc",)  # no variant recorded: the first cell


def test_single_seed_cell_shows_no_std(sweep_dir: Path, tmp_path: Path) -> None:
    make_run(sweep_dir / "runs", "naive", "gap", 0, 0.70, filter_sizes=(3, 3))
    result = compare([sweep_dir], by=["head", "filter_sizes"], baseline=["filter_sizes=3x5", "head=fc"],
                     out=tmp_path / "out")
    assert result.by == [HEAD, "model.net.init_args.filter_sizes"]
    assert result.baseline.key == ("fc", (3, 5))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| head=gap, filter_sizes=3x3 | 1 | 70.00 ± — |" in md
