"""The ImageNet DataModule (``data/imagenet.py``) on a JPEG tree: splits, batches and test views; decoding; uint8 crops
from the workers and the paper's distortions per image on the device (its area, aspect, interpolations and colour
jitter); evaluation views as the float path's; the device-decode backend; DALI's one-line error where it is not
installed; one-epoch fits; undecodable files (skipped and counted, or one line that leaves the run resumable) and
class folders ImageFolder would refuse (one line before the run is written)."""

from __future__ import annotations

import gc
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from inception_lab.data import ImageNetDataModule
from inception_lab.data.base import BadImageError
from inception_lab.data.imagenet import (
    CROP_AREA,
    CROP_RATIO,
    MEAN,
    PAPER_INTERPOLATIONS,
    STD,
    RandomInterpolationResizedCrop,
    color_jitter,
    jitter_params,
    load_image,
    train_crop,
)
from inception_lab.data.views import ViewBatch, make_views
from inception_lab.errors import ArgumentValueError
from inception_lab.run.files import read_summary
from tests.conftest import QUICKSTART, REPO, one_error_line, trainer_stub
from tests.data.conftest import first_batch, imagenet_data

F = v2.functional


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


# ---- the DataModule: splits, batches, test views, bad roots ---------------------------------------------------
def test_imagenet_batches(tiny_imagenet: Path) -> None:
    dm = imagenet_data(tiny_imagenet, image_size=64, eval_resize=72)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 4, 6)
    assert not set(dm.train_set.dataset.indices) & set(dm.val_set.dataset.indices)  # val held out of train/
    for name in ("train", "val", "test"):
        x, y = first_batch(dm, name)
        assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert -3 < x.mean() < 3 and x.min() < 0  # normalized with ImageNet mean/std (eval: on the device)


@pytest.mark.parametrize(("views", "count"), [("ten_crop", 10), ("flip", 2), ("multi144", 144)])
def test_imagenet_test_views(tiny_imagenet: Path, views: str, count: int) -> None:
    """Cut in the workers as uint8, normalized on the device a chunk at a time; each view followed by its mirror."""
    dm = imagenet_data(tiny_imagenet, image_size=64, eval_resize=72, test_views=views)
    x, y = first_batch(dm, "test")
    assert isinstance(x, ViewBatch) and x.shape == (4, count, 3, 64, 64) and x.views.dtype == torch.uint8
    assert y.shape == (4,) and torch.equal(x.views[:, 1::2], x.views[:, 0::2].flip(-1))
    assert len({v.numpy().tobytes() for v in x.views[0]}) == count
    single, _ = first_batch(imagenet_data(tiny_imagenet, image_size=64, eval_resize=72), "test")
    chunks = list(x.chunks(7))
    assert [len(c) for c in chunks] == [7] * (4 * count // 7) + ([4 * count % 7] if 4 * count % 7 else [])
    normalized = torch.cat(chunks).unflatten(0, (4, count))
    assert normalized.dtype == torch.float32 and torch.equal(normalized, dm.normalize(x.views.flatten(0, 1)).view(
        normalized.shape))
    if views != "multi144":  # its first scale is not eval_resize; its views are checked in tests/data/test_views.py
        center = {10: 8, 2: 0}[count]  # ten_crop: top-left, top-right, bottom-left, bottom-right, center; each mirrored
        assert torch.equal(normalized[:, center], single)  # the center view is the single-view input
    x, _ = first_batch(dm, "val")
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32


def test_imagenet_class_count_mismatch(tiny_imagenet: Path) -> None:
    with pytest.raises(ArgumentValueError, match="^num_classes=1000: .* holds 3 class folders; set it to 3"):
        imagenet_data(tiny_imagenet, num_classes=1000)


def test_imagenet_missing_directory(tmp_path: Path, tiny_imagenet: Path) -> None:
    with pytest.raises(ArgumentValueError, match=str(tmp_path / "nowhere" / "train")):
        imagenet_data(tmp_path / "nowhere")
    shutil.rmtree(tiny_imagenet / "val")
    with pytest.raises(ArgumentValueError, match=r"^root=.*: no ImageNet val directory .*<wnid>/\*\.JPEG"):
        imagenet_data(tiny_imagenet, image_size=64, eval_resize=72)


# ---- training: uint8 from the workers, distortions on the device --------------------------------------------------
def test_train_batches_are_uint8_crops_distorted_on_the_device(tiny_imagenet: Path) -> None:
    dm = imagenet_data(tiny_imagenet)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    dm.trainer = trainer_stub("train")
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


def test_random_interpolation_draws_the_paper_s_four_with_equal_probability() -> None:
    """Section 6: bilinear, area, nearest and bicubic with equal probability, per image; each draw's output is that
    interpolation's resize of the drawn crop. The default (and every other data path) stays bilinear."""
    crop = RandomInterpolationResizedCrop(32)
    image = torch.randint(0, 256, (3, 120, 90), dtype=torch.uint8)
    torch.manual_seed(0)
    draws = [crop.make_params([image])["mode"] for _ in range(4000)]
    assert {mode: draws.count(mode) for mode in PAPER_INTERPOLATIONS} == pytest.approx(
        dict.fromkeys(PAPER_INTERPOLATIONS, 1000), abs=100)
    params = crop.make_params([image])
    box = (params["top"], params["left"], params["height"], params["width"])
    for mode in PAPER_INTERPOLATIONS:
        out = crop.transform(image, {**params, "mode": mode})
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        patch = image[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        if mode == "area":
            expected = torch.nn.functional.interpolate(patch[None].float(), size=32, mode="area")[0]
            expected = expected.round().to(torch.uint8)
        else:
            expected = v2.functional.resize(patch, [32, 32], interpolation=RandomInterpolationResizedCrop.MODES[mode],
                                            antialias=True)
        assert torch.equal(out, expected), mode
    assert isinstance(train_crop(224).transforms[0], v2.RandomResizedCrop)
    assert not isinstance(train_crop(224).transforms[0], RandomInterpolationResizedCrop)
    assert isinstance(train_crop(224, "random").transforms[0], RandomInterpolationResizedCrop)
    recipe = yaml.safe_load((REPO / "experiments/googlenet_imagenet.yaml").read_text())
    assert recipe["data"]["init_args"]["interpolation"] == "random"


# ---- evaluation: the same views as the float path ------------------------------------------------------------------
@pytest.mark.parametrize("views", ["single", "ten_crop"])
def test_eval_views_match_the_float_path(tiny_imagenet: Path, views: str) -> None:
    """The uint8 views (torchvision.io decode, uint8 resize) normalized on the device equal the float path's (PIL
    decode, float conversion, float resize, normalize) to within 2/255 of a pixel."""
    dm = imagenet_data(tiny_imagenet, test_views=views)
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


# ---- DALI, where it is not installed ------------------------------------------------------------------------
def test_missing_dali_is_one_line(tiny_imagenet: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    with pytest.raises(ValueError, match=r"^backend='dali': .*pip install inception_lab\[dali\]") as error:
        ImageNetDataModule(backend="dali")
    assert "\n" not in str(error.value)
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                        f"--data.init_args.root={tiny_imagenet}", "--data.init_args.backend=dali",
                        "--data.init_args.interpolation=bilinear"])
    line = one_error_line(code, err, "fit")
    assert line.startswith("inception_lab fit: error: data.init_args.backend='dali': NVIDIA DALI is not installed")
    assert "pip install inception_lab[dali]" in line
    with pytest.raises(ValueError, match="^backend='pil': allowed values are 'torchvision', 'dali'"):
        ImageNetDataModule(backend="pil")
    with pytest.raises(ValueError, match="^interpolation='random': the DALI pipeline resizes bilinearly .* set "
                                         "interpolation to 'bilinear'$"):
        ImageNetDataModule(backend="dali", interpolation="random")


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
                        "--data.init_args.image_size=64", "--data.init_args.eval_resize=72",
                        "--data.init_args.test_views=single", "--trainer.max_epochs=1",
                        "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--wandb.enabled=false",
                        "--run_dir", str(tmp_path / "run")])
    assert code == 0, err[-3000:]
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "finished" and math.isfinite(summary["metrics"]["val/acc"])


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
        dm = imagenet_data(tiny_imagenet, backend=backend, val_size=2, batch_size=18)
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
        dm = imagenet_data(tiny_imagenet, backend=backend, val_size=2, batch_size=5, num_workers=2)
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


# ---- files no decoder takes; class folders ImageFolder refuses ------------------------------------------------------
def break_images(root: Path) -> list[Path]:
    """Three training files no decoder takes, as a copy or a disk can leave them: empty, a JPEG cut short, text."""
    folder = root / "train" / "n00000001"
    jpeg = next(folder.glob("*.JPEG")).read_bytes()
    bad = [folder / "empty.JPEG", folder / "cut.JPEG", folder / "notes.JPEG"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(jpeg[:len(jpeg) // 2])
    bad[2].write_text("not an image\n")
    return bad


def imagenet_fit(root: Path, run_dir: Path, *args: str) -> list[str]:
    """A one-epoch fit of the quickstart's network on the ImageNet tree at ``root``: 32-pixel crops, batches of 4."""
    return ["fit", "--config", str(QUICKSTART), "--data", "inception_lab.data.ImageNetDataModule",
            f"--data.init_args.root={root}", "--data.init_args.image_size=32", "--data.init_args.eval_resize=37",
            "--data.init_args.num_classes=3", "--data.init_args.batch_size=4", "--data.init_args.val_size=4",
            "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--wandb.enabled=false",
            "--run_dir", str(run_dir), *args]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["torchvision", "torchvision_device"])
@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_files_are_skipped_counted_once_and_named_once(tiny_imagenet: Path, backend: str, workers: int,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """``bad_images: skip`` (the default), decoded in the workers (separate processes) or batched on the device: every
    batch keeps its size (the next file of the split takes a bad one's place), each bad file counts once however often
    it is drawn, and one line on stderr names the first."""
    bad = break_images(tiny_imagenet)
    dm = imagenet_data(tiny_imagenet, backend=backend, num_workers=workers)
    for _ in range(2):  # the second epoch meets the same files again
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            sizes = [len(dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)[1]) for batch in loader]
            n = len(loader.dataset)
            assert sizes == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    record = dm.skipped_images()
    assert record is not None and record["count"] == 3, record
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "undecodable" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"inception_lab: skipped an undecodable image: {record['first']} ("
                                                   f"{record['reason']}); ")
    assert record["first"] in map(str, bad)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["torchvision", "torchvision_device"])
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_images_error_is_one_line_from_any_process(tiny_imagenet: Path, backend: str, workers: int) -> None:
    """``bad_images: error``: the first undecodable file stops the loader with one line naming the key and the file,
    also when a worker process raised it (the DataLoader re-raises it as ``type(message with the worker's
    traceback)``)."""
    bad = break_images(tiny_imagenet)
    dm = imagenet_data(tiny_imagenet, backend=backend, num_workers=workers, bad_images="error")
    with pytest.raises(BadImageError) as error:
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for batch in loader:
                dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    message = str(error.value)
    # Its traceback holds the loader's iterator in reference cycles: collected here, its workers stop now. Left to
    # the garbage collector's next pass, they stopped inside a later test's import, 5 s a worker (a fit took 22 s).
    del error
    gc.collect()
    names = "|".join(re.escape(str(path)) for path in bad)
    assert re.fullmatch(rf"data\.init_args\.bad_images='error': ({names}) cannot be decoded \([^)]+\); replace it "
                        r"with a readable image \(removing it would change the held-out split\) and run the command "
                        r"again \(a fit resumes with --ckpt_path last\), or set data\.init_args\.bad_images=skip to "
                        r"skip such files", message), message


def test_a_fit_skips_undecodable_files_and_records_them(tmp_path: Path, tiny_imagenet: Path, cli) -> None:
    """A 0-byte file, a truncated JPEG and a text file named .JPEG: the fit finishes, one line names the first, and
    summary.json counts the three."""
    bad = break_images(tiny_imagenet)
    code, _, err = cli(imagenet_fit(tiny_imagenet, tmp_path / "run"))
    assert code == 0, err[-3000:]
    record = read_summary(tmp_path / "run")
    assert record["status"] == "finished" and record["bad_images"]["count"] == 3, record
    first, reason = record["bad_images"]["first"], record["bad_images"]["reason"]
    assert first in map(str, bad)
    # the word outside this test's own directory, which is named for it and which Lightning's lines may name
    lines = [ln for ln in err.splitlines() if "undecodable" in ln.replace(str(tmp_path), "")]
    assert lines == [f"inception_lab: skipped an undecodable image: {first} ({reason}); the next file of "
                     "its split takes its place, and every file skipped is counted in the run's summary.json "
                     "(bad_images), named here only once (data.init_args.bad_images=error stops instead)"]


@pytest.mark.slow
def test_bad_images_error_stops_a_fit_in_one_line_and_the_run_resumes(tmp_path: Path, tiny_imagenet: Path,
                                                                      cli) -> None:
    """With loader workers, a bad file met before the first checkpoint: one line naming it, exit 2, no run directory
    (the corrected command takes the same --run_dir); one met after the first epoch (days into a real run): one line,
    the run directory and its checkpoints kept, and once the file is replaced ``--ckpt_path last`` goes on."""
    run_dir = tmp_path / "run"
    fit = imagenet_fit(tiny_imagenet, run_dir, "--data.init_args.bad_images=error", "--data.init_args.num_workers=2")
    victim = sorted((tiny_imagenet / "train" / "n00000001").glob("*.JPEG"))[0]
    jpeg = victim.read_bytes()
    victim.write_text("not an image\n")
    code, _, err = cli(fit)  # stopped before its first checkpoint: nothing could resume it, so nothing is left
    assert f"{victim} cannot be decoded" in one_error_line(code, err, "fit") and not run_dir.exists()
    victim.write_bytes(jpeg)
    code, _, err = cli(fit)  # the same command, once the file is replaced
    assert code == 0, err[-3000:]
    victim.write_text("not an image\n")
    resume = [*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"]
    code, _, err = cli(resume)
    line = one_error_line(code, err, "fit")
    assert line.startswith(f"inception_lab fit: error: data.init_args.bad_images='error': {victim} cannot be decoded ("
                           "Unsupported image file); replace it with a readable image"), line
    record = read_summary(run_dir)
    assert record["status"] == "failed" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    victim.write_bytes(jpeg)
    code, _, err = cli(resume)
    assert code == 0, err[-3000:]
    record = read_summary(run_dir)
    assert record["status"] == "finished" and [a["epochs"] for a in record["attempts"]] == [1, 0, 1]


def test_class_folders_imagefolder_refuses_are_refused_by_check_source(tiny_imagenet: Path) -> None:
    """What ImageFolder would refuse inside the fit is refused by ``check_source`` (before the run is written): a
    class folder with no image file in it (a file in a folder below counts, as ImageFolder counts it), no class
    folder at all, train/ and val/ with different classes, a class count that is not ``num_classes``."""
    dm = ImageNetDataModule(root=str(tiny_imagenet), num_classes=3)
    folder = tiny_imagenet / "val" / "n00000002"
    for image in folder.glob("*.JPEG"):
        image.rename(image.with_suffix(".txt"))
    with pytest.raises(ArgumentValueError, match=rf"^root='.*': class folder {folder} holds no image: ImageFolder "
                                                 r"takes files ending in \.jpg, \.jpeg, .*; add them, or remove"):
        dm.check_source()
    (folder / "deeper").mkdir()
    shutil.copy(next((tiny_imagenet / "val" / "n00000001").glob("*.JPEG")), folder / "deeper" / "x.JPEG")
    dm.check_source()
    (tiny_imagenet / "train" / "n00000003").mkdir()
    shutil.copy(folder / "deeper" / "x.JPEG", tiny_imagenet / "train" / "n00000003")
    with pytest.raises(ArgumentValueError, match=r"hold different class folders \(in one only: n00000003, \.\.\.\)"):
        dm.check_source()
    shutil.copytree(tiny_imagenet / "train" / "n00000003", tiny_imagenet / "val" / "n00000003")
    with pytest.raises(ArgumentValueError, match=r"^num_classes=3: .* holds 4 class folders; set it to 4$"):
        dm.check_source()
    for split in ("train", "val"):
        shutil.rmtree(tiny_imagenet / split)
        (tiny_imagenet / split).mkdir()
    with pytest.raises(ArgumentValueError, match=r"train holds no class folder: ImageFolder takes"):
        dm.check_source()


def test_an_empty_class_folder_is_one_line_before_the_run_is_written(tmp_path: Path, tiny_imagenet: Path,
                                                                      cli) -> None:
    """One line naming the folder and the files ImageFolder takes, exit 2, no run directory; the corrected command,
    with the same ``--run_dir``, runs."""
    folder, aside = tiny_imagenet / "train" / "n00000002", tmp_path / "aside"
    folder.rename(aside)
    folder.mkdir()
    run_dir = tmp_path / "run"
    code, _, err = cli(imagenet_fit(tiny_imagenet, run_dir))
    line = one_error_line(code, err, "fit")
    assert line.startswith(f"inception_lab fit: error: data.init_args.root='{tiny_imagenet}': class folder {folder} "
                           "holds no image: ImageFolder takes files ending in .jpg, .jpeg, .png"), line
    assert not run_dir.exists()
    folder.rmdir()
    aside.rename(folder)
    code, _, err = cli(imagenet_fit(tiny_imagenet, run_dir))
    assert code == 0 and read_summary(run_dir)["status"] == "finished", err[-3000:]
