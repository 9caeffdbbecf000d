"""`python -m inception_lab <command>`: fit, validate, test, predict (LightningCLI), summary, bench, sweep, compare,
ensemble, slurm."""

from __future__ import annotations

import sys

COMMANDS = {  # command: (module, function); fit/validate/test/predict go to LightningCLI
    "summary": ("inception_lab.cli", "summary_main"),
    "bench": ("inception_lab.bench", "main"),
    "sweep": ("inception_lab.sweep", "main"),
    "compare": ("inception_lab.compare", "main"),
    "ensemble": ("inception_lab.ensemble", "main"),
    "slurm": ("inception_lab.cli", "slurm_main"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from inception_lab.run.files import disk_fault

    try:
        if args and args[0] in COMMANDS:
            import importlib

            module, function = COMMANDS[args[0]]
            return getattr(importlib.import_module(module), function)(args[1:]) or 0
        from inception_lab.cli import cli_main

        return cli_main(argv) or 0  # None: LightningCLI reads sys.argv itself
    except OSError as error:  # a full or read-only disk, for every command: one line, files as they were
        if (fault := disk_fault(error)) is None:
            raise
        command = f" {args[0]}" if args and args[0] in COMMANDS else ""
        hint = "; once the disk allows, --ckpt_path last resumes the run from its newest readable checkpoint"
        print(f"inception_lab{command}: error: {fault}{hint if args[:1] == ['fit'] else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
