"""The network (``models/inception.py``): parity with torchvision, every value of every ablation axis, activations
without batch norm, and bad values named."""

from __future__ import annotations

import pytest
import torch
import torchvision

from inception_lab.models import TORCHVISION_STAGES, Inception, InceptionOutput, googlenet
from inception_lab.models.inception import _avg_pool_to


def test_torchvision_state_dict_and_outputs() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    ours = googlenet("torchvision")
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    tv.eval(), ours.eval()
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out.logits, tv(x), atol=1e-5, rtol=0)
    assert out.aux == ()
    tv.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(1)
        ref = tv(x)  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1): aux2 is the one after 4d
        torch.manual_seed(1)
        out = ours(x)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.aux[0], ref.aux_logits1, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.aux[1], ref.aux_logits2, atol=1e-5, rtol=0)
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


