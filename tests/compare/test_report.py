"""compare/report.py and compare/verdicts.py: report.md, report.html, report.json and the plots, their numbers against
the runs' own records; the header (sweep, metric, rule, protocol, when), the verdicts in words, Holm's table; a sweep
grown by looks judged by those looks."""

from __future__ import annotations

import html
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml

from inception_lab.__main__ import main as lab_main
from inception_lab.compare import compare
from inception_lab.compare.cells import Cell, holm, paired_difference
from inception_lab.compare.runs import Run
from inception_lab.compare.sequential import Design
from inception_lab.run.files import RunSummary
from tests.compare.conftest import ACCS, HEAD, PNG, make_run, pct, run, summaries
from tests.conftest import write_sweep
from tests.sweep.conftest import synthetic_sweep


def test_report_numbers_match_the_runs(sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compare([sweep_dir], out=out)
    assert result.by == [HEAD]  # from sweep.yaml: the seed and the constant left out
    cells = {c.key: c for c in result.cells}
    # the experiment's own head (an empty variant) is the baseline
    assert set(cells) == {("gap",), ("fc",)} and result.baseline is cells[("gap",)]
    md = (out / "report.md").read_text()
    for head in ("gap", "fc"):
        own = summaries(sweep_dir, head)
        cell = cells[(head,)]
        assert len(cell.runs) == len(own) == 2  # the failed gap run is not averaged in
        for key in ("val/acc_best", "val/acc_top5", "test/acc", "test/acc_top5"):
            values = [s["metrics"][key] for s in own]
            stat = cell.stat(key)
            assert stat.n == 2 and stat.mean == pytest.approx(statistics.fmean(values))
            assert stat.std == pytest.approx(statistics.stdev(values))
        for key in ("params", "macs", "throughput_img_per_s"):
            assert cell.stat(key).mean == pytest.approx(statistics.fmean(s[key] for s in own))
        accs = [[s["metrics"][k] for s in own] for k in ("val/acc_best", "val/acc_top5", "test/acc", "test/acc_top5")]
        label = "head=gap (baseline)" if head == "gap" else "head=fc"
        assert f"| {label} | 2 | {' | '.join(pct(a) for a in accs)} |" in md
        assert label in result.table

    # the failed run: listed with its status and error, in no cell
    assert [r.name for r in result.excluded] == ["gap-seed=2"]
    assert all(r.name != "gap-seed=2" for c in result.cells for r in c.runs)
    assert "`gap-seed=2: failed (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)`" in md

    # paired by seed, df = 1: fc - gap = -0.05, -0.04
    diffs = [ACCS[("fc", s)] - ACCS[("gap", s)] for s in (0, 1)]
    mean, half = statistics.fmean(diffs), 12.706 * statistics.stdev(diffs) / math.sqrt(2)
    assert (mean, half) == pytest.approx((-0.045, 0.0635300))
    expected = f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] paired n=2"
    assert expected == "-4.50 [-10.85, +1.85] paired n=2"  # the interval spans 0: no star
    assert f"| {expected} |" in md and expected in result.table
    diff = paired_difference(cells[("fc",)], cells[("gap",)])
    assert diff is not None and diff.method == "paired" and diff.df == 1 and not diff.excludes_zero
    assert (diff.diff, diff.low, diff.high) == pytest.approx((mean, mean - half, mean + half), rel=1e-4)

    for name in ("accuracy.png", "accuracy_vs_macs.png", "learning_curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and data[12:16] == b"IHDR" and len(data) > 5000
        assert f"]({name})" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "<table>" in page
    assert 'src="' not in page.replace('src="data:', "")  # self-contained: nothing linked
    assert "gap-seed=2" in page and "paired n=2" in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_report_names_the_sweep_metric_protocol_and_when(sweep_dir: Path, tmp_path: Path) -> None:
    parameters = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["parameters"]
    write_sweep(sweep_dir / "sweep.yaml", parameters, name="heads.digits", description="gap vs fc x 2 seeds")
    for path in (sweep_dir / "runs").glob("*/summary.json"):  # the attempts a fit records, one of them resumed
        summary = RunSummary.load(path.parent)
        assert summary is not None
        summary.attempts = [{"start": "2026-11-27T17:20:41+0000", "end": "2026-11-27T17:21:58+0000"},
                            {"start": "2026-11-27T17:30:00+0000", "end": "2026-11-27T17:33:05+0000"}]
        summary.save(path.parent)
    compare([sweep_dir], out=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# heads.digits: test top-1 by head"  # the sweep, not the experiment
    assert f"- Sweep: `heads.digits` (`{sweep_dir}`): gap vs fc x 2 seeds" in lines
    assert ("- Metric: test top-1 (`test/acc`: the checkpoint each fit selected on val, tested at the fit's end on the "
            "test split, which nothing selected on), in %") in md
    assert ("- Protocol: experiment `quickstart`; 3 epochs; seeds 0, 1; data DigitsDataModule (batch_size 64, "
            "image_size 32, val_size 300, test_size 300).") in lines
    assert ("- Seeds vary: the initial weights, the batch order, the augmentation and dropout draws; not the data "
            "split (`split_seed` 0).") in lines
    assert "- Ran: 2026-11-27 17:20 to 2026-11-27 17:33 UTC; 0.8 min of fits over 4 runs." in lines  # 4 x 12.5 s
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<title>heads.digits: test top-1 by head</title>" in page and "<li>Protocol: experiment" in page

    # without a sweep file: the run directories are named
    runs = sorted((sweep_dir / "runs").glob("[fg]*-seed=[01]"))
    compare(runs, out=tmp_path / "dirs")
    md = (tmp_path / "dirs" / "report.md").read_text()
    assert md.startswith("# runs of quickstart: test top-1 by head\n") and f"- Run directories: `{runs[0]}`" in md


def test_a_verdict_per_cell_in_words(sweep_dir: Path, tmp_path: Path) -> None:
    from scipy import stats

    compare([sweep_dir], out=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("- Rule: one look at the seeds there are; higher / lower: a two-sided paired t test; equal within ±0.5 "
            "points: two one-sided t tests (TOST: the 90% interval inside ±0.5 points); each at 0.05, per cell.") in md
    heading = "## Verdicts (against the baseline, 95% confidence, ±0.5 points)\n\n"
    verdicts = md.split(heading)[1].split("\n\n")[0].splitlines()
    assert len(verdicts) == 1 and verdicts[0].startswith(
        "- head=fc vs head=gap: -4.50 points [-10.85, +1.85], paired over n = 2. **cannot tell** at n = 2: the "
        "interval includes 0 and TOST's interval [-7.66, -1.34] reaches beyond ±0.5.")
    # what more seeds would do at this spread: the power command, with the sd of fc - gap (-0.05, -0.04)
    sd = statistics.stdev([-0.05, -0.04])
    assert verdicts[0].endswith(f"`python -m inception_lab power --sd {100 * sd:.2f} --half-width 0.5 --seeds 2` "
                                "gives the chance of each verdict with more seeds at this spread.")

    # an interval that excludes 0, and one within ±δ, in words
    base = Cell(("a",), [run(0, 0.90), run(1, 0.92), run(2, 0.91)])
    lower = Cell(("b",), [run(0, 0.85), run(1, 0.88), run(2, 0.86)])
    same = Cell(("c",), [run(0, 0.9005), run(1, 0.9198), run(2, 0.9101)])
    from inception_lab.compare.report import verdicts as say
    from inception_lab.compare.verdicts import judge
    lines = say(["model.net.init_args.head"], judge([base, lower, same], base, "val/acc_best", Design()))
    p = stats.ttest_rel([0.85, 0.88, 0.86], [0.90, 0.92, 0.91]).pvalue  # scipy's own paired t test
    assert lines[0].startswith("- head=b vs head=a: -4.67 points [-6.10, -3.23], paired over n = 3")
    assert lines[0].endswith("**lower**: the interval excludes 0 (the t test rejects no difference at 0.05; "
                             f"p = {p:.3g}).")
    d = [0.0005, -0.0002, 0.0001]  # TOST by scipy: the larger of the two one-sided p-values
    p = max(stats.ttest_1samp(d, -0.005, alternative="greater").pvalue,
            stats.ttest_1samp(d, 0.005, alternative="less").pvalue)
    assert lines[1].endswith("**equal within ±0.5 points**: both one-sided t tests reject a difference of 0.5 points "
                             f"or more at 0.05 (TOST's interval [-0.05, +0.07] lies inside ±0.5; p = {p:.3g}).")

    page = (tmp_path / "out" / "report.html").read_text()  # report.md rendered: bold, code spans, tables
    assert "<strong>cannot tell</strong> at n = 2" in page and "<code>test/acc</code>" in page
    assert "`" not in page and "**" not in page and page.count("<table>") == 2


def test_multiply_adds_read_as_people_write_them() -> None:
    from inception_lab.compare.report import count

    assert [count(v) for v in (32_019_712, 32_100_352, 275_564_800, 1.5e9, 250_000, 12, None)] == [
        "32M", "32.1M", "276M", "1.5G", "250k", "12", "—"]


def test_compare_reports_holm_across_the_cells(tmp_path: Path) -> None:
    """compare's Holm table: every cell's interval, its p-values by the rule (a difference; an equivalence), their
    Holm-adjusted values (each family on its own) and the verdict each gives."""
    path, out = synthetic_sweep(tmp_path), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    result = compare([out], out=tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    section = md.split("## Holm's correction over the 3 comparisons with the baseline\n\n")[1]
    assert section.startswith("Each verdict above keeps its own error rates for its cell: a false higher or lower at "
                              "most 0.05, a false equal at most 0.05.")
    rows = [r.strip("| ").split(" | ") for r in section.split("\n\n")[1].splitlines()[2:]]
    assert [r[0] for r in rows] == ["x=1", "x=2", "x=3"]
    for column in (2, 4):  # p and p (equal): Holm-adjusted as a family each
        raw = [float(r[column]) for r in rows]
        assert [float(r[column + 1]) for r in rows] == pytest.approx([float(f"{p:.3g}") for p in holm(raw)], rel=1e-2)
    assert [r[6] for r in rows] == [j.verdict.text() for j in result.family.judged]
    assert [r[7] for r in rows] == [j.holm_text() for j in result.family.judged]
    # the verdicts by hand: Holm's adjusted p against alpha, a difference first
    for j in result.family.judged:
        assert j.holm_word == ("higher" if j.holm_p <= 0.05 and j.verdict.diff.diff > 0 else "lower"
                               if j.holm_p <= 0.05 else "equal" if j.holm_p_equal <= 0.05 else "cannot tell")


def test_report_json_holds_each_cell_and_its_verdict(sweep_dir: Path, tmp_path: Path) -> None:
    """report.json beside report.md: per cell its runs, n, mean and std; against the baseline the difference, the
    rule's interval, p, the verdict and the method; each against the runs' own records."""
    from scipy import stats

    compare([sweep_dir], out=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["metric"], report["alpha"], report["half_width"], report["looks"]) == ("test/acc", 0.05,
                                                                                          0.005, None)
    assert report["baseline"] == "head=gap" and [c["cell"] for c in report["cells"]] == ["head=gap", "head=fc"]
    for cell in report["cells"]:
        head = cell["values"][HEAD]
        own = summaries(sweep_dir, head)
        values = [s["metrics"]["test/acc"] for s in own]
        assert sorted(cell["runs"]) == sorted(s["run_name"] for s in own) and cell["n"] == 2
        assert (cell["mean"], cell["std"]) == pytest.approx((statistics.fmean(values), statistics.stdev(values)))
        assert cell["baseline"] == (head == "gap") and ("against_baseline" in cell) == (head == "fc")
    fc = report["cells"][1]["against_baseline"]
    test = stats.ttest_rel([ACCS[("fc", s)] for s in (0, 1)], [ACCS[("gap", s)] for s in (0, 1)])
    interval = test.confidence_interval(0.95)
    assert fc["difference"] == pytest.approx(-0.045) and fc["n"] == 2 and fc["p"] == pytest.approx(test.pvalue)
    assert fc["interval"] == pytest.approx([interval.low, interval.high])
    assert fc["verdict"] == "cannot tell" and fc["holm"]["verdict"] == "cannot tell"
    assert fc["method"] == ("paired by seed over 2 seeds: a t test at 0.05 (one look, a fixed number of seeds); "
                            "equal: two one-sided t tests (TOST) against ±0.005, each at 0.05")


def test_the_metric_judged_is_a_parameter(sweep_dir: Path, tmp_path: Path) -> None:
    """The default, test/acc (the held-out answer), and --metric val/acc_best: the verdicts, the table's Δ column,
    the header and report.json judge the metric named, where the runs' val and test accuracies disagree (fc is lower
    on val, higher on test)."""
    for path in (sweep_dir / "runs").glob("*/summary.json"):
        summary = RunSummary.load(path.parent)
        assert summary is not None
        if summary.status == "finished":
            summary.metrics["test/acc"] = {"fc": 0.95, "gap": 0.90}[summary.run_name.split("-")[0]] + (
                0.001 * (summary.seed or 0))
            summary.save(path.parent)
    result = compare([sweep_dir], out=tmp_path / "out")
    assert result.family.metric == "test/acc"
    said = result.family.judged[0].verdict
    assert said.word == "higher" and said.diff is not None and said.diff.diff == pytest.approx(0.05)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# ") and "test top-1 by head" in md.splitlines()[0]
    assert "- Metric: test top-1 (`test/acc`: " in md and "Δ test top-1 vs baseline [95% CI]" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metric"] == "test/acc"
    val = compare([sweep_dir], out=tmp_path / "val", metric="val/acc_best")  # on which fc is lower
    assert val.family.metric == "val/acc_best" and val.family.judged[0].verdict.diff.diff == pytest.approx(-0.045)
    assert "- Metric: val top-1 (`val/acc_best`: " in (tmp_path / "val" / "report.md").read_text()


def _one_epoch_cells() -> list[Cell]:
    """Four cells of 3 seeds, each a 1-epoch run (its curve one point): lower, equal within ±0.5 and cannot tell
    against the first, and a fourth higher."""
    accs = {"a": (0.90, 0.92, 0.91), "b": (0.85, 0.88, 0.86), "c": (0.9005, 0.9198, 0.9101), "d": (0.95, 0.96, 0.955)}
    return [Cell((name,), [Run(f"{name}{s}", "finished", {}, {"seed": s, "macs": 2e6, "metrics": {
        "val/acc_best": acc, "test/acc": acc}}, curve={0: acc}) for s, acc in enumerate(values)])
        for name, values in accs.items()]


def test_report_html_is_the_markdown_rendered(tmp_path: Path) -> None:
    """report.html shows no markdown syntax (a code span of an error's tail keeps the backticks it holds, and no other
    is left literal) and every verdict word bold."""
    from inception_lab.compare.report import render
    from inception_lab.compare.verdicts import judge

    cells = _one_epoch_cells()
    family = judge(cells, cells[0], "val/acc_best", Design())
    assert [j.verdict.word for j in family.judged] == ["lower", "equal", "higher"]
    error = "MisconfigurationException: `ckpt_path` must name a file; pass `--ckpt_path last"  # an odd count, cut short
    failed = Run("e0", "failed", {}, {"status": "failed", "error": f"Traceback\n{error}"})
    page = render(cells, [HEAD], family, [failed], {}, "t")[1]
    spans = re.findall(r"<code>(.*?)</code>", page)
    assert f"e0: failed ({html.escape(error, quote=False)})" in spans
    visible = re.sub(r"<code>.*?</code>", "", page)
    assert "`" not in visible and "**" not in visible, [ln for ln in visible.splitlines() if "`" in ln or "**" in ln]
    for word in ("lower", "equal within ±0.5 points", "higher"):
        assert f"<strong>{word}</strong>" in page


def test_plots_bars_from_zero_points_for_one_epoch_and_no_star(tmp_path: Path) -> None:
    """The bar chart's y axis starts at 0; a 1-epoch learning curve is drawn as points (a marker per cell); * is the
    tables' alone (an interval that excludes 0): the plots name the baseline in words."""
    from matplotlib.text import Text

    from inception_lab.compare.report import figures, notes
    from inception_lab.compare.verdicts import judge

    cells = _one_epoch_cells()
    figs = figures(cells, [HEAD], cells[0])
    assert set(figs) == {"accuracy.png", "accuracy_vs_macs.png", "learning_curves.png"}
    assert figs["accuracy.png"].axes[0].get_ylim()[0] == 0
    curves = figs["learning_curves.png"].axes[0]
    points = [line for line in curves.lines if line.get_marker() == "o"]  # (an error bar's caps are "_")
    assert sorted(y for line in points for y in line.get_ydata()) == pytest.approx(
        sorted(100 * cell.stat("val/acc_best").mean for cell in cells))
    for name, fig in figs.items():
        texts = [t.get_text() for t in fig.findobj(Text)]
        assert not [t for t in texts if "*" in t], (name, texts)
    assert any("head=a (baseline)" in t or t == "head=a\n(baseline)" for t in
               (t.get_text() for t in figs["accuracy.png"].findobj(Text)))
    said = notes([HEAD], judge(cells, cells[0], "val/acc_best", Design()))
    assert "* marks an interval that excludes 0 (where the interval is the rule's: a verdict of higher" in said
    assert said.count("*") == 1


def test_the_report_says_what_each_seed_varied(tmp_path: Path) -> None:
    """split_seed null in every run: the seeds varied the data split too, and the report says so."""
    from inception_lab.compare.report import varied

    for seed in (0, 1):
        for head in ("gap", "fc"):
            make_run(tmp_path, f"{head}-{seed}", head, seed, 0.9, config={"data.init_args.split_seed": None})
    compare(sorted(tmp_path.iterdir()), out=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("- Seeds vary: the initial weights, the batch order, the augmentation and dropout draws, and the data "
            "split (`split_seed: null`).") in md.splitlines()
    assert varied([{"data.init_args.split_seed": None}, {"data.init_args.split_seed": 3}]).endswith(
        "; the data split in some runs only (`split_seed`: null in some, 3 in others)")
