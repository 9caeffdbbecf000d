"""The network (``models/inception.py``): parity with torchvision, every value of every ablation axis, activations
without batch norm, and bad values named."""

from __future__ import annotations

import pytest
import torch
import torchvision

from inception_lab.errors import ArgumentValueError
from inception_lab.models import TORCHVISION_STAGES, Inception, InceptionOutput, googlenet
from inception_lab.models.inception import _avg_pool_to


@pytest.mark.parametrize("seed", [0, 1])
def test_the_torchvision_preset_starts_as_torchvision_does(seed: int) -> None:
    """The same seed gives torchvision's weights, every tensor of the state_dict, and leaves the generator where
    torchvision leaves it."""
    torch.manual_seed(seed)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    after_tv = torch.rand(4)
    torch.manual_seed(seed)
    ours = googlenet("torchvision")
    assert torch.equal(torch.rand(4), after_tv)
    theirs, mine = tv.state_dict(), ours.state_dict()
    assert theirs.keys() == mine.keys()
    assert [k for k in theirs if not torch.equal(theirs[k], mine[k])] == []


def test_torchvision_outputs_with_trained_looking_weights() -> None:
    """torchvision's state_dict loads (``strict=True``) and gives torchvision's outputs, in eval and train. Not at
    init, where every activation shrinks 100-fold a layer and the eval logits are ``fc.bias`` whatever the input:
    weights at a trained scale and batch-norm statistics of real batches, so that a wrong trunk fails."""
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    for m in tv.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.normal_(m.bias, std=0.1)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5), torch.nn.init.normal_(m.bias, std=0.2)
            m.momentum = None  # running statistics: the plain average of the batches below
    # smooth images at ImageNet's normalized scale: random 7x7 colour fields, upsampled
    images = torch.nn.functional.interpolate(torch.randn(4, 3, 7, 7), 224, mode="bicubic", align_corners=False)
    with torch.no_grad():
        tv.train()(images[:2])
    ours = googlenet("torchvision", weight_init="kaiming")  # a quicker init: the state_dict replaces it
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = images[2:]
    tv.eval(), ours.eval()
    with torch.no_grad():
        ref, out = tv(x), ours(x)
    torch.testing.assert_close(out.logits, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    assert out.aux == () and torch.isfinite(ref).all()
    assert (ref[0] - ref[1]).abs().mean() > 0.1 * ref.abs().mean()  # the input, not fc.bias, decides the logits
    wrong = googlenet("torchvision", stages="table1", weight_init="kaiming").eval()  # 3x3/2 before 5a, same weights
    wrong.load_state_dict(tv.state_dict(), strict=True)
    with torch.no_grad():
        assert not torch.allclose(wrong(x).logits, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    tv.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(1)
        ref = tv(x)  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1): aux2 is the one after 4d
        torch.manual_seed(1)
        out = ours(x)
    for mine, theirs in zip((out.logits, *out.aux), (ref.logits, ref.aux_logits1, ref.aux_logits2)):
        torch.testing.assert_close(mine, theirs, atol=1e-4 * theirs.abs().max().item(), rtol=1e-4)
    assert sum(p.numel() for p in googlenet("torchvision", aux_positions=()).parameters()) == 6_624_904
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters()) == 13_004_888


AXES: list[tuple[str, object]] = [
    ("filter_sizes", (3, 5)), ("filter_sizes", (3, 3)), ("filter_sizes", (3, (3, 3))), ("filter_sizes", (3, 7)),
    ("filter_sizes", (1, 3)),
    ("reduce_width_mult", 0.25), ("reduce_width_mult", 2.0), ("reduce_width_mult", "naive"),
    ("pool_proj_mult", 0.5),
    ("width_mult", 0.5), ("width_mult", 1.3),
    ("aux_positions", ()), ("aux_positions", ("4a", "4d")), ("aux_positions", ("3b", "4e", "5b")),
    ("head", "gap"), ("head", "fc"),
    ("norm", "batch"), ("norm", "lrn"), ("norm", "none"),
]


# the ImageNet stem at 96x96 (3x3 maps at 5b): every head and pool shape rule that 224 exercises, at a fifth of the cost
@pytest.mark.parametrize(("stem", "size"), [("imagenet", 96), ("cifar", 32)])
@pytest.mark.parametrize(("axis", "value"), AXES, ids=[f"{a}={v}" for a, v in AXES])
def test_every_axis_value_trains_and_evaluates(stem: str, size: int, axis: str, value: object) -> None:
    torch.manual_seed(0)
    kwargs = {"width_mult": 0.25} if axis != "width_mult" else {}  # keeps the 38 cases quick on a CPU
    net = Inception(num_classes=7, stem=stem, image_size=size, **kwargs, **{axis: value})
    x = torch.randn(2, 3, size, size)
    net.train()
    out = net(x)
    assert isinstance(out, InceptionOutput) and out.logits.shape == (2, 7)
    assert len(out.aux) == len(net.aux_positions) and all(a.shape == (2, 7) for a in out.aux)
    (out.logits.sum() + sum(a.sum() for a in out.aux)).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert all(p.grad is not None for p in net.parameters())  # aux heads are in the graph when present
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, InceptionOutput) and out.aux == () and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("norm", ["lrn", "none"])
def test_without_batch_norm_activations_keep_their_scale(norm: str) -> None:
    """The paper's network has no batch norm. At init its activations keep their scale from the stem to 5b (they
    grew ~500x with the fan-out init batch norm allows: logits' rms 32, and the ImageNet recipe's SGD went to NaN),
    and the recipe's learning rate (0.01 per 32 images) lowers the loss on a batch instead of diverging."""
    torch.manual_seed(0)
    net = Inception(num_classes=1000, norm=norm, aux_positions=("4a", "4d")).eval()
    rms = {}
    for name in ("conv1", "inception3a", "inception4a", "inception4e", "inception5b"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: rms.update({name: o.pow(2).mean().sqrt()}))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 224, 224), with_aux=True)
    assert all(0.1 < v < 3 for v in rms.values()), rms
    assert all(a.pow(2).mean().sqrt() < 1 for a in (out.logits, *out.aux))

    net = Inception(num_classes=10, norm=norm, image_size=96, width_mult=0.25).train()
    x, y = torch.randn(32, 3, 96, 96), torch.arange(32) % 10
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(10):
        out = net(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y) + 0.3 * sum(
            torch.nn.functional.cross_entropy(a, y) for a in out.aux)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filter_sizes": (3, 4)}, "filter_sizes=[3, 4]: kernel sizes must be odd"),
        ({"filter_sizes": (3, (3, 2))}, "filter_sizes="),
        ({"filter_sizes": (3,)}, "filter_sizes=(3,): expected a list of 2 entries"),
        ({"width_mult": 0.0}, "width_mult=0.0: must be > 0"),
        ({"width_mult": -1}, "width_mult=-1"),
        ({"reduce_width_mult": 0}, "reduce_width_mult=0"),
        ({"reduce_width_mult": "tiny"}, "reduce_width_mult='tiny'"),
        ({"head": "mlp"}, "head='mlp': allowed values are 'gap', 'fc'"),
        ({"norm": "layer"}, "norm='layer': allowed values are 'batch', 'lrn', 'none'"),
        ({"stem": "tiny"}, "stem='tiny'"),
        ({"aux_positions": ("4f",)}, "aux_positions=['4f']: '4f' is not an inception block; allowed: 3a"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"stages": "resnet"}, "stages='resnet': allowed values are 'table1', 'torchvision'"),
        ({"stages": ("4a",)}, "stages=('4a',): entry 0 ('4a'): expected InceptionSpec or PoolSpec"),
        ({"reduce_width_mult": -1.0}, "reduce_width_mult=-1.0: must be > 0"),
        ({"num_classes": 0}, "num_classes=0"),
    ],
)
def test_bad_values_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        Inception(**kwargs)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="preset='resnet'"):
        googlenet("resnet")  # type: ignore[arg-type]


def test_stage_tables_by_name() -> None:
    assert [type(m) for m in googlenet("torchvision").modules()] == [
        type(m) for m in Inception(stages=TORCHVISION_STAGES, norm="batch", filter_sizes=(3, 3)).modules()]
    assert googlenet("torchvision").maxpool4.kernel_size == 2 and Inception().maxpool4.kernel_size == 3


@pytest.mark.parametrize("side", [14, 16, 7, 8])
def test_pooling_equals_adaptive_pooling(side: int) -> None:
    """The GAP head and the aux heads' 4x4 pool give adaptive pooling's values (torchvision parity), through a
    plain average pool (deterministic on CUDA) where the side divides."""
    x = torch.randn(2, 8, side, side)
    torch.testing.assert_close(_avg_pool_to(x, 4), torch.nn.functional.adaptive_avg_pool2d(x, 4))
    torch.testing.assert_close(Inception().avgpool(x), torch.nn.functional.adaptive_avg_pool2d(x, 1))




@pytest.mark.parametrize("kwargs", [{"stem": "imagenet"}, {"stem": "cifar"}, {"norm": "lrn", "aux_pool": "caffe"},
                                    {"head": "fc", "stages": "torchvision"}], ids=["imagenet", "cifar", "paper", "fc"])
def test_the_network_states_the_inputs_it_takes(kwargs: dict) -> None:
    """The smallest side trains and one pixel less is refused before anything is built; the largest for a memory is
    the last side whose one-image footprint fits it, and a side past the host's memory is refused."""
    net = Inception(num_classes=5, width_mult=0.25, image_size=64, **kwargs)
    smallest = net.smallest_input()
    small = Inception(num_classes=5, width_mult=0.25, image_size=smallest, **kwargs)
    out = small(torch.randn(2, 3, smallest, smallest))
    (out.logits.sum() + sum(a.sum() for a in out.aux)).backward()
    with pytest.raises(RuntimeError):  # a real tensor one pixel smaller: torch's own refusal
        small(torch.randn(2, 3, smallest - 1, smallest - 1))
    with pytest.raises(ArgumentValueError, match=rf"^image_size={smallest - 1}: must be in \[{smallest}, \d+\]: "):
        Inception(num_classes=5, width_mult=0.25, image_size=smallest - 1, **kwargs)
    at_64 = net._footprint(64)[0]
    assert net.largest_input(at_64) == 64 and net._footprint(65)[0] > at_64
    with pytest.raises(ArgumentValueError, match=r"^image_size=100000: must be in \[\d+, \d+\]: .* exceeds this host"):
        Inception(num_classes=5, width_mult=0.25, image_size=100_000, **kwargs)
