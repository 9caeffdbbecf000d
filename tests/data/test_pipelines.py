"""The input paths side by side (``data/pipelines.py``, for ``bench``): ImageNet-sized JPEGs written the same by any
number of processes, and every input path run, or named as missing with the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.conftest import imagenet_data


def test_make_imagenet_writes_imagenet_sized_jpegs(tmp_path: Path) -> None:
    from inception_lab.data.pipelines import make_imagenet

    assert make_imagenet(tmp_path / "inet", images=24, classes=4) == (20, 4)
    files = sorted((tmp_path / "inet").glob("*/*/*.JPEG"))
    assert len(files) == 24 and {f.parent.parent.name for f in files} == {"train", "val"}
    with Image.open(files[0]) as image:
        assert image.format == "JPEG" and image.size == (500, 375) and image.mode == "RGB"
        assert np.asarray(image).std() > 20  # a photograph, not a flat field
    dm = imagenet_data(tmp_path / "inet", num_classes=4, val_size=4)
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
    dm = imagenet_data(tiny_imagenet)
    runs, missing = input_paths(dm, 10, torch.device("cpu"))
    assert set(runs) == {"torchvision_float", "torchvision_uint8", "torchvision_device", "device"}
    assert set(missing) == {"dali"}
    assert "pip install inception_lab[dali]" in missing["dali"] and set(PATHS) == set(runs) - {"device"} | {"dali"}
    assert all(run() == 12 for run in runs.values())  # 10 images in batches of 4
