"""``python -m inception_lab bench --suite gpu --out DIR``: every figure of ``docs/performance.md`` in one call.

Each step is a ``bench`` of its own (a child process: a compile mode or a crash in one step cannot touch the next)
with its own time limit; the suite goes on past a step that fails or runs out of time, and keeps to a budget for the
whole (``BUDGET_S``: 440 s on a GPU, inside gpu-check.sh's 480): each step's limit is cut to what is left, and a step
the budget no longer fits is reported missing without being started. ``DIR`` gets each step's JSON (``<step>.json``:
bench's result, or ``{"missing": reason}`` / ``{"failed": ...}``), its stderr (``<step>.log``) and ``summary.md``,
rewritten after every step: one table, eager vs each compile mode, fit vs bare, the ImageNet loader with a worker a
core against the step, the input paths, compile time (``warmup_s``) apart from steady-state throughput. Without CUDA
the same steps run at CPU sizes and the GPU-only ones (CUDA graphs) are reported missing with the reason:
``--suite cpu`` is that run by name. A step measured on a contended machine (bench's calibration) is marked so in its
row. On stderr a line as each step starts; on stdout each step's row as it ends, and last the summary's path with the
first measured fit figure (under ``--quiet`` that line alone)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from inception_lab import console
from inception_lab.errors import UserError
from inception_lab.hostmem import usable_cores
from inception_lab.run.files import write_atomic


@dataclass
class Step:
    name: str
    args: list[str]
    limit_s: int
    gpu_only: str = ""  # why it cannot run without CUDA ("" where it can)
    what: str = ""


# the ImageNet recipe of the checkout this module belongs to, wherever the suite is started from
RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "googlenet_imagenet.yaml"
# the suite's whole time: on a GPU, gpu-check.sh gives it 480 s, and summary.md must be written before that; a CPU
# takes about 5x as long over the same steps at its own sizes
BUDGET_S = {"gpu": 440, "cpu": 2200}
_clock = time.perf_counter


def steps(gpu: bool, imagenet: Path) -> list[Step]:
    """The suite: on a GPU at the sizes docs/performance.md quotes, on a CPU at sizes a CPU gets through. The most
    wanted figures come first: a step the suite's budget cannot fit any more is reported missing, not started."""
    size, batch, cifar_batch = ("224", "128", "256") if gpu else ("64", "4", "16")
    timing = ["--warmup", "3", "--steps-per-window", "10", "--windows", "3"] if gpu else [
        "--warmup", "1", "--steps-per-window", "2", "--windows", "2"]
    at224 = ["--image-size", size, "--batch-size", batch, *timing]
    graphs = "" if gpu else "CUDA graphs need a CUDA device"
    workers = str(usable_cores())
    imagenet_config = ["--config", str(RECIPE), f"--data.init_args.root={imagenet}",
                       "--data.init_args.num_classes=10", "--data.init_args.val_size=10",
                       *(["--precision", "bf16-mixed"] if gpu else [
                           "--data.init_args.image_size=64", "--data.init_args.eval_resize=72"])]

    def loader(backend: str) -> list[str]:  # the real DataLoader with a worker a core, against the 224 step
        return [*imagenet_config, f"--data.init_args.backend={backend}", f"--data.init_args.num_workers={workers}",
                "--batch-size", batch, "--no-input-paths", *timing]

    return [dataclasses.replace(step, limit_s=step.limit_s * (1 if gpu else 5)) for step in (  # a CPU: 5x longer
        Step("fit224_paper_eager", ["--preset", "paper", *at224], 40, what="paper GoogLeNet, eager"),
        Step("fit224_compile_default", ["--preset", "paper", *at224, "--compile"], 70,
             what="paper GoogLeNet, torch.compile default"),
        Step("fit224_compile_reduce_overhead", ["--preset", "paper", *at224, "--compile", "--compile-mode",
                                                "reduce-overhead"], 70, graphs, "compile reduce-overhead"),
        Step("cifar_eager", ["--preset", "cifar", "--batch-size", cifar_batch, *timing], 25, what="CIFAR preset"),
        Step("cifar_compile", ["--preset", "cifar", "--batch-size", cifar_batch, *timing, "--compile"], 50,
             what="CIFAR preset, compile default"),
        Step("imagenet_jpegs", ["--make-imagenet", str(imagenet), "--images", "3000" if gpu else "120"], 30,
             what="500x375 JPEGs for the input paths"),
        Step("loader_torchvision_device", loader("torchvision_device"), 45,
             what=f"ImageNet loader, {workers} workers reading bytes, batched decode_jpeg on the device"),
        Step("loader_torchvision", loader("torchvision"), 45,
             what=f"ImageNet loader, {workers} workers decoding (the default path)"),
        Step("input_paths", [*imagenet_config, "--data.init_args.num_workers=0", "--batch-size",
                             "64" if gpu else "4", *([] if gpu else ["--model.compile=false"]),
                             "--warmup", "1", "--steps-per-window", "2" if gpu else "1", "--windows", "2"], 40,
             what="ImageNet input paths, one worker each (torchvision_device: nvJPEG on a GPU)"),
        Step("fit224_torchvision_eager", ["--preset", "torchvision", *at224], 40, what="torchvision preset, eager"),
        Step("fit224_compile_max_autotune", ["--preset", "paper", *at224, "--compile", "--compile-mode",
                                             "max-autotune"], 90, graphs, "compile max-autotune"),
    )]


def _run(step: Step, out: Path, gpu: bool) -> dict:
    if step.gpu_only and not gpu:
        return {"missing": step.gpu_only}
    command = [sys.executable, "-m", "inception_lab", "bench", *step.args,
               *([] if step.name == "imagenet_jpegs" else ["--json"])]
    t = time.perf_counter()
    with open(out / f"{step.name}.log", "w") as log:
        # a session of its own: on a timeout the step's loader and compile workers go with it, not on into the next
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                                env={**os.environ, "WANDB_MODE": "disabled"})
        try:
            stdout, _ = proc.communicate(timeout=step.limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"failed": f"timed out after {step.limit_s} s", "wall_s": step.limit_s}
    wall = round(time.perf_counter() - t, 1)
    if proc.returncode:
        tail = [line for line in (out / f"{step.name}.log").read_text(errors="replace").splitlines() if line.strip()]
        return {"failed": f"exit {proc.returncode}: {tail[-1][-300:] if tail else ''}", "wall_s": wall}
    if step.name == "imagenet_jpegs":
        return {"wall_s": wall, "made": stdout.strip().splitlines()[-1] if stdout.strip() else ""}
    try:
        return {**json.loads(stdout[stdout.index("{"):]), "wall_s": wall}
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
    loader = (f"\n| | the loader alone: img/s, and over the fit step's | {r['data_img_per_s']:.1f} (data/fit "
              f"{r['data_over_fit']:.2f}) | | | | |" if step.name.startswith("loader_") else "")
    contended = " (contended)" if "contended" in r else ""
    return (f"| {step.name} | {step.what} | {r['fit_img_per_s']:.1f}{contended} | {r['fit_over_bare']:.2f} | "
            f"{r.get('flops_fraction_of_peak', 0):.3f} | {r.get('warmup_s')} | {r['wall_s']} |" + loader
            + (f"\n| | input paths, img/s per worker | {paths} | | | | |" if paths else ""))


def run_suite(kind: str, out_dir: str) -> int:
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpu = kind == "gpu" and torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({usable_cores()} cores)"
    started = _clock()
    lines = [f"# bench --suite {kind}: {device}", "",
             f"torch {torch.__version__}; {'bf16-mixed' if gpu else 'fp32'}; each step its own process and time "
             "limit. img/s: the Lightning fit loop, steady state (median of windows); fit/bare: against the same "
             "model in a bare loop; peak: the step's FLOP/s over the measured peak; warmup_s: the warm-up steps, "
             "torch.compile's time included; (contended): bench's calibration found other processes on the cores, "
             "the figures are low.", "",
             "| step | what | fit img/s | fit/bare | of peak | warmup_s | wall_s |", "|---|---|---|---|---|---|---|"]
    if kind == "gpu" and not gpu:
        lines.insert(2, "No CUDA device here: the steps run at CPU sizes and the GPU-only ones are missing. None of "
                        "these figures is a GPU figure.\n")
    with tempfile.TemporaryDirectory() as scratch:
        suite = steps(gpu, Path(scratch) / "imagenet")
        budget = BUDGET_S["gpu" if gpu else "cpu"]
        results: dict[str, dict] = {}
        for i, step in enumerate(suite, 1):
            left = budget - (_clock() - started)
            # a step cut to under half its limit would only time out: left to the steps after it, which may fit
            if left < max(min(step.limit_s, 15), step.limit_s / 2) and not (step.gpu_only and not gpu):
                r = {"missing": f"{max(0, int(left))} s of the suite's {budget} s left, under half its "
                                f"{step.limit_s} s"}
            else:
                step.limit_s = max(1, min(step.limit_s, int(left)))
                print(f"bench --suite: step {i}/{len(suite)} {step.name} ({step.what}): started, up to "
                      f"{step.limit_s} s", file=sys.stderr, flush=True)
                r = _run(step, out, gpu)
            results[step.name] = r
            write_atomic(out / f"{step.name}.json", json.dumps(r, indent=2) + "\n")
            lines.append(_row(step, r))
            print(lines[-1], flush=True)
            # after every step: a suite killed from outside still leaves the table of the steps it finished
            write_atomic(out / "summary.md", "\n".join(lines) + "\n")
    lines += ["", f"Total {_clock() - started:.0f} s."]
    write_atomic(out / "summary.md", "\n".join(lines) + "\n")
    measured = [(name, r) for name, r in results.items() if "fit_img_per_s" in r]
    contended = sum("contended" in r for r in results.values())
    line = f"bench --suite {kind}: {out / 'summary.md'}: {len(measured)} of {len(suite)} steps measured"
    if contended:
        line += f", {contended} on a contended machine"
    if measured:  # the first: the most wanted figure
        name, r = measured[0]
        line += f"; {name}: fit {r['fit_img_per_s']:.1f} img/s" + (" (contended)" if "contended" in r else "")
    console.result(line)
    return 0


def write_jpegs(root: str, images: int) -> int:
    """``bench --make-imagenet DIR``: ImageNet-sized JPEGs in ImageNet's folder layout, for the input paths."""
    from inception_lab.data.pipelines import make_imagenet

    classes = 10
    if images < 2 * classes:
        raise UserError(f"--images {images}: at least {2 * classes} (train and val images of {classes} classes)")
    if Path(root).exists() and any(Path(root).iterdir()):
        raise UserError(f"--make-imagenet {root}: exists and is not empty; name a new directory")
    t = time.perf_counter()
    train, val = make_imagenet(Path(root), images, classes)
    print(f"time the input paths on them:\n  python -m inception_lab bench --config experiments/googlenet_imagenet.yaml"
          f" --data.init_args.root {root} --data.init_args.num_classes {classes} --data.init_args.val_size {val}")
    console.result(f"bench --make-imagenet: wrote {train} train and {val} val JPEGs (500x375, quality 90, {classes} "
                   f"classes) into {root} in {time.perf_counter() - t:.0f} s")
    return 0
