"""What run records are made of, with no torch import (so `compare` and a sweep runner start in a second): dotted
config keys, short value names, atomic writes, the one seed-mixing function, the run's seed, and the one reader and
writer of a run's record (:class:`RunSummary`, :func:`read_summary`, :func:`read_metrics`). Which file each stage
writes: :mod:`~inception_lab.run.layout` (one writer per file: the fit's, and each evaluation's ``<stage>-`` files).

:func:`read_summary` reads them together: the fit's record, each evaluation's metrics added under ``metrics`` (an
evaluation never changes the fit's status, attempts or metrics), and a stage whose process is gone without ending
reported as ``killed``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from inception_lab.run.layout import STAGES, RunDir


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``{"model": {"aux_weight": 0.3}}`` -> ``{"model.aux_weight": 0.3}``)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def mix_seed(*parts: int) -> int:
    """One seed from a run's seed and what a stream is for (an epoch, a rank, a trial count): a base-1_000_003
    number of the parts, kept in [0, 2**31) so that every consumer takes it (torch, numpy, random, DALI). Plain
    ``seed + epoch`` (DistributedSampler's) would give seed 1 the orders of seed 0, one epoch later."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % 2**31
    return seed


def run_seed(default: int | None = 0) -> int | None:
    """The run's seed: Lightning's ``seed_everything`` keeps it in ``PL_GLOBAL_SEED``, in every DDP process too.
    ``default`` for a run with none (``seed_everything: false``): each reader says what that means to it."""
    value = os.environ.get("PL_GLOBAL_SEED", "")
    return int(value) if value.isdigit() else default


class _UniqueKeys(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error (PyYAML lets the last one win, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (the last one would win, "
                                                        "silently)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, but a key given twice in a mapping raises (a YAMLError naming its line)."""
    return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)


def safe_name(*parts: str) -> str:
    """Non-empty parts joined with "-" into a run, trial or experiment name: one path component. Runs of other
    characters than letters, digits and ``_.=+-`` (spaces, "/", quotes) become "_"; leading and trailing dots and
    underscores go (no "..", no hidden directory): ``"Grüße run/v2"`` -> ``Grüße_run_v2``, ``"../x"`` -> ``x``.
    A name longer than ``MAX_NAME_BYTES`` (filesystems allow 255) is cut and ends in a digest of the whole name, so
    two long names stay two names."""
    name = re.sub(r"[^\w.=+-]+", "_", "-".join(p for p in parts if p)).strip("._")
    if len(name.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name.encode()[:MAX_NAME_BYTES - 11].decode(errors='ignore').rstrip('._-')}-{digest}"
    return name


MAX_NAME_BYTES = 150  # a run directory's name, with room for what is added to it (".start3-2", ".tmp")


def short_value(value: Any) -> str:
    """A value as it reads in run and trial names: ``[3, [3, 3]]`` -> ``3x3x3``, ``[]`` -> ``none``."""
    if isinstance(value, list | tuple):
        return re.sub(r"[\s\[\]()'\"]+", "", str(list(value)).replace(", ", "x")) or "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


DISK_FAULTS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EIO}


def disk_fault(error: BaseException) -> str | None:
    """One line for a write the disk refused (full, read-only, over quota): ``<path>: No space left on device
    (ENOSPC)``; None for any other error."""
    if not isinstance(error, OSError) or error.errno not in DISK_FAULTS:
        return None
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{os.strerror(error.errno)} ({errno.errorcode[error.errno]})"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write through a temporary file, fsync and a rename: a reader never sees half a file, a process killed at any
    instant leaves the old file or the new one. A failed write (a full disk) removes its temporary file and raises
    OSError naming ``path``, not the temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(error.errno, error.strerror, str(path)) from None


def write_all_atomic(files: dict[Path, str | bytes]) -> None:
    """Several files written as one: every temporary file first, then the renames (which need no space), so a full
    disk leaves all the old files and no temporary one, never half of the new set."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.set")
            write_atomic(tmp, data)
            written.append((tmp, Path(path)))
    except OSError:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for tmp, path in written:
        os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A run file's JSON object; None where there is no file; ValueError naming the file where it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: {'empty' if not error.doc.strip() else f'not valid JSON ({error})'}") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


# ---- a run's record ---------------------------------------------------------------------------------------------
Status = Literal["running", "finished", "interrupted", "failed", "killed", "unreadable"]
HEARTBEAT_S = 30.0  # the fit touches <run dir>/.heartbeat this often
STALE_S = 600.0  # a fit on another host whose heartbeat is older than this is reported killed


@dataclass
class RunSummary:
    """One stage's record of a run: ``summary.json`` for the fit, ``<stage>-summary.json`` for an evaluation. Read
    and written only here (:meth:`load`, :meth:`save`); unknown keys (from a newer or older version) are kept.

    ``status`` is the stage's: "running", then "finished", "interrupted" (SIGINT/SIGTERM: resume the fit with
    ``--ckpt_path last``) or "failed" (with ``error``). ``attempts`` (the fit's) has one entry per start of the fit
    (the first and each resume): start, end, wall time, epochs, how it ended, and where its process runs (``host``,
    ``pid``) so that a reader can tell a live fit from a killed one.
    """

    status: str = "running"
    run_name: str = ""
    seed: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    variant: dict[str, Any] | None = None  # the fit's: what makes it differ from its experiment (None: older)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    checkpoint: str | None = None  # an evaluation's: the checkpoint it evaluated
    extra: dict[str, Any] = field(default_factory=dict)  # cost, throughput, wall time, and keys of other versions

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        if not isinstance(known.get("metrics", {}), dict) or not isinstance(known.get("attempts", []), list):
            raise ValueError("metrics must be an object and attempts a list")
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra" and (v is not None or k == "seed")}
        return {**data, **self.extra}

    @classmethod
    def load(cls, run_dir: Path, stage: str = "fit") -> RunSummary | None:
        """The stage's record; None where there is none; ValueError naming the file where it cannot be read."""
        path = RunDir(run_dir).summary(stage)
        if (data := read_json(path)) is None:
            return None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def save(self, run_dir: Path, stage: str = "fit") -> None:
        write_json(RunDir(run_dir).summary(stage), self.as_dict())


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's record as its readers see it (sweeps, ``compare``, ``ensemble``, the README's one-liners): the fit's
    ``summary.json``, with each evaluation's metrics added under ``metrics`` (``test/*``, ``validate/*``; a key the
    fit recorded itself, such as its test pass's test/acc, stays the fit's) and its record under ``evaluations``; a
    fit whose process is gone without ending has status "killed". {} when there is no record (yet); no status where
    only evaluations wrote there; status "unreadable" (and ``error``) when summary.json cannot be read."""
    try:
        fit = RunSummary.load(run_dir)
    except ValueError as error:
        return {"status": "unreadable", "error": str(error), "metrics": {}}
    record = {} if fit is None else fit.as_dict()  # a directory of evaluations alone: no status of its own
    record["metrics"] = {} if fit is None else dict(fit.metrics)
    evaluations = {}
    for stage in STAGES[1:]:  # the evaluations
        try:
            evaluation = RunSummary.load(run_dir, stage)
        except ValueError:
            continue  # an evaluation's record cut short says nothing about the fit
        if evaluation is not None:
            evaluations[stage] = evaluation.as_dict()
            if evaluation.status == "running" and (gone := fit_gone(run_dir, evaluation)):
                evaluations[stage].update(status="killed", error=gone)
            own = fit.metrics if fit is not None else {}  # the fit's test/* (its held-out answer) stay the fit's
            record["metrics"].update({k: v for k, v in evaluation.metrics.items() if k not in own})
    if evaluations:
        record["evaluations"] = evaluations
    if fit is None:
        return record if evaluations else {}
    if fit.status == "running" and (gone := fit_gone(run_dir, fit)):
        record.update(status="killed", error=gone)
    return record


def fit_gone(run_dir: Path, record: RunSummary) -> str | None:
    """Why a stage recorded "running" is not running any more (None: it is, or it cannot be told). On the host it
    runs on: its process is gone (or the pid is another process now). From another host: the fit's heartbeat is
    older than ``STALE_S``, or more than ``STALE_S`` ahead of this host's clock (clocks out of step: a dead fit's
    heartbeat from the future would otherwise keep it "running" until this clock caught up)."""
    attempt = record.attempts[-1] if record.attempts else record.extra
    pid, host = attempt.get("pid"), attempt.get("host")
    if not isinstance(pid, int) or not host:
        return None  # a record of an older version: no way to tell
    if host == socket.gethostname():
        started = process_start(pid)
        if started is None or attempt.get("pid_start") not in (None, started):
            return f"killed: its process ({pid} on {host}) ended without recording an end"
        return None
    if not record.attempts:
        return None  # an evaluation on another host: it beats no heartbeat
    try:
        age = time.time() - RunDir(run_dir).heartbeat.stat().st_mtime
    except OSError:
        return None
    if age > STALE_S:
        return f"killed: no heartbeat from {host} for {age:.0f} s (more than {STALE_S:.0f} s)"
    if age < -STALE_S:
        return (f"killed: its heartbeat from {host} is {-age:.0f} s ahead of this host's clock (clocks out of step by "
                f"more than {STALE_S:.0f} s): taken as stale")
    return None


def process_start(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot, /proc), or None when no such process runs: a pid that
    is reused by another process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0  # alive, but no /proc to tell its start
    after_name = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    if after_name[0] == "Z":
        return None  # a zombie: ended, not yet reaped
    return int(after_name[19])


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv (CSVLogger's sparse rows: empty cells left out; step and epoch as ints); [] when
    there is none or it cannot be read."""
    try:
        with open(path, newline="") as f:
            return [{k: int(float(v)) if k in ("step", "epoch") else float(v) for k, v in row.items()
                     if k and v not in ("", None)} for row in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error):
        return []


def best_checkpoint(run_dir: Path) -> Path | None:
    """A run's best checkpoint by val top-1 (``summary.json``'s ``best_checkpoint``; else the one
    ``checkpoints/best-*``), else its last; None where it has none."""
    run, recorded = RunDir(run_dir), read_summary(run_dir).get("best_checkpoint")
    if isinstance(recorded, str) and (run.path / recorded).is_file():
        return run.path / recorded
    return next(iter(run.best()[-1:] or ([run.last] if run.last.is_file() else [])), None)



def outcome(stage: str, run_dir: Path, ckpt: str | None = None) -> str:
    """A Lightning command's result line, from what it recorded: ``fit``: its status, the run, val/acc_best (and
    test/acc where the fit records it), epochs and wall time; ``validate``/``test``: the checkpoint and its metrics;
    ``predict``: the checkpoint and the file written."""
    run = RunDir(run_dir)
    if stage == "predict":
        rows = run.predictions_csv().read_text().count("\n") - 1 if run.predictions_csv().is_file() else 0
        return f"predict: {ckpt}: wrote {run.predictions_csv()} ({rows} rows)"
    if stage != "fit":
        record = RunSummary.load(run_dir, stage)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (record.metrics if record else {}).items()
                          if k.startswith(f"{stage}/") and k.count("/") == 1 and isinstance(v, int | float))
        return f"{stage}: {ckpt}: {shown or 'no metrics'} ({run.summary(stage)})"
    record = read_summary(run_dir)
    metrics = record.get("metrics", {})
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val/acc_best", "test/acc")
                      if isinstance(metrics.get(k), int | float))
    epochs = sum(a.get("epochs", 0) for a in record.get("attempts", []))
    wall = float(record.get("wall_s") or 0)
    took = f"{wall:.1f} s" if wall < 60 else f"{wall // 60:.0f} min {wall % 60:02.0f} s" if wall < 3600 else \
        f"{wall // 3600:.0f} h {wall % 3600 // 60:02.0f} min"
    return f"fit {record.get('status', 'stopped')}: {run_dir}: {shown or 'no val/acc_best'}; {epochs} epoch" \
           f"{'' if epochs == 1 else 's'} in {took}"
