"""compare: cells, mean ± std, paired 95% CIs, plots and reports, on run directories written in the training CLI's
formats (each summary.json with its "variant"); the W&B paths with a mocked API and workspace/report objects built
offline."""

from __future__ import annotations

import functools
import json
import math
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from inception_lab.compare import compare
from inception_lab.compare.cells import Cell, paired_difference
from inception_lab.compare.runs import Run, sweep_keys, wandb_runs
from inception_lab.compare.wandb_views import build_report, build_workspace
from inception_lab.run.files import RunSummary, flatten
from tests.conftest import QUICKSTART, REPO, clean_env, short

PNG = b"\x89PNG\r\n\x1a\n"
HEAD = "model.net.init_args.head"
FILTERS = "model.net.init_args.filter_sizes"
OWN = {HEAD: "gap", FILTERS: [3, 5]}  # the experiment file's own values (quickstart: the paper's)
# (head, seed) -> val top-1; fc sorts before gap, so "first cell" and "the experiment's cell" differ
ACCS = {("fc", 0): 0.850, ("fc", 1): 0.880, ("gap", 0): 0.900, ("gap", 1): 0.920}


@functools.cache
def resolved() -> dict[str, Any]:
    """The quickstart's config resolved as ``fit`` resolves it (a real parse; flat keys, plain YAML values)."""
    from inception_lab.cli import parse

    config = parse(["--config", str(QUICKSTART)])[2].as_dict()
    return flatten(json.loads(json.dumps({k: v for k, v in config.items() if k not in ("config", "variant")})))


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys back to the nested tree ``config.yaml`` holds."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def make_run(root: Path, name: str, head: str, seed: int, acc: float, status: str = "finished",
             experiment: str = "quickstart", filter_sizes: Any = (3, 5), own: dict[str, Any] | None = None,
             legacy: bool = False, config: dict[str, Any] | None = None) -> Path:
    """A run directory as the training CLI writes it: config.yaml (the quickstart resolved, with this run's head,
    filter sizes, seed and paths, and ``config``'s flat keys), summary.json by the record's writer (with "variant":
    the values where the run departs from ``own``, the experiment file's; none when ``legacy``), metrics.csv."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    flat = {**resolved(), "seed_everything": seed, "experiment": experiment, "run_name": name, "run_dir": str(run),
            "trainer.max_epochs": 3, "wandb.group": name, HEAD: head, FILTERS: list(filter_sizes), **(config or {})}
    (run / "config.yaml").write_text(yaml.safe_dump(nest(flat)))
    metrics = {"val/acc_best": acc, "val/acc": acc - 0.005, "val/acc_top5": min(1.0, acc + 0.05 + 0.01 * seed),
               "val/loss": 0.3, "test/acc": acc - 0.02 + 0.005 * seed, "test/acc_top5": 0.99, "test/loss": 0.4}
    variant = None if legacy else {k: flat[k] for k in (HEAD, FILTERS) if flat[k] != (own or OWN)[k]}
    RunSummary(status=status, run_name=name, seed=seed, variant=variant,
               metrics={"val/acc": 0.1} if status == "failed" else metrics,
               error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" if status == "failed" else None,
               extra={"experiment": experiment, "params": 100_000 if head == "gap" else 180_000,
                      "macs": 2_000_000 if head == "gap" else 2_100_000,
                      "throughput_img_per_s": 500.0 + 10 * seed + len(head), "wall_s": 12.5}).save(run)
    # CSVLogger: sparse rows, train rows without val/acc, one validation row per epoch
    rows = ["epoch,step,train/loss,val/acc,val/acc_best,val/loss"]
    for epoch in range(3):
        rows.append(f"{epoch},{epoch * 10 + 4},1.5,,,")
        rows.append(f"{epoch},{epoch * 10 + 9},,{acc * (epoch + 1) / 3:.4f},{acc * (epoch + 1) / 3:.4f},0.5")
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    return run


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A sweep directory: sweep.yaml, state.json and runs/<trial>/ (2 heads x 2 seeds, and a failed trial)."""
    root = tmp_path / "sweep"
    (root / "runs").mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "val/acc_best", "goal": "maximize"},
        "parameters": {HEAD: {"values": ["gap", "fc"]}, "seed_everything": {"values": [0, 1]},
                       "trainer.max_epochs": {"value": 3}}}))
    (root / "state.json").write_text("{}")
    for (head, seed), acc in ACCS.items():
        make_run(root / "runs", f"{head}-seed={seed}", head, seed, acc)
    make_run(root / "runs", "gap-seed=2", "gap", 2, 0.0, status="failed")
    return root


def summaries(sweep: Path, head: str) -> list[dict[str, Any]]:
    """The finished runs' own summary.json of one cell, read independently of compare."""
    out = []
    for path in sorted((sweep / "runs").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        if summary["status"] == "finished" and config["model"]["net"]["init_args"]["head"] == head:
            out.append(summary)
    return out


def pct(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def run(seed: int, acc: float) -> Run:
    return Run(f"r{seed}", "finished", {}, {"seed": seed, "metrics": {"val/acc_best": acc}})


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


def test_single_seed_cell_shows_no_std(sweep_dir: Path, tmp_path: Path) -> None:
    make_run(sweep_dir / "runs", "naive", "gap", 0, 0.70, filter_sizes=(3, 3))
    result = compare([sweep_dir], by=["head", "filter_sizes"], baseline=["filter_sizes=3x5", "head=fc"],
                     out=tmp_path / "out")
    assert result.by == [HEAD, "model.net.init_args.filter_sizes"]
    assert result.baseline.key == ("fc", (3, 5))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| head=gap, filter_sizes=3x3 | 1 | 70.00 ± — |" in md


def test_groups_by_the_runs_variants_without_a_sweep_file(sweep_dir: Path, tmp_path: Path) -> None:
    runs = sorted((sweep_dir / "runs").glob("*"))  # fc-* first; seeds, names, dirs and wandb.group differ too
    result = compare(runs, out=tmp_path / "out")
    assert result.by == [HEAD]
    assert result.baseline.key == ("gap",)  # the experiment as written is the default baseline, not the first cell
    assert [c.key for c in result.cells] == [("fc",), ("gap",)]
    result = compare(runs, baseline=["model.net.init_args.head=fc"], out=tmp_path / "out")
    assert result.baseline.key == ("fc",)


def write_variants(root: Path, own: dict[str, Any] | None = None) -> dict[str, Path]:
    """Runs of three variants x 2 seeds: head=fc, filter_sizes=3x3, and the experiment as written."""
    paths = {}
    for name, head, sizes in (("fc", "fc", (3, 5)), ("3x3", "gap", (3, 3)), ("own", "gap", (3, 5))):
        for seed in (0, 1):
            # own-1 runs elsewhere, on other devices, with other loader settings: bookkeeping, which groups nothing
            where = {"data.init_args.num_workers": 2, "data.init_args.resident": False, "trainer.devices": 2,
                     "trainer.accelerator": "gpu", "wandb.mode": "offline"} if name == "own" and seed else {}
            paths[f"{name}-{seed}"] = make_run(root, f"{name}-{seed}", head, seed, 0.8 + 0.05 * seed + 0.01 * len(name),
                                               filter_sizes=sizes, own=own, config=where)
    return paths


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
    (tmp_path / "sweep" / "sweep.yaml").write_text(yaml.safe_dump({"parameters": parameters}, sort_keys=False))
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


def test_compare_imports_no_torch(sweep_dir: Path, tmp_path: Path) -> None:
    """compare starts in a fraction of a second: no torch ever, scipy/matplotlib/wandb only when used."""
    code = ("import sys; import inception_lab.compare as c; "
            "print(*(m in sys.modules for m in ('torch', 'scipy', 'matplotlib', 'wandb'))); "
            "code = c.main([sys.argv[1], '--out', sys.argv[2]]); print(code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(sweep_dir), str(tmp_path / "out")], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0] == "False False False False" and lines[-1] == "0 False", proc.stderr


def test_sweep_keys_flatten_nested_blocks_and_dict_values() -> None:
    sweep = yaml.safe_load((REPO / "sweeps/aux_weights.yaml").read_text())
    assert sweep_keys(sweep) == ["model.aux_weight", "model.net.init_args.aux_positions"]
    sweep = yaml.safe_load((REPO / "sweeps/lr_wd_bayes.yaml").read_text())
    assert sweep_keys(sweep) == ["model.optimizer.init_args.lr", "model.optimizer.init_args.weight_decay"]
    nested = {"parameters": {"model": {"parameters": {"aux_weight": {"values": [0.1]}, "net": {"parameters": {
        "init_args": {"parameters": {"head": {"values": ["gap"]}}}}}}},
        "seed_everything": {"values": [0]}, "data.init_args.split_seed": {"values": [1]}, "x": {"value": 1}}}
    assert sweep_keys(nested) == ["model.aux_weight", "model.net.init_args.head"]


def test_main_prints_the_table_and_writes_into_the_sweep_dir(sweep_dir: Path, cli) -> None:
    code, out, _ = cli(["compare", str(sweep_dir)])
    assert code == 0
    assert "head=gap (baseline)" in out and "head=fc" in out and "-4.50 [-10.85, +1.85] paired n=2" in out
    assert "not averaged in: gap-seed=2 (failed: RuntimeError: CUDA out of memory" in out
    assert (sweep_dir / "report" / "report.md").is_file() and (sweep_dir / "report" / "report.html").is_file()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "no run directories (with summary.json) found under "),
        ("missing", [], "no run directories (with summary.json) found under "),
        ("mixed", [], "runs of different experiments mixed: cifar10 (1 run), quickstart (5 runs)"),
        ("ok", ["--by", "model.nope"], "--by model.nope: no run has this key (available keys include: model."),
        ("ok", ["--baseline", "head"], "--baseline 'head': expected KEY=VALUE"),
        ("ok", ["--baseline", "=gap"], "expected KEY=VALUE"),
        ("ok", ["--baseline", "model.aux_weight=0.3"], "model.aux_weight is not a grouping key"),
        ("ok", ["--baseline", "head=mlp"], "no cell has that value (cells: head=gap; head=fc)"),  # sweep.yaml order
        ("unfinished", [], "no finished runs among 2 (statuses: failed, running)"),
        ("ok", ["--wandb", "me/project"], "expected ENTITY/PROJECT/SWEEP_ID"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, sweep_dir: Path, cli, setup: str, args: list[str],
                                          message: str) -> None:
    target = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "ok": sweep_dir,
              "mixed": sweep_dir, "unfinished": tmp_path / "unfinished"}[setup]
    if setup == "empty":
        target.mkdir()
    if setup == "mixed":
        make_run(sweep_dir / "runs", "other", "gap", 0, 0.5, experiment="cifar10")
    if setup == "unfinished":
        make_run(target, "r1", "gap", 0, 0.5, status="running")
        make_run(target, "r2", "gap", 1, 0.5, status="failed")
    paths = [] if "--wandb" in args else [str(target)]
    code, _, err = cli(["compare", *paths, *args, "--out", str(tmp_path / "out")])
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "report.md").exists()  # nothing half-written


def test_bad_input_through_the_real_command(tmp_path: Path, cli) -> None:
    code, _, err = cli(["compare", str(tmp_path / "nothing")], cwd=REPO)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("inception_lab compare: error: no run directories (with summary.json) found under "
                           f"{tmp_path / 'nothing'}: no such directory")


class FakeApi:
    """``wandb.Api`` for a sweep of finished, failed runs with config, summary and history, as the server gives."""

    def __init__(self, sweep: Path) -> None:
        self.runs = []
        for path in sorted((sweep / "runs").glob("*/summary.json")):
            summary = json.loads(path.read_text())
            config = yaml.safe_load((path.parent / "config.yaml").read_text())
            flat_summary = {k: v for k, v in summary.items() if k not in ("metrics", "status")}
            flat_summary |= summary["metrics"] | {"_step": 30, "_runtime": 12.0}
            history = [{"epoch": e, "val/acc": summary["metrics"].get("val/acc_best", 0.1) * (e + 1) / 3}
                       for e in range(3)]
            self.runs.append(SimpleNamespace(
                name=summary["run_name"], id=summary["run_name"], state=summary["status"],
                config={**config, HEAD: config["model"]["net"]["init_args"]["head"], "_wandb": {"x": 1}},
                summary_metrics=flat_summary, scan_history=lambda keys, h=history: iter(h)))
        self.sweep_config = yaml.safe_load((sweep / "sweep.yaml").read_text())
        self.asked: list[str] = []

    def sweep(self, path: str) -> SimpleNamespace:
        self.asked.append(path)
        return SimpleNamespace(runs=self.runs, config=self.sweep_config)


def test_wandb_sweep_read_through_a_mocked_api(sweep_dir: Path, tmp_path: Path, monkeypatch, cli) -> None:
    api = FakeApi(sweep_dir)
    runs, swept, sweep = wandb_runs("me/inception-lab/abc123", api)
    assert sweep is not None and sweep["parameters"][HEAD] == {"values": ["gap", "fc"]}
    assert api.asked == ["me/inception-lab/abc123"] and swept == [HEAD]
    failed = [r for r in runs if r.status != "finished"]
    assert [(r.name, r.status, r.error_tail[:12]) for r in failed] == [("gap-seed=2", "failed", "RuntimeError")]
    assert runs[0].curve and "_wandb.x" not in runs[0].config and runs[0].metric("params") is not None

    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "Api", lambda **kwargs: api)
    code, out, _ = cli(["compare", "--wandb", "me/inception-lab/abc123", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "head=gap (baseline)" in out and "-4.50 [-10.85, +1.85] paired n=2" in out  # as from the directories

    def no_server(**kwargs: Any) -> None:
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.\nmore")

    monkeypatch.setattr(wandb, "Api", no_server)
    code, _, err = cli(["compare", "--wandb", "me/inception-lab/abc123", "--out", str(tmp_path / "out2")])
    err = err.strip()
    assert code == 2
    assert err == ("inception_lab compare: error: --wandb me/inception-lab/abc123: cannot read the sweep "
                   "(UsageError: No API key configured. Use `wandb login` to log in.)")


def test_wandb_workspace_and_report_built_offline() -> None:
    pytest.importorskip("wandb_workspaces")
    keys = [HEAD, "model.aux_weight"]
    workspace = build_workspace("me", "inception-lab", "abc123", keys)
    assert (workspace.entity, workspace.project) == ("me", "inception-lab")
    assert [g.name for g in workspace.runset_settings.groupby] == keys
    assert "Sweep" in str(workspace.runset_settings.filters) and "abc123" in str(workspace.runset_settings.filters)
    panels = workspace.sections[0].panels
    titles = [p.title for p in panels]
    assert titles[:3] == ["val/acc_best per cell", "accuracy against compute", "val top-1 per epoch"]
    assert panels[0].metrics == ["val/acc_best"] and panels[0].groupby_rangefunc == "stddev"
    assert panels[1].x.name == "macs" and panels[1].y.name == "val/acc_best"
    assert [c.metric.name for c in panels[3].columns] == [*keys, "val/acc_best"]

    report = build_report("me", "inception-lab", "abc123", keys, "| cell | n |\n|---|---|\n| head=gap | 2 |")
    assert report.project == "inception-lab" and "| head=gap | 2 |" in report.blocks[1].text
    grid = report.blocks[-1]
    assert grid.runsets[0].groupby == [f"config.{k}" for k in keys] and len(grid.panels) == 4


def test_missing_wandb_workspaces_is_one_line(monkeypatch, cli, sweep_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)
    with pytest.raises(Exception, match=r"pip install 'inception-lab\[workspaces\]'"):
        build_workspace("me", "p", "abc", [HEAD])
    code, _, err = cli(["compare", str(sweep_dir), "--wandb-workspace"])
    assert code == 2 and "--wandb-workspace and --wandb-report need --wandb" in err


@pytest.mark.slow
def test_real_sweep_compared(tmp_path: Path, run_cli) -> None:
    """A real sweep on the digits (2 cells x 2 seeds) through the runner, then compare against its summary.json."""
    sweep_file = tmp_path / "heads.yaml"
    spec = yaml.safe_load((REPO / "sweeps/head_gap_vs_fc.digits.yaml").read_text())
    spec["parameters"]["seed_everything"] = {"values": [0, 1]}
    spec["command"] = [t for t in spec["command"] if not t.startswith("--trainer.max_epochs")]
    i = spec["command"].index("experiments/quickstart.yaml")
    spec["command"][i:i + 1] = [str(QUICKSTART), *short(val_batches=3)]
    sweep_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    run_cli("sweep", str(sweep_file), "--out", str(out), "--parallel", "2", cwd=REPO, timeout=900)  # asserts exit 0
    # no --baseline: the runs' recorded variants ({} for the experiment's own head) make gap the baseline
    proc = run_cli("compare", str(out), cwd=REPO, timeout=120)
    assert "head=gap (baseline)" in proc.stdout and "head=fc" in proc.stdout
    md = (out / "report" / "report.md").read_text()
    accs: dict[str, list[float]] = {"gap": [], "fc": []}
    for path in (out / "runs").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        head = yaml.safe_load((path.parent / "config.yaml").read_text())["model"]["net"]["init_args"]["head"]
        assert summary["variant"] == ({} if head == "gap" else {HEAD: "fc"})
        accs[head].append(summary["metrics"]["val/acc_best"])
    for head, values in accs.items():
        assert len(values) == 2
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert f"| head={head}{' (baseline)' if head == 'gap' else ''} | 2 | {100 * mean:.2f} ± {100 * std:.2f} |" in md


def test_report_names_the_sweep_metric_protocol_and_when(sweep_dir: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({"name": "heads.digits", "description": "gap vs fc x 2 seeds",
                                                          **config}, sort_keys=False))
    for path in (sweep_dir / "runs").glob("*/summary.json"):  # the attempts a fit records, one of them resumed
        summary = RunSummary.load(path.parent)
        assert summary is not None
        summary.attempts = [{"start": "2026-11-27T17:20:41+0000", "end": "2026-11-27T17:21:58+0000"},
                            {"start": "2026-11-27T17:30:00+0000", "end": "2026-11-27T17:33:05+0000"}]
        summary.save(path.parent)
    compare([sweep_dir], out=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# heads.digits: val top-1 by head"  # the sweep, not the experiment
    assert f"- Sweep: `heads.digits` (`{sweep_dir}`): gap vs fc x 2 seeds" in lines
    assert "- Metric: val top-1 (`val/acc_best`: the best validation top-1 over a run's epochs), in %" in md
    assert ("- Protocol: experiment `quickstart`; 3 epochs; seeds 0, 1; data DigitsDataModule (batch_size 64, "
            "image_size 32, val_size 300, test_size 300).") in lines
    assert "- Ran: 2026-11-27 17:20 to 2026-11-27 17:33 UTC; 0.8 min of fits over 4 runs." in lines  # 4 x 12.5 s
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<title>heads.digits: val top-1 by head</title>" in page and "<li>Protocol: experiment" in page

    # without a sweep file: the run directories are named
    runs = sorted((sweep_dir / "runs").glob("[fg]*-seed=[01]"))
    compare(runs, out=tmp_path / "dirs")
    md = (tmp_path / "dirs" / "report.md").read_text()
    assert md.startswith("# runs of quickstart: val top-1 by head\n") and f"- Run directories: `{runs[0]}`" in md


def test_a_verdict_per_cell_in_words(sweep_dir: Path, tmp_path: Path) -> None:
    from scipy import stats

    compare([sweep_dir], out=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    heading = "## Verdicts (against the baseline, 95% confidence, ±0.5 points)\n\n"
    verdicts = md.split(heading)[1].split("\n\n")[0].splitlines()
    assert len(verdicts) == 1 and verdicts[0].startswith(
        "- head=fc vs head=gap: -4.50 points [-10.85, +1.85], paired over n = 2. **cannot tell** at n = 2: the "
        "interval includes 0 and is wider than ±0.5.")
    # seeds for a ±0.5-point 95% interval at the spread of fc - gap (-0.05, -0.04): resolved whatever the truth
    sd = statistics.stdev([-0.05, -0.04])
    need = int(verdicts[0].split("needs about ")[1].split(" seeds")[0])
    def enough(n: int) -> bool:
        return stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 0.005
    assert enough(need) and not enough(need - 1)
    assert f"sd of the differences {100 * sd:.2f} points" in verdicts[0] and f"({need - 2} more)" in verdicts[0]

    # an interval that excludes 0, and one within ±δ, in words
    base = Cell(("a",), [run(0, 0.90), run(1, 0.92), run(2, 0.91)])
    lower = Cell(("b",), [run(0, 0.85), run(1, 0.88), run(2, 0.86)])
    same = Cell(("c",), [run(0, 0.9005), run(1, 0.9198), run(2, 0.9101)])
    from inception_lab.compare.report import verdicts as say
    lines = say([base, lower, same], ["model.net.init_args.head"], base)
    assert lines[0].startswith("- head=b vs head=a: -4.67 points [") and lines[0].endswith(
        "**lower**: the interval excludes 0 (lower than the baseline at the 95% level).")
    assert "**equal within ±0.5 points**: the interval includes 0 and its half-width" in lines[1]

    page = (tmp_path / "out" / "report.html").read_text()  # report.md rendered: bold, code spans, tables
    assert "<strong>cannot tell</strong> at n = 2" in page and "<code>val/acc_best</code>" in page
    assert "`" not in page and "**" not in page and page.count("<table>") == 2


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


def test_multiply_adds_read_as_people_write_them() -> None:
    from inception_lab.compare.report import count

    assert [count(v) for v in (32_019_712, 32_100_352, 275_564_800, 1.5e9, 250_000, 12, None)] == [
        "32M", "32.1M", "276M", "1.5G", "250k", "12", "—"]


def test_a_full_disk_under_out_is_one_line_and_keeps_the_old_report(tmp_path: Path, cli) -> None:
    """``compare --out`` on a disk with no room for the plots: one line naming the file and ENOSPC, exit 1, the
    previous report as it was, no temporary file."""
    from tests.test_run_records import small_disk

    for (head, seed), acc in ACCS.items():
        make_run(tmp_path / "runs", f"{head}-{seed}", head, seed, acc)
    with small_disk(tmp_path / "disk", "256k") as disk:
        (disk / "report").mkdir()
        (disk / "report/report.md").write_text("the previous report\n")
        (disk / "filler").write_bytes(b"x" * 200_000)  # the plots (tens of kB each) no longer fit
        code, _, err = cli(["compare", str(tmp_path / "runs"), "--out", str(disk / "report")])
        assert code == 1 and "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"inception_lab compare: error: {disk / 'report'}/") and line.endswith(
            "No space left on device (ENOSPC)"), line
        assert sorted(p.name for p in (disk / "report").iterdir()) == ["report.md"]
        assert (disk / "report/report.md").read_text() == "the previous report\n"
