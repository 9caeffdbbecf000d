"""The digits DataModule (``data/digits.py``): sklearn's 8x8 digits as 32x32 uint8 images, resident, split by seed,
normalized with the training split's statistics, cropped per sample in training; test views flip only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inception_lab.data import DigitsDataModule
from inception_lab.data.base import split_indices
from inception_lab.data.views import ViewBatch
from inception_lab.errors import ArgumentValueError, user_message
from tests.conftest import QUICKSTART, one_error_line, trainer_stub
from tests.data.conftest import first_batch, rows


# ---- digits -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_digits_shapes_and_split(digits: DigitsDataModule) -> None:
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 32)
    assert [len(s) for s in (digits.train_set, digits.val_set, digits.test_set)] == [1197, 300, 300]
    x, y = digits.train_set.tensors
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 32, 32) and x.max() > 200
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    for name in ("train", "val", "test", "predict"):
        x, y = first_batch(digits, name)
        assert x.shape == (32, 1, 32, 32) and x.dtype == torch.float32 and y.shape == (32,) and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_digits_split_is_disjoint_and_fixed_by_seed(digits: DigitsDataModule) -> None:
    parts = split_indices(1797, {"test_size": 300, "val_size": 300}, seed=0)
    assert sorted(torch.cat(parts).tolist()) == list(range(1797))  # a partition: disjoint and complete
    again = DigitsDataModule()
    again.setup("fit")
    for a, b in zip((digits.train_set, digits.val_set, digits.test_set), (again.train_set, again.val_set,
                                                                          again.test_set)):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    other = DigitsDataModule(split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.test_set.tensors[1], digits.test_set.tensors[1])


def test_digits_normalization_uses_train_statistics(digits: DigitsDataModule) -> None:
    digits.trainer = trainer_stub("val")
    x, _ = digits.on_after_batch_transfer(digits.train_set.tensors, 0)
    assert abs(x.mean().item()) < 1e-3 and x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_digits_augmentation_is_per_sample_and_train_only(digits: DigitsDataModule) -> None:
    image = digits.train_set.tensors[0][:1]
    same = image.expand(64, -1, -1, -1).contiguous()
    labels = torch.zeros(64, dtype=torch.long)
    digits.trainer = trainer_stub("train")
    torch.manual_seed(0)
    x, _ = digits.on_after_batch_transfer((same, labels), 0)
    assert len(rows(x)) > 10  # each image its own crop (one parameter set per batch would give 1)
    # crops only: every output is the image shifted by at most pad=2 pixels, never mirrored
    plain = digits.normalize(image)
    padded = torch.nn.functional.pad(image, (2,) * 4)
    shifts = {digits.normalize(padded[..., dy:dy + 32, dx:dx + 32]).numpy().tobytes()
              for dy in range(5) for dx in range(5)}
    assert rows(x) <= shifts
    for name in ("val", "test"):
        digits.trainer = trainer_stub(name)
        x, _ = digits.on_after_batch_transfer((same, labels), 0)
        assert torch.equal(x, plain.expand_as(x))


@pytest.mark.parametrize("views", ["ten_crop", "multi144"])
def test_flip_test_views_and_crops_rejected(digits: DigitsDataModule, views: str) -> None:
    dm = DigitsDataModule(batch_size=16, test_views="flip")
    dm.setup("test")
    x, y = first_batch(dm, "test")
    assert isinstance(x, ViewBatch) and x.shape == (16, 2, 1, 32, 32) and x.views.dtype == torch.uint8
    assert torch.equal(x.views[:, 1], x.views[:, 0].flip(-1)) and y.shape == (16,)
    plain, _ = first_batch(digits, "test")
    assert torch.equal(next(x.chunks(32)), torch.stack([plain[:16], plain[:16].flip(-1)], 1).flatten(0, 1))
    x, _ = first_batch(dm, "val")
    assert x.shape == (16, 1, 32, 32)  # views only at test time: validation picks models on single views
    with pytest.raises(ArgumentValueError, match=rf"^test_views='{views}': .* allows 'single' or 'flip'$") as error:
        DigitsDataModule(test_views=views)
    assert user_message(error.value).startswith(f"data.init_args.test_views='{views}': ")  # the CLI's key


def test_a_null_split_seed_follows_the_runs_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli) -> None:
    """``split_seed: null``: the split is the run's seed's (as Lightning keeps it for every process), so seeds vary
    the split too; the same seed gives the same split as ``split_seed`` set to it. No seed: one line naming the key."""
    def test_labels(split_seed: int | None) -> torch.Tensor:
        data = DigitsDataModule(split_seed=split_seed)
        data.setup()
        return data.test_set.tensors[1]

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    assert torch.equal(test_labels(None), test_labels(3)) and not torch.equal(test_labels(None), test_labels(0))
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    assert torch.equal(test_labels(None), test_labels(4))
    monkeypatch.delenv("PL_GLOBAL_SEED")
    with pytest.raises(ArgumentValueError) as error:
        test_labels(None)
    assert user_message(error.value) == (
        "data.init_args.split_seed: null follows the run's seed, and this run has none (seed_everything: false): "
        "give seed_everything a seed, or split_seed one")
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--seed_everything=false",
                        "--data.init_args.split_seed=null", "--run_dir", str(tmp_path / "run")])  # no run left behind
    assert one_error_line(code, err, "fit").endswith(f": {user_message(error.value)}")
    assert not (tmp_path / "run").exists()
