"""Shared by the tests: the CLI run in a subprocess or in this process, and tiny datasets written in exactly the real
on-disk formats, so the real loading code runs on them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach for a W&B server
if os.environ.get("PYTEST_XDIST_WORKER"):  # the fast tier's `-n 2`: a core per worker (two threads each thrash)
    os.environ["OMP_NUM_THREADS"] = "1"  # and for the processes its tests start
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def short(epochs: int | None = 1, batches: int = 6, val_batches: int = 2, wandb: bool = True) -> list[str]:
    """The one set of short-run settings for a test's fit: the quickstart's network and data, ``epochs`` epochs of
    ``batches`` training and ``val_batches`` validation batches (``epochs=None``: the test gives them);
    ``wandb=False`` starts no W&B run (else offline)."""
    return [*([] if epochs is None else [f"--trainer.max_epochs={epochs}"]), f"--trainer.limit_train_batches={batches}",
            f"--trainer.limit_val_batches={val_batches}", f"--trainer.limit_test_batches={val_batches}",
            *([] if wandb else ["--wandb.enabled=false"])]


SHORT = short()  # one small epoch of the quickstart
# set by in-process runs: the ddp.yaml smoke test binds MASTER_PORT in this process, and a W&B run started here
# exports its service's address (a child would share this process's wandb-core, where a killed child's run stays
# "in use"); a child picks its own
DIST_ENV = ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_WORLD_SIZE",
            "WANDB_SERVICE")


def probe_path() -> str:
    """PYTHONPATH for a child that loads a test callback (``--trainer.callbacks+=ddp_probe.RankProbe``): tests/ and
    the repository, then this process's own."""
    return os.pathsep.join(filter(None, [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH")]))


def clean_env() -> dict[str, str]:
    """This process's environment for a child CLI: W&B offline, no distributed variables."""
    return {**{k: v for k, v in os.environ.items() if k not in DIST_ENV}, "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1"}


def one_error_line(code: int, err: str, command: str) -> str:
    """A refused command's error line, checked: exit 2, no traceback, the one ``inception_lab <command>: error:``
    line, and the last on stderr."""
    lines = [ln for ln in err.strip().splitlines() if ": error: " in ln]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err[-3000:]
    assert lines[0].startswith(f"inception_lab {command}: error: "), lines[0]
    return lines[0]


CliRun = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def run_cli() -> CliRun:
    """``run_cli(*args, cwd=, timeout=600, check=True)``: ``python -m inception_lab *args`` in a subprocess."""

    def run(*args: str, cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "inception_lab", *args], cwd=cwd, env=clean_env(),
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc

    return run


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable:
    """``cli(args, cwd=tmp_path) -> (exit code, stdout, stderr)``: the CLI in this process (where fixtures such as
    the tiny CIFAR's md5s are patched in), as ``python -m inception_lab`` runs it."""

    def run(args: list[str], cwd: Path = tmp_path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = in_process(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def in_process(args: list[str]) -> int:
    """``python -m inception_lab *args``'s exit code, run in this process."""
    from inception_lab.__main__ import main

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):  # handlers made under an earlier capture
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.stream = sys.stderr
    environ = dict(os.environ)
    try:
        return main(args)
    except SystemExit as exit_:  # argparse's exit, as the shell would see it
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:  # what the command set for itself (Lightning's PL_GLOBAL_SEED: the samplers' seed) ends with it
        os.environ.clear()
        os.environ.update(environ)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _batch(n: int, rng: np.random.Generator, classes: int, cifar100: bool) -> dict:
    labels = rng.integers(0, classes, n).tolist()
    # The real files are Python 2 pickles whose str keys torchvision reads with encoding="latin1" as str keys.
    batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": ["x.png"] * n,
             "batch_label": "tiny"}
    if cifar100:
        batch["fine_labels"], batch["coarse_labels"] = labels, [c // 5 for c in labels]
    else:
        batch["labels"] = labels
    return batch


def write_cifar(root: Path, cifar100: bool = False, per_batch: int = 20, seed: int = 0) -> dict:
    """CIFAR's python version as torchvision reads it: pickled batches (uint8 rows of 3072 RGB values, labels)
    in cifar-10-batches-py/ (or cifar-100-python/), and the .tar.gz archive torchvision downloads. Returns the
    class attributes that hold the md5s of these files."""
    cls = CIFAR100 if cifar100 else CIFAR10
    rng = np.random.default_rng(seed)
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    classes = 100 if cifar100 else 10
    files = {}
    for name, _ in (*cls.train_list, *cls.test_list):
        with open(folder / name, "wb") as f:
            pickle.dump(_batch(per_batch, rng, classes, cifar100), f, protocol=2)
        files[name] = _md5(folder / name)
    meta_key = cls.meta["key"]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, f, protocol=2)
    archive = root / cls.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=cls.base_folder)
    return {
        "train_list": [[n, files[n]] for n, _ in cls.train_list],
        "test_list": [[n, files[n]] for n, _ in cls.test_list],
        "meta": {**cls.meta, "md5": _md5(folder / cls.meta["filename"])},
        "tgz_md5": _md5(archive),
    }


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CIFAR-10 and CIFAR-100 under one root, with torchvision's expected md5s set to these files'."""
    root = tmp_path / "cifar"
    for cls, cifar100 in ((CIFAR10, False), (CIFAR100, True)):
        for attr, value in write_cifar(root, cifar100).items():
            monkeypatch.setattr(cls, attr, value)  # CLI tests on these files run the CLI in this process
    return root


def write_imagenet(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2) -> Path:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, JPEGs of assorted sizes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(40, 90, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG", quality=85)
    return root


def validate_wandb_schema(config: dict) -> None:
    """A sweep config against the ``sweeps`` engine's own JSON schema (config/schema.json), where it is installed."""
    import importlib.metadata
    import json

    jsonschema = pytest.importorskip("jsonschema")
    try:
        files = importlib.metadata.files("sweeps") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("W&B's sweeps package is not installed (pip install 'inception-lab[sweeps]')")
    schema_file = next(f for f in files if str(f).endswith("config/schema.json"))
    jsonschema.Draft7Validator(json.loads(Path(schema_file.locate()).read_text())).validate(config)


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    return write_imagenet(tmp_path / "imagenet")


from tests.slurm_cluster import slurm_cluster  # noqa: E402, F401  (a real SLURM for the slow tier)

# ---- sweep files, sweep directories and run records, written and read as the package does ---------------------------
QUICKSTART_REL = "experiments/quickstart.yaml"  # as a sweep file in the repository names it (run from REPO)


def fit_command(*args: str, experiment: str | Path = QUICKSTART_REL,
                cli: tuple[str, ...] = ("${env}", "python", "-m", "inception_lab")) -> list[str]:
    """A sweep file's command: ``cli`` (the CLI in any form) ``fit --config experiment *args`` and the trial's values
    last, through the agent's JSON file (``--config ${args_json_file}``)."""
    return [*cli, "fit", "--config", str(experiment), *args, "--config", "${args_json_file}"]


def write_sweep(path: Path, parameters: dict[str, Any], command: list[str] | None = None, *,
                method: str | None = "grid", name: str | None = "", metric: str | None = "val/acc_best",
                header: str = "", **config: Any) -> Path:
    """A W&B sweep file at ``path``, keys in this order: ``name`` (default: the file's stem; None: none), ``method``,
    ``metric`` (maximized; None: none), any other top-level keys (``run_cap``, ``program``, ``early_terminate``, ...),
    ``parameters`` (in the order given: a grid's order) and ``command`` (None: none, the agent's default);
    ``header`` (comment lines) above them."""
    top = {"name": path.stem if name == "" else name, "method": method,
           "metric": None if metric is None else {"name": metric, "goal": "maximize"}}
    data = {**{k: v for k, v in top.items() if v is not None}, **config, "parameters": parameters,
            **({} if command is None else {"command": command})}
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def read_state(sweep_dir: Path) -> dict[str, Any]:
    """A sweep directory's ``state.json``; ``{"trials": []}`` while there is none (or none readable: a runner may be
    writing it)."""
    try:
        data = json.loads((sweep_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {"trials": []}
    return {**data, "trials": data.get("trials", [])} if isinstance(data, dict) else {"trials": []}


def state_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """The trials a sweep directory's ``state.json`` records, in order ([] while there is none)."""
    return read_state(sweep_dir)["trials"]


def write_run(run_dir: Path, config: dict[str, Any] | None = None, **summary_fields: Any) -> Path:
    """A run directory's record written by the record's own writer: ``summary.json`` of
    ``RunSummary(**summary_fields)`` and, when given, ``config.yaml`` holding the nested ``config``."""
    from inception_lab.run.files import RunSummary
    from inception_lab.run.layout import RunDir

    run_dir.mkdir(parents=True, exist_ok=True)
    RunSummary(**summary_fields).save(run_dir)
    if config is not None:
        RunDir(run_dir).config().write_text(yaml.safe_dump(config))
    return run_dir


# ---- stand-ins for what a fit provides ---------------------------------------------------------------------------
def trainer_stub(stage: str | None = None, *, devices: int = 1, nodes: int = 1, device: str = "cpu",
                 **attrs: Any) -> Any:
    """The one stand-in for a Lightning ``Trainer`` where a DataModule or a LightningModule reads one outside a fit:
    the stage flags ``on_after_batch_transfer`` reads (``stage``: "train", "validate", "test", "predict" or None),
    rank, world size (``devices`` x ``nodes``) and the strategy's root ``device`` (where resident data goes), and
    what ``configure_optimizers`` reads (accumulation, the DataModule, the run's length in optimizer steps); ``attrs``
    set any of them (``global_rank``, ``world_size``, ``estimated_stepping_batches``, ...)."""
    from types import SimpleNamespace

    import torch

    return SimpleNamespace(**{
        "training": stage == "train", "testing": stage == "test", "predicting": stage == "predict",
        "sanity_checking": False, "global_rank": 0, "world_size": devices * nodes, "num_devices": devices,
        "num_nodes": nodes, "accumulate_grad_batches": 1, "datamodule": None, "estimated_stepping_batches": 1000,
        "strategy": SimpleNamespace(root_device=torch.device(device)), **attrs})


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (the tests run as root in CI); skipped where mounting is refused.
    :func:`remount` changes its size or makes it read-only."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)
