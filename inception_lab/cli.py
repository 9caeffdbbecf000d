"""``python -m inception_lab fit|validate|test|predict --config experiments/<x>.yaml``: LightningCLI + run directories.

Every run writes a run directory (default ``runs/<experiment>/<run name>/``) holding the resolved ``config.yaml``,
``metrics.csv``, ``checkpoints/`` (best by val top-1, and ``last.ckpt``) and ``summary.json``. Sweeps and
comparisons read run directories; W&B comes on top of them.
"""

from __future__ import annotations

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
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from inception_lab.console import filter_noise, result
from inception_lab.data import ImageDataModule
from inception_lab.errors import LINKED, UserError, user_message
from inception_lab.hostmem import keep_freed_memory
from inception_lab.module import InceptionClassifier
from inception_lab.run.config import (
    SUBCOMMANDS,
    RunConfigCallback,
    add_run_arguments,
    check_checkpoint_network,
    command_line,
    option_values,
    parse_error,
    set_seed,
)
from inception_lab.run.files import STALE_S, flatten, outcome, read_summary
from inception_lab.run.identity import variant
from inception_lab.run.layout import RunDir
from inception_lab.run.predictions import PredictionWriter, ProbabilityWriter
from inception_lab.run.record import AtomicCheckpointIO, RunCSVLogger, RunRecord, checkpoint_callbacks, test_held_out
from inception_lab.run.requeue import Requeued, RequeueOnSignal
from inception_lab.run.resume import (
    RUN_NAME_ENV,
    ExactResume,
    check_evaluation,
    check_fit,
    hold_run,
    read_checkpoint,
    release_runs,
    remove_temporaries,
    resolve_run,
    resume_checkpoint,
)
from inception_lab.slurm import requeued
from inception_lab.sweep.claim import CLAIM_ENV, check_trial_claim
from inception_lab.tracking import WandbOptions, make_wandb_logger

__all__ = ["cli_main", "option_values", "parse"]


class InceptionCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(InceptionClassifier, ImageDataModule, *args, subclass_mode_data=True,
                         save_config_callback=RunConfigCallback, auto_configure_optimizers=False,
                         save_config_kwargs={"overwrite": True, "save_to_log_dir": False}, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_arguments(parser)
        parser.add_class_arguments(WandbOptions, "wandb")
        for attr in LINKED:
            parser.link_arguments(f"data.{attr}", f"model.net.init_args.{attr}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv, self.first_config = command_line(list(sys.argv[1:] if args is None else args))
        try:
            self.config = parser.parse_args(argv)
        except ArgumentError as error:  # what to do: the closest key to a misspelled one; a checkpoint to evaluate
            raise UserError(parse_error(user_message(error), parser)) from None

    def _set_seed(self) -> None:
        set_seed(self.config[self.subcommand] if self.subcommand else self.config)

    def _parse_ckpt_path(self) -> None:
        """Off: Lightning's merged a checkpoint's hyperparameters over the command line (``--model.*`` dropped). Here
        they are the base config where no ``--config`` is given (``parse_arguments``) and the command line wins."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.variant = self.compute_variant() if self.subcommand in (None, "fit") else {}
        resolve_run(config, self.subcommand or "fit", self.variant, self.first_config)
        run_dir = Path(config.run_dir)
        if config.get("ckpt_path") == "last":  # Lightning would train from scratch, hinting at save_last=True
            config.ckpt_path = str(resume_checkpoint(run_dir))
        if self.subcommand in (None, "fit"):
            check_fit(config, run_dir, lambda: self._flat(self.config))
        else:
            check_evaluation(config, run_dir, self.subcommand)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # a checkpoint is data, not a program

    def compute_variant(self) -> dict[str, Any]:
        """What makes this run differ from its experiment file (the first --config): summary.json's "variant",
        the run's name, its W&B tags, and what `compare` groups by. A run's own ``config.yaml`` as the first
        --config (repeating a run) starts from that run's variant."""
        if not self.first_config or not (first := Path(self.first_config)).is_file():
            return {}
        experiment = self.parser.parse_args([*([self.subcommand] if self.subcommand else []), "--config", str(first)])
        base = read_summary(first.parent).get("variant", {}) if RunDir(first.parent).config() == first else {}
        return {**base, **variant(*(self._flat(c) for c in (self.config, experiment)))}

    def _flat(self, config: Namespace) -> dict[str, Any]:
        dumped = yaml.safe_load(self.parser.dump(config, format="yaml", skip_none=False, skip_check=True))
        return flatten(dumped[self.subcommand] if self.subcommand else dumped)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = Path(config.run_dir)
        if config.get("ckpt_path"):  # model built: a checkpoint of another network is refused before any write
            check_checkpoint_network(config.ckpt_path, read_checkpoint(config.ckpt_path),
                                     self._get(self.config, "model").net.as_dict(), self.model.state_dict())
        if self.subcommand in (None, "fit"):  # model and data built: the first write of the run, after the checks
            self.model.check_optimization()
            self.datamodule.check_source()
            fresh = config.get("ckpt_path") is None and not requeued()  # (requeued before a checkpoint: again)
            # a reclaimed sweep trial's stale fit holds it for a moment; a requeued job's old process a dead node's
            wait_s = 60 if os.environ.get(CLAIM_ENV) else STALE_S + 60 if requeued() else 0
            hold_run(run_dir, fresh=fresh, wait_s=wait_s)
            try:
                check_trial_claim()  # a sweep trial: still its runner's (another may have reclaimed it meanwhile)
            except UserError:
                release_runs()
                raise
        elif read_summary(run_dir).get("status") != "running":
            remove_temporaries(run_dir)
        callbacks = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        record_at = len(callbacks)  # the record's callback before the checkpoints (added once its W&B run is known)
        if self.subcommand in (None, "fit"):
            callbacks += checkpoint_callbacks(run_dir)
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run_dir))
        if self.subcommand in ("test", "predict"):  # predictions/<split>-<views>.npz, for `ensemble`
            callbacks.append(ProbabilityWriter(run_dir))
        logger = self._get(self.config_init, "trainer", default={}).get("logger")
        wandb_run = None
        if logger is None or logger is True:  # default: the run directory's metrics.csv, plus W&B
            csv = RunCSVLogger(run_dir, self.subcommand or "fit")
            loggers = [csv]
            options = self.config_init.get(str(self.subcommand), self.config_init)  # the W&B options as instantiated
            wandb = make_wandb_logger(options, run_dir, self.variant, self.subcommand or "fit")
            if wandb is not None:
                loggers.append(wandb)
                wandb_run = wandb.version if self.subcommand in ("validate", "test", "predict") else None
            kwargs["logger"] = loggers
        callbacks.insert(record_at, RunRecord(run_dir, self.subcommand or "fit", seed=config.get("seed_everything"),
                                              variant=self.variant, wandb_run=wandb_run,
                                              test_after_fit=bool(config.get("test_after_fit"))))
        kwargs.setdefault("default_root_dir", str(run_dir))
        if self.subcommand in (None, "fit"):
            callbacks += [ExactResume(), RequeueOnSignal()]  # SLURM's signal: save at a step's end, requeue
            if not self._get(self.config_init, "trainer", default={}).get("plugins"):
                kwargs["plugins"] = [AtomicCheckpointIO()]  # a kill while saving never truncates last.ckpt
                if SLURMEnvironment.detect():  # RequeueOnSignal handles the signal, not Lightning's handler
                    kwargs["plugins"].append(SLURMEnvironment(auto_requeue=False))
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


    def after_fit(self) -> None:  # the held-out answer: the fit's best checkpoint by val top-1 on the test split
        test_held_out(self.trainer, self.model, self.datamodule)


class _ParseOnlyCLI(InceptionCLI):
    """Parses and builds model and data, but no trainer: nothing is written, no logger starts."""

    def _set_seed(self) -> None:
        set_seed(self.config, check_only=True)

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
    filter_noise()
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt  # as Python's own handler; Lightning records it and exits 1

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: only from there
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    refused = False
    try:
        cli = InceptionCLI(args=argv, parser_kwargs={"exit_on_error": False})
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
    if getattr(rank_zero_only, "rank", 0) == 0:  # what it did, one line on stdout
        config = cli.config[cli.subcommand]
        result(outcome(cli.subcommand, Path(config.run_dir), config.get("ckpt_path")))
    return 0
