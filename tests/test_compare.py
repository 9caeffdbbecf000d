"""compare: cells, mean ± std, paired 95% CIs, plots, reports; on synthetic run directories and a real sweep."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inception_lab.compare import build_workspace, compare, main, sweep_keys, t975

REPO = Path(__file__).resolve().parents[1]


def make_run(root: Path, name: str, head: str, seed: int, acc: float, status: str = "finished",
             experiment: str = "quickstart", macs: int = 1000) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"seed_everything": seed, "experiment": experiment, "run_dir": str(run), "run_name": name,
              "model": {"aux_weight": 0.3, "net": {"class_path": "inception_lab.models.Inception",
                                                   "init_args": {"head": head, "filter_sizes": [3, 5]}}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": status, "run_name": name, "seed": seed, "params": 100, "macs": macs,
               "throughput_img_per_s": 50.0, "wall_s": 1.0,
               "metrics": {"val/acc_best": acc, "val/acc": acc, "val/acc_top5": 1.0, "test/acc": acc - 0.01}}
    if status == "failed":
        summary["error"] = "RuntimeError: boom"
    (run / "summary.json").write_text(json.dumps(summary))
    rows = ["epoch,step,val/acc"] + [f"{e},{e * 10},{acc * (e + 1) / 3}" for e in range(3)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    return run


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    (root / "runs").mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({"method": "grid", "parameters": {
        "model.net.init_args.head": {"values": ["gap", "fc"]}, "seed_everything": {"values": [0, 1, 2]}}}))
    for head, accs in (("gap", (0.90, 0.92, 0.91)), ("fc", (0.85, 0.88, 0.86))):
        for seed, acc in enumerate(accs):
            make_run(root / "runs", f"{head}-{seed}", head, seed, acc, macs=1000 if head == "gap" else 5000)
    make_run(root / "runs", "fc-crashed", "fc", 3, 0.1, status="failed")
    return root


def test_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(1000) == 1.96
    assert 2.060 > t975(27) > 2.042


def test_report_numbers_match_the_runs(sweep_dir: Path, tmp_path: Path) -> None:
    result = compare([sweep_dir], baseline=["model.net.init_args.head=gap"], out=tmp_path / "out")
    assert result["by"] == ["model.net.init_args.head"]
    cells = {c.key: c for c in result["cells"]}
    gap, fc = cells[("gap",)], cells[("fc",)]
    assert result["baseline"] is gap and len(fc.runs) == 3  # the failed run is listed, not averaged
    assert [r.name for r in result["excluded"]] == ["fc-crashed"]
    summaries = [json.loads(p.read_text()) for p in sorted((sweep_dir / "runs").glob("fc-[0-9]/summary.json"))]
    accs = [s["metrics"]["val/acc_best"] for s in summaries]
    assert statistics.fmean(fc.values("val/acc_best")) == pytest.approx(statistics.fmean(accs))
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{100 * statistics.fmean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}" in md
    # paired by seed: differences -0.05, -0.04, -0.05
    diffs = [-0.05, -0.04, -0.05]
    mean, half = statistics.fmean(diffs), 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] paired *" in md
    assert "fc-crashed" in md and "RuntimeError: boom" in md
    for png in ("accuracy.png", "accuracy_vs_macs.png", "learning_curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table" in page


def test_groups_by_differing_keys_without_a_sweep_file(sweep_dir: Path, tmp_path: Path) -> None:
    runs = sorted((sweep_dir / "runs").glob("*-[0-9]"))  # fc-* sort first
    result = compare(runs, out=tmp_path / "out")
    assert result["by"] == ["model.net.init_args.head"]  # seeds, names and dirs differ too, but are not variants
    assert result["baseline"].key == ("gap",)  # the paper's head is the default baseline


def test_sweep_keys_flatten_nested_and_dict_values() -> None:
    sweep = yaml.safe_load((REPO / "sweeps/aux_weights.yaml").read_text())
    assert sweep_keys(sweep) == ["model.aux_weight", "model.net.init_args.aux_positions"]
    nested = {"parameters": {"model": {"parameters": {"aux_weight": {"values": [0.1]}}}, "seed_everything": {}}}
    assert sweep_keys(nested) == ["model.aux_weight"]


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "no run directories (with summary.json) found under"),
        ("missing", [], "no such directory"),
        ("mixed", [], "runs of different experiments mixed: cifar10, quickstart"),
        ("ok", ["--by", "model.nope"], "--by model.nope: no run has this key"),
        ("ok", ["--baseline", "head"], "expected KEY=VALUE"),
        ("ok", ["--baseline", "model.net.init_args.head=mlp"], "no cell has that value"),
        ("unfinished", [], "no finished runs among 1 (statuses: running)"),
    ],
)
def test_bad_input(tmp_path: Path, sweep_dir: Path, capsys, setup: str, args: list[str], message: str) -> None:
    target = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "ok": sweep_dir,
              "mixed": sweep_dir, "unfinished": tmp_path / "unfinished"}[setup]
    if setup == "empty":
        target.mkdir()
    if setup == "mixed":
        make_run(sweep_dir / "runs", "other", "gap", 0, 0.5, experiment="cifar10")
    if setup == "unfinished":
        make_run(target, "r", "gap", 0, 0.5, status="running")
    assert main([str(target), *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_workspace_built_offline() -> None:
    workspace = build_workspace("me", "inception-lab", "abc123", ["model.net.init_args.head"])
    assert workspace.entity == "me" and workspace.project == "inception-lab"
    assert [g.name for g in workspace.runset_settings.groupby] == ["model.net.init_args.head"]
    titles = [p.title for p in workspace.sections[0].panels if getattr(p, "title", None)]
    assert "val/acc_best per cell" in titles and "accuracy against compute" in titles
    assert workspace.sections[0].panels[0].groupby_rangefunc == "stddev"


@pytest.mark.slow
def test_real_sweep_compared(tmp_path: Path) -> None:
    """A real sweep on the digits (2 cells x 2 seeds) through the runner, then compare against its summary.json."""
    sweep_file = tmp_path / "heads.yaml"
    spec = yaml.safe_load((REPO / "sweeps/head_gap_vs_fc.digits.yaml").read_text())
    spec["parameters"]["seed_everything"] = {"values": [0, 1]}
    spec["command"] = [t for t in spec["command"] if not t.startswith("--trainer.max_epochs")]
    i = spec["command"].index("experiments/quickstart.yaml")
    spec["command"][i:i + 1] = [str(REPO / "experiments/quickstart.yaml"), "--trainer.max_epochs=2",
                                "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=3"]
    sweep_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "inception_lab", "sweep", str(sweep_file), "--out", str(out),
                           "--parallel", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "inception_lab", "compare", str(out), "--baseline",
                           "model.net.init_args.head=gap"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "head=gap (baseline)" in proc.stdout and "head=fc" in proc.stdout
    md = (out / "report" / "report.md").read_text()
    for head in ("gap", "fc"):
        accs = [json.loads(p.read_text())["metrics"]["val/acc_best"] for p in (out / "runs").glob("*/summary.json")
                if f"head={head}" in p.parent.name]
        assert len(accs) == 2
        mean, std = statistics.fmean(accs), statistics.stdev(accs)
        assert f"| head={head}{' (baseline)' if head == 'gap' else ''} | 2 | {100 * mean:.2f} ± {100 * std:.2f} |" in md
