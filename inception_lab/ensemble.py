"""The paper's Table 3: top-1 and top-5 error of 1..N models at 1, 10 and 144 crops, and what each costs.

    python -m inception_lab ensemble RUN_DIR... [--views V,...] [--out DIR] [-- TEST_ARGS...]

Each run's stored predictions (``<run>/predictions/test-<views>.npz``, :mod:`inception_lab.run.predictions`) are read;
where one is missing, or was made from another checkpoint than the run's best (else last), ``test`` computes it, in
this process (``test --ckpt_path <run>/checkpoints/<ckpt> --data.init_args.test_views <views> TEST_ARGS...``, e.g.
``-- --data.init_args.batch_size 8`` for ``multi144``). Softmax probabilities are averaged over
an image's views (in ``test``), then over models (here: Section 7). For k = 1..N the ensemble is the first k runs;
cost is models x crops; deltas are against one model at one crop (``single``, always computed: the base). The
default views are the protocols the runs' DataModule declares (``table3_views``: ImageNet's are the paper's).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import yaml

from inception_lab import console
from inception_lab.data.views import VIEW_COUNTS, TestViews
from inception_lab.errors import ArgumentParser, UserError, user_message
from inception_lab.run.files import best_checkpoint, write_atomic
from inception_lab.run.layout import RunDir
from inception_lab.run.predictions import SPLIT, Predictions, checkpoint_name, predictions_path

BASE = "single"
DEFAULT_OUT = Path("reports/ensemble")  # under reports/, which git ignores


class EnsembleError(UserError):
    """Bad input to ``ensemble``, or a run it could not evaluate."""


@dataclass(frozen=True)
class Row:
    """One line of Table 3. Errors are fractions in [0, 1]; deltas are against one model at one crop."""

    models: int
    crops: int
    views: str
    cost: int
    top1_error: float
    top5_error: float
    delta_top1: float
    delta_top5: float


# ---- the arithmetic -------------------------------------------------------------------------------------------------
def top_k_error(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The fraction of images whose label is not among the ``k`` most probable classes (ties: the lower class)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top != labels[:, None]).all(axis=1).mean())


def average(predictions: list[Predictions]) -> np.ndarray:
    """An ensemble's probabilities: each model's (already averaged over its views) averaged over models, float64."""
    return np.mean([p.probs.astype(np.float64) for p in predictions], axis=0)


def table3(predictions: dict[str, list[Predictions]]) -> list[Row]:
    """``predictions[views][i]`` is run i's; rows for k = 1..N models (the first k runs), then by crops."""
    if BASE not in predictions:
        raise EnsembleError(f"views: {BASE!r} is the base every row is compared with; include it")
    labels = predictions[BASE][0].labels
    errors = {}
    for views, runs in predictions.items():
        for k in range(1, len(runs) + 1):
            probs = average(runs[:k])
            errors[k, views] = top_k_error(probs, labels, 1), top_k_error(probs, labels, 5)
    base1, base5 = errors[1, BASE]
    order = sorted(errors, key=lambda key: (key[0], VIEW_COUNTS[key[1]]))
    return [Row(k, VIEW_COUNTS[views], views, k * VIEW_COUNTS[views], *errors[k, views],
                errors[k, views][0] - base1, errors[k, views][1] - base5) for k, views in order]


# ---- runs, their checkpoints and stored predictions -------------------------------------------------------------
def data_class(run_dir: Path) -> type | None:
    """The DataModule class the run's ``config.yaml`` names; None where there is no readable record of it."""
    try:
        config = yaml.safe_load(RunDir(run_dir).config().read_text()) or {}
        module, _, name = config["data"]["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)
    except (OSError, KeyError, TypeError, ValueError, ImportError, AttributeError, yaml.YAMLError):
        return None  # `test` itself will say, if it has to run


def default_views(runs: list[Path]) -> list[str]:
    """The view protocols the first run's DataModule declares for Table 3 (only the base where it declares none)."""
    return list(getattr(data_class(runs[0]), "table3_views", (BASE,)))


def check_views_supported(runs: list[Path], views: list[str]) -> None:
    """A view protocol a run's data cannot cut (``multi144`` on the digits): the DataModule's own one line; a note
    it gives (``flip`` on the digits) is given once per DataModule and protocol."""
    checked = set()
    for run_dir in runs:
        check = getattr(data_class(run_dir), "check_test_views", None)
        for v in views:
            if check is not None and (check, v) not in checked:
                checked.add((check, v))
                try:
                    check(v)
                except ValueError as error:
                    raise EnsembleError(f"{run_dir}: {user_message(error)}") from None


def stored(run_dir: Path, views: str, checkpoint: Path | None) -> Predictions | None:
    """The run's stored predictions for ``views``, if made from ``checkpoint`` (or the run has none left)."""
    path = predictions_path(run_dir, views)
    if not path.is_file():
        return None
    try:
        predictions = Predictions.load(path)
    except (OSError, ValueError, KeyError) as error:
        raise EnsembleError(f"{path}: not a readable predictions file ({error})") from None
    if checkpoint is not None and predictions.checkpoint != checkpoint_name(run_dir, checkpoint):
        return None  # from an earlier checkpoint of this run
    return predictions


@contextlib.contextmanager
def quiet_test() -> Iterator[io.StringIO]:
    """For an inner ``test``: its output (metrics table, notes: yielded), Lightning's info lines ("GPU available",
    "Seed set to 0", tips) and library warnings kept from the terminal, as they were after. ``test`` itself shows
    them; the DataModule's notes were given before (:func:`check_views_supported`)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    captured = io.StringIO()
    try:
        for logger in loggers:  # their handlers hold the stderr of Lightning's import: a redirect misses them
            logger.setLevel(logging.WARNING)
        with console.nested(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield captured  # its warnings too (shown on its stderr): not all warnings dropped
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_test(run_dir: Path, checkpoint: Path, views: str, test_args: list[str]) -> None:
    """``test`` on the run's checkpoint with these views, in this process (one import of torch and Lightning for
    every run and protocol); it stores the predictions. Its output is not shown (:func:`quiet_test`): Table 3 is."""
    from inception_lab.cli import cli_main

    command = ["test", "--ckpt_path", str(checkpoint), "--data.init_args.test_views", views,
               "--trainer.enable_progress_bar=false", *test_args]
    print(f"{run_dir}: testing {checkpoint.name} with {views} views", file=sys.stderr, flush=True)
    try:
        with quiet_test() as output:
            code = cli_main(command)
    except UserError as error:
        raise EnsembleError(f"{run_dir}: test with {views} views: {error}") from None
    if code != 0:
        last = (output.getvalue().strip().splitlines() or [""])[-1]
        raise EnsembleError(f"{run_dir}: test with {views} views stopped (exit {code}){': ' + last if last else ''}")


def collect(runs: list[Path], views: list[str], test_args: list[str]) -> dict[str, list[Predictions]]:
    """Every run's predictions for every view protocol, computing the missing ones (checked first, all of them:
    nothing is computed when one of them cannot be)."""
    missing = []
    for run_dir in runs:
        if not run_dir.is_dir():
            what = "a file, not a run directory" if run_dir.exists() else "no such run directory"
            raise EnsembleError(f"{run_dir}: {what}")
    check_views_supported(runs, views)
    for run_dir in runs:
        checkpoint = best_checkpoint(run_dir)  # the one a run is evaluated from
        for v in views:
            if stored(run_dir, v, checkpoint) is None:
                if checkpoint is None:
                    raise EnsembleError(f"{run_dir}: no stored {predictions_path(run_dir, v).name} and no "
                                        f"checkpoint in {RunDir(run_dir).checkpoints} to compute it from")
                missing.append((run_dir, checkpoint, v))
    if test_args and not missing:  # what follows -- is for the test runs, and every protocol is stored
        print(f"inception_lab ensemble: note: every protocol's predictions are stored: no test runs, so the arguments "
              f"after -- ({' '.join(test_args)}) are not used; delete a run's predictions/ to compute them again",
              file=sys.stderr)
    for run_dir, checkpoint, v in missing:
        run_test(run_dir, checkpoint, v, test_args)
    predictions: dict[str, list[Predictions]] = {v: [] for v in views}
    for run_dir in runs:
        for v in views:
            found = stored(run_dir, v, best_checkpoint(run_dir))
            if found is None:
                raise EnsembleError(f"{run_dir}: test ran but wrote no {predictions_path(run_dir, v)}")
            predictions[v].append(found)
    _check_same_images(runs, predictions)
    return predictions


def _check_same_images(runs: list[Path], predictions: dict[str, list[Predictions]]) -> None:
    first = predictions[BASE][0]
    for v, per_run in predictions.items():
        for run_dir, p in zip(runs, per_run):
            if p.probs.shape != first.probs.shape or not np.array_equal(p.labels, first.labels):
                raise EnsembleError(f"{predictions_path(run_dir, v)}: {p.probs.shape[0]} images x "
                                    f"{p.probs.shape[1]} classes with their labels, not the {first.probs.shape[0]} x "
                                    f"{first.probs.shape[1]} of {predictions_path(runs[0], BASE)}: the runs were "
                                    "tested on different data")


# ---- the report -------------------------------------------------------------------------------------------------
def _percent(value: float, signed: bool = False) -> str:
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}%"


def markdown(rows: list[Row], runs: list[Path], images: int) -> str:
    lines = [f"Table 3 layout (Szegedy et al., 2014): {len(runs)} run(s), {images} {SPLIT} images; k models = the "
             "first k runs; cost = models x crops; deltas in points against 1 model, 1 crop.", "",
             "| models | crops | views | cost | top-1 error | top-5 error | Δ top-1 | Δ top-5 |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = r.models == 1 and r.views == BASE
        deltas = ("base", "base") if base else (_percent(r.delta_top1, True), _percent(r.delta_top5, True))
        lines.append(f"| {r.models} | {r.crops} | {r.views} | {r.cost} | {_percent(r.top1_error)} | "
                     f"{_percent(r.top5_error)} | {deltas[0]} | {deltas[1]} |")
    lines += ["", "Runs, in order: " + ", ".join(f"`{run}`" for run in runs)]
    return "\n".join(lines) + "\n"


def headline(rows: list[Row], out: Path) -> str:
    """The command's last line: where Table 3 is, and its best row's top-1 error against one model at one crop."""
    base, best = rows[0], min(rows, key=lambda r: (r.top1_error, r.cost))
    figure = (f"no row beats 1 model x {BASE}: top-1 error {_percent(base.top1_error)}" if best == base else
              f"best top-1 error {_percent(best.top1_error)} ({best.models} model{'s' * (best.models > 1)} x "
              f"{best.views}, cost {best.cost}) against {_percent(base.top1_error)} for 1 model x {BASE} "
              f"({_percent(best.delta_top1, True)} points)")
    return f"ensemble: {out / 'table3.md'}: {figure}"


def ensemble(runs: list[Path], views: list[str], out: Path, test_args: list[str]) -> tuple[list[Row], str]:
    """Table 3 for ``runs``: rows, and the markdown written to ``out/table3.md`` (and ``out/table3.json``)."""
    views = [BASE, *(v for v in views if v != BASE)]
    predictions = collect(runs, views, test_args)
    rows = table3(predictions)
    first = predictions[BASE][0]
    text = markdown(rows, runs, len(first.labels))
    record = {"runs": [str(r) for r in runs], "checkpoints": [p.checkpoint for p in predictions[BASE]],
              "split": SPLIT, "images": len(first.labels), "classes": int(first.probs.shape[1]),
              "rows": [asdict(r) for r in rows]}
    write_atomic(out / "table3.md", text)
    write_atomic(out / "table3.json", json.dumps(record, indent=2) + "\n")
    return rows, text


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    test_args = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    parser = ArgumentParser(prog="python -m inception_lab ensemble", description=__doc__.split("\n\n")[0],
                     usage="%(prog)s RUN_DIR... [--views V,...] [--out DIR] [-- TEST_ARGS...]",
                     epilog="TEST_ARGS go to every `test` the ensemble runs, e.g. -- --data.init_args.batch_size 8 "
                            "--data.init_args.root /data/imagenet")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (the first k make the k-model ensemble)")
    parser.add_argument("--views", help=f"view protocols, comma-separated, of {', '.join(get_args(TestViews))} "
                        f"(default: those the runs' DataModule declares, its table3_views; {BASE} is always added: "
                        "the base)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where table3.md and table3.json go "
                                                                      "(default: %(default)s)")
    parsed = parser.parse_args(args)
    given = parsed.views if parsed.views is not None else ",".join(default_views(parsed.runs))
    views = [v.strip() for v in given.split(",") if v.strip()]
    unknown = [v for v in views if v not in VIEW_COUNTS]
    if unknown or not views:
        raise EnsembleError(f"--views {given}: expected a comma-separated list of "
                            f"{', '.join(get_args(TestViews))}")
    seen: dict[Path, Path] = {}
    for run in parsed.runs:  # one model counted twice would be an ensemble of one at twice the cost
        if (key := run.resolve()) in seen:
            raise EnsembleError(f"{run}: given twice (as {seen[key]}); an ensemble's runs are different models")
        seen[key] = run
    rows, text = ensemble(parsed.runs, list(dict.fromkeys(views)), parsed.out, test_args)
    print(text, end="")
    print(f"wrote {parsed.out / 'table3.md'}, {parsed.out / 'table3.json'}")
    console.result(headline(rows, parsed.out))  # the last line; --quiet (every command's) keeps only it
    return 0
