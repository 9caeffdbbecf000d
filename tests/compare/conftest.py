"""Shared by compare's tests: run directories as the training CLI writes them (config.yaml, summary.json by the
record's writer through ``tests.conftest.write_run``, metrics.csv), a sweep directory of them, runs for cells, and
sweeps of one cell simulated through the sweep's own judge (``simulated_sweeps``: the resolve and power tests')."""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from inception_lab.compare.runs import Run
from inception_lab.run.files import flatten
from inception_lab.sweep import resolve, spec
from tests.conftest import QUICKSTART, write_run, write_sweep

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
    metrics = {"val/acc_best": acc, "val/acc": acc - 0.005, "val/acc_top5": min(1.0, acc + 0.05 + 0.01 * seed),
               "val/loss": 0.3, "test/acc": acc - 0.02 + 0.005 * seed, "test/acc_top5": 0.99, "test/loss": 0.4}
    variant = None if legacy else {k: flat[k] for k in (HEAD, FILTERS) if flat[k] != (own or OWN)[k]}
    write_run(run, nest(flat), status=status, run_name=name, seed=seed, variant=variant,
              metrics={"val/acc": 0.1} if status == "failed" else metrics,
              error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" if status == "failed" else None,
              extra={"experiment": experiment, "params": 100_000 if head == "gap" else 180_000,
                     "macs": 2_000_000 if head == "gap" else 2_100_000,
                     "throughput_img_per_s": 500.0 + 10 * seed + len(head), "wall_s": 12.5})
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
    write_sweep(root / "sweep.yaml", {HEAD: {"values": ["gap", "fc"]}, "seed_everything": {"values": [0, 1]},
                                      "trainer.max_epochs": {"value": 3}}, name=None)
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
    return Run(f"r{seed}", "finished", {}, {"seed": seed, "metrics": {"val/acc_best": acc + 0.01, "test/acc": acc}})


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


def simulated_sweeps(tmp_path: Path, diff: float, sd: float, rule: resolve.Rule, sims: int, first: int = 5,
                     seed: int = 0) -> list[tuple[str, int]]:
    """``sims`` sweeps of one cell (x=1) against its baseline (x=0), normal paired differences (mean ``diff``, sd
    ``sd``, fractions of top-1) drawn as ``power`` draws them, each judged by ``resolve.judge_runs`` at the looks
    the runner grows it by (the file's ``first`` seeds, then ``rule.step`` more up to ``rule.max_seeds``): the
    verdict and the seeds of each, where it stopped."""
    path = write_sweep(tmp_path / "one.yaml", {"seed_everything": {"values": list(range(first))},
                                               "x": {"values": [0, 1]}}, ["python", "trial.py", "${args}"])
    sweep = spec.load_sweep(path)
    looks = [*range(first, rule.max_seeds, rule.step), rule.max_seeds]
    outcomes = []
    for row in np.random.default_rng(seed).normal(diff, sd, size=(sims, rule.max_seeds)):
        for n in looks:
            trials = [spec.Trial(f"x{x}-s{s}", {"seed_everything": s, "x": x}, status="finished")
                      for x in (0, 1) for s in range(n)]
            records = {t.name: Run(t.name, "finished", dict(t.values), {
                "seed": t.values["seed_everything"], "variant": {"x": 1} if t.values["x"] else {},
                "metrics": {rule.metric: 0.9 + (row[t.values["seed_everything"]] if t.values["x"] else 0.0)}})
                for t in trials}
            said = next(j for j in resolve.judge_runs(sweep, trials, records, rule) if not j.baseline).verdict
            if said.resolved or n == looks[-1]:
                outcomes.append((said.word, n))
                break
    return outcomes
