"""``bench`` reports figures (it is a benchmark, not a timed test): keys present, consistent, finite; the input paths
side by side; bad flags; what it prints (progress, a contended machine, the rows that apply, its last line); the
suite's steps apart and within its budget."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, REPO, in_process, one_error_line

# the least a preset's bench runs: batches of 2 at 16 px, a quarter of the CIFAR preset's 32 px (a batch of 1 leaves
# batch norm one value a channel where the map is 1x1; at 8 px the pools have nothing left to pool)
TINY = ["--preset", "cifar", "--batch-size", "2", "--image-size", "16", "--warmup", "1", "--steps-per-window", "1",
        "--windows", "1"]


def machine(monkeypatch: pytest.MonkeyPatch, share: float) -> None:
    """A machine whose calibration threads get ``share`` of a core each (1.0: quiet), at a load average of 6.2."""
    from inception_lab import bench

    monkeypatch.setattr(bench, "_thread_clock", lambda: time.perf_counter() * share)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (6.2, 5.0, 4.0))


@pytest.fixture(scope="module")
def quickstart_json(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """One real ``bench --config quickstart.yaml --json``, in this process, on a contended machine (0.3 of a core):
    (stdout, stderr, its working directory). Its figures and its report of the contention are checked apart."""
    cwd = tmp_path_factory.mktemp("bench")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        machine(monkeypatch, 0.3)
        monkeypatch.chdir(cwd)
        code = in_process(["bench", "--config", str(QUICKSTART), "--model.net.init_args.width_mult=0.125",
                           "--batch-size", "8", "--warmup", "1", "--steps-per-window", "1", "--windows", "1",
                           "--json"])
    assert code == 0, err.getvalue()[-3000:]
    return out.getvalue(), err.getvalue(), cwd


@pytest.mark.slow
def test_bench_quickstart_config_json(quickstart_json: tuple[str, str, Path]) -> None:
    out, _, cwd = quickstart_json
    r = json.loads(out[out.index("{"):])
    for key in ("fit_img_per_s", "bare_img_per_s", "plain_img_per_s", "torchvision_img_per_s", "data_img_per_s",
                "flops_fraction_of_peak", "peak_flops", "step_flops"):
        assert isinstance(r[key], int | float) and math.isfinite(r[key]) and r[key] > 0, key
    assert r["batch_size"] == 8 and r["image_size"] == 32 and r["device"] == "cpu"
    assert math.isclose(r["fit_over_bare"], r["fit_img_per_s"] / r["bare_img_per_s"], rel_tol=0.01)
    assert math.isclose(r["fit_over_plain"], r["fit_img_per_s"] / r["plain_img_per_s"], rel_tol=0.01)
    assert math.isclose(r["data_over_fit"], r["data_img_per_s"] / r["fit_img_per_s"], rel_tol=0.01)
    # a training step costs about 3 forward passes (backward: gradients of inputs and of weights), 2 FLOPs per MAC
    from inception_lab.models import Inception, summarize

    cost = summarize(Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125), 32)
    forward_flops = 2 * (cost["total_macs"] + cost["aux_macs"]) * 8
    assert 2.5 < r["step_flops"] / forward_flops < 3.2
    assert not (cwd / "runs").exists()  # a benchmark writes no run
    assert r["fused_optimizer"] is False  # the quickstart's own AdamW, as its config builds it


@pytest.mark.slow
def test_bench_reports_the_input_paths(tmp_path: Path, cli) -> None:
    # 40 JPEGs: 20 to train on (the input paths cycle through them), 10 held out, 10 in val/; 64 px (eval 72) as the
    # suite's CPU steps
    assert cli(["bench", "--make-imagenet", str(tmp_path / "inet"), "--images", "40"])[0] == 0
    code, out, err = cli(["bench", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                          f"--data.init_args.root={tmp_path / 'inet'}", "--data.init_args.num_classes=10",
                          "--data.init_args.val_size=10", "--data.init_args.num_workers=0",
                          "--data.init_args.image_size=64", "--data.init_args.eval_resize=72", "--batch-size", "4",
                          "--warmup", "1", "--steps-per-window", "1", "--windows", "1", "--json"])
    assert code == 0, err[-3000:]
    r = json.loads(out[out.index("{"):])
    assert set(r["data_paths"]) == {"torchvision_float", "torchvision_uint8", "torchvision_device", "dali"}
    for name, ips in r["data_paths"].items():
        assert (ips is None) == (name in r["data_paths_missing"]), name
        assert ips is None or (math.isfinite(ips) and ips > 0), name
    assert r["data_paths"]["torchvision_uint8"] > 0 and r["data_img_per_s"] > 0
    # the suite's loader steps: the real DataLoader with workers handing over bytes, decoded in the transfer as in
    # a fit (this hung before FileBatch), the input paths not timed
    code, out, err = cli(["bench", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                          f"--data.init_args.root={tmp_path / 'inet'}", "--data.init_args.num_classes=10",
                          "--data.init_args.val_size=10", "--data.init_args.num_workers=2",
                          "--data.init_args.backend=torchvision_device", "--data.init_args.image_size=64",
                          "--data.init_args.eval_resize=72", "--batch-size", "4", "--no-input-paths", "--warmup", "1",
                          "--steps-per-window", "1", "--windows", "1", "--json"])
    assert code == 0, err[-3000:]
    r = json.loads(out[out.index("{"):])
    assert r["data_img_per_s"] > 0 and set(r["data_paths"].values()) == {None}
    assert set(r["data_paths_missing"].values()) == {"not asked for: --no-input-paths"}


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "vgg"], "invalid choice: 'vgg'"),
    (["--preset", "cifar", "--batch-size", "0"], "--batch-size 0: expected a positive integer"),
    (["--config", str(QUICKSTART), "--model.net.init_args.head=x"], "model.net.init_args.head"),
])
def test_bench_bad_flags(args: list[str], message: str, cli) -> None:
    code, _, err = cli(["bench", *args])
    assert message in one_error_line(code, err, "bench")


@pytest.mark.slow
def test_the_suite_runs_each_step_apart_and_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """``bench --suite gpu`` on a machine without CUDA: each step a process of its own with its own time limit, its
    JSON in --out, a step that fails or runs out of time reported and passed, the GPU-only ones missing with the
    reason, and summary.md saying that none of it is a GPU figure."""
    from inception_lab import bench_suite
    from inception_lab.bench import main as bench_main
    from inception_lab.bench_suite import Step

    monkeypatch.setattr(bench_suite, "steps", lambda gpu, imagenet: [
        Step("cifar_eager", TINY, 300, what="CIFAR preset"),
        Step("graphs", [*TINY, "--compile", "--compile-mode", "reduce-overhead"], 300,
             "CUDA graphs need a CUDA device", "compile reduce-overhead"),
        # killed at 1 s (a paper GoogLeNet at 224 px would take minutes)
        Step("too_slow", ["--preset", "paper", "--image-size", "224", "--batch-size", "64"], 1, what="cut short"),
        Step("broken", [*TINY, "--windows", "0"], 300, what="a bad flag")])
    assert bench_main(["--suite", "gpu", "--out", str(tmp_path / "suite")]) == 0
    results = {name: json.loads((tmp_path / "suite" / f"{name}.json").read_text())
               for name in ("cifar_eager", "graphs", "too_slow", "broken")}
    assert results["cifar_eager"]["fit_img_per_s"] > 0 and results["cifar_eager"]["warmup_s"] > 0
    assert results["cifar_eager"]["fused_optimizer"] is True  # a preset trains with the GPU recipes' fused SGD
    assert results["graphs"] == {"missing": "CUDA graphs need a CUDA device"}
    assert results["too_slow"]["failed"] == "timed out after 1 s"
    assert results["broken"]["failed"].startswith("exit 2: inception_lab bench: error: --windows 0: expected")
    summary = (tmp_path / "suite" / "summary.md").read_text()
    assert "No CUDA device here" in summary and "| graphs | compile reduce-overhead | missing: CUDA graphs" in summary
    assert summary.count("\n| ") == 5  # the header and a row a step


def test_the_suite_keeps_to_its_budget_and_writes_its_table_after_every_step(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite must end inside the device call (gpu-check.sh gives it 480 s): each step's limit is cut to the
    budget left, a step that would get under half its limit is reported missing without being started (a later,
    shorter one may still run), and summary.md holds the
    finished steps' rows after each one (a suite killed from outside still leaves them)."""
    from inception_lab import bench_suite
    from inception_lab.bench_suite import Step

    now = [0.0]
    started: dict[str, int] = {}

    def run(step: Step, out: Path, gpu: bool) -> dict:  # each step takes its whole limit, on a fake clock
        rows = (out / "summary.md").read_text().count("\n| ") - 1 if (out / "summary.md").exists() else 0
        assert rows == len(list(out.glob("*.json")))  # every step before this one is in the table already
        started[step.name] = step.limit_s
        now[0] += step.limit_s
        return {"wall_s": step.limit_s}

    monkeypatch.setattr(bench_suite, "_clock", lambda: now[0])
    monkeypatch.setattr(bench_suite, "_run", run)
    monkeypatch.setitem(bench_suite.BUDGET_S, "cpu", 100)
    monkeypatch.setattr(bench_suite, "steps", lambda gpu, imagenet: [
        Step("a", [], 40), Step("b", [], 150), Step("c", [], 70), Step("d", [], 30)])
    assert bench_suite.run_suite("cpu", str(tmp_path / "suite")) == 0
    # b would get under half its limit: passed over; c is cut to the 60 s left; d finds 0 s
    assert started == {"a": 40, "c": 60}
    missing = {name: json.loads((tmp_path / "suite" / f"{name}.json").read_text()) for name in ("b", "d")}
    assert missing == {"b": {"missing": "60 s of the suite's 100 s left, under half its 150 s"},
                       "d": {"missing": "0 s of the suite's 100 s left, under half its 30 s"}}
    assert (tmp_path / "suite" / "summary.md").read_text().count("\n| ") == 5


@pytest.mark.slow
def test_bench_says_when_the_machine_is_contended(quickstart_json: tuple[str, str, Path]) -> None:
    """Contended (its calibration threads got 0.3 of a core): one line on stderr, ``"contended"`` in the JSON with
    the figures seen, and the headline, the last line of stderr (the JSON is the whole of stdout), says so; a line
    per step on stderr as it goes."""
    from inception_lab.bench import cpu_share

    out, err, _ = quickstart_json
    r = json.loads(out)
    assert r["contended"] == {"cpu_share_before": 0.3, "cpu_share_after": 0.3, "quiet_from": 0.8,
                              "threads": cpu_share(0.01)[1], "load_1min": 6.2, "cpus": os.cpu_count()}
    warnings = [line for line in err.splitlines() if "contended" in line.lower()]
    assert len(warnings) == 2, err  # the warning, and the headline after it
    assert warnings[0].startswith("inception_lab bench: warning: the machine is contended: ") and (
        "0.30 of a core each before the measurement and 0.30 after" in warnings[0]
        and "load average 6.2 on" in warnings[0]), warnings[0]
    last = err.strip().splitlines()[-1]
    assert last == warnings[1] and last.startswith(f"bench --config {QUICKSTART}: fit {r['fit_img_per_s']:.1f} "
                                                   f"img/s, fit/bare {r['fit_over_bare']:.2f} (cpu, ")
    assert last.endswith("; CONTENDED (calibration 0.30/0.30 of a core): figures low"), last
    for step in ("bench: building the variants", "bench: calibration: 0.30", "bench: warm-up done in",
                 "bench: window 1/1, img/s: fit ", "bench: calibration: 0.30 of a core each; counting"):
        assert step in err, step


@pytest.mark.slow
def test_bench_on_a_quiet_machine_shows_the_rows_that_apply_and_ends_with_its_headline(
        monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """Quiet: no word of contention. A preset has no input paths: no row for them, one line at the end names them;
    the last line of stdout is the fit's img/s."""
    machine(monkeypatch, 1.0)
    code, out, err = cli(["bench", *TINY])
    assert code == 0, err[-3000:]
    assert "contended" not in (out + err).lower()
    lines = out.strip().splitlines()
    assert not [line for line in lines if line.startswith("input path")], out
    assert lines[-2] == ("not measured for this config: input paths torchvision_float, torchvision_uint8, "
                         "torchvision_device, dali (not an ImageNet config: the input paths read its JPEGs)")
    assert sum("torchvision_float" in line for line in lines) == 1
    fit = next(line for line in lines if line.startswith("fit loop (Lightning")).split()[-2]
    assert lines[-1].startswith(f"bench --preset cifar: fit {fit} img/s, fit/bare "), lines[-1]
    assert lines[-1].endswith(" batch 2, 16 px, 32-true)"), lines[-1]


@pytest.mark.slow
def test_bench_quiet_prints_its_headline_alone(tmp_path: Path, run_cli) -> None:
    """``--quiet``: stdout is the headline alone (on a contended machine, saying so), stderr is empty."""
    proc = run_cli("bench", *TINY, "--quiet", cwd=tmp_path)
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("bench --preset cifar: fit "), proc.stdout


def test_the_suite_marks_contended_steps_and_ends_with_its_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A step measured on a contended machine is marked in its row; a line on stderr as each step starts; the last
    line of stdout is where the summary is, with the first fit figure."""
    from inception_lab import bench_suite
    from inception_lab.bench_suite import Step

    figures = {"fit_img_per_s": 40.0, "fit_over_bare": 1.0, "data_img_per_s": 1.0, "data_over_fit": 0.1,
               "flops_fraction_of_peak": 0.5, "warmup_s": 1.0, "wall_s": 9.0}
    outcomes = {"a": {"missing": "CUDA graphs need a CUDA device"}, "b": {**figures, "contended": {"threads": 2}},
                "c": figures}
    monkeypatch.setattr(bench_suite, "_run", lambda step, out, gpu: outcomes[step.name])
    monkeypatch.setattr(bench_suite, "steps", lambda gpu, imagenet: [
        Step("a", [], 40, what="graphs"), Step("b", [], 40, what="eager"), Step("c", [], 40, what="compiled")])
    assert bench_suite.run_suite("cpu", str(tmp_path / "suite")) == 0
    out, err = capsys.readouterr()
    summary = (tmp_path / "suite" / "summary.md").read_text()
    assert "| b | eager | 40.0 (contended) | 1.00 |" in summary and "| c | compiled | 40.0 | 1.00 |" in summary
    assert err.splitlines() == [f"bench --suite: step {i}/3 {name}: started, up to 40 s"
                                for i, name in ((1, "a (graphs)"), (2, "b (eager)"), (3, "c (compiled)"))]
    assert out.splitlines()[-1] == (f"bench --suite cpu: {tmp_path / 'suite' / 'summary.md'}: 2 of 3 steps measured, "
                                    "1 on a contended machine; b: fit 40.0 img/s (contended)")
