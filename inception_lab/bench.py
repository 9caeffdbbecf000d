"""``python -m inception_lab bench``: training throughput of the real fit loop against bare PyTorch (the same model with
our defaults, and with plain ones: fp32, NCHW, eager), torchvision's GoogLeNet and the data pipeline, and the FLOP/s
achieved against the machine's measured peak.

Variants are interleaved in one process: the fit loop runs under Lightning, and at each of its window boundaries a
callback pauses it and times one window of every other variant, so a drift of the machine hits them all alike.
Each figure is the median over windows. With an ImageNet config, the input paths (``data_paths``: today's float
transform, the default uint8 path and DALI) are timed in the same windows, one worker each
(``inception_lab.data.pipelines``); ``--make-imagenet DIR`` writes ImageNet-sized JPEGs to time them on.

Output: a line per step on stderr as it goes; the table on stdout (rows that do not apply to the config left out,
named once at its end) or, with ``--json``, the JSON as the whole of stdout; last, :func:`headline` (on stderr after
the JSON). Contention: a calibration kernel (:func:`cpu_share`) runs just before and just after the measurement; on a
quiet machine each of its threads gets about 1.0 of a core, and under ``CONTENDED_BELOW`` a line on stderr, the
JSON's ``"contended"`` and the headline say so. (The load average, reported beside it, lags by a minute and counts
bench's own threads.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inception_lab import console
from inception_lab.data.pipelines import PATHS
from inception_lab.errors import ArgumentParser, UserError
from inception_lab.hostmem import keep_freed_memory, usable_cores
from inception_lab.models.inception import PRESETS, googlenet

# the calibration's share of a core under which the machine is called contended: 0.96-1.00 on this project's quiet
# 2-core machine, 0.1-0.35 there at a load average of 4-6
CONTENDED_BELOW = 0.8
_thread_clock = time.thread_time  # the calibration's CPU clock, per thread


def say(message: str) -> None:
    """A progress line on stderr (``--quiet`` sends stderr away)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def cpu_share(seconds: float = 0.25) -> tuple[float, int]:
    """The calibration kernel: a thread per core the benchmark computes on (torch's threads, at most the usable
    cores), each hashing a buffer for ``seconds`` (hashlib lets go of the GIL); the CPU time each got over the wall
    time, averaged, and the thread count. About 1.0 where each thread has a core; less where others take them."""
    threads, buffer = min(torch.get_num_threads(), usable_cores()), bytes(1 << 20)

    def work(_: int) -> float:
        cpu, wall = _thread_clock(), time.perf_counter()
        while time.perf_counter() - wall < seconds:
            hashlib.sha256(buffer)
        return (_thread_clock() - cpu) / (time.perf_counter() - wall)

    with ThreadPoolExecutor(threads) as pool:
        return statistics.mean(pool.map(work, range(threads))), threads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    enabled = precision.startswith("bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _loss(out: Any, y: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Our InceptionOutput or torchvision's GoogLeNetOutputs: main loss + aux_weight x each aux loss."""
    aux = out.aux if hasattr(out, "aux") else (out.aux_logits1, out.aux_logits2)
    return F.cross_entropy(out.logits, y) + aux_weight * sum(F.cross_entropy(a, y) for a in aux)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               precision: str, aux_weight: float = 0.3) -> None:
    with _autocast(x.device, precision):
        loss = _loss(net(x), y, aux_weight)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward + backward), counted by torch.utils.flop_counter."""
    net = copy.deepcopy(net)
    with (counter := FlopCounterMode(display=False)):
        _loss(net(x), y, 0.3).backward()
    return counter.get_total_flops()


def peak_flops(device: torch.device, precision: str, repeats: int = 5) -> float:
    """The best FLOP/s of a large matmul and a large 3x3 convolution on this device, in the run's precision."""
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    conv_x = torch.randn(32 if device.type == "cuda" else 8, 256, 28, 28, device=device, dtype=dtype)
    conv_x = conv_x.contiguous(memory_format=torch.channels_last)
    conv_w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * conv_x.shape[0] * 256 * 256 * 9 * 28 * 28
    best = 0.0
    for fn, flops in ((lambda: a @ b, 2 * n ** 3), (lambda: F.conv2d(conv_x, conv_w, padding=1), conv_flops)):
        fn()
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best = max(best, flops / (time.perf_counter() - t))
    return best


class _Interleave:
    """Times windows of the fit loop and, between them, one window of each other variant."""

    def __init__(self, device: torch.device, warmup: int, steps: int, windows: int,
                 others: dict[str, Callable[[], int]]) -> None:
        self.device, self.warmup, self.steps, self.windows, self.others = device, warmup, steps, windows, others
        self.results: dict[str, list[float]] = {"fit": [], **{k: [] for k in others}}
        self.images, self.warmup_s = 0, None  # warmup_s: the warm-up steps, where torch.compile's time is
        self.t0 = self.started = time.perf_counter()

    def on_batch_end(self, batch_size: int, step: int) -> bool:
        """Called after each fit step; returns True when the benchmark has enough windows."""
        if step < self.warmup:
            if step == self.warmup - 1:
                for run in self.others.values():  # warm the other variants up too
                    run()
                _sync(self.device)
                self.t0, self.images = time.perf_counter(), 0
                self.warmup_s = round(self.t0 - self.started, 2)
                say(f"warm-up done in {self.warmup_s} s; timing {self.windows} windows of {self.steps} fit steps, "
                    "each followed by one of every other variant")
            return False
        self.images += batch_size
        if (step - self.warmup + 1) % self.steps:
            return False
        _sync(self.device)
        self.results["fit"].append(self.images / (time.perf_counter() - self.t0))
        for name, run in self.others.items():
            if hasattr(run, "prelude"):  # untimed: e.g. the batches a loader's workers made during the fit window
                run.prelude()
            _sync(self.device)
            t = time.perf_counter()
            images = run()
            _sync(self.device)
            self.results[name].append(images / (time.perf_counter() - t))
        say(f"window {len(self.results['fit'])}/{self.windows}, img/s: "
            + ", ".join(f"{name} {ips[-1]:.1f}" for name, ips in self.results.items()))
        self.t0, self.images = time.perf_counter(), 0
        return len(self.results["fit"]) >= self.windows


def bench(model: Any, data: Any | None, image_size: int, batch_size: int, precision: str, device: torch.device,
          warmup: int = 2, steps: int = 3, windows: int = 3, aux_weight: float = 0.3,
          input_paths: bool = True) -> dict[str, Any]:
    """Run the interleaved benchmark for an InceptionClassifier ``model`` (and its DataModule, if any);
    ``input_paths``: an ImageNet DataModule's input paths timed too, one worker each."""
    import lightning as L

    from inception_lab.data import ImageNetDataModule, pipelines
    from inception_lab.data.base import random_crop_flip

    console.filter_noise()  # Lightning's loggers exist now

    say("building the variants: bare loop, plain defaults, torchvision, data pipeline"
        + (", input paths" if input_paths and isinstance(data, ImageNetDataModule) else ""))
    net = model.net
    in_channels = getattr(net, "in_channels", 3)
    x = torch.randn(batch_size, in_channels, image_size, image_size, device=device)
    y = torch.randint(0, net.num_classes, (batch_size,), device=device)
    channels_last = getattr(model, "channels_last", True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def loop(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, precision: str,
             aux: float = aux_weight) -> Callable[[], int]:
        def run() -> int:
            for _ in range(steps):
                train_step(net, optimizer, x, y, precision, aux)
            return steps * batch_size
        return run

    # bare PyTorch: our network, same batch, precision, memory format and optimizer type
    bare_net = copy.deepcopy(net).to(device, memory_format=fmt).train()
    if getattr(model, "compile_net", False):  # same model: compiled too
        bare_net.compile(mode=getattr(model, "compile_mode", "default"))
    bare_opt = model.optimizer(bare_net.parameters())
    bare_x = x.contiguous(memory_format=fmt)
    # the same network with plain defaults (fp32, NCHW, eager): what our defaults gain on this very network (on a
    # GPU: bf16 + channels_last against fp32 NCHW, the 2x target for the CIFAR GoogLeNet)
    plain_net = copy.deepcopy(net).to(device, memory_format=torch.contiguous_format).train()
    # torchvision's GoogLeNet with plain defaults: fp32, NCHW, eager
    import torchvision

    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False,
                                      num_classes=net.num_classes).to(device).train()
    tv_x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    others = {"bare": loop(bare_net, bare_opt, bare_x, precision),
              "plain": loop(plain_net, model.optimizer(plain_net.parameters()), x.contiguous(), "32-true"),
              "torchvision": loop(tv, torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9), tv_x, "32-true", 0.3)}

    # the data pipeline alone: loading and augmentation, no model
    if data is not None:
        from types import SimpleNamespace

        data.setup("fit")
        data.trainer = SimpleNamespace(training=True, testing=False, predicting=False,
                                       strategy=SimpleNamespace(root_device=device))  # resident data: there
        train_loader = data.train_dataloader()  # one loader: its persistent workers live through the epochs
        loader_iter = iter(train_loader)

        def next_batch() -> Any:
            nonlocal loader_iter
            try:
                return next(loader_iter)
            except StopIteration:
                loader_iter = iter(train_loader)
                return next(loader_iter)

        def data_loop() -> int:
            images = 0
            for _ in range(steps * 4):
                # as the fit does it: the transfer (where torchvision_device decodes the workers' bytes), then the
                # DataModule's on-device half
                xb, _ = data.on_after_batch_transfer(data.transfer_batch_to_device(next_batch(), device, 0), 0)
                images += len(xb)
            return images

        def drain() -> None:  # the workers' full queues: made while the fit window ran, so not in the loader's rate
            workers = getattr(train_loader, "num_workers", 0)  # a resident loader has none
            for _ in range(workers * (getattr(train_loader, "prefetch_factor", 0) or 0)):
                next_batch()

        data_loop.prelude = drain  # type: ignore[attr-defined]
    else:
        raw = torch.randint(0, 256, (batch_size, in_channels, image_size, image_size), dtype=torch.uint8, device=device)

        def data_loop() -> int:
            for _ in range(steps * 4):
                random_crop_flip(raw, 4, True).float().div_(255)
            return steps * 4 * batch_size

    others["data"] = data_loop
    if not input_paths:
        paths, missing = {}, {name: "not asked for: --no-input-paths" for name in PATHS}
    elif not isinstance(data, ImageNetDataModule):
        paths, missing = {}, {name: "not an ImageNet config: the input paths read its JPEGs" for name in PATHS}
    else:
        paths, missing = pipelines.input_paths(data, max(64, steps * batch_size), device)
    others.update({f"path_{name}": run for name, run in paths.items()})
    timer = _Interleave(device, warmup, steps, windows, others)

    class _Timing(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if timer.on_batch_end(len(batch[0]), trainer.global_step - 1):
                trainer.should_stop = True

    class _Synthetic(torch.utils.data.IterableDataset):
        def __iter__(self):  # the batch the bare loop trains on, already on the device (as resident data is)
            while True:
                yield bare_x, y

    model.hparams.pop("lr_scheduler", None)
    model.lr_scheduler = None  # the schedule's length is irrelevant here
    model.lr_reference_batch = None  # and so is the LR: the loop feeds its batches without a DataModule
    # cuDNN's autotuner on, as in the GPU recipes (benchmark: true); the bare loops run inside this fit and share it
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_steps=10_000, logger=False,
                        benchmark=device.type == "cuda", enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[_Timing()])
    loader = torch.utils.data.DataLoader(_Synthetic(), batch_size=None)
    before, threads = cpu_share()
    say(f"calibration: {before:.2f} of a core for each of {threads} thread(s); warm-up: {warmup} fit step(s), then "
        f"one window of every other variant{' (torch.compile compiles)' if getattr(model, 'compile_net', 0) else ''}")
    # a val loader that limit_val_batches=0 never reads: Lightning's "no val_dataloader" warning is not for a benchmark
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    after = cpu_share()[0]
    say(f"calibration: {after:.2f} of a core each; counting the step's FLOPs, timing the device's peak")

    flops = step_flops(bare_net, bare_x[:1], y[:1]) * batch_size
    peak = peak_flops(device, precision)
    fit_ips = statistics.median(timer.results["fit"])
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "image_size": image_size, "batch_size": batch_size,
        "precision": precision, "channels_last": channels_last, "windows": windows, "steps_per_window": steps,
        **{f"{k}_img_per_s": round(statistics.median(v), 2) for k, v in timer.results.items() if k[:5] != "path_"},
        "step_flops": flops, "peak_flops": peak, "warmup_s": timer.warmup_s,
        "compile": getattr(model, "compile_mode", "default") if getattr(model, "compile_net", False) else None,
        "fused_optimizer": bool(bare_opt.defaults.get("fused")), "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    result["data_paths"] = {name: (round(statistics.median(timer.results[f"path_{name}"]), 1) if name in paths
                                   else None) for name in PATHS}
    result["data_paths_missing"] = missing
    if "device" in paths:  # the uint8 path's on-device half: distortions, float conversion, normalization
        result["data_paths_device_img_per_s"] = round(statistics.median(timer.results["path_device"]), 1)
    result.update({f"fit_over_{k}": round(fit_ips / result[f"{k}_img_per_s"], 3)
                   for k in ("bare", "plain", "torchvision")})
    result["data_over_fit"] = round(result["data_img_per_s"] / fit_ips, 2)
    result["flops_fraction_of_peak"] = round(flops * fit_ips / batch_size / peak, 3)
    if min(before, after) < CONTENDED_BELOW:
        result["contended"] = {"cpu_share_before": round(before, 2), "cpu_share_after": round(after, 2),
                               "quiet_from": CONTENDED_BELOW, "threads": threads,
                               "load_1min": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}
    return result


def format_table(r: dict[str, Any]) -> str:
    rows = [("fit loop (Lightning, our defaults)", r["fit_img_per_s"], "1.00"),
            ("bare PyTorch loop, same model", r["bare_img_per_s"], f"{r['fit_over_bare']:.2f}"),
            ("same model, fp32 NCHW eager (bare)", r["plain_img_per_s"], f"{r['fit_over_plain']:.2f}"),
            ("torchvision googlenet, fp32 NCHW eager", r["torchvision_img_per_s"], f"{r['fit_over_torchvision']:.2f}"),
            ("data pipeline alone", r["data_img_per_s"], f"data/fit {r['data_over_fit']:.1f}")]
    lines = [f"device {r['device']} ({r['threads']} threads), batch {r['batch_size']}, {r['image_size']}px, "
             f"precision {r['precision']}, channels_last={r['channels_last']}",
             f"{'variant':<42}{'img/s':>10}  fit/variant"]
    lines += [f"{name:<42}{ips:>10.1f}  {ratio}" for name, ips, ratio in rows]
    lines += [f"{'input path ' + name + ', 1 worker':<42}{ips:>10.1f}" for name, ips in r["data_paths"].items()
              if ips is not None]
    if "data_paths_device_img_per_s" in r:
        lines.append(f"{'  its on-device half (jitter, normalize)':<42}{r['data_paths_device_img_per_s']:>10.1f}")
    lines.append(f"training step: {r['step_flops'] / 1e9:.1f} GFLOP; achieved "
                 f"{r['step_flops'] * r['fit_img_per_s'] / r['batch_size'] / 1e9:.1f} GFLOP/s of a measured peak "
                 f"{r['peak_flops'] / 1e9:.1f} GFLOP/s = {r['flops_fraction_of_peak']:.2f}")
    by_reason: dict[str, list[str]] = {}
    for name, reason in r["data_paths_missing"].items():
        by_reason.setdefault(reason, []).append(name)
    if by_reason:
        lines.append("not measured for this config: " + "; ".join(
            f"input path{'s' * (len(names) > 1)} {', '.join(names)} ({reason})" for reason, names in by_reason.items()))
    return "\n".join(lines)


def contended_line(r: dict[str, Any]) -> str | None:
    """The one line that says the machine was contended (stderr), or None on a quiet one."""
    if (c := r.get("contended")) is None:
        return None
    return (f"inception_lab bench: warning: the machine is contended: the calibration's {c['threads']} thread(s) got "
            f"{c['cpu_share_before']:.2f} of a core each before the measurement and {c['cpu_share_after']:.2f} after "
            f"(quiet: {c['quiet_from']} or more); load average {c['load_1min']} on {c['cpus']} CPUs. The figures "
            "are low and their ratios unreliable: measure on a quiet machine")


def headline(r: dict[str, Any], source: str) -> str:
    """bench's last line: the fit's img/s, its ratio to the bare loop, what was measured, and whether to trust it."""
    c = r.get("contended")
    return (f"bench {source}: fit {r['fit_img_per_s']:.1f} img/s, fit/bare {r['fit_over_bare']:.2f} ({r['device']}, "
            f"{r['threads']} thread{'s' * (r['threads'] > 1)}, batch {r['batch_size']}, {r['image_size']} px, "
            f"{r['precision']})"
            + (f"; CONTENDED (calibration {c['cpu_share_before']:.2f}/{c['cpu_share_after']:.2f} of a core): "
               "figures low" if c else ""))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m inception_lab bench", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="an experiment file; further arguments override it (--model.x=...)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a bare googlenet() preset on synthetic batches")
    source.add_argument("--make-imagenet", metavar="DIR", help="write ImageNet-sized JPEGs (500x375, quality 90) in "
                        "ImageNet's folder layout into DIR, to time the input paths on, and exit")
    parser.add_argument("--images", type=int, default=1000, help="--make-imagenet: how many JPEGs (10%% of them val)")
    parser.add_argument("--image-size", type=int, help="input side (--preset; default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the config's, or 16)")
    parser.add_argument("--precision", help="e.g. 32-true, bf16-mixed (default: the config's, or bf16-mixed on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (its time: warmup_s)")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                        help="torch.compile's mode (reduce-overhead: CUDA graphs)")
    source.add_argument("--suite", choices=("gpu", "cpu"), help="every figure of docs/performance.md in one call, "
                        "each step a bench process with its own time limit; their JSON and summary.md in --out")
    parser.add_argument("--out", help="--suite: the directory for summary.md and each step's JSON")
    parser.add_argument("--no-input-paths", action="store_true",
                        help="--config of ImageNet: time the loader alone, not also each input path on one worker")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW (to see what channels_last gains)")
    parser.add_argument("--warmup", type=int, default=2, help="fit steps before timing")
    parser.add_argument("--steps-per-window", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON (the whole of stdout; the last line: stderr)")
    args, overrides = parser.parse_known_args(argv)
    if args.suite:
        from inception_lab.bench_suite import run_suite

        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        return run_suite(args.suite, args.out or f"bench-{args.suite}")
    if args.make_imagenet:
        from inception_lab.bench_suite import write_jpegs

        return write_jpegs(args.make_imagenet, args.images)
    keep_freed_memory()  # as the CLI does: every variant runs with it
    if overrides and not args.config:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    for name in ("image_size", "batch_size", "warmup", "steps_per_window", "windows"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} {value}: expected "
                            f"{'0 or more' if name == 'warmup' else 'a positive integer'}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = None
    if args.config:
        from inception_lab.cli import parse

        cli_args = ["--config", args.config, *overrides]
        if args.batch_size:
            cli_args.append(f"--data.init_args.batch_size={args.batch_size}")
        model, data, config = parse(cli_args)
        trainer_cfg = config.get("trainer", {})
        if trainer_cfg.get("accelerator") == "cpu":
            device = torch.device("cpu")
        precision = args.precision or str(trainer_cfg.get("precision") or "32-true")
        image_size, batch_size = data.image_size, data.batch_size
    else:
        from inception_lab.module import InceptionClassifier

        image_size = args.image_size or PRESETS[args.preset].get("image_size", 224)
        batch_size = args.batch_size or 16
        net = googlenet(args.preset, image_size=image_size)
        # the GPU recipes' optimizer: SGD with momentum, fused (one kernel per update)
        model = InceptionClassifier(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, fused=True))
        precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if device.type == "cpu" and precision in ("16-mixed", "16"):
        raise UserError(f"--precision {precision}: fp16 needs a GPU; on CPU use 32-true or bf16-mixed")
    if args.no_channels_last:
        model.channels_last = False
        model.net.to(memory_format=torch.contiguous_format)
    if args.compile:
        model.compile_net, model.compile_mode = True, args.compile_mode
    r = bench(model, data, image_size, batch_size, precision, device, args.warmup, args.steps_per_window,
              args.windows, getattr(model, "aux_weight", 0.3), not args.no_input_paths)
    if warning := contended_line(r):
        print(warning, file=sys.stderr, flush=True)
    line = headline(r, f"--config {args.config}" if args.config else f"--preset {args.preset}")
    if args.json:  # the JSON is the whole of stdout, for scripts (and --quiet keeps it); the line ends stderr
        console.result(json.dumps(r, indent=2))
        print(line, file=sys.stderr)
    else:
        print(format_table(r))
        console.result(line)
    return 0

