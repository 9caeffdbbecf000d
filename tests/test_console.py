"""What a command shows (console.py): the libraries' noise dropped by message, each entry with its reason, and
nothing else dropped. (The commands' result lines and --quiet, end to end: tests/test_cli.py.)"""

from __future__ import annotations

import logging
import warnings

import pytest

from inception_lab import console


def _shown(category: type[Warning], message: str) -> bool:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        console.filter_noise()
        warnings.warn(message, category, stacklevel=1)
    return bool(seen)


@pytest.mark.parametrize(("category", "message", "reason", "kept_under"), console.WARNINGS)
def test_each_dropped_warning_is_dropped_alone(category: type[Warning], message: str, reason: str,
                                               kept_under: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if kept_under:
        monkeypatch.delenv(kept_under, raising=False)
    text = message.replace("\\", "") + " (the rest of the library's text)"
    assert reason and not _shown(category, text)
    assert _shown(category, "another " + text) and _shown(DeprecationWarning if category is FutureWarning
                                                          else RuntimeWarning, text)


def test_lightning_s_srun_hint_stays_inside_a_slurm_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert _shown(UserWarning, "The `srun` command is available on your system but is not used. HINT: ...")


@pytest.mark.parametrize(("message", "reason"), console.LOG_LINES)
def test_each_dropped_log_line_is_dropped_alone(message: str, reason: str) -> None:
    console.filter_noise()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's rank_zero_info logs

    def passes(text: str) -> bool:
        return logger.filter(logging.LogRecord(logger.name, logging.INFO, "", 0, text, (), None))

    text = message.replace("\\", "").replace("w+", "train") + " ..."
    assert reason and not passes(text) and passes("GPU available: True (cuda), used: True") and passes("x " + text)
    assert passes("`Trainer.fit` stopped: `max_epochs=6` reached.")


def test_a_nested_command_s_result_is_its_caller_s_to_keep() -> None:
    """``ensemble`` runs ``test`` in its process: under ``--quiet`` too, the inner result line goes where the caller
    points stdout (captured), not to the user's terminal."""
    import contextlib
    import io

    outer, inner = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(outer):
        console._real["out"] = outer  # as --quiet leaves it: the real stdout kept aside
        try:
            with console.nested(), contextlib.redirect_stdout(inner):
                console.result("test: inner")
            console.result("ensemble: outer")
        finally:
            console._real.clear()
    assert (inner.getvalue(), outer.getvalue()) == ("test: inner\n", "ensemble: outer\n")
