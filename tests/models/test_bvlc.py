"""The paper preset and ``experiments/googlenet_imagenet.yaml`` against BVLC Caffe's reproduction of GoogLeNet
(``models/bvlc_googlenet/``, transcribed as data in ``tests/models/bvlc_googlenet.py``): the layers, their init, how the
solver treats each parameter, and how the network behaves on real photographs at init."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from inception_lab.data import ImageNetDataModule
from inception_lab.models import googlenet
from tests.conftest import REPO, trainer_stub
from tests.models import bvlc_googlenet as bvlc

RECIPE = REPO / "experiments/googlenet_imagenet.yaml"
BRANCHES = {"1x1": "branch1.conv", "3x3_reduce": "branch2.0.conv", "3x3": "branch2.1.conv",
            "5x5_reduce": "branch3.0.conv", "5x5": "branch3.1.conv", "pool": "branch4.0", "pool_proj": "branch4.1.conv"}
STEM = {"conv1/7x7_s2": "conv1.conv", "pool1/3x3_s2": "maxpool1", "pool1/norm1": "lrn1",
        "conv2/3x3_reduce": "conv2.conv", "conv2/3x3": "conv3.conv", "conv2/norm2": "lrn2", "pool2/3x3_s2": "maxpool2",
        "pool3/3x3_s2": "maxpool3",
        "pool4/3x3_s2": "maxpool4", "pool5/7x7_s1": "avgpool", "pool5/drop_7x7_s1": "dropout", "loss3/classifier": "fc"}
AUX = {"ave_pool": "", "conv": "conv.conv", "fc": "fc1", "drop_fc": "dropout", "classifier": "fc2"}


def ours(name: str) -> str:
    """Our module for a Caffe layer (the aux heads' average pool: the head itself, which pools first)."""
    if name in STEM:
        return STEM[name]
    block, _, layer = name.partition("/")
    if block.startswith("inception_"):
        return f"inception{block.removeprefix('inception_')}.{BRANCHES[layer]}"
    return f"aux{block.removeprefix('loss')}" + (f".{AUX[layer]}" if AUX[layer] else "")


def caffe_shapes() -> dict[str, tuple[int, int]]:
    """(channels, side) of every layer's output for a 224 input, by Caffe's rules: convolutions round down, pooling
    rounds up; an inception block's output concatenates its four branches."""
    blobs: dict[str, tuple[int, int]] = {"data": (3, bvlc.INPUT["crop_size"])}
    shapes: dict[str, tuple[int, int]] = {}
    for layer in bvlc.LAYERS:
        channels, side = blobs[layer["bottom"]]
        if layer["type"] == "conv":
            shape = layer["out"], (side + 2 * layer["pad"] - layer["kernel"]) // layer["stride"] + 1
        elif layer["type"] == "pool":
            shape = channels, math.ceil((side + 2 * layer["pad"] - layer["kernel"]) / layer["stride"]) + 1
        elif layer["type"] == "fc":
            shape = layer["out"], 1
        else:
            shape = channels, side
        shapes[layer["name"]] = blobs[layer["name"]] = shape
        block, _, branch = layer["name"].partition("/")
        if branch in ("1x1", "3x3", "5x5", "pool_proj"):  # into inception_XY/output
            total = blobs.get(f"{block}/output", (0, shape[1]))[0]
            blobs[f"{block}/output"] = (total + shape[0], shape[1])
    return shapes


def fan_in(layer: dict, shapes: dict[str, tuple[int, int]]) -> int:
    bottom = next((s for n, s in shapes.items() if n == layer["bottom"]), None)
    if bottom is None:  # an inception output or the data
        bottom = {"data": (3, 224)}.get(layer["bottom"]) or _block_output(layer["bottom"], shapes)
    channels, side = bottom
    return channels * layer["kernel"] ** 2 if layer["type"] == "conv" else channels * side * side


def _block_output(blob: str, shapes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    block = blob.removesuffix("/output")
    parts = [shapes[f"{block}/{b}"] for b in ("1x1", "3x3", "5x5", "pool_proj")]
    return sum(c for c, _ in parts), parts[0][1]


@pytest.fixture(scope="module")
def paper() -> nn.Module:
    torch.manual_seed(0)
    return googlenet("paper").eval()


def test_the_paper_preset_is_bvlc_s_layer_table(paper: nn.Module) -> None:
    """Every convolution, pooling, LRN, dropout and linear layer of train_val.prototxt: its kind, kernel, stride,
    padding, outputs and pooling rounding, its output's side at 224, and the parameter counts."""
    shapes = caffe_shapes()
    modules = dict(paper.named_modules())
    sides: dict[str, int] = {}
    hooks = [modules[ours(layer["name"])].register_forward_hook(
        lambda m, i, o, n=layer["name"]: sides.__setitem__(n, o.shape[-1] if o.ndim == 4 else 1))
        for layer in bvlc.LAYERS if not layer["name"].endswith("ave_pool")]
    pooled = {}  # the aux heads' pool, as the input of their 1x1 conv
    hooks += [modules[f"aux{i}.conv"].register_forward_hook(
        lambda m, i, o, k=k: pooled.__setitem__(k, i[0].shape[-1])) for i, k in ((1, "loss1"), (2, "loss2"))]
    with torch.no_grad():
        paper(torch.zeros(1, 3, 224, 224), with_aux=True)
    for hook in hooks:
        hook.remove()
    counts = {"main": 0, "aux": 0}
    for layer in bvlc.LAYERS:
        name, kind, (_, side) = layer["name"], layer["type"], shapes[layer["name"]]
        module = modules[ours(name)]
        if kind == "conv":
            assert isinstance(module, nn.Conv2d), name
            assert (module.out_channels, module.kernel_size, module.stride, module.padding) == (
                layer["out"], (layer["kernel"],) * 2, (layer["stride"],) * 2, (layer["pad"],) * 2), name
            assert module.weight[0].numel() == fan_in(layer, shapes), name
        elif kind == "fc":
            assert isinstance(module, nn.Linear) and module.out_features == layer["out"], name
            assert module.in_features == fan_in(layer, shapes), name
        elif kind == "pool" and name.endswith("ave_pool"):  # 5x5/3, ceil: the head's pool
            assert module.pool == "caffe" and pooled[name.split("/")[0]] == side, name
            continue
        elif kind == "pool" and layer["kernel"] == 7:  # pool5/7x7_s1 on the 7x7 map: the global average pool
            assert sides["inception_5b/1x1"] == layer["kernel"] and side == 1
        elif kind == "pool":
            assert isinstance(module, nn.MaxPool2d) and layer["method"] == "max", name
            assert (module.kernel_size, module.stride, module.padding) == (layer["kernel"], layer["stride"],
                                                                           layer["pad"]), name
            assert module.ceil_mode, f"{name}: Caffe's pooling rounds up"
        elif kind == "lrn":
            assert (module.size, module.alpha, module.beta, module.k) == (
                layer["local_size"], layer["alpha"], layer["beta"], layer["k"]), name
        elif kind == "dropout":
            assert isinstance(module, nn.Dropout) and module.p == layer["ratio"], name
        assert sides[name] == side, f"{name}: side {sides[name]}, Caffe's {side}"
        if kind in ("conv", "fc"):
            head = "aux" if name.startswith(("loss1", "loss2")) else "main"
            counts[head] += module.weight.numel() + module.bias.numel()
    assert counts == {"main": 6_998_552, "aux": 6_379_728}
    assert sum(p.numel() for p in paper.parameters()) == sum(counts.values())  # nothing beyond BVLC's layers
    assert [shapes[f"{b}/1x1"][1] for b in ("inception_4a", "inception_4d")] == [14, 14]
    assert {layer["bottom"] for layer in bvlc.LAYERS if layer["name"].endswith("ave_pool")} == {
        f"inception_{p}/output" for p in paper.aux_positions}


def test_the_paper_preset_starts_as_bvlc_s(paper: nn.Module) -> None:
    """Caffe's "xavier" (uniform in +-sqrt(3 / fan_in): variance 1 / fan_in) for every conv and linear layer, and
    the constant biases of each (0.2, but 0 on the three classifiers)."""
    shapes = caffe_shapes()
    modules = dict(paper.named_modules())
    for layer in bvlc.LAYERS:
        if layer["type"] not in ("conv", "fc"):
            continue
        weight, bias = modules[ours(layer["name"])].weight.detach(), modules[ours(layer["name"])].bias.detach()
        assert layer["weight_filler"] == "xavier" and layer["weight_std"] is None
        bound = math.sqrt(3 / fan_in(layer, shapes))
        assert weight.abs().max() <= bound * (1 + 1e-6), layer["name"]
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1 if weight.numel() > 1000 else 0.3)
        assert layer["bias_filler"] == "constant"
        assert torch.equal(bias, torch.full_like(bias, float(layer["bias_value"]))), layer["name"]


def _recipe(tmp_path: Path, *overrides: str):
    from inception_lab.cli import parse

    model, data, config = parse(["--config", str(RECIPE), "--data.init_args.root", str(tmp_path), *overrides])
    return model, data, config


def test_the_recipe_optimizes_as_bvlc_s_solver(tmp_path: Path) -> None:
    """solver.prototxt's SGD (base_lr per batch of 32, momentum, weight decay, x 0.96 every 320k iterations =
    every 8 epochs, 10M iterations = 250 epochs), each layer's lr_mult / decay_mult (weights 1 / 1, biases 2 / 0),
    the aux losses' weight (0.3) and the input (0-255 less the mean, cropped to 224)."""
    model, data, config = _recipe(tmp_path)
    solver = bvlc.SOLVER
    images = 1_281_167  # ILSVRC-2012's training images
    assert config.model.lr_reference_batch == bvlc.TRAIN_BATCH == data.batch_size
    optimizer_args = config.model.optimizer.init_args
    assert (optimizer_args.lr, optimizer_args.momentum, optimizer_args.weight_decay) == (
        solver["base_lr"], solver["momentum"], solver["weight_decay"])
    scheduler = config.model.lr_scheduler.init_args
    assert scheduler.gamma == solver["gamma"] and config.model.lr_interval == "epoch"
    assert scheduler.step_size == round(solver["stepsize"] * bvlc.TRAIN_BATCH / images)
    assert config.trainer.max_epochs == round(solver["max_iter"] * bvlc.TRAIN_BATCH / images)
    assert model.aux_weight == bvlc.LOSS_WEIGHTS["loss1/loss1"] == bvlc.LOSS_WEIGHTS["loss2/loss2"]
    assert bvlc.LOSS_WEIGHTS["loss3/loss3"] == 1.0
    assert [round(m * 255, 6) for m in data.mean] == list(reversed(bvlc.INPUT["mean_bgr"]))  # RGB here
    assert [round(s * 255, 6) for s in data.std] == [1, 1, 1] and bvlc.INPUT["scale"] is None
    assert data.image_size == bvlc.INPUT["crop_size"]

    model._trainer = trainer_stub(datamodule=data)
    optimizer = model.configure_optimizers()["optimizer"]
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    modules = dict(model.net.named_modules())
    for layer in bvlc.LAYERS:
        if layer["type"] not in ("conv", "fc"):
            continue
        module = modules[ours(layer["name"])]
        for param, lr_mult, decay_mult in zip((module.weight, module.bias), layer["lr_mult"], layer["decay_mult"]):
            group = group_of[id(param)]
            assert group["lr"] == pytest.approx(solver["base_lr"] * lr_mult), layer["name"]
            assert group["weight_decay"] == pytest.approx(solver["weight_decay"] * decay_mult), layer["name"]


@pytest.mark.parametrize(("devices", "nodes", "accumulate", "batch"), [(1, 1, 1, 32), (8, 1, 1, 32), (4, 2, 1, 32),
                                                                      (1, 1, 4, 64)])
def test_the_lr_follows_the_global_batch(tmp_path: Path, devices: int, nodes: int, accumulate: int,
                                         batch: int) -> None:
    """0.01 per 32 images: x devices x nodes x batch x accumulation / 32, in one place (the module's
    ``optimization``), with the figures the run records."""
    model, data, _ = _recipe(tmp_path, f"--data.init_args.batch_size={batch}")
    model._trainer = trainer_stub(devices=devices, nodes=nodes, accumulate_grad_batches=accumulate, datamodule=data)
    global_batch = devices * nodes * batch * accumulate
    resolved = model.optimization()
    assert resolved["global_batch"] == global_batch and resolved["lr"] == pytest.approx(0.01 * global_batch / 32)
    optimizer = model.configure_optimizers()["optimizer"]
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"weights": 0.01 * global_batch / 32, "biases": 0.02 * global_batch / 32})


def _photographs(root: Path) -> Path:
    """The real photographs that scikit-learn and matplotlib ship, in ImageNet's layout (one class)."""
    import matplotlib
    import sklearn.datasets

    photos = [Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg" for name in ("china", "flower")]
    photos.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    for split in ("train", "val"):
        folder = root / split / "n01440764"
        folder.mkdir(parents=True)
        for photo in photos:
            shutil.copy(photo, folder / f"{photo.stem}.JPEG")
    return root


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lrn_acts_on_photographs_as_in_caffe(tmp_path: Path, precision: str, paper: nn.Module) -> None:
    """At init, on real photographs through the recipe's own evaluation pipeline (decode, resize 256, center crop,
    Caffe's normalization): LRN1 changes its input by about Caffe's 38%, LRN2 by about its 8-11% (within a factor
    of 2), in fp32 and under bf16 autocast. With torchvision's normalization it would change them by 0.03%."""
    recipe = yaml.safe_load(RECIPE.read_text())["data"]["init_args"]
    root = _photographs(tmp_path / "imagenet")
    changes = {}
    for normalization in ("caffe", "imagenet"):
        data = ImageNetDataModule(root=str(root), num_classes=1, val_size=1, batch_size=3, num_workers=0,
                                  normalization=recipe["normalization"] if normalization == "caffe" else "imagenet")
        data.setup("test")
        x, _ = data.on_after_batch_transfer(next(iter(data.test_dataloader())), 0)
        acts: dict = {}
        hooks = [getattr(paper, n).register_forward_hook(lambda m, i, o, n=n, acts=acts: acts.__setitem__(n, (i[0], o)))
                 for n in ("lrn1", "lrn2")]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            paper(x)
        for hook in hooks:
            hook.remove()
        if precision == "bf16":
            assert acts["lrn1"][0].dtype == acts["lrn1"][1].dtype == torch.bfloat16  # in and out as autocast has it
        changes[normalization] = {n: ((o.float() - i.float()).norm() / i.float().norm()).item()
                                  for n, (i, o) in acts.items()}
    assert 0.38 / 2 <= changes["caffe"]["lrn1"] <= 0.38 * 2, changes
    assert 0.095 / 2 <= changes["caffe"]["lrn2"] <= 0.095 * 2, changes
    assert changes["imagenet"]["lrn1"] < 0.01, changes  # what the recipe did before: LRN an identity in effect


def test_the_paper_aux_pool_is_caffe_s_and_torchvision_s_stays_adaptive() -> None:
    """On a 14x14 map the paper preset pools as ``avg_pool2d(x, 5, 3, ceil_mode=True)`` (windows at 0, 3, 6, 9);
    torchvision's keeps its adaptive 4x4 pool (windows at 0, 3, 7, 10), which its state_dict parity needs."""
    torch.manual_seed(0)
    x = torch.randn(2, 512, 14, 14)
    for preset, pool in (("paper", lambda t: F.avg_pool2d(t, 5, 3, ceil_mode=True)),
                         ("torchvision", lambda t: F.adaptive_avg_pool2d(t, 4))):
        head = googlenet(preset).aux1.eval()
        seen: list = []
        hook = head.conv.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0]))
        with torch.no_grad():
            head(x)
        hook.remove()
        torch.testing.assert_close(seen[0], pool(x))
    assert not torch.allclose(F.avg_pool2d(x, 5, 3, ceil_mode=True), F.adaptive_avg_pool2d(x, 4))  # not the same


