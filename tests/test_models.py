"""The networks: the paper's Table 1, parity with torchvision, and every value of every ablation axis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from inception_lab.models import TORCHVISION_STAGES, Inception, InceptionOutput, googlenet, summarize
from inception_lab.models.inception import _avg_pool_to

# Table 1 of the paper, inception 3a..5b: params (the paper's K is 1024) and ops (multiply-adds, M = 1e6).
TABLE1_PARAMS_K = {"3a": 159, "3b": 380, "4a": 364, "4b": 437, "4c": 463, "4d": 580, "4e": 840, "5a": 1072,
                   "5b": 1388}
TABLE1_OPS_M = {"3a": 128, "3b": 304, "4a": 73, "4b": 88, "4c": 100, "4d": 119, "4e": 170, "5a": 54, "5b": 71}
# Rows where Table 1 disagrees with its own widths (checked by arithmetic below, not against the table):
# - 4c: 463K params, but its 100M ops / 14x14 positions = 510K params, which is what its widths give;
# - 5a: its widths (the same as 4e's, on 832 input channels) give 1,042,432 weights and 51.1M ops, not 1072K / 54M.
TABLE1_INCONSISTENT_PARAMS = {"4c", "5a"}
TABLE1_INCONSISTENT_OPS = {"5a"}


@pytest.fixture(scope="module")
def paper_summary() -> dict:
    return summarize(googlenet("paper"), 224)


def _row(summary: dict, block: str) -> dict:
    return next(r for r in summary["rows"] if r["name"] == f"inception({block})")


@pytest.mark.parametrize("block", list(TABLE1_PARAMS_K))
def test_paper_blocks_match_table1(paper_summary: dict, block: str) -> None:
    row = _row(paper_summary, block)
    if block not in TABLE1_INCONSISTENT_PARAMS:
        assert row["params"] / 1024 == pytest.approx(TABLE1_PARAMS_K[block], rel=0.02)
    if block not in TABLE1_INCONSISTENT_OPS:
        assert row["macs"] / 1e6 == pytest.approx(TABLE1_OPS_M[block], rel=0.02)
    h, w = row["output_shape"][1:]
    assert row["macs"] == (row["params"] - _biases(block)) * h * w  # 1x1/kxk convs only: ops = weights x positions


def _biases(block: str) -> int:
    return sum(m.bias.numel() for m in getattr(googlenet("paper"), f"inception{block}").modules()
               if isinstance(m, torch.nn.Conv2d))


def test_table1_inconsistent_rows_by_arithmetic(paper_summary: dict) -> None:
    c4 = _row(paper_summary, "4c")
    assert c4["macs"] / 1e6 == pytest.approx(TABLE1_OPS_M["4c"], rel=0.01)  # ops agree with the widths...
    assert c4["params"] / 1024 > TABLE1_PARAMS_K["4c"] * 1.05  # ...its params entry does not
    a5 = _row(paper_summary, "5a")
    weights = 832 * 256 + 832 * 160 + 160 * 320 * 9 + 832 * 32 + 32 * 128 * 25 + 832 * 128
    assert weights == 1_042_432 and a5["params"] - _biases("5a") == weights
    assert a5["macs"] == weights * 7 * 7


def test_paper_totals_and_conv1_row(paper_summary: dict) -> None:
    conv1 = paper_summary["rows"][0]
    # Table 1's conv1 row (2.7K params, 34M ops) matches no 7x7/2 conv from 3 to 64 channels: that has
    # 7*7*3*64 = 9,408 weights and 9,408 x 112 x 112 = 118M multiply-adds.
    assert conv1["name"] == "conv1" and conv1["output_shape"] == [64, 112, 112]
    assert conv1["params"] == 7 * 7 * 3 * 64 + 64
    assert conv1["macs"] == 7 * 7 * 3 * 64 * 112 * 112 == 118_013_952
    assert paper_summary["total_params"] == pytest.approx(6.8e6, rel=0.03)
    # The paper's budget of 1.5G multiply-adds holds with Table 1's own conv1 entry (34M) in place of the real one.
    assert paper_summary["total_macs"] - conv1["macs"] + 34e6 == pytest.approx(1.5e9, rel=0.03)
    assert paper_summary["aux_params"] > 0 and len([r for r in paper_summary["rows"] if "aux" in r["name"]]) == 2


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


def _cost(**kwargs) -> tuple[int, int]:
    s = summarize(googlenet("paper", aux_positions=(), **kwargs), 224)
    return s["total_params"], s["total_macs"]


def test_costs_move_as_the_paper_says() -> None:
    base = _cost()
    naive = _cost(reduce_width_mult="naive")
    assert naive[1] > 3 * base[1]  # Section 4: without reductions the cost blows up from stage to stage
    assert all(c < b for c, b in zip(_cost(reduce_width_mult=0.5), base))
    assert all(c > b for c, b in zip(_cost(reduce_width_mult=2.0), base))
    three, fact = _cost(filter_sizes=(3, 3)), _cost(filter_sizes=(3, (3, 3)))
    assert three[1] < base[1] and three[1] < fact[1]
    # Factorized as in BN-Inception / Inception-v3 (reduce -> 3x3 -> 3x3, both at the branch's output width):
    # per position 9*(red*out + out*out) weights instead of 25*red*out.
    red, out = 16, 32  # inception(3a)'s 5x5 branch
    block = googlenet("paper", filter_sizes=(3, (3, 3))).inception3a.branch3
    assert [m.conv.weight.numel() for m in block] == [192 * red, 9 * red * out, 9 * out * out]
    assert _cost(width_mult=0.5)[1] < 0.3 * base[1]
    fc = _cost(head="fc")
    assert fc[0] - base[0] == (1024 * 7 * 7 - 1024) * 1000  # FC head: flatten 1024x7x7 into the classifier


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


def test_summary_command(cli) -> None:
    code, out, _ = cli(["summary", "--preset", "torchvision", "--json"])
    summary = json.loads(out)
    names = [r["name"] for r in summary["rows"]]
    for block in TABLE1_PARAMS_K:
        assert any(block in n for n in names)
    assert all(set(r) == {"name", "output_shape", "params", "macs"} for r in summary["rows"])
    assert summary["total_params"] == 6_624_904
    assert summary["total_macs"] == pytest.approx(1.498e9, rel=0.001)  # torchvision's "1.5 GFLOPS" are MACs
    code, table, _ = cli(["summary", "--preset", "cifar"])
    assert code == 0 and "inception(5b)" in table and "8x8x1024" in table
    code, out, _ = cli(["summary", "--config", "experiments/quickstart.yaml", "--json"],
                       cwd=Path(__file__).resolve().parents[1])
    net = Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125)
    assert json.loads(out)["total_params"] == summarize(net, 32)["total_params"]  # linked from the digits data
    code, _, err = cli(["summary", "--preset", "nope"])
    assert code == 2 and "invalid choice: 'nope'" in err and "Traceback" not in err
