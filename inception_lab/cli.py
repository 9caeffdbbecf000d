"""``python -m inception_lab fit|validate|test|predict --config experiments/<x>.yaml``: LightningCLI + run directories.

Every run writes a run directory (default ``runs/<experiment>/<run name>/``) holding the resolved ``config.yaml``,
``metrics.csv``, ``checkpoints/`` (best by val top-1, and ``last.ckpt``) and ``summary.json``. Sweeps and
comparisons read run directories; W&B comes on top of them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning import Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from inception_lab.data import ImageDataModule
from inception_lab.errors import UserError, user_message
from inception_lab.hostmem import keep_freed_memory
from inception_lab.module import InceptionClassifier
from inception_lab.run.files import (
    flatten,
    holds_run,
    load_yaml,
    read_summary,
    resume_differences,
    short_value,
    variant,
    write_atomic,
)
from inception_lab.run.predictions import ProbabilityWriter
from inception_lab.run.record import AtomicCheckpointIO, PredictionWriter, RunCSVLogger, RunRecord
from inception_lab.run.resume import (
    RUN_NAME_ENV,
    ExactResume,
    hold_run,
    read_checkpoint,
    release_runs,
    resolve_run,
    resume_checkpoint,
)
from inception_lab.run.requeue import Requeued, RequeueOnSignal
from inception_lab.slurm import requeued
from inception_lab.tracking import WandbOptions, make_wandb_logger

LINKED = ("num_classes", "in_channels", "image_size")  # the DataModule says these; never set them in a config
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class RunConfigCallback(SaveConfigCallback):
    """Writes the resolved config into the run directory (``config.yaml`` for fit, ``<stage>-config.yaml`` for
    validate/test/predict: never the fit's), atomically, and into the W&B run config. Lightning's ``setup`` calls
    this on rank 0 once (``save_to_log_dir=False``: not into the logger's directory, Lightning #11256).

    A resumed fit writes config.yaml again: the same config but for the length of training (a resume that differs
    otherwise is refused). ``fit --config <run>/config.yaml`` repeats the run: its ``ckpt_path`` is left null.
    """

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        stage = TrainerFn(stage).value
        config = self.config.clone()
        if stage == "fit":  # what the run is, not where an attempt resumed from (summary.json's attempts say)
            config.ckpt_path = None
        name = "config.yaml" if stage == "fit" else f"{stage}-config.yaml"
        text = self.parser.dump(config, skip_none=False, format="yaml")
        resolved = pl_module.optimization() if hasattr(pl_module, "optimization") else {}
        if "global_batch" in resolved:  # the LR as this run trains at it (the config says it per reference batch)
            text += (f"# resolved for this run: global batch {resolved['global_batch']} ({resolved['devices']} "
                     f"devices x {resolved['nodes']} nodes x batch {resolved['batch_size']} x accumulation "
                     f"{resolved['accumulate_grad_batches']}): the optimizer's lr x {resolved['lr_scale']:g} "
                     f"(lr_reference_batch {resolved['lr_reference_batch']})"
                     + (f" = {resolved['lr']:g}" if "lr" in resolved else "") + "\n")
        write_atomic(Path(self.config.run_dir) / name, text)
        for logger in trainer.loggers:
            if hasattr(logger, "log_config"):
                logger.log_config({**yaml.safe_load(text), **({"optimization": resolved} if len(resolved) > 1 else {})})


class InceptionCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            InceptionClassifier,
            ImageDataModule,
            *args,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="experiment name (default: the first --config file's name)")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="run name (default: the run's variant, the seed and a timestamp)")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="run directory (default: runs/<experiment>/<run_name>)")
        parser.add_class_arguments(WandbOptions, "wandb")
        for attr in LINKED:
            parser.link_arguments(f"data.{attr}", f"model.net.init_args.{attr}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        for path in option_values(argv, "--config", "-c"):
            check_yaml(path)
        subcommand = argv[0] if argv and argv[0] in SUBCOMMANDS else None
        ckpt = next(iter(option_values(argv, "--ckpt_path")), None)
        no_config = not option_values(argv, "--config", "-c")
        if ckpt and ckpt != "last":
            checkpoint = read_checkpoint(ckpt)
            if subcommand in ("validate", "test", "predict") and no_config:
                argv = [subcommand, *checkpoint_config(checkpoint, Path(ckpt)), *argv[1:]]
        if subcommand == "fit" and ckpt and no_config:  # a resume with no experiment file: the run's own config
            run_dir = next(iter(option_values(argv, "--run_dir")), None)
            run_dir = Path(run_dir) if run_dir else Path(ckpt).parent.parent if ckpt != "last" else None
            if run_dir is not None and (run_dir / "config.yaml").is_file():
                check_yaml(str(run_dir / "config.yaml"))
                argv = ["fit", "--config", str(run_dir / "config.yaml"), *argv[1:]]
        self.first_config = next(iter(option_values(argv, "--config", "-c")), None)
        self.config = parser.parse_args(argv)

    def _parse_ckpt_path(self) -> None:
        """Off: Lightning's merges a checkpoint's hyperparameters over the command line's values, after parsing, so
        that ``--ckpt_path FILE`` silently dropped ``--model.*`` overrides. Here the checkpoint's hyperparameters are
        the base config only where no ``--config`` is given (``parse_arguments``), the command line's values win,
        and a fit's resume is then checked against the run's ``config.yaml`` (``check_fit``), however the
        checkpoint is named."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.variant = self.compute_variant() if self.subcommand in (None, "fit") else {}
        resolve_run(config, self.subcommand or "fit", self.variant, self.first_config)
        run_dir = Path(config.run_dir)
        if config.get("ckpt_path") == "last":  # Lightning would train from scratch, hinting at save_last=True
            config.ckpt_path = str(resume_checkpoint(run_dir))
        if self.subcommand in (None, "fit"):
            self.check_fit(config, run_dir)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # a checkpoint is data, not a program

    def check_fit(self, config: Namespace, run_dir: Path) -> None:
        """One run, one directory: a fit into a directory that holds a run must resume it, as the same run. Checked
        before anything is written."""
        for key in ("max_epochs", "max_steps"):
            if config.trainer.get(key) == 0:
                raise UserError(f"trainer.{key}=0: a fit trains at least one epoch (use validate or test to evaluate "
                                "a checkpoint without training)")
        ckpt = config.get("ckpt_path")
        if ckpt is None and requeued() and holds_run(run_dir):  # SLURM started this job again: go on, don't refuse
            try:
                config.ckpt_path = ckpt = str(resume_checkpoint(run_dir))
            except UserError:  # stopped before its first checkpoint: it starts again, its attempts say so
                print(f"inception_lab: SLURM job requeued: {run_dir} has no checkpoint yet; starting it again",
                      file=sys.stderr)
                return
            print(f"inception_lab: SLURM job requeued (restart {os.environ['SLURM_RESTART_COUNT']}): resuming "
                  f"{run_dir} from {ckpt}", file=sys.stderr)
        resuming = ckpt is not None and Path(ckpt).resolve().parent in (run_dir.resolve(),
                                                                        (run_dir / "checkpoints").resolve())
        if not resuming:
            if holds_run(run_dir):
                status = read_summary(run_dir).get("status", "no summary.json")
                if not any(run_dir.glob("checkpoints/*.ckpt")) and not any(run_dir.glob("hpc_ckpt_*.ckpt")):
                    raise UserError(f"--run_dir {run_dir}: already holds a run (status: {status}) that stopped before "
                                    "its first checkpoint, so nothing resumes it: start a new run in a new --run_dir "
                                    f"(or delete {run_dir})")
                raise UserError(f"--run_dir {run_dir}: already holds a run (status: {status}); resume it with "
                                "--ckpt_path last, or start a new run in a new --run_dir")
            return
        if not (run_dir / "config.yaml").is_file():
            return  # a checkpoint copied without its run: nothing to compare with
        try:
            run = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
        except (OSError, ValueError, yaml.YAMLError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{run_dir / 'config.yaml'}: unreadable ({reason}); cannot check that the resume is the "
                            "same run") from None
        differences = resume_differences(run, self._flat(self.config))
        if differences:
            shown = "; ".join(f"{key}: run {short_value(was)}, now {short_value(now)}"
                              for key, (was, now) in list(differences.items())[:4])
            more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
            raise UserError(f"--ckpt_path {ckpt}: a resume is the same run, but this config differs from "
                            f"{run_dir / 'config.yaml'} in {shown}{more}; only the length of training and "
                            "bookkeeping keys may change (start a new run with a new --run_dir)")

    def compute_variant(self) -> dict[str, Any]:
        """What makes this run differ from its experiment file (the first --config): summary.json's "variant",
        the run's name, its W&B tags, and what `compare` groups by. A run's own ``config.yaml`` as the first
        --config (repeating a run) starts from that run's variant."""
        if not self.first_config or not Path(self.first_config).is_file():
            return {}
        prefix = [self.subcommand] if self.subcommand else []
        experiment = self.parser.parse_args([*prefix, "--config", self.first_config])
        first = Path(self.first_config)
        base = read_summary(first.parent).get("variant", {}) if first.name == "config.yaml" else {}
        return {**base, **variant(*(self._flat(c) for c in (self.config, experiment)))}

    def _flat(self, config: Namespace) -> dict[str, Any]:
        dumped = yaml.safe_load(self.parser.dump(config, format="yaml", skip_none=False, skip_check=True))
        return flatten(dumped[self.subcommand] if self.subcommand else dumped)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = Path(config.run_dir)
        if self.subcommand in (None, "fit"):  # model and data built: the first write of the run, after the checks
            self.model.check_optimization()
            self.datamodule.check_source()
            fresh = config.get("ckpt_path") is None and not requeued()  # (requeued before a checkpoint: again)
            hold_run(run_dir, fresh=fresh)  # one fit per run directory, to the end
        callbacks = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        record_at = len(callbacks)  # the record's callback before the checkpoints (added once its W&B run is known)
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
        if self.subcommand in ("test", "predict"):  # predictions/<split>-<views>.npz, for `ensemble`
            callbacks.append(ProbabilityWriter(run_dir))
        logger = self._get(self.config_init, "trainer", default={}).get("logger")
        wandb_run = None
        if logger is None or logger is True:  # default: the run directory's metrics.csv, plus W&B
            csv = RunCSVLogger(run_dir, self.subcommand or "fit")
            loggers = [csv]
            wandb = make_wandb_logger(config, run_dir, self.variant, self.subcommand or "fit")
            if wandb is not None:
                loggers.append(wandb)
                wandb_run = wandb.version if self.subcommand in ("validate", "test", "predict") else None
            kwargs["logger"] = loggers
        callbacks.insert(record_at, RunRecord(run_dir, self.subcommand or "fit", seed=config.get("seed_everything"),
                                              variant=self.variant, wandb_run=wandb_run))
        kwargs.setdefault("default_root_dir", str(run_dir))
        if self.subcommand in (None, "fit"):
            callbacks += [ExactResume(), RequeueOnSignal()]  # SLURM's signal: save at a step's end, requeue
            if not self._get(self.config_init, "trainer", default={}).get("plugins"):
                kwargs["plugins"] = [AtomicCheckpointIO()]  # a kill while saving never truncates last.ckpt
                if SLURMEnvironment.detect():  # RequeueOnSignal handles the signal, not Lightning's handler
                    kwargs["plugins"].append(SLURMEnvironment(auto_requeue=False))
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def option_values(argv: list[str], *names: str) -> list[str]:
    """The values of an option in a command line, in order (``--name value`` and ``--name=value``)."""
    values = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                values.append(value)
            elif i + 1 < len(argv):
                values.append(argv[i + 1])
    return values


def check_yaml(path: str) -> None:
    """A config file that is not valid YAML: one line naming the file and the line (jsonargparse names neither)."""
    if Path(path).is_dir():
        raise UserError(f"--config {path}: a directory, not a config file (experiments/<x>.yaml)")
    if not Path(path).is_file():
        if path.endswith((".yaml", ".yml", ".json")) or os.sep in path:
            raise UserError(f"--config {path}: no such file")
        return  # jsonargparse takes the value as YAML text
    try:
        text = Path(path).read_bytes().decode()
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a YAML config: not UTF-8 text (a binary file, such as a checkpoint? "
                        "give that as --ckpt_path)") from None
    try:
        loaded = load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"--config {path}: not valid YAML{where}: {problem}") from None
    if loaded is not None and not isinstance(loaded, dict):
        kind = "a list" if isinstance(loaded, list) else f"a single {type(loaded).__name__}"
        raise UserError(f"--config {path}: YAML holding {kind}, where a config is a mapping of keys (trainer:, "
                        "model:, data:, ...)")


def checkpoint_config(checkpoint: dict[str, Any], path: Path) -> list[str]:
    """``--config`` arguments that rebuild the model and data a checkpoint was trained with (``test --ckpt_path X``
    with no experiment file): the hyperparameters LightningCLI stored in it."""

    def as_config(hparams: dict[str, Any]) -> dict[str, Any]:
        hparams = {k: v for k, v in hparams.items() if k != "_instantiator"}
        if "_class_path" not in hparams:
            return hparams
        return {"class_path": hparams.pop("_class_path"), "init_args": hparams}

    model = as_config(checkpoint.get("hyper_parameters") or {})
    if not isinstance(model.get("net"), dict):
        raise UserError(f"--ckpt_path {path}: the checkpoint does not say which network it holds; pass the "
                        "experiment file with --config")
    for attr in LINKED:  # set from the DataModule again
        model["net"].get("init_args", {}).pop(attr, None)
    config: dict[str, Any] = {"model": model}
    if checkpoint.get("datamodule_hyper_parameters"):
        config["data"] = as_config(checkpoint["datamodule_hyper_parameters"])
    args = ["--config", json.dumps(config)]
    if path.parent.name == "checkpoints" and path.parent.parent.parent.name:  # runs/<experiment>/<run>/checkpoints
        args += ["--experiment", path.parent.parent.parent.name]
    return args


class _ParseOnlyCLI(InceptionCLI):
    """Parses and builds model and data, but no trainer: nothing is written, no logger starts."""

    def before_instantiate_classes(self) -> None:
        self.variant = self.compute_variant()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        self.model.check_optimization()
        return None


def parse(args: list[str]) -> tuple[InceptionClassifier, ImageDataModule, Namespace]:
    """A command line (``[fit] --config X ...``) parsed and built as ``fit`` would, with no trainer and nothing
    written: (model, datamodule, config), where ``config.variant`` is what makes the run differ from its experiment.
    Raises UserError with one line for a bad config."""
    args = args[1:] if args and args[0] in SUBCOMMANDS else list(args)
    try:
        cli = _ParseOnlyCLI(args=args, run=False, parser_kwargs={"exit_on_error": False})
    except (ArgumentError, ValueError, TypeError) as error:
        raise UserError(user_message(error)) from None
    config = cli.config.clone()
    config.variant = cli.variant
    return cli.model, cli.datamodule, config


def cli_main(argv: list[str] | None = None) -> int:
    """fit / validate / test / predict. Exit codes: 0 done, 130 Ctrl-C (SIGINT), 143 SIGTERM (the run is recorded
    "interrupted" by either signal and resumes with ``--ckpt_path last``); a user error raises :class:`UserError`
    (one line: ``__main__`` prints it, exit 2), and a fit refused before it wrote anything leaves no run directory."""
    keep_freed_memory()  # host allocations: a CPU step stops page-faulting its activations in (same maths)
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt  # as Python's own handler; Lightning records it and exits 1

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: only from there
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    refused = False
    try:
        InceptionCLI(args=argv, parser_kwargs={"exit_on_error": False})
    except Requeued as error:
        then = {True: "the job resumes by itself when SLURM starts it again", None: "rank 0 requeues the job",
                False: "it could not be requeued: submit its job file again, which resumes it"}[error.requeued]
        print(f"inception_lab: {error}: {then}", file=sys.stderr)
        return 143
    except SIGTERMException as error:
        print(f"inception_lab: interrupted ({str(error) or 'SIGTERM'}); resume with --ckpt_path last", file=sys.stderr)
        return 143
    except SystemExit:
        if interrupted:  # Lightning's graceful shutdown after Ctrl-C ends in sys.exit(1)
            print("inception_lab: interrupted (SIGINT); resume with --ckpt_path last", file=sys.stderr)
            return 130
        raise
    except (UserError, ArgumentError, ValueError, FileNotFoundError, MisconfigurationException) as error:
        refused = True
        raise UserError(user_message(error)) from None
    except KeyboardInterrupt:
        print("inception_lab: interrupted", file=sys.stderr)
        return 130
    finally:
        os.environ.pop(RUN_NAME_ENV, None)
        release_runs(refused=refused)
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return 0
