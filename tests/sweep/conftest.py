"""Shared by the sweep tests (and compare's, which reads sweeps): the repository's sweep files, W&B's engine where it
is installed, fake trials (programs other than the CLI that write a run's record as a fit does) in sweep files
written by ``tests.conftest.write_sweep``, and runner processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inception_lab.sweep import spec
from tests.conftest import REPO, SHORT, clean_env, fit_command, write_sweep

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.fixture
def engine() -> Any:
    sweeps = spec.engine()
    if sweeps is None:
        pytest.skip("W&B's sweeps engine is not installed (pip install 'inception-lab[sweeps]')")
    return sweeps


# A fake trial, another program than the CLI (its run directory: its ${args_json_file}'s): appends its argv to
# <run>/ran.jsonl (one line per execution), says "running" with a last.ckpt, works a while, then finishes with a
# metric from its values. (It writes summary.json as any program may: the runner reads what is there.)
FAKE_TRIAL = ("import json, pathlib, sys, time; d = pathlib.Path(sys.argv[-1]).parent; "
              "open(d / 'ran.jsonl', 'a').write(json.dumps(sys.argv) + '\\n'); "
              "(d / 'checkpoints').mkdir(exist_ok=True); (d / 'checkpoints/last.ckpt').write_bytes(b''); "
              "(d / 'summary.json').write_text(json.dumps({'status': 'running'})); time.sleep({sleep}); "
              "a = float(next(x for x in sys.argv if x.startswith('--a=')).split('=')[1]); "
              "(d / 'summary.json').write_text(json.dumps({'status': 'finished', 'metrics': {'val/acc_best': a}}))")


def fake_sweep(directory: Path, sleep: float, **config: Any) -> Path:
    """``directory/many.yaml``: a grid of 6 fake trials (``a`` = 1 .. 6) that work ``sleep`` seconds each; ``config``
    replaces or adds top-level keys (``method``, ``run_cap``, ``parameters``, ``command``, ...)."""
    parameters = config.pop("parameters", {"a": {"values": [1, 2, 3, 4, 5, 6]}})
    command = config.pop("command", ["python", "-c", FAKE_TRIAL.replace("{sleep}", str(sleep)), "${args}",
                                     "${args_json_file}"])
    return write_sweep(directory / "many.yaml", parameters, command, **config)


def executions(out: Path) -> dict[str, list[list[str]]]:
    """Each fake trial's executions in a sweep directory: its argv once per run, by trial name."""
    return {d.name: [json.loads(line) for line in (d / "ran.jsonl").read_text().splitlines()]
            for d in sorted((out / "runs").iterdir()) if (d / "ran.jsonl").is_file()}


def tiny_sweep(directory: Path, name: str, parameters: dict[str, Any]) -> Path:
    """A real sweep on the digits: ``fit`` of the quickstart with the short-run settings, over ``parameters``."""
    return write_sweep(directory / f"{name}.yaml", parameters, fit_command(*SHORT))


def start_runner(path: Path, out: Path, *flags: str, wandb: str = "offline") -> subprocess.Popen:
    """``python -m inception_lab sweep path --out out *flags`` in its own process (stdout and stderr together)."""
    # SIGINT as in a terminal's foreground job: a test suite started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and Python keeps it so in the child, where Ctrl-C would then do nothing
    return subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out), *flags],
                            cwd=REPO, env={**clean_env(), "WANDB_MODE": wandb}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def starts_logged(out: Path, trial: str) -> int:
    return (out / "runs" / trial / "trial.log").read_text().count("# start ")


# A synthetic trial for ``--until-resolved`` and compare's Holm table: reads --x and --seed_everything, writes its run
# record (the experiment as written is x=0, so x=0 is the baseline compare picks) with test/acc (judged by default)
# and val/acc_best (the sweep file's metric) = 0.90 + effect + a per-seed term shared by every cell (what pairing by
# seed removes) + its own noise. x=1: a clear +2 points; x=2: +0.3 points under 5 points of noise; x=3: equal.
# fail.json beside it ({"x-seed": n}) makes that trial's first n executions fail as a fit does (a failed record,
# exit 1), counted by files beside it (a rerun moves the run aside).
SYNTHETIC_TRIAL = """
import json, pathlib, random, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
d = pathlib.Path(sys.argv[-1]).parent  # its ${args_json_file}'s directory: the run's
open(d / "ran.jsonl", "a").write(json.dumps(sys.argv) + "\\n")
time.sleep(float(args.get("sleep", 0)))
x, seed = int(args["x"]), int(args["seed_everything"])
here = pathlib.Path(__file__).parent
fail = json.loads((here / "fail.json").read_text()) if (here / "fail.json").is_file() else {}
failed = len(list(here.glob(f"failed-{x}-{seed}-*")))
if failed < fail.get(f"{x}-{seed}", 0):
    (here / f"failed-{x}-{seed}-{failed}").touch()
    (d / "summary.json").write_text(json.dumps({"status": "failed", "error": f"synthetic failure {failed + 1}"}))
    sys.exit(f"synthetic failure {failed + 1} of x={x} seed={seed}")
common = random.Random(f"c{seed}").gauss(0, 0.02)
own = random.Random(f"{x}-{seed}").gauss(0, {0: 0.0005, 1: 0.001, 2: 0.05, 3: 0.0005}[x])
acc = 0.90 + {0: 0.0, 1: 0.02, 2: 0.003, 3: 0.0}[x] + common + own
(d / "config.yaml").write_text(f"x: {x}\\nseed_everything: {seed}\\n")
(d / "summary.json").write_text(json.dumps({"status": "finished", "run_name": d.name, "seed": seed, "variant":
    {} if x == 0 else {"x": x}, "metrics": {"val/acc_best": acc, "test/acc": acc}}))
"""


def synthetic_sweep(directory: Path, sleep: float = 0.0, cells: tuple[int, ...] = (0, 1, 2, 3),
                    fail: dict[tuple[int, int], int] | None = None) -> Path:
    """``directory/synth.yaml``: the synthetic trial over ``x`` in ``cells`` x seeds 0, 1, 2; ``fail``: (x, seed) ->
    how many of that trial's executions fail before it runs."""
    (directory / "trial.py").write_text(SYNTHETIC_TRIAL)
    if fail:
        (directory / "fail.json").write_text(json.dumps({f"{x}-{seed}": n for (x, seed), n in fail.items()}))
    return write_sweep(directory / "synth.yaml", {
        "seed_everything": {"values": [0, 1, 2]}, "sleep": {"value": sleep}, "x": {"values": list(cells)}},
        ["python", str(directory / "trial.py"), "${args}", "${args_json_file}"])
