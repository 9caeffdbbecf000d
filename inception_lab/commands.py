"""``python -m inception_lab summary`` and ``python -m inception_lab slurm fit``: the commands built on the CLI's own
parser (:func:`inception_lab.cli.parse`), which check a config as ``fit`` would and run nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from inception_lab import slurm
from inception_lab.cli import parse
from inception_lab.console import result
from inception_lab.errors import ArgumentParser, ArgumentValueError, UserError
from inception_lab.models import format_table, googlenet, summarize
from inception_lab.models.footprint import training_memory
from inception_lab.models.inception import PRESETS
from inception_lab.run.config import option_values
from inception_lab.run.files import write_atomic
from inception_lab.run.layout import RunDir
from inception_lab.run.resume import resolve_run


def summary_main(argv: list[str] | None = None) -> int:
    """``python -m inception_lab summary``: a network as the paper's Table 1 (params and multiply-adds per layer)."""
    parser = ArgumentParser(prog="python -m inception_lab summary", description="A network as the paper's Table 1.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a googlenet() preset (default: paper)")
    source.add_argument("--config", help="an experiment file (experiments/*.yaml): its network and input size")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: 224, or the config's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size {args.image_size}: expected a positive integer")
    try:  # the network refuses a size it cannot take (outside [smallest, largest]) before it allocates anything
        if args.config:
            model, data, _ = parse(["--config", args.config])
            net, image_size, in_channels = model.net, args.image_size or data.image_size, data.in_channels
            net.check_input(image_size, *training_memory())
        else:
            preset = args.preset or "paper"
            image_size = args.image_size or PRESETS[preset].get("image_size", 224)
            net, in_channels = googlenet(preset, image_size=image_size), 3
    except ArgumentValueError as error:
        raise UserError(f"--image-size {image_size}: {error.reason}") from None
    summary = summarize(net, image_size, in_channels)
    if args.json:  # the JSON is the whole of stdout (under --quiet too)
        result(json.dumps(summary, indent=2))
        return 0
    print(format_table(summary))
    result(f"summary {args.config or f'--preset {preset}'}: {summary['total_params']:,} parameters, "
           f"{summary['total_macs']:,} multiply-adds at {image_size}x{image_size}")
    return 0


def slurm_main(argv: list[str] | None = None) -> int:
    """``python -m inception_lab slurm fit ...`` (the job file: :mod:`inception_lab.slurm`): the fit's config is
    checked and its run directory fixed now, so that every requeue of the job writes the same run."""
    args, rest = slurm.parse_args(sys.argv[1:] if argv is None else argv)
    devices = [f"--trainer.devices={args.gpus_per_node}"] if args.gpus_per_node else [
        "--trainer.accelerator=cpu", "--trainer.devices=1"]  # a CPU job: one rank per node
    fit = [*rest, f"--trainer.num_nodes={args.nodes}", *devices]
    _, _, config = parse(fit)
    resolve_run(config, "fit", config.variant, next(iter(option_values(rest, "--config", "-c")), None))
    run_dir, run = Path(config.run_dir), RunDir(config.run_dir)
    if run.holds_run():
        raise UserError(f"--run_dir {run_dir}: already holds a run; a job file for it is {run.sbatch}")
    command = [sys.executable, "-m", "inception_lab", "fit", *_without(fit, "--run_dir"), "--run_dir",
               str(run_dir.absolute()), "--experiment", config.experiment]
    text = slurm.sbatch_text(job_name=slurm.job_name(config.run_name, "fit"), command=command, nodes=args.nodes,
                             tasks_per_node=max(1, args.gpus_per_node), gpus_per_node=args.gpus_per_node,
                             cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition,
                             account=args.account, output=str(run.slurm_output.absolute()), extra=args.sbatch)
    write_atomic(run.sbatch, text)
    return slurm.submit(run.sbatch, args.dry_run)


def _without(argv: list[str], option: str) -> list[str]:
    """A command line without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            out.append(arg)
    return out
