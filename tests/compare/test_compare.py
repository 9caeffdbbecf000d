"""The ``compare`` command (compare/__init__.py): the table printed and the report written into the sweep directory,
bad input in one line with nothing half-written, a full disk, no torch imported, and a real sweep compared."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.compare.conftest import ACCS, HEAD, make_run
from tests.conftest import QUICKSTART, REPO, clean_env, one_error_line, short, small_disk


def test_compare_imports_no_torch(sweep_dir: Path, tmp_path: Path) -> None:
    """compare starts in a fraction of a second: no torch ever, scipy/matplotlib/wandb only when used."""
    code = ("import sys; import inception_lab.compare as c; "
            "print(*(m in sys.modules for m in ('torch', 'scipy', 'matplotlib', 'wandb'))); "
            "code = c.main([sys.argv[1], '--out', sys.argv[2]]); print(code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(sweep_dir), str(tmp_path / "out")], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0] == "False False False False" and lines[-1] == "0 False", proc.stderr


def test_main_prints_the_table_and_writes_into_the_sweep_dir(sweep_dir: Path, cli) -> None:
    code, out, _ = cli(["compare", str(sweep_dir)])
    assert code == 0
    assert "head=gap (baseline)" in out and "head=fc" in out and "-4.50 [-10.85, +1.85] paired n=2" in out
    assert "not averaged in: gap-seed=2 (failed: RuntimeError: CUDA out of memory" in out
    assert (sweep_dir / "report" / "report.md").is_file() and (sweep_dir / "report" / "report.html").is_file()


def test_the_last_line_is_where_the_report_is_and_its_verdicts(sweep_dir: Path, tmp_path: Path, cli) -> None:
    """compare's last stdout line: the report, its cells and how many differ from the baseline; --quiet keeps it alone
    (and nothing on stderr)."""
    line = (f"compare: {tmp_path / 'out' / 'report.html'}: 2 cells; against the baseline head=gap on test top-1: "
            "0 higher, 0 lower, 0 equal within ±0.5 points, 1 cannot tell")
    code, out, _ = cli(["compare", str(sweep_dir), "--out", str(tmp_path / "out")])
    assert code == 0 and out.splitlines()[-1] == line and "head=fc" in out  # after the table
    assert cli(["compare", str(sweep_dir), "--out", str(tmp_path / "out"), "--quiet"], cwd=REPO) == (0, line + "\n", "")


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
        ("ok", ["--metric", " "], "--metric ' ': expected a key of the runs' summary metrics, e.g. test/acc"),
        ("ok", ["--alpha", "0"], "--alpha 0.0: expected a level in (0, 1), e.g. 0.05"),
        ("ok", ["--metric", "val/acc_bset"], "--metric val/acc_bset: no finished run records it (they record: "
                                             "test/acc, test/acc_top5, test/loss, val/acc, val/acc_best, val/acc_top5, "
                                             "val/loss)"),
        ("broken state", [], "state.json: unreadable (JSONDecodeError), so whether its cells grew by looks is "
                             "unknown; `python -m inception_lab sweep <its sweep file> --out "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, sweep_dir: Path, cli, setup: str, args: list[str],
                                          message: str) -> None:
    target = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "ok": sweep_dir,
              "mixed": sweep_dir, "unfinished": tmp_path / "unfinished", "broken state": sweep_dir}[setup]
    if setup == "broken state":  # a sweep's state.json cut short: whether its cells grew by looks is unknown
        (sweep_dir / "state.json").write_text('{"until_resolved": {"half_width": 0.0')
    if setup == "empty":
        target.mkdir()
    if setup == "mixed":
        make_run(sweep_dir / "runs", "other", "gap", 0, 0.5, experiment="cifar10")
    if setup == "unfinished":
        make_run(target, "r1", "gap", 0, 0.5, status="running")
        make_run(target, "r2", "gap", 1, 0.5, status="failed")
    paths = [] if "--wandb" in args else [str(target)]
    code, _, err = cli(["compare", *paths, *args, "--out", str(tmp_path / "out")])
    line = one_error_line(code, err, "compare")
    assert line == err.strip() and message in line, err
    assert not (tmp_path / "out" / "report.md").exists()  # nothing half-written


def test_bad_input_through_the_real_command(tmp_path: Path, cli) -> None:
    code, _, err = cli(["compare", str(tmp_path / "nothing")], cwd=REPO)
    assert one_error_line(code, err, "compare") == err.strip() == (
        f"inception_lab compare: error: no run directories (with summary.json) found under {tmp_path / 'nothing'}: "
        "no such directory")


def test_a_full_disk_under_out_is_one_line_and_keeps_the_old_report(tmp_path: Path, cli) -> None:
    """``compare --out`` on a disk with no room for the plots: one line naming the file and ENOSPC, exit 1, the
    previous report as it was, no temporary file."""
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


@pytest.mark.slow
def test_real_sweep_compared(tmp_path: Path, run_cli) -> None:
    """A real sweep on the digits (2 cells x 2 seeds), two trials at once through the runner: each trial's run holds
    its values, config and metrics; then compare against its summary.json."""
    sweep_file = tmp_path / "heads.yaml"
    spec = yaml.safe_load((REPO / "sweeps/head_gap_vs_fc.digits.yaml").read_text())
    spec["parameters"]["seed_everything"] = {"values": [0, 1]}
    spec["command"] = [t for t in spec["command"] if not t.startswith("--trainer.max_epochs")]
    i = spec["command"].index("experiments/quickstart.yaml")
    spec["command"][i:i + 1] = [str(QUICKSTART), *short(val_batches=3)]
    sweep_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    log = run_cli("sweep", str(sweep_file), "--out", str(out), "--parallel", "2", cwd=REPO, timeout=900).stdout
    assert (out / "sweep.yaml").read_text() == sweep_file.read_text()
    state = json.loads((out / "state.json").read_text())
    names = ["000-split_seed=None-seed0", "001-split_seed=None-seed1", "002-head=fc-split_seed=None-seed0",
             "003-head=fc-split_seed=None-seed1"]  # gap: the experiment's own head
    assert [t["name"] for t in state["trials"]] == names
    for trial in state["trials"]:
        run_dir = out / "runs" / trial["name"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert trial["status"] == summary["status"] == "finished" and trial["starts"] == 1
        assert trial["metrics"] == summary["metrics"] and 0 <= trial["metrics"]["val/acc_best"] <= 1
        assert json.loads((run_dir / "args.json").read_text()) == trial["values"]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["model"]["net"]["init_args"]["head"] == trial["values"][HEAD]
        assert config["seed_everything"] == trial["values"]["seed_everything"]
        assert config["run_dir"] == str(run_dir) and config["wandb"]["group"] == spec["name"]
    starts = [line for line in log.splitlines() if " start " in line]
    assert "(cpu0" in starts[0] and "(cpu1" in starts[1]  # two at once
    assert "per cell, mean ± std over seeds" in log and f'{HEAD}="fc"' in log
    # no --baseline: the runs' recorded variants ({} for the experiment's own head) make gap the baseline
    proc = run_cli("compare", str(out), cwd=REPO, timeout=600)
    assert "head=gap (baseline)" in proc.stdout and "head=fc" in proc.stdout
    md = (out / "report" / "report.md").read_text()
    accs: dict[str, list[float]] = {"gap": [], "fc": []}
    for path in (out / "runs").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        head = yaml.safe_load((path.parent / "config.yaml").read_text())["model"]["net"]["init_args"]["head"]
        # the sweep file's command draws each seed's split: split_seed null departs from the experiment too
        assert summary["variant"] == {"data.init_args.split_seed": None, **({} if head == "gap" else {HEAD: "fc"})}
        accs[head].append(summary["metrics"]["val/acc_best"])
    for head, values in accs.items():
        assert len(values) == 2
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert f"| head={head}{' (baseline)' if head == 'gap' else ''} | 2 | {100 * mean:.2f} ± {100 * std:.2f} |" in md


def test_a_sweep_grown_before_the_rule_kept_its_metric_is_judged_by_val(tmp_path: Path) -> None:
    """An --until-resolved sweep directory whose state.json predates ``metric`` in its rule grew its cells on
    val/acc_best: compare and a resumed sweep judge it so, not by today's default (test/acc)."""
    from inception_lab.compare.cells import PRIMARY
    from inception_lab.sweep.resolve import recorded

    rule = {"half_width": 0.01, "max_seeds": 12, "alpha": 0.05, "step": 2}
    (tmp_path / "state.json").write_text(json.dumps({"trials": [], "until_resolved": rule}))
    assert PRIMARY == "test/acc" and recorded(tmp_path).metric == "val/acc_best"
    (tmp_path / "state.json").write_text(json.dumps({"trials": [], "until_resolved": {**rule, "metric": "test/acc"}}))
    assert recorded(tmp_path).metric == "test/acc"
