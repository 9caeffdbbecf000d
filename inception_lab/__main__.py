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
    "slurm": ("inception_lab.slurm", "main"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in COMMANDS:
        import importlib

        from inception_lab.run.files import disk_fault

        module, function = COMMANDS[args[0]]
        try:
            return getattr(importlib.import_module(module), function)(args[1:]) or 0
        except OSError as error:  # a full or read-only disk: one line, every file as it was (write_atomic)
            if (fault := disk_fault(error)) is None:
                raise
            print(f"inception_lab {args[0]}: error: {fault}", file=sys.stderr)
            return 1
    from inception_lab.cli import cli_main

    return cli_main(argv) or 0  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    sys.exit(main())
