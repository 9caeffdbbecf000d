"""The network's cost (``models/cost.py``): the paper's Table 1 block by block, its totals, how costs move along the
ablation axes, and the ``summary`` command that prints them."""

from __future__ import annotations

import json

import pytest
import torch

from inception_lab.models import Inception, googlenet, summarize
from inception_lab.models.footprint import training_memory
from tests.conftest import REPO, one_error_line

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
    code, out, _ = cli(["summary", "--config", "experiments/quickstart.yaml", "--json"], cwd=REPO)
    net = Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", width_mult=0.125)
    assert json.loads(out)["total_params"] == summarize(net, 32)["total_params"]  # linked from the digits data
    code, _, err = cli(["summary", "--preset", "nope"])
    assert "invalid choice: 'nope'" in one_error_line(code, err, "summary")


def test_summary_names_the_inputs_the_network_takes(cli) -> None:
    """The network states its smallest input and its largest for this host's memory before anything is built."""
    net = googlenet("paper")
    smallest, largest = net.smallest_input(), net.largest_input(training_memory()[0])
    assert smallest == 31 and 224 < largest < 100_000
    for size in ("30", "100000"):
        code, _, err = cli(["summary", "--image-size", size])
        assert one_error_line(code, err, "summary").startswith(
            f"inception_lab summary: error: --image-size {size}: must be in [31, {largest}]: ")
    code, out, _ = cli(["summary", "--image-size", "31"])
    assert code == 0 and "total" in out
    assert out.strip().splitlines()[-1].startswith("summary --preset paper: ") and out.endswith(" at 31x31\n")
