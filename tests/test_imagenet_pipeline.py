"""ImageNet's input pipeline (issue 15): uint8 crops from the workers, the paper's distortions per image on the device,
evaluation views as before, the DALI backend (where DALI is installed) and its one-line error where it is not."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from inception_lab.data import ImageNetDataModule
from inception_lab.data.imagenet import (
    CROP_AREA,
    CROP_RATIO,
    MEAN,
    STD,
    color_jitter,
    jitter_params,
    load_image,
    train_crop,
)
from inception_lab.data.views import make_views
from inception_lab.run.files import read_summary
from tests.conftest import REPO

F = v2.functional


def datamodule(root: Path, **kwargs: object) -> ImageNetDataModule:
    args = dict(root=str(root), image_size=32, eval_resize=37, num_classes=3, batch_size=4, num_workers=0,
                val_size=4)
    dm = ImageNetDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def fake_trainer(stage: str) -> SimpleNamespace:
    return SimpleNamespace(training=stage == "train", testing=stage == "test", predicting=False)


# ---- decoding ---------------------------------------------------------------------------------------------------
def test_load_image_jpeg_png_and_cmyk(tmp_path: Path) -> None:
    """Every file decodes to 3-channel RGB as PIL's ``convert("RGB")`` gives it: a PNG or a CMYK JPEG saved as .JPEG
    (ImageNet holds both), gray JPEGs and PNGs, a palette PNG, PNGs with alpha (dropped, as PIL drops it)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.save(tmp_path / "rgb.JPEG", quality=90)
    image.save(tmp_path / "png.JPEG", format="PNG")
    image.convert("CMYK").save(tmp_path / "cmyk.JPEG", quality=90)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.JPEG", quality=90)
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(tmp_path / "rgba.png")
    for mode in ("L", "LA", "P"):
        image.convert(mode).save(tmp_path / f"{mode}.png")
    for name in ("rgb.JPEG", "png.JPEG", "cmyk.JPEG", "gray.JPEG", "rgba.png", "L.png", "LA.png", "P.png"):
        decoded = load_image(str(tmp_path / name))
        with Image.open(tmp_path / name) as pil:
            expected = F.pil_to_tensor(pil.convert("RGB"))
        assert decoded.shape == (3, 30, 40) and decoded.dtype == torch.uint8, name
        assert (decoded.int() - expected.int()).abs().max() <= 1, name  # within JPEG decoders' rounding


# ---- training: uint8 from the workers, distortions on the device --------------------------------------------------
def test_train_batches_are_uint8_crops_distorted_on_the_device(tiny_imagenet: Path) -> None:
    dm = datamodule(tiny_imagenet)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    dm.trainer = fake_trainer("train")
    torch.manual_seed(0)
    out, _ = dm.on_after_batch_transfer((x, y), 0)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    plain = dm.normalize(x)
    assert not torch.equal(out, plain)  # distorted
    dm.color_jitter = 0.0
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], plain)  # color_jitter 0: conversion only


def test_crop_area_and_aspect_follow_the_paper() -> None:
    """Section 6: crop area uniform in 8%-100% of the image, aspect ratio log-uniform in [3/4, 4/3]. On a square
    image a crop of at most half the area always fits, so there the draws are not conditioned by a retry."""
    torch.manual_seed(0)
    crop = train_crop(224).transforms[0]
    image = torch.zeros(3, 1000, 1000, dtype=torch.uint8)
    params = [crop.make_params([image]) for _ in range(4000)]
    area = np.array([p["height"] * p["width"] / 1e6 for p in params])
    ratio = np.array([p["width"] / p["height"] for p in params])
    assert CROP_AREA[0] - 0.005 <= area.min() < 0.1 and area.max() > 0.9
    assert CROP_RATIO[0] - 0.01 <= ratio.min() < 0.77 and 1.3 < ratio.max() <= CROP_RATIO[1] + 0.01
    small = area <= 0.5
    assert stats.kstest(area[small], stats.uniform(CROP_AREA[0], 0.5 - CROP_AREA[0]).cdf).pvalue > 1e-3
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    assert stats.kstest(np.log(ratio[small]), stats.uniform(log_low, log_high - log_low).cdf).pvalue > 1e-3
    ramp, crop_flip = torch.arange(64, dtype=torch.uint8).expand(3, 64, 64), train_crop(8)  # brighter to the right
    flips = [bool(out[0, 0, 0] > out[0, 0, -1]) for out in (crop_flip(ramp) for _ in range(300))]
    assert stats.binomtest(sum(flips), 300).pvalue > 1e-3  # mirrored half the time


def test_jitter_factors_and_orders_follow_color_jitter() -> None:
    """Brightness, contrast and saturation factors uniform in [0.6, 1.4] (color_jitter 0.4), drawn per image, and
    the three applied in a uniformly random order per image, as ``v2.ColorJitter(0.4, 0.4, 0.4)`` draws them."""
    generator = torch.Generator().manual_seed(0)
    factors, order = jitter_params(20000, 0.4, generator=generator)
    for column in factors.T:
        assert stats.kstest(column.double().numpy(), stats.uniform(0.6, 0.8).cdf).pvalue > 1e-4
    permutations = [tuple(row) for row in order.tolist()]
    counts = [permutations.count(p) for p in sorted(set(permutations))]
    assert len(counts) == 6 and stats.chisquare(counts).pvalue > 1e-3
    assert jitter_params(10, 0.9)[0].min() >= 0.1 and jitter_params(10, 1.5)[0].min() >= 0  # floor at 0


def test_color_jitter_is_torchvisions_per_image() -> None:
    """Each image of the batch is exactly torchvision's adjust_* applied with its own factors in its own order."""
    torch.manual_seed(0)
    images = torch.rand(6, 3, 20, 24)
    factors, order = jitter_params(6, 0.4)
    out = color_jitter(images, 0.4, (factors, order))
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for i in range(6):
        expected = images[i]
        for op in order[i].tolist():
            expected = adjust[op](expected, float(factors[i, op]))
        torch.testing.assert_close(out[i], expected, atol=2e-6, rtol=0)
    assert len({tuple(f) for f in factors.tolist()}) == 6


# ---- evaluation: the same views as the float path ------------------------------------------------------------------
@pytest.mark.parametrize("views", ["single", "ten_crop"])
def test_eval_views_match_the_float_path(tiny_imagenet: Path, views: str) -> None:
    """The uint8 views (torchvision.io decode, uint8 resize) normalized on the device equal the float path's (PIL
    decode, float conversion, float resize, normalize) to within 2/255 of a pixel."""
    dm = datamodule(tiny_imagenet, test_views=views)
    float_path = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    normalize = v2.Normalize(MEAN, STD)
    std = torch.tensor(STD).view(3, 1, 1)
    for index in range(len(dm.test_set)):
        uint8_views, _ = dm.test_set[index]
        path = dm.test_set.dataset.samples[index][0]
        with Image.open(path) as pil:
            reference = make_views(float_path(pil.convert("RGB")), views, 32, 37)
        new, old = dm.normalize(uint8_views.reshape(-1, 3, 32, 32)), normalize(reference.reshape(-1, 3, 32, 32))
        assert ((new - old).abs() * std).max() <= 2 / 255 + 1e-6, path


# ---- DALI -------------------------------------------------------------------------------------------------------
def test_missing_dali_is_one_line(tiny_imagenet: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    with pytest.raises(ValueError, match=r"^backend='dali': .*pip install inception_lab\[dali\]") as error:
        ImageNetDataModule(backend="dali")
    assert "\n" not in str(error.value)
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                        f"--data.init_args.root={tiny_imagenet}", "--data.init_args.backend=dali",
                        "--data.init_args.interpolation=bilinear"])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("inception_lab fit: error: data.init_args.backend='dali': NVIDIA "
                                                   "DALI is not installed") and "pip install inception_lab[dali]" in err
    with pytest.raises(ValueError, match="^backend='pil': allowed values are 'torchvision', 'dali'"):
        ImageNetDataModule(backend="pil")
    with pytest.raises(ValueError, match="^interpolation='random': the DALI pipeline resizes bilinearly .* set "
                                         "interpolation to 'bilinear'$"):
        ImageNetDataModule(backend="dali", interpolation="random")


def dali_loader(root: Path, rank: int = 0, world_size: int = 1, epoch: int = 0, seed: int = 0):
    from inception_lab.data.dali import DaliTrainLoader

    files = sorted(str(p) for p in (root / "train").glob("*/*.JPEG"))
    loader = DaliTrainLoader(files, list(range(len(files))), 4, 32, seed=seed, rank=rank, world_size=world_size)
    loader.set_epoch(epoch)
    return loader


def test_dali_shards_and_epoch_order(tiny_imagenet: Path) -> None:
    """Ranks read disjoint shards of one length covering the epoch; (seed, epoch) alone fixes the order: a resumed
    epoch reads what the uninterrupted one read. Labels here are file indices, so they show the order."""
    pytest.importorskip("nvidia.dali")
    shards = []
    for rank in (0, 1):
        batches = list(dali_loader(tiny_imagenet, rank, 2, epoch=3))
        assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) for x, _ in batches)
        assert len(batches) == len(dali_loader(tiny_imagenet, rank, 2))
        shards.append(torch.cat([y for _, y in batches]).tolist())
    assert len(shards[0]) == len(shards[1]) == 9  # 18 images, 2 ranks
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(18))
    again = torch.cat([y for _, y in dali_loader(tiny_imagenet, 0, 2, epoch=3)]).tolist()
    other = torch.cat([y for _, y in dali_loader(tiny_imagenet, 0, 2, epoch=4)]).tolist()
    assert again == shards[0] and other != shards[0]


# ---- real fits ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torchvision", "dali"])
def test_one_epoch_fit_on_jpeg_folders(backend: str, tmp_path: Path, tiny_imagenet: Path, cli) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                        f"--data.init_args.root={tiny_imagenet}", f"--data.init_args.backend={backend}",
                        f"--data.init_args.interpolation={'bilinear' if backend == 'dali' else 'random'}",
                        "--data.init_args.batch_size=4", "--data.init_args.num_workers=1",
                        "--data.init_args.num_classes=3", "--data.init_args.val_size=2",
                        "--data.init_args.image_size=96", "--data.init_args.eval_resize=110",
                        "--data.init_args.test_views=single", "--trainer.max_epochs=1",
                        "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--wandb.enabled=false",
                        "--run_dir", str(tmp_path / "run")])
    assert code == 0, err[-3000:]
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "finished" and math.isfinite(summary["metrics"]["val/acc"])


DALI_PROBE = """
import json
from pathlib import Path

from lightning import Callback


class DaliProbe(Callback):
    labels = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.labels += batch[1].tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        loader = trainer.train_dataloader
        record = {"loader": type(loader).__name__, "rank": loader.rank, "world_size": loader.world_size,
                  "batches": len(loader), "labels": self.labels,
                  "callbacks": sorted(type(c).__name__ for c in trainer.callbacks)}
        Path(trainer.default_root_dir, f"dali{trainer.global_rank}-{trainer.current_epoch}.json").write_text(
            json.dumps(record))
        self.labels = []
"""


@pytest.mark.slow
def test_dali_ddp_ranks_read_disjoint_equal_shards(tmp_path: Path, tiny_imagenet: Path, run_cli,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """2 DDP ranks on gloo: the DataModule hands DALI the trainer's rank and world size (Lightning injects no
    sampler), each rank reads 8 of the 16 training images each epoch, together all of them. The recipe's
    EMAWeightAveraging copies the module on both ranks (that copy once failed under DDP: "cannot pickle
    '_thread.lock'")."""
    pytest.importorskip("nvidia.dali")
    (tmp_path / "dali_probe.py").write_text(DALI_PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the launcher re-runs the CLI for rank 1 with it
    run_cli("fit", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
            f"--data.init_args.root={tiny_imagenet}", "--data.init_args.backend=dali",
            "--data.init_args.interpolation=bilinear", "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=1", "--data.init_args.num_classes=3",
            "--data.init_args.val_size=2", "--data.init_args.image_size=64", "--data.init_args.eval_resize=72",
            "--data.init_args.test_views=single", "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
            "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true",
            # the experiment's own callbacks (EMAWeightAveraging's copy of the module under DDP) and the probe
            "--trainer.callbacks+=dali_probe.DaliProbe", "--wandb.enabled=false",
            "--run_dir", str(tmp_path / "run"), cwd=tmp_path, timeout=600)
    dm = datamodule(tiny_imagenet, val_size=2)
    train_labels = sorted(dm.train_set.dataset.dataset.targets[i] for i in dm.train_set.dataset.indices)
    for epoch in (0, 1):
        ranks = [json.loads((tmp_path / "run" / f"dali{r}-{epoch}.json").read_text()) for r in (0, 1)]
        assert [(r["loader"], r["rank"], r["world_size"], r["batches"]) for r in ranks] == [
            ("DaliTrainLoader", 0, 2, 2), ("DaliTrainLoader", 1, 2, 2)]
        assert all("EMAWeightAveraging" in r["callbacks"] for r in ranks)  # the recipe's Polyak averaging, under DDP
        assert len(ranks[0]["labels"]) == len(ranks[1]["labels"]) == 8
        assert sorted(ranks[0]["labels"] + ranks[1]["labels"]) == train_labels


# ---- bench: the input paths side by side ------------------------------------------------------------------------
def test_make_imagenet_writes_imagenet_sized_jpegs(tmp_path: Path) -> None:
    from inception_lab.data.pipelines import make_imagenet

    assert make_imagenet(tmp_path / "inet", images=24, classes=4) == (20, 4)
    files = sorted((tmp_path / "inet").glob("*/*/*.JPEG"))
    assert len(files) == 24 and {f.parent.parent.name for f in files} == {"train", "val"}
    with Image.open(files[0]) as image:
        assert image.format == "JPEG" and image.size == (500, 375) and image.mode == "RGB"
        assert np.asarray(image).std() > 20  # a photograph, not a flat field
    dm = datamodule(tmp_path / "inet", num_classes=4, val_size=4)
    assert len(dm.train_set) == 16
    # each image from its own seed: written by 2 processes, the same files, byte for byte, as by one
    make_imagenet(tmp_path / "one", images=100, classes=4, processes=1)
    make_imagenet(tmp_path / "two", images=100, classes=4, processes=2)
    one, two = (sorted((tmp_path / d).glob("*/*/*.JPEG")) for d in ("one", "two"))
    assert len(one) == 100 and [f.relative_to(tmp_path / "one") for f in one] == [
        f.relative_to(tmp_path / "two") for f in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_input_paths_run_and_say_what_is_missing(tiny_imagenet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inception_lab.data.pipelines import PATHS, input_paths

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    dm = datamodule(tiny_imagenet)
    runs, missing = input_paths(dm, 10, torch.device("cpu"))
    assert set(runs) == {"torchvision_float", "torchvision_uint8", "torchvision_device", "device"}
    assert set(missing) == {"dali"}
    assert "pip install inception_lab[dali]" in missing["dali"] and set(PATHS) == set(runs) - {"device"} | {"dali"}
    assert all(run() == 12 for run in runs.values())  # 10 images in batches of 4


@pytest.mark.slow
def test_bench_reports_the_input_paths(tmp_path: Path, cli) -> None:
    assert cli(["bench", "--make-imagenet", str(tmp_path / "inet"), "--images", "120"])[0] == 0
    code, out, err = cli(["bench", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                          f"--data.init_args.root={tmp_path / 'inet'}", "--data.init_args.num_classes=10",
                          "--data.init_args.val_size=10", "--data.init_args.num_workers=0",
                          "--data.init_args.image_size=96", "--batch-size", "4", "--warmup", "1",
                          "--steps-per-window", "1", "--windows", "1", "--json"])
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
                          "--data.init_args.backend=torchvision_device", "--data.init_args.image_size=96",
                          "--batch-size", "4", "--no-input-paths", "--warmup", "1", "--steps-per-window", "1",
                          "--windows", "1", "--json"])
    assert code == 0, err[-3000:]
    r = json.loads(out[out.index("{"):])
    assert r["data_img_per_s"] > 0 and set(r["data_paths"].values()) == {None}
    assert set(r["data_paths_missing"].values()) == {"not asked for (--no-input-paths)"}


# ---- backend: torchvision_device (the GPU JPEG path, as far as a CPU shows it) ---------------------------------------
def test_the_device_decode_path_makes_the_worker_path_s_crops(tiny_imagenet: Path) -> None:
    """``backend: torchvision_device``: the workers hand over file bytes (a PNG and a CMYK JPEG decoded there), the
    batch is decoded in one ``decode_jpeg`` call onto the device and cropped and flipped there by the worker path's
    own transform, drawn image by image: with the same seed, exactly the worker path's uint8 batch (on a CPU the
    device is the host; on a GPU the decoder is nvJPEG)."""
    from PIL import Image
    from torch.utils.data import default_collate

    from inception_lab.data.imagenet import collate_bytes, read_bytes

    folder = tiny_imagenet / "train" / "n00000000"
    Image.open(next(folder.glob("*.JPEG"))).save(folder / "as_png.JPEG", format="PNG")  # ImageNet has a few
    Image.open(next(folder.glob("*.JPEG"))).convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG")
    batches = {}
    for backend in ("torchvision", "torchvision_device"):
        dm = datamodule(tiny_imagenet, backend=backend, val_size=2, batch_size=18)
        loader = dm.train_dataloader()
        assert loader.collate_fn is (collate_bytes if backend == "torchvision_device" else default_collate)
        torch.manual_seed(7)
        batch = next(iter(loader))
        if backend == "torchvision_device":
            kinds = sorted({(x.dtype, x.ndim) for x in batch[0].items()})
            assert kinds == [(torch.uint8, 1), (torch.uint8, 3)]  # bytes, and the two decoded by the worker
            torch.manual_seed(7)
        batches[backend] = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    (a, ya), (b, yb) = batches["torchvision"], batches["torchvision_device"]
    assert a.shape == b.shape == (18, 3, 32, 32) and b.dtype == torch.uint8
    assert torch.equal(ya, yb) and torch.equal(a, b)
    assert read_bytes(str(folder / "cmyk.JPEG")).ndim == 3 and read_bytes(str(folder / "as_png.JPEG")).ndim == 3
    assert read_bytes(str(next(folder.glob("n*.JPEG")))).ndim == 1


@pytest.mark.timeout(180)
def test_the_device_decode_path_crosses_from_worker_processes(tiny_imagenet: Path) -> None:
    """With loader workers (as every real run has them) the bytes arrive packed in one shared block per batch
    (``FileBatch``): a list of ``read_file`` tensors cannot be sent from a worker at all (their storage is a file
    mapping: "Bad file descriptor", and the loader waits forever). Every epoch's batches arrive, decode to the crops'
    shape and carry the labels of the worker path's own order."""
    from inception_lab.data.base import FileBatch

    labels = {}
    for backend in ("torchvision", "torchvision_device"):
        dm = datamodule(tiny_imagenet, backend=backend, val_size=2, batch_size=5, num_workers=2)
        loader, seen = dm.train_dataloader(), []
        for _ in range(2):  # the persistent workers serve a second epoch too
            for batch in loader:
                assert isinstance(batch[0], FileBatch) == (backend == "torchvision_device")
                x, y = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
                assert x.dtype == torch.uint8 and x.shape == (len(y), 3, 32, 32)
                seen.append(y)
        labels[backend] = torch.cat(seen)
    assert len(labels["torchvision"]) == 2 * len(dm.train_set)
    assert torch.equal(labels["torchvision"], labels["torchvision_device"])
