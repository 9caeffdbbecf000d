"""What a command shows: its result, one line on stdout and the last there, and no noise the user cannot act on.

- :data:`WARNINGS` and :data:`LOG_LINES`: the libraries' warnings and log lines dropped where they arise, by message
  (and a warning's category), each with the reason it is safe to drop; never all warnings.
- ``--quiet`` (any command): stdout and stderr of the command, and so of the processes it starts (DDP ranks, sweep
  trials), go to /dev/null; :func:`result` still writes its line to the real stdout, and :func:`error_stream` is
  the real stderr for a refusal's one line.

Torch-free: the sweep runner imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TextIO

# (category, message at its start, why dropping it is safe, the variable under which it stays: None, never)
WARNINGS = [
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning 2.6's own use of a torch API that torch 2.14 deprecates: nothing in this project or the user's code",
     None),
    (UserWarning, r"The `srun` command is available on your system but is not used",
     "Lightning says it wherever srun is installed; kept inside a SLURM job, where a fit may really run outside srun",
     "SLURM_JOB_ID"),
    (UserWarning, r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
     "an evaluation restores the network, not the fit's own training callbacks (ExactResume, RequeueOnSignal, the "
     "checkpoints); a fit, resumed or not, always has them", None),
]
# Lightning's info lines (message at its start, why)
LOG_LINES = [
    (r"TPU available: ", "this project runs on CPUs and GPUs"),
    (r"GPU available: False, used: False", "no GPU here: nothing to act on (with one, the line stays: is it used?)"),
    (r"💡 Tip: ", "advertises Lightning's cloud products (litlogger, litmodels)"),
    (r"`Trainer\(limit_\w+_batches=1\.0\)` was configured so 100% of the batches", "repeats a value of the config"),
    (r"Loading `train_dataloader` to estimate number of stepping batches", "Lightning's bookkeeping (LR schedule)"),
]


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(re.match(pattern, message) for pattern, _ in LOG_LINES)


def filter_noise() -> None:
    """Drop :data:`WARNINGS` and :data:`LOG_LINES` (whatever handlers the logging has)."""
    for category, message, _, kept_under in WARNINGS:
        if not (kept_under and os.environ.get(kept_under)):
            warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):  # rank_zero_info's
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())


_real: dict[str, TextIO] = {}  # under --quiet: the real stdout and stderr


def quiet() -> Callable[[], None]:
    """``--quiet``: this process's (and its children's) stdout and stderr to /dev/null, file descriptors and Python's
    streams alike, until the returned function puts them back. :func:`result` and :func:`error_stream` keep the
    streams as they were (a copy of the descriptor where a stream wrote to it; else the stream, e.g. a capture)."""
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    saved = os.dup(1), os.dup(2)
    opened = [os.fdopen(os.dup(copy), "w", buffering=1) if _writes_to(stream, fd) else None
              for stream, fd, copy in zip(streams, (1, 2), saved)]
    _real.update(out=opened[0] or streams[0], err=opened[1] or streams[1])
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (closed by restore)

    def restore() -> None:
        sys.stdout.close()
        sys.stdout, sys.stderr = streams
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        for stream in opened:
            if stream is not None:
                stream.close()
        _real.clear()

    return restore


def _writes_to(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both: a capture, a StringIO
        return False


def result(line: str) -> None:
    """A command's result: one line on stdout, the last there (scripts read it); under ``--quiet`` the only one. A
    command run inside another (:func:`nested`) writes it to ``sys.stdout`` as it is then: the outer one's to keep."""
    print(line, file=sys.stdout if _nested else _real.get("out", sys.stdout), flush=True)


_nested: list[None] = []


@contextlib.contextmanager
def nested() -> Iterator[None]:
    """A command run by another in this process (``ensemble``'s ``test`` runs): its result line is not the user's."""
    _nested.append(None)
    try:
        yield
    finally:
        _nested.pop()


def error_stream() -> TextIO:
    """Where a refusal's one line goes: stderr, the real one under ``--quiet``."""
    return _real.get("err", sys.stderr)
