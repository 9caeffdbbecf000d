"""`python -m inception_lab <command>`: fit, validate, test, predict (LightningCLI), summary, bench, sweep, compare."""

from __future__ import annotations

import sys

COMMANDS = {
    "summary": "inception_lab.summary",
    "bench": "inception_lab.bench",
    "sweep": "inception_lab.sweep",
    "compare": "inception_lab.compare",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in COMMANDS:
        import importlib

        return importlib.import_module(COMMANDS[args[0]]).main(args[1:]) or 0
    from inception_lab.cli import cli_main

    return cli_main(argv) or 0  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    sys.exit(main())
