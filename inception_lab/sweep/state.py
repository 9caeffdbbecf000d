"""The runner's state on disk, ``<sweep dir>/state.json``: every trial's values, status, starts, metrics or error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inception_lab.record import read_summary
from inception_lab.runfiles import write_atomic
from inception_lab.sweep.spec import Sweep


@dataclass
class Trial:
    name: str
    values: dict[str, Any]
    status: str = "pending"  # pending, running, finished, failed, stopped
    starts: int = 0
    returncode: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float | None = None


class State:
    """Rewritten atomically after every change, so a kill at any moment leaves a readable file."""

    def __init__(self, directory: Path, sweep: Sweep, seed: int) -> None:
        self.directory, self.path = directory, directory / "state.json"
        self.sweep, self.seed = sweep, seed
        self.trials: list[Trial] = []
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            self.seed = data.get("seed", seed)
            self.trials = [Trial(**t) for t in data["trials"]]

    def save(self) -> None:
        data = {"sweep": self.sweep.name, "sweep_file": str(self.sweep.path), "method": self.sweep.method,
                "metric": {"name": self.sweep.metric, "goal": self.sweep.goal}, "seed": self.seed,
                "trials": [t.__dict__ for t in self.trials]}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")

    def run_dir(self, trial: Trial) -> Path:
        return self.directory / "runs" / trial.name

    def reconcile(self) -> None:
        """After a kill: a trial recorded as running either finished meanwhile (keep it) or resumes / restarts."""
        for trial in self.trials:
            if trial.status == "running":
                summary = read_summary(self.run_dir(trial))
                if summary.get("status") == "finished":
                    trial.status, trial.metrics = "finished", summary.get("metrics", {})
                else:
                    trial.status = "pending"
