"""A sweep's trial commands: the command line the W&B agent (``Agent._command_run``) would run for each trial, rendered
by wandb's own ``create_sweep_command`` and ``create_sweep_command_args``, its ``${args_json_file}``, and the CLI's
check of every trial's config before anything runs (:func:`check_trials`), with the names of the trials' runs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args

from inception_lab.run.files import flatten, safe_name, write_atomic
from inception_lab.run.identity import variant_name
from inception_lab.run.layout import RunDir
from inception_lab.sweep.spec import Sweep, SweepError

AGENT_MACROS = ("env", "interpreter", "program", "args_json_file")  # what the agent adds to create_sweep_command_args


def sweep_vars(values: dict[str, Any]) -> dict[str, Any]:
    """The agent's macros of a trial's values: ``--key=str(value)`` for ``${args}``, JSON for ``${args_json}``."""
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})


def check_command(sweep: Sweep) -> None:
    known = sorted({*sweep_vars({}), *AGENT_MACROS})
    for token in sweep.command:
        macro = re.fullmatch(r"\$\{(\w+)\}", token)
        if macro and macro.group(1) not in known:
            raise SweepError(f"{sweep.path}: command: unknown macro {token}; the agent knows "
                             f"{', '.join('${' + m + '}' for m in known)}")
    if "${program}" in (sweep.command or DEFAULT_SWEEP_COMMAND) and not sweep.config.get("program"):
        raise SweepError(f"{sweep.path}: command uses ${{program}} but the sweep file sets no program")


def render_command(template: list[str], values: dict[str, Any], args_json_file: Path,
                   program: str | None = None) -> list[str]:
    macros = {**sweep_vars(values), "interpreter": [sys.executable], "program": [program],
              "args_json_file": [str(args_json_file)], "env": ["/usr/bin/env"] if os.name != "nt" else []}
    command: list[str] = []
    for token in map(str, create_sweep_command(list(template))):  # ${envvar:X} filled in; a copy: it edits in place
        if token.startswith("${") and token.endswith("}"):
            command += macros.get(token[2:-1]) or []
        else:
            command.append(sys.executable if token == "python" else token)
    return command


def trial_command(sweep: Sweep, run_dir: Path, values: dict[str, Any], json_file: Path | None = None) -> list[str]:
    """The agent's command line; the CLI's is told its run directory and W&B group, another program's is as is."""
    json_file = json_file or RunDir(run_dir).trial_args
    command = render_command(sweep.command, values, json_file, sweep.config.get("program"))
    return command if cli_args(command) is None else [*command, "--run_dir", str(run_dir), "--wandb.group", sweep.name]


def write_args_json(path: Path, values: dict[str, Any]) -> None:  # what the agent writes for ${args_json_file}
    write_atomic(path, sweep_vars(values)["args_json"][0])


def cli_args(command: list[str]) -> list[str] | None:
    """The arguments the inception_lab CLI gets (what ``cli.parse`` takes) where the command runs it: ``python -m
    inception_lab``, its console script ``inception-lab``, or ``${interpreter} ${program}`` with ``program`` its
    ``inception_lab/__main__.py``; None for another program."""
    for i, token in enumerate(command):
        if token.startswith("--"):  # the program's arguments: the program came before
            break
        if command[i:i + 2] == ["-m", "inception_lab"]:
            return command[i + 2:]
        if Path(token).name == "inception-lab" or Path(token).parts[-2:] == ("inception_lab", "__main__.py"):
            return command[i + 1:]
    return None


def check_trials(sweep: Sweep, directory: Path, trials: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """Every trial's command line through the CLI's parser (model and data built, nothing written): their names.
    Only trials of the inception_lab CLI import it (and torch, Lightning)."""
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, values in trials:
            write_args_json(json_file := Path(tmp) / f"{index}.json", values)
            args = cli_args(trial_command(sweep, directory / "runs" / f"{index:03d}", values, json_file))
            config = None  # another program than the inception_lab CLI: nothing to check it with
            if args is not None:
                from inception_lab import cli

                logging.disable(logging.INFO)  # "Seed set to ..." per trial
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        config = cli.parse(args)[2]
                except cli.UserError as error:
                    raise SweepError(f"trial {trial_name(index, values)} ({describe(values)}): {error}") from None
                finally:
                    logging.disable(logging.NOTSET)
            names.append(trial_name(index, values, config))
    return names


def trial_name(index: int, values: dict[str, Any], config: Any = None) -> str:
    """``003-filter_sizes=3x3x3-seed1``: the name the CLI gives the run (from its parsed ``config``), after the trial's
    index; from the swept values alone without one (another program than this CLI, or a config it rejects)."""
    variant, seed = (config.variant, config.seed_everything) if config is not None else (
        {k: v for k, v in flatten(values).items() if k != "seed_everything"}, values.get("seed_everything"))
    return safe_name(f"{index:03d}", variant_name(variant), "" if seed is None else f"seed{seed}")


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
