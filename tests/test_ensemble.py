"""The paper's Table 3 (`python -m inception_lab ensemble`): stored predictions, averaged over views, then models."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from inception_lab.console import result
from inception_lab.data import DigitsDataModule
from inception_lab.ensemble import ensemble, top_k_error
from inception_lab.run.files import read_summary
from inception_lab.run.predictions import Predictions, predictions_path
from tests.conftest import DIST_ENV, QUICKSTART, REPO, SHORT, one_error_line

CLASSES, IMAGES = 10, 200


def fake_run(run_dir: Path, seed: int, views: tuple[str, ...] = ("single", "flip"),
             labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A run directory holding only stored predictions (no checkpoint: nothing to recompute)."""
    rng = np.random.default_rng(seed)
    labels = np.random.default_rng(0).integers(0, CLASSES, IMAGES) if labels is None else labels
    probs = {}
    for v in views:
        probs[v] = rng.dirichlet(np.ones(CLASSES), IMAGES).astype(np.float16)
        while (tied := _label_tied(probs[v], labels)).any():  # float16 ties: redraw, so that ranks are unambiguous
            probs[v][tied] = rng.dirichlet(np.ones(CLASSES), tied.sum()).astype(np.float16)
        Predictions(probs[v], labels, "checkpoints/last.ckpt", v, "test").save(predictions_path(run_dir, v))
    return probs


def _label_tied(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (probs == probs[np.arange(len(labels)), labels][:, None]).sum(1) > 1


def by_hand(paths: list[Path]) -> tuple[float, float]:
    """Top-1 and top-5 error of the mean probability over these .npz files, counted as ranks: a label is in the top
    k when fewer than k classes have a higher probability."""
    loaded = [np.load(p) for p in paths]
    probs = np.mean([f["probs"].astype(np.float64) for f in loaded], axis=0)
    labels = loaded[0]["labels"]
    assert not _label_tied(probs, labels).any()  # no class as probable as the label: ranks are unambiguous
    rank = (probs > probs[np.arange(len(labels)), labels][:, None]).sum(1)
    return float((rank >= 1).mean()), float((rank >= 5).mean())


def test_k_copies_of_one_run_are_the_single_model(tmp_path: Path) -> None:
    runs = [tmp_path / f"copy{i}" for i in range(3)]
    for run in runs:
        fake_run(run, seed=7)
    rows, text = ensemble(runs, ["flip"], tmp_path / "report", [])
    assert [(r.models, r.views, r.crops, r.cost) for r in rows] == [
        (1, "single", 1, 1), (1, "flip", 2, 2), (2, "single", 1, 2), (2, "flip", 2, 4), (3, "single", 1, 3),
        (3, "flip", 2, 6)]
    for views in ("single", "flip"):
        errors = {(r.top1_error, r.top5_error) for r in rows if r.views == views}
        assert errors == {by_hand([predictions_path(runs[0], views)])}
    assert rows[0].delta_top1 == rows[0].delta_top5 == 0.0 and "| 1 | 1 | single | 1 |" in text


def test_models_average_probabilities_and_errors_match_the_npz_files(tmp_path: Path, cli) -> None:
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    probs = [fake_run(run, seed=i) for i, run in enumerate(runs)]
    code, out, err = cli(["ensemble", *map(str, runs), "--views", "flip", "--out", str(tmp_path / "t3"), "--",
                          "--data.init_args.batch_size=8"])
    assert code == 0, err
    assert "no test runs, so the arguments after -- (--data.init_args.batch_size=8) are not used" in err  # not silent
    record = json.loads((tmp_path / "t3" / "table3.json").read_text())
    assert record["images"] == IMAGES and record["classes"] == CLASSES and record["runs"] == list(map(str, runs))
    assert (tmp_path / "t3" / "table3.md").read_text() in out
    rows = {(r["models"], r["views"]): r for r in record["rows"]}
    labels = np.load(predictions_path(runs[0], "single"))["labels"]
    for k in (1, 2, 3):
        for views in ("single", "flip"):
            top1, top5 = by_hand([predictions_path(run, views) for run in runs[:k]])
            row = rows[k, views]
            assert (row["top1_error"], row["top5_error"], row["cost"]) == (top1, top5, k * (1 if views == "single"
                                                                                               else 2))
            assert row["delta_top5"] == pytest.approx(top5 - rows[1, "single"]["top5_error"], abs=1e-12)
        # an average of probabilities, not of log-probabilities (a geometric mean ranks these images otherwise)
        stack = np.stack([p["single"].astype(np.float64) for p in probs[:k]])
        arithmetic, geometric = stack.mean(0), np.log(stack).mean(0)
        assert top_k_error(arithmetic, labels, 1) == rows[k, "single"]["top1_error"]
        if k == 3:
            assert (arithmetic.argmax(1) != geometric.argmax(1)).any()
            assert top_k_error(geometric, labels, 1) != rows[k, "single"]["top1_error"]


def _checkpointed_run(run_dir: Path, data: str = "DigitsDataModule") -> Path:
    """A run of ``data``: its config and a checkpoint file (a placeholder: nothing here loads it)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not reached")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"class_path": f"inception_lab.data.{data}", "init_args": {"batch_size": 64}}}))
    return run_dir


def printed(out_dir: Path) -> list[str]:
    """What ``ensemble --out out_dir`` prints on stdout: its table, where it wrote it, and the last line: the best
    row's top-1 error against one model at one crop."""
    rows = json.loads((out_dir / "table3.json").read_text())["rows"]
    base, best = rows[0], min(rows, key=lambda r: (r["top1_error"], r["cost"]))
    models = f"{best['models']} model{'s' * (best['models'] > 1)}"
    figure = (f"no row beats 1 model x single: top-1 error {100 * base['top1_error']:.2f}%" if best == base else
              f"best top-1 error {100 * best['top1_error']:.2f}% ({models} x {best['views']}, cost {best['cost']}) "
              f"against {100 * base['top1_error']:.2f}% for 1 model x single "
              f"({100 * (best['top1_error'] - base['top1_error']):+.2f} points)")
    return [*(out_dir / "table3.md").read_text().splitlines(),
            f"wrote {out_dir / 'table3.md'}, {out_dir / 'table3.json'}", f"ensemble: {out_dir / 'table3.md'}: {figure}"]


DEFAULT_VIEWS = {"DigitsDataModule": ("single",), "CIFARDataModule": ("single",),
                 "ImageNetDataModule": ("single", "ten_crop", "multi144")}


@pytest.mark.parametrize("data", DEFAULT_VIEWS)
def test_default_views_are_the_datamodules(tmp_path: Path, data: str, cli) -> None:
    """No --views: the protocols the runs' DataModule declares (digits and CIFAR cannot cut ImageNet's crops)."""
    runs = [_checkpointed_run(tmp_path / f"seed{i}", data) for i in range(2)]
    for i, run in enumerate(runs):  # stored, from the run's checkpoint: nothing is tested
        fake_run(run, seed=i, views=DEFAULT_VIEWS[data])
    code, out, err = cli(["ensemble", *map(str, runs), "--out", "t3"])
    assert code == 0 and err == "", err
    rows = json.loads(Path("t3/table3.json").read_text())["rows"]
    assert [(r["models"], r["views"]) for r in rows] == [(k, v) for k in (1, 2) for v in DEFAULT_VIEWS[data]]


def test_output_is_the_table_where_and_the_last_line(tmp_path: Path, cli) -> None:
    """Stdout: the table, where it went, and a last line with the best row's top-1 error against one model's; by
    default under reports/ensemble/, which git ignores."""
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    for i, run in enumerate(runs):
        fake_run(run, seed=i)
    code, out, err = cli(["ensemble", *map(str, runs), "--views", "flip"])
    assert code == 0 and err == "", err
    assert out.splitlines() == printed(Path("reports/ensemble"))
    ignored = subprocess.run(["git", "check-ignore", "-q", "reports/ensemble/table3.md"], cwd=REPO)
    assert ignored.returncode == 0  # not a file for `git add`


def test_quiet_prints_the_last_line_alone(tmp_path: Path, cli) -> None:
    """--quiet (every command's): where the table is and its headline figure, nothing else, on either stream."""
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    for i, run in enumerate(runs):
        fake_run(run, seed=i)
    code, out, err = cli(["ensemble", *map(str, runs), "--views", "flip", "--out", str(tmp_path / "t3"), "--quiet"])
    assert code == 0 and err == "", err
    assert out.splitlines() == printed(tmp_path / "t3")[-1:] != []


def test_flip_on_digits_is_noted_once_as_test_notes_it(tmp_path: Path, cli, capsys: pytest.CaptureFixture) -> None:
    """Mirrored digits are other glyphs: flip raises their error. One line says so, in `ensemble` (once for all its
    runs) as in `test` (the DataModule's own check)."""
    DigitsDataModule(test_views="flip")
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "a mirrored digit is another glyph" in note, note
    runs = [_checkpointed_run(tmp_path / f"seed{i}") for i in range(2)]
    for i, run in enumerate(runs):
        fake_run(run, seed=i)
    code, out, err = cli(["ensemble", *map(str, runs), "--views", "flip", "--out", "t3"])
    assert code == 0 and err == note, err
    assert "| 2 | 2 | flip | 4 |" in out


def test_inner_tests_print_nothing(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `test`s the ensemble runs: their metrics, result lines, Lightning's info lines and warnings are not shown
    (a progress line each on stderr is); Lightning's loggers are as they were after."""
    import inception_lab.cli

    runs = [_checkpointed_run(tmp_path / f"seed{i}") for i in range(2)]
    lightning = logging.getLogger("lightning.pytorch")
    level, shown = lightning.level, []

    def fake_test(argv: list[str]) -> int:
        run = Path(argv[argv.index("--ckpt_path") + 1]).parents[1]  # its checkpoints/last.ckpt, as fake_run names it
        fake_run(run, seed=int(run.name[-1]), views=(argv[argv.index("--data.init_args.test_views") + 1],))
        result("test: done")  # a `test`'s own last line
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning, stacklevel=1)
        print("test/acc 0.5")
        print("inception_lab: note: from the test", file=sys.stderr)
        return 0

    handler = logging.Handler()
    handler.emit = shown.append
    lightning.addHandler(handler)
    try:
        monkeypatch.setattr(inception_lab.cli, "cli_main", fake_test)
        code, out, err = cli(["ensemble", *map(str, runs), "--views", "single", "--out", "t3"])
    finally:
        lightning.removeHandler(handler)
    assert code == 0, err
    assert err.splitlines() == [f"{run}: testing last.ckpt with single views" for run in runs] and not shown
    assert out.splitlines() == printed(Path("t3"))
    assert lightning.level == level


def _different_labels(tmp_path: Path) -> tuple[list[str], str]:
    fake_run(tmp_path / "a", seed=0)
    fake_run(tmp_path / "b", seed=1, labels=np.zeros(IMAGES, dtype=np.int64))
    return [str(tmp_path / "a"), str(tmp_path / "b"), "--views", "flip"], "tested on different data"


BAD = {
    "no_run_dir": lambda tmp: ([str(tmp / "nowhere")], "nowhere: no such run directory"),
    "unknown_view": lambda tmp: ([str(tmp), "--views", "single,twelve"], "--views single,twelve: expected"),
    "multi144_on_digits": lambda tmp: ([str(_checkpointed_run(tmp / "digits")), "--views", "single,multi144"],
                                       "data.init_args.test_views='multi144': only for ImageNet-sized inputs; "
                                       "DigitsDataModule allows 'single' or 'flip'"),
    "nothing_to_test": lambda tmp: ([str(tmp)], "and no checkpoint in"),
    "different_labels": _different_labels,
    "same_run_twice": lambda tmp: ([str(tmp), f"{tmp}/", "--views", "flip"], f"{tmp}: given twice (as {tmp})"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_error(tmp_path: Path, case: str, cli) -> None:
    args, message = BAD[case](tmp_path)
    code, out, err = cli(["ensemble", *args, "--out", str(tmp_path / "t3")])
    line = one_error_line(code, err, "ensemble")
    assert line == err.strip() and message in line, err
    assert not (tmp_path / "t3").exists() and not list(tmp_path.rglob("test-config.yaml"))  # no test was run


@pytest.mark.slow
def test_table3_end_to_end(tmp_path: Path, tiny_imagenet: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two short quickstart runs (2 seeds), then `ensemble` with single and flip views: it runs the `test`s that
    are missing and reports 1 and 2 models; multi144 is refused for the digits; an ImageNet-format folder at 32x32
    crops gives the 144 crops. The README's digits table is made the same way, from three full runs."""
    start = time.perf_counter()
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the fits and the ensemble's `test`s log nothing to W&B here
    for name in DIST_ENV:  # the ensemble's `test`s are children of this process: none of its distributed settings
        monkeypatch.delenv(name, raising=False)
    runs = [tmp_path / "runs" / f"seed{seed}" for seed in range(2)]
    for seed, run in enumerate(runs):
        code, _, err = cli(["fit", "--config", str(QUICKSTART), *SHORT, f"--seed_everything={seed}",
                            "--run_dir", str(run)])
        assert code == 0, err[-3000:]
    # one stored in advance by `test` itself: the ensemble computes only what is missing
    best = next((runs[0] / "checkpoints").glob("best-*.ckpt"))  # what the ensemble evaluates (else last.ckpt)
    code, _, err = cli(["test", "--ckpt_path", str(best)])
    assert code == 0, err[-3000:]
    single = Predictions.load(predictions_path(runs[0], "single"))
    test_acc = read_summary(runs[0])["evaluations"]["test"]["metrics"]["test/acc"]  # test-summary.json's
    assert single.probs.dtype == np.float16 and single.probs.shape == (300, 10) and single.views == "single"
    assert single.checkpoint == f"checkpoints/{best.name}" and len(single.labels) == 300
    assert 1 - top_k_error(single.probs.astype(np.float64), single.labels, 1) == pytest.approx(test_acc, abs=1e-6)
    before = predictions_path(runs[0], "single").stat().st_mtime_ns

    fitted = time.perf_counter()
    code, _, err = cli(["ensemble", *map(str, runs), "--views", "multi144"])
    line = one_error_line(code, err, "ensemble")
    assert line == err.strip() and "DigitsDataModule allows 'single' or 'flip'" in line, err

    code, out, err = cli(["ensemble", *map(str, runs), "--views", "single,flip", "--out", "digits"])
    assert code == 0, err[-3000:]
    print(out)  # the table, as the README shows it
    assert out.splitlines() == printed(Path("digits"))  # none of the `test`s' output
    lines = err.splitlines()  # the flip note, and a line for each `test` run: 2 runs x 2 protocols, less one stored
    assert len(lines) == 4 and "a mirrored digit is another glyph" in lines[0], err
    assert all(": testing best-" in line for line in lines[1:]), err
    assert predictions_path(runs[0], "single").stat().st_mtime_ns == before
    record = json.loads((tmp_path / "digits" / "table3.json").read_text())
    assert [(r["models"], r["crops"], r["cost"]) for r in record["rows"]] == [
        (1, 1, 1), (1, 2, 2), (2, 1, 2), (2, 2, 4)]
    for row in record["rows"]:
        files = [predictions_path(run, row["views"]) for run in runs[:row["models"]]]
        probs = np.mean([np.load(f)["probs"].astype(np.float64) for f in files], axis=0)
        assert row["top1_error"] == top_k_error(probs, single.labels, 1)
        assert row["top5_error"] == top_k_error(probs, single.labels, 5)

    # ImageNet's format at 32x32 crops: the 144 crops at shorter sides 37, 41, 46 and 50
    config = tmp_path / "imagenet.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "inception_lab.data.ImageNetDataModule", "init_args": {
        "root": str(tiny_imagenet), "image_size": 32, "eval_resize": 37, "num_classes": 3, "batch_size": 4,
        "num_workers": 0, "val_size": 4, "pin_memory": False, "persistent_workers": False}}}))
    imagenet_run = tmp_path / "runs" / "imagenet"
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--config", str(config), "--trainer.max_epochs=1",
                        "--run_dir", str(imagenet_run)])
    assert code == 0, err[-3000:]
    digits_done = time.perf_counter()
    code, _, err = cli(["ensemble", str(imagenet_run), "--views", "multi144", "--out", str(tmp_path / "imagenet"),
                        "--", "--data.init_args.batch_size", "2"])
    assert code == 0, err[-3000:]
    rows = json.loads((tmp_path / "imagenet" / "table3.json").read_text())["rows"]
    assert [(r["views"], r["crops"], r["cost"]) for r in rows] == [("single", 1, 1), ("multi144", 144, 144)]
    stored = Predictions.load(predictions_path(imagenet_run, "multi144"))
    assert stored.probs.shape == (6, 3) and np.allclose(stored.probs.astype(np.float64).sum(1), 1, atol=3e-3)
    print(f"fits {fitted - start:.0f} s, digits ensemble {digits_done - fitted:.0f} s, ImageNet format "
          f"{time.perf_counter() - digits_done:.0f} s")
