"""Where a run's config comes from, and its writer.

A command's config is, in order: the experiment files (``--config``), or where none is given, the run's own
``config.yaml`` (a fit resumed by ``--ckpt_path``) or a checkpoint's hyperparameters (``validate``/``test``/
``predict --ckpt_path FILE``); then the command line. :func:`command_line` makes that one command line before
LightningCLI parses it; :class:`RunConfigCallback` writes the resolved config into the run directory.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning import Trainer, seed_everything
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn

from inception_lab.errors import CONFIG_KEYS, LINKED, UserError
from inception_lab.run.files import best_checkpoint, flatten, load_yaml, short_value, write_atomic
from inception_lab.run.layout import RunDir
from inception_lab.run.resume import read_checkpoint

SUBCOMMANDS = ("fit", "validate", "test", "predict")
SEED_MAX = 2**32 - 1


def add_run_arguments(parser: Any) -> None:
    """The run's own options on every command's parser: which run directory it writes, and the fit's test pass."""
    parser.add_argument("--experiment", type=str | None, default=None,
                        help="experiment name (default: the first --config file's name)")
    parser.add_argument("--run_name", type=str | None, default=None,
                        help="run name (default: the run's variant, the seed and a timestamp)")
    parser.add_argument("--run_dir", type=str | None, default=None,
                        help="run directory (default: runs/<experiment>/<run_name>)")
    parser.add_argument("--test_after_fit", type=bool, default=True,
                        help="fit: then test its best checkpoint by val top-1 on the test split, recording test/* in "
                             "summary.json (the held-out answer compare judges by); false: don't look at test yet")


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


def command_line(argv: list[str]) -> tuple[list[str], str | None]:
    """The command line LightningCLI parses, and its first ``--config`` (the experiment file, which names the
    experiment and which a run's variant is measured from). Every config file is checked first (one line each).

    - ``validate``/``test``/``predict --ckpt_path FILE`` with no ``--config``: the checkpoint's network and data;
      with neither, ``--run_dir``'s best checkpoint (``parse_error`` says what to give where there is none).
    - ``fit --ckpt_path`` with no ``--config``: the run's own ``config.yaml``.
    - ``fit --ckpt_path <run>/checkpoints/X.ckpt`` with no ``--run_dir``: that run, wherever its directory is now
      (moved, renamed, through a symlink), not the path its ``config.yaml`` recorded.
    """
    for path in option_values(argv, "--config", "-c"):
        check_yaml(path)
    subcommand = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    ckpt = next(iter(option_values(argv, "--ckpt_path")), None)
    no_config = not option_values(argv, "--config", "-c")
    given_dir = next(iter(option_values(argv, "--run_dir")), None)
    if subcommand in ("validate", "test", "predict") and no_config and not ckpt and given_dir and (
            chosen := best_checkpoint(Path(given_dir))) is not None:  # the run's best (with none: parse_error says)
        ckpt = str(chosen)
        argv = [*argv, "--ckpt_path", ckpt]
    run = RunDir.of_checkpoint(ckpt) if ckpt and ckpt != "last" else None
    if ckpt and ckpt != "last":
        checkpoint = read_checkpoint(ckpt)
        if subcommand in ("validate", "test", "predict") and no_config:
            argv = [subcommand, *checkpoint_config(checkpoint, Path(ckpt)), *argv[1:]]
    if subcommand == "fit" and ckpt:
        own = RunDir(given_dir) if given_dir else run
        if no_config and own is not None and own.config().is_file():  # a resume with no experiment file
            check_yaml(str(own.config()))
            argv = ["fit", "--config", str(own.config()), *argv[1:]]
        if run is not None and not given_dir:
            argv = [*argv, "--run_dir", str(run.path)]
    return argv, next(iter(option_values(argv, "--config", "-c")), None)


def parse_error(line: str, parser: Any) -> str:
    """jsonargparse's line on a command line it refused, saying what to do: an evaluation given no network says
    what to give; an unknown key ends ``(did you mean --model.aux_weight?)``: the closest key the command takes (its
    parser's options; a class's arguments for ``model.net: Option 'heda' is not accepted``)."""
    if evaluation := re.search(r"required: (validate|test|predict)\.model\.net", line):
        return (f"{evaluation.group(1)} evaluates a checkpoint: give --ckpt_path <run>/checkpoints/<name>.ckpt (its "
                "network and data come with it), or --run_dir <a run> (its best checkpoint), or --config <experiment "
                "file> (an untrained network)")
    return line + _did_you_mean(line, parser)


def _did_you_mean(line: str, parser: Any) -> str:
    if given := re.search(r"unrecognized arguments: (--[\w.]+)", line):
        parsers = [parser, *getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}).values()]
        keys, given_key = {o for p in parsers for a in p._actions for o in a.option_strings}, given.group(1)
    elif given := re.match(r"([\w.]+): Option '(\w+)' is not accepted", line):
        prefix = f"{given.group(1)}.init_args."
        classes = [getattr(importlib.import_module(name.rpartition(".")[0]), name.rpartition(".")[2])
                   for name, where in CONFIG_KEYS.items() if where == prefix]
        classes += [c for cls in classes for c in _subclasses(cls)]
        keys, given_key = {n for cls in classes for n in inspect.signature(cls).parameters}, given.group(2)
    else:
        return ""
    close = difflib.get_close_matches(given_key, sorted(keys), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def set_seed(config: Namespace, check_only: bool = False) -> None:
    """LightningCLI's seeding (``seed_everything``: a seed, true for a random one, false for none), in the range numpy
    takes (one line naming the key) and quiet: Lightning's "Seed set to 0" came before a refused command's one line,
    and the seed is in the run's config.yaml. ``check_only``: the range alone (``parse`` runs nothing, so it leaves
    the process's RNGs and ``PL_GLOBAL_SEED``, the samplers' seed, as they were)."""
    seed = config.get("seed_everything")
    if seed is False:
        return
    if seed is not True and not 0 <= seed <= SEED_MAX:
        raise UserError(f"seed_everything={seed}: must be in [0, {SEED_MAX}] (numpy's seeds), or true for a random one")
    if not check_only:
        config.seed_everything = seed_everything(None if seed is True else seed, workers=True, verbose=False)


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


def _as_config(hparams: dict[str, Any]) -> dict[str, Any]:
    hparams = {k: v for k, v in hparams.items() if k != "_instantiator"}
    if "_class_path" not in hparams:
        return hparams
    return {"class_path": hparams.pop("_class_path"), "init_args": hparams}


def checkpoint_config(checkpoint: dict[str, Any], path: Path) -> list[str]:
    """``--config`` arguments that rebuild the model and data a checkpoint was trained with (``test --ckpt_path X``
    with no experiment file): the hyperparameters LightningCLI stored in it."""
    model = _as_config(checkpoint.get("hyper_parameters") or {})
    if not isinstance(model.get("net"), dict):
        raise UserError(f"--ckpt_path {path}: the checkpoint does not say which network it holds; pass the "
                        "experiment file with --config")
    for attr in LINKED:  # set from the DataModule again
        model["net"].get("init_args", {}).pop(attr, None)
    config: dict[str, Any] = {"model": model}
    if checkpoint.get("datamodule_hyper_parameters"):
        config["data"] = _as_config(checkpoint["datamodule_hyper_parameters"])
    args = ["--config", json.dumps(config)]
    if (run := RunDir.of_checkpoint(path)) is not None and run.path.parent.name:  # runs/<experiment>/<run>
        args += ["--experiment", run.path.parent.name]
    return args


def check_checkpoint_network(ckpt: str, checkpoint: dict[str, Any], net_config: dict[str, Any],
                             state_dict: dict[str, Any]) -> None:
    """A checkpoint of another network than the config's (another experiment's, or a ``config.yaml`` edited since):
    one line naming the keys that differ, before anything is written. ``net_config``: the config's ``model.net``
    (class_path and init_args); ``state_dict``: the built model's."""
    saved = _as_config(checkpoint.get("hyper_parameters") or {}).get("net")
    differences = {}
    if isinstance(saved, dict):
        was, now = (flatten(_plain(c), "model.net") for c in (saved, net_config))
        differences = {k: (was[k], now[k]) for k in was.keys() & now.keys()
                       if k.rsplit(".", 1)[-1] not in LINKED and was[k] != now[k]}
    if not differences:  # the same arguments (or none recorded): the weights decide
        weights = checkpoint.get("state_dict", {})
        differences = {k: (_shape(weights, k), _shape(state_dict, k)) for k in weights.keys() | state_dict.keys()
                       if _shape(weights, k) != _shape(state_dict, k)}
    if differences:
        shown = "; ".join(f"{k}: checkpoint {short_value(a)}, config {short_value(b)}"
                          for k, (a, b) in sorted(differences.items())[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        raise UserError(f"--ckpt_path {ckpt}: a checkpoint of another network than the config's ({shown}{more}); "
                        "pass the config it was trained with, or no --config")


def _plain(value: Any) -> Any:
    """A config as plain data: Namespaces (also inside lists) as dicts, tuples as lists."""
    value = value.as_dict() if isinstance(value, Namespace) else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _shape(weights: dict[str, Any], key: str) -> tuple[int, ...] | str:
    return tuple(weights[key].shape) if key in weights else "missing"


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
        text = self.parser.dump(config, skip_none=False, format="yaml")
        resolved = pl_module.optimization() if hasattr(pl_module, "optimization") else {}
        if "global_batch" in resolved:  # the LR as this run trains at it (the config says it per reference batch)
            text += (f"# resolved for this run: global batch {resolved['global_batch']} ({resolved['devices']} "
                     f"devices x {resolved['nodes']} nodes x batch {resolved['batch_size']} x accumulation "
                     f"{resolved['accumulate_grad_batches']}): the optimizer's lr x {resolved['lr_scale']:g} "
                     f"(lr_reference_batch {resolved['lr_reference_batch']})"
                     + (f" = {resolved['lr']:g}" if "lr" in resolved else "") + "\n")
        write_atomic(RunDir(self.config.run_dir).config(stage), text)
        for logger in trainer.loggers:
            if hasattr(logger, "log_config"):
                logger.log_config({**yaml.safe_load(text), **({"optimization": resolved} if len(resolved) > 1 else {})})
