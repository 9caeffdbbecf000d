"""`python -m inception_lab <command>`: fit, validate, test, predict (LightningCLI), summary, bench, sweep, compare,
ensemble, slurm.

Every command reports a user error the same way: ``inception_lab <command>: error: <one line>`` on stderr, exit 2,
no traceback (a :class:`~inception_lab.errors.UserError`); a full or read-only disk is one line and exit 1. Every
command ends with one line of what it did on stdout (:func:`inception_lab.console.result`); ``--quiet`` keeps only
that line (and a refusal's)."""

from __future__ import annotations

import sys

COMMANDS = {  # command: (module, function); fit/validate/test/predict go to LightningCLI
    "summary": ("inception_lab.commands", "summary_main"), "bench": ("inception_lab.bench", "main"),
    "sweep": ("inception_lab.sweep.main", "main"), "compare": ("inception_lab.compare", "main"),
    "ensemble": ("inception_lab.ensemble", "main"), "slurm": ("inception_lab.commands", "slurm_main"),
    "power": ("inception_lab.compare.power", "main"),
}
LIGHTNING = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from inception_lab import console
    from inception_lab.errors import UserError
    from inception_lab.run.files import disk_fault

    restore = None
    if "--quiet" in args:  # every command's, before or after its name: its result line alone (taken out here)
        args = [a for a in args if a != "--quiet"]
        if argv is None:  # what Lightning's launcher of the other DDP ranks reads
            sys.argv = [sys.argv[0], *args]
        argv, restore = args, console.quiet()
    command = args[0] if args and args[0] in (*COMMANDS, *LIGHTNING) else None
    prefix = f"inception_lab {command}" if command else "inception_lab"
    try:
        if command in COMMANDS:
            import importlib

            module, function = COMMANDS[command]
            return getattr(importlib.import_module(module), function)(args[1:]) or 0
        from inception_lab.cli import cli_main

        return cli_main(argv) or 0  # None: LightningCLI reads sys.argv itself
    except UserError as error:
        print(f"{prefix}: error: {error}", file=console.error_stream())
        return 2
    except OSError as error:  # a full or read-only disk, for every command: one line, files as they were
        if (fault := disk_fault(error)) is None:
            raise
        hint = "; once the disk allows, --ckpt_path last resumes the run from its newest readable checkpoint"
        print(f"{prefix}: error: {fault}{hint if command == 'fit' else ''}", file=console.error_stream())
        return 1
    finally:
        if restore is not None:
            restore()


if __name__ == "__main__":
    sys.exit(main())
