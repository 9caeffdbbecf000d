"""``python -m inception_lab fit|validate|test|predict --config experiments/<x>.yaml``: LightningCLI + run directories.

Every run writes a run directory (default ``runs/<experiment>/<run name>/``) holding the resolved ``config.yaml``,
``metrics.csv``, ``checkpoints/`` (best by val top-1, and ``last.ckpt``) and ``summary.json``. Sweeps and
comparisons read run directories; W&B comes on top of them.
"""

from __future__ import annotations

import inspect
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from inception_lab.data import DataError, ImageDataModule
from inception_lab.hostmem import keep_freed_memory
from inception_lab.models.inception import Inception
from inception_lab.module import InceptionClassifier
from inception_lab.record import PredictionWriter, RunCSVLogger, RunRecord
from inception_lab.runfiles import short_value
from inception_lab.tracking import WandbOptions, ablation_values, make_wandb_logger

RUNS_ROOT = Path("runs")
LINKED = ("num_classes", "in_channels", "image_size")  # the DataModule says these; never set them in a config


class UserError(Exception):
    """A mistake in the user's input: reported as one line, without a traceback."""


class RunConfigCallback(SaveConfigCallback):
    """Writes the resolved config into the run directory (``config.yaml`` for fit) and into the W&B run config.

    Overwrites by design: a resumed fit writes the same run directory again (Lightning #11256).
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        run_dir = Path(self.config.run_dir)
        name = "config.yaml" if self.config.get("subcommand", "fit") in (None, "fit") else self.config_filename
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / f".{name}.tmp"
            self.parser.save(self.config, tmp, skip_none=False, overwrite=True, multifile=False)
            os.replace(tmp, run_dir / name)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        for logger in trainer.loggers:
            if hasattr(logger, "log_config"):
                logger.log_config(yaml.safe_load(config))


class InceptionCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            InceptionClassifier,
            ImageDataModule,
            *args,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="experiment name (default: the first --config file's name)")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="run name (default: the ablation values, the seed and a timestamp)")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="run directory (default: runs/<experiment>/<run_name>)")
        parser.add_class_arguments(WandbOptions, "wandb")
        for attr in LINKED:
            parser.link_arguments(f"data.{attr}", f"model.net.init_args.{attr}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        resolve_run(config, self.subcommand or "fit", self.argv)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # a checkpoint is data, not a program

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.argv = list(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = Path(config.run_dir)
        callbacks = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        callbacks.append(RunRecord(run_dir, self.subcommand or "fit", seed=config.get("seed_everything")))
        if self.subcommand in (None, "fit"):
            callbacks.append(ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}-acc{val/acc:.4f}",
                auto_insert_metric_name=False, monitor="val/acc", mode="max",
            ))
            # last.ckpt after every epoch, in a callback of its own: Lightning 2.6's save_last=True writes it only
            # when the monitored value improved, so a crash would resume from the best epoch, not the last one
            callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None,
                                             save_top_k=1, enable_version_counter=False))
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run_dir))
        logger = self._get(self.config_init, "trainer", default={}).get("logger")
        if logger is None or logger is True:  # default: the run directory's metrics.csv, plus W&B
            csv = RunCSVLogger(run_dir, name="", version="")
            loggers = [csv]
            wandb = make_wandb_logger(config, run_dir, self.argv)
            if wandb is not None:
                loggers.append(wandb)
            kwargs["logger"] = loggers
        kwargs.setdefault("default_root_dir", str(run_dir))
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def resolve_run(config: Namespace, subcommand: str, argv: list[str]) -> None:
    """Fill in ``experiment``, ``run_name`` and ``run_dir`` (in the config, so config.yaml records them)."""
    configs = [Path(str(c)) for c in (config.get("config") or [])]
    if not config.experiment:
        config.experiment = configs[0].stem if configs else "default"
    ckpt = config.get("ckpt_path")
    if not config.run_dir and ckpt and ckpt != "last" and Path(ckpt).parent.name == "checkpoints":
        config.run_dir = str(Path(ckpt).parent.parent)  # validate/test a checkpoint: report into its run
    if not config.run_dir and ckpt == "last" and not config.run_name:
        config.run_dir = str(latest_run(config.experiment))
    if not config.run_dir:
        if not config.run_name:
            values = ablation_values(argv)
            parts = [f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in values.items() if k != "seed_everything"]
            parts.append(f"seed{config.get('seed_everything')}")
            parts.append(os.environ.get("WANDB_RUN_ID") or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2))
            config.run_name = re.sub(r"[^\w.=+-]+", "", "-".join(parts))
        config.run_dir = str(RUNS_ROOT / config.experiment / config.run_name)
    if not config.run_name:
        config.run_name = Path(config.run_dir).name


def latest_run(experiment: str) -> Path:
    """The most recent run of ``experiment`` that has a ``last.ckpt`` (for ``--ckpt_path last``)."""
    candidates = sorted((RUNS_ROOT / experiment).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"--ckpt_path last: no run of experiment {experiment!r} under {RUNS_ROOT / experiment} has "
                        "checkpoints/last.ckpt; pass --run_dir DIR of the run to resume")
    return candidates[-1].parent.parent


class _ParseOnlyCLI(InceptionCLI):
    """Parses and builds model and data, but no trainer: nothing is written, no logger starts."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        return None


def check_config(argv: list[str]) -> None:
    """Validate a command line (``fit --config X ...``) as the CLI would; raises UserError with one line."""
    args = [a for a in argv if a not in ("fit", "validate", "test", "predict")]
    try:
        _ParseOnlyCLI(args=args, run=False, parser_kwargs={"exit_on_error": False})
    except (ArgumentError, ValueError, TypeError) as error:
        raise UserError(user_message(error)) from None


def network_from_config(path: str) -> tuple[Any, int, int]:
    """The network, input size and channels an experiment file describes (for ``summary --config``)."""
    cli = _ParseOnlyCLI(args=["--config", path], run=False)
    data: LightningDataModule = cli.datamodule
    return cli.model.net, data.image_size, data.in_channels


def _one_line(error: BaseException) -> str:
    """jsonargparse explains a bad key as nested 'Parser key "a":' / 'Problem with given class_path' lines: fold
    them into one line naming the full key (``model.net.init_args.head``) and the innermost reason."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    keys: list[str] = []
    reasons: list[str] = []
    for line in lines:
        key = re.fullmatch(r'Parser key "([^"]+)":?(.*)', line)
        if key:
            keys.append(key.group(1))
            if key.group(2).strip():
                reasons.append(key.group(2).strip())
        elif line.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif not line.startswith(("Given value type", "Subclass types expect", "- ", "Does not validate")):
            reasons.append(line.lstrip("- "))
    if keys and keys[-1] == "init_args":
        keys.pop()
    reason = reasons[-1] if reasons else lines[-1].lstrip("- ")
    subtypes = next((ln for ln in lines if ln.startswith("Subtypes: ")), None)
    given = next((ln for ln in lines if ln.startswith("Given value: ")), None)
    if subtypes and given:  # a Union: name the allowed types once instead of one line per type
        names = re.findall(r"<class '(?:\w+\.)*(\w+)'>|(typing\.Literal\[[^\]]*\])", subtypes)
        allowed = " | ".join((a or b).replace("NoneType", "None") for a, b in names)
        reason = f"expected {allowed}; got {given.removeprefix('Given value: ')!r}"
    return f"{'.'.join(keys)}: {reason}" if keys else reason


def user_message(error: BaseException) -> str:
    """One line for the user; the network's own checks name their argument, here given its full config key."""
    inner: BaseException | None = error
    while inner is not None and (inner.__cause__ or not inner.__suppress_context__) and (
            inner.__cause__ or inner.__context__):  # down to a constructor's own check, if any
        inner = inner.__cause__ or inner.__context__
    if inner is not error and isinstance(inner, ValueError) and re.match(r"[\w.]+=", str(inner)):
        error = inner  # not jsonargparse's wrapping ("Does not validate against any of the Union subtypes")
    message = _one_line(error)
    name = re.match(r"(\w+)=", message)
    if name and name.group(1) in inspect.signature(Inception).parameters:
        message = f"model.net.init_args.{message}"
    return message


def cli_main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # host allocations: a CPU step stops page-faulting its activations in (same maths)
    try:
        InceptionCLI(args=argv, parser_kwargs={"exit_on_error": False})
    except (ArgumentError, UserError, DataError, ValueError, FileNotFoundError) as error:
        print(f"inception_lab: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inception_lab: interrupted", file=sys.stderr)
        return 130
    return 0
