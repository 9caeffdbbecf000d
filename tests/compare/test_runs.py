"""compare/runs.py: the runs read from a W&B sweep (a mocked API, as the server gives them) and a sweep file's
swept keys."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from inception_lab.compare.runs import sweep_keys, wandb_runs
from tests.compare.conftest import HEAD
from tests.conftest import REPO, one_error_line


def test_sweep_keys_flatten_nested_blocks_and_dict_values() -> None:
    sweep = yaml.safe_load((REPO / "sweeps/aux_weights.yaml").read_text())
    assert sweep_keys(sweep) == ["model.aux_weight", "model.net.init_args.aux_positions"]
    sweep = yaml.safe_load((REPO / "sweeps/lr_wd_bayes.yaml").read_text())
    assert sweep_keys(sweep) == ["model.optimizer.init_args.lr", "model.optimizer.init_args.weight_decay"]
    nested = {"parameters": {"model": {"parameters": {"aux_weight": {"values": [0.1]}, "net": {"parameters": {
        "init_args": {"parameters": {"head": {"values": ["gap"]}}}}}}},
        "seed_everything": {"values": [0]}, "data.init_args.split_seed": {"values": [1]}, "x": {"value": 1}}}
    assert sweep_keys(nested) == ["model.aux_weight", "model.net.init_args.head"]


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
    assert one_error_line(code, err, "compare") == err.strip() == (
        "inception_lab compare: error: --wandb me/inception-lab/abc123: cannot read the sweep (UsageError: No API key "
        "configured. Use `wandb login` to log in.)")
