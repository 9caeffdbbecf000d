"""``python -m inception_lab bench --suite gpu --out DIR``: every figure of ``docs/performance.md`` in one call.

Each step is a ``bench`` of its own (a child process: a compile mode or a crash in one step cannot touch the next)
with its own time limit; the suite goes on past a step that fails or runs out of time. ``DIR`` gets each step's JSON
(``<step>.json``: bench's result, or ``{"missing": reason}`` / ``{"failed": ...}``), its stderr (``<step>.log``) and
``summary.md``: one table, eager vs each compile mode, fit vs bare, the input paths, compile time (``warmup_s``)
apart from steady-state throughput. Under 8 minutes on a GPU. Without CUDA the same steps run at CPU sizes and the
GPU-only ones (CUDA graphs, nvJPEG) are reported missing with the reason: ``--suite cpu`` is that run by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from inception_lab.run.files import write_atomic


@dataclass
class Step:
    name: str
    args: list[str]
    limit_s: int
    gpu_only: str = ""  # why it cannot run without CUDA ("" where it can)
    what: str = ""


def steps(gpu: bool, imagenet: Path) -> list[Step]:
    """The suite: on a GPU at the sizes docs/performance.md quotes, on a CPU at sizes a CPU gets through."""
    size, batch, cifar_batch = ("224", "128", "256") if gpu else ("64", "4", "16")
    timing = ["--warmup", "3", "--steps-per-window", "10", "--windows", "3"] if gpu else [
        "--warmup", "1", "--steps-per-window", "2", "--windows", "2"]
    at224 = ["--image-size", size, "--batch-size", batch, *timing]
    graphs = "" if gpu else "CUDA graphs need a CUDA device"
    return [_slower(step, 1 if gpu else 5) for step in (
        Step("fit224_paper_eager", ["--preset", "paper", *at224], 45, what="paper GoogLeNet, eager"),
        Step("fit224_torchvision_eager", ["--preset", "torchvision", *at224], 45, what="torchvision preset, eager"),
        Step("fit224_compile_default", ["--preset", "paper", *at224, "--compile"], 80,
             what="paper GoogLeNet, torch.compile default"),
        Step("fit224_compile_reduce_overhead", ["--preset", "paper", *at224, "--compile", "--compile-mode",
                                                "reduce-overhead"], 80, graphs, "compile reduce-overhead"),
        Step("fit224_compile_max_autotune", ["--preset", "paper", *at224, "--compile", "--compile-mode",
                                             "max-autotune"], 90, graphs, "compile max-autotune"),
        Step("cifar_eager", ["--preset", "cifar", "--batch-size", cifar_batch, *timing], 30, what="CIFAR preset"),
        Step("cifar_compile", ["--preset", "cifar", "--batch-size", cifar_batch, *timing, "--compile"], 60,
             what="CIFAR preset, compile default"),
        Step("imagenet_jpegs", ["--make-imagenet", str(imagenet), "--images", "400" if gpu else "60"], 30,
             what="500x375 JPEGs for the input paths"),
        Step("input_paths", ["--config", "experiments/googlenet_imagenet.yaml", f"--data.init_args.root={imagenet}",
                             "--data.init_args.num_classes=10", "--data.init_args.val_size=10",
                             "--data.init_args.num_workers=0", "--batch-size", "64" if gpu else "4",
                             *([] if gpu else ["--data.init_args.image_size=64", "--data.init_args.eval_resize=72",
                                               "--model.compile=false"]),
                             "--warmup", "1", "--steps-per-window", "2" if gpu else "1", "--windows", "2"], 60,
             what="ImageNet input paths, one worker each (torchvision_device: nvJPEG on a GPU)"),
    )]


def _slower(step: Step, factor: int) -> Step:
    """A CPU's time limits: the GPU's (whose sum stays under 8 minutes) x ``factor``."""
    step.limit_s *= factor
    return step


def _run(step: Step, out: Path, gpu: bool) -> dict:
    if step.gpu_only and not gpu:
        return {"missing": step.gpu_only}
    command = [sys.executable, "-m", "inception_lab", "bench", *step.args,
               *([] if step.name == "imagenet_jpegs" else ["--json"])]
    t = time.perf_counter()
    try:
        with open(out / f"{step.name}.log", "w") as log:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, timeout=step.limit_s,
                                  env={**os.environ, "WANDB_MODE": "disabled"})
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {step.limit_s} s", "wall_s": step.limit_s}
    wall = round(time.perf_counter() - t, 1)
    if done.returncode:
        tail = [line for line in (out / f"{step.name}.log").read_text(errors="replace").splitlines() if line.strip()]
        return {"failed": f"exit {done.returncode}: {tail[-1][-300:] if tail else ''}", "wall_s": wall}
    if step.name == "imagenet_jpegs":
        return {"wall_s": wall, "made": done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""}
    try:
        return {**json.loads(done.stdout[done.stdout.index("{"):]), "wall_s": wall}
    except ValueError:
        return {"failed": "no JSON in its output", "wall_s": wall}


def _row(step: Step, r: dict) -> str:
    if "missing" in r:
        return f"| {step.name} | {step.what} | missing: {r['missing']} | | | | |"
    if "failed" in r:
        return f"| {step.name} | {step.what} | failed: {r['failed']} | | | | {r.get('wall_s', '')} |"
    if "fit_img_per_s" not in r:
        return f"| {step.name} | {step.what} | done | | | | {r.get('wall_s', '')} |"
    measured = r.get("data_paths", {})
    paths = ", ".join(f"{k} {v}" if v is not None else f"{k} missing" for k, v in measured.items()) if any(
        v is not None for v in measured.values()) else ""  # a preset's bench has no input paths
    return (f"| {step.name} | {step.what} | {r['fit_img_per_s']:.1f} | {r['fit_over_bare']:.2f} | "
            f"{r.get('flops_fraction_of_peak', 0):.3f} | {r.get('warmup_s')} | {r['wall_s']} |"
            + (f"\n| | input paths, img/s per worker | {paths} | | | | |" if paths else ""))


def run_suite(kind: str, out_dir: str) -> int:
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpu = kind == "gpu" and torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    started = time.perf_counter()
    lines = [f"# bench --suite {kind}: {device}", "",
             f"torch {torch.__version__}; {'bf16-mixed' if gpu else 'fp32'}; each step its own process and time "
             "limit. img/s: the Lightning fit loop, steady state (median of windows); fit/bare: against the same "
             "model in a bare loop; peak: the step's FLOP/s over the measured peak; warmup_s: the warm-up steps, "
             "torch.compile's time included.", "",
             "| step | what | fit img/s | fit/bare | of peak | warmup_s | wall_s |", "|---|---|---|---|---|---|---|"]
    if kind == "gpu" and not gpu:
        lines.insert(2, "No CUDA device here: the steps run at CPU sizes and the GPU-only ones are missing. None of "
                        "these figures is a GPU figure.\n")
    with tempfile.TemporaryDirectory() as scratch:
        for step in steps(gpu, Path(scratch) / "imagenet"):
            result = _run(step, out, gpu)
            write_atomic(out / f"{step.name}.json", json.dumps(result, indent=2) + "\n")
            lines.append(_row(step, result))
            print(lines[-1], flush=True)
    lines += ["", f"Total {time.perf_counter() - started:.0f} s."]
    write_atomic(out / "summary.md", "\n".join(lines) + "\n")
    print(f"summary: {out / 'summary.md'}")
    return 0
