"""A network as the paper's Table 1: one row per layer or module with output size, params and multiply-adds.

Multiply-adds come from ``torch.utils.flop_counter.FlopCounterMode``, which counts FLOPs = 2 x multiply-adds.
Totals are the inference network (the aux heads are dropped at inference, as Table 1 does); the aux heads get
rows of their own and ``aux_params`` / ``aux_macs``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inception_lab.models.inception import Inception


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summarize(net: Inception, image_size: int = 224, in_channels: int | None = None) -> dict[str, Any]:
    """Rows ``{"name", "output_shape", "params", "macs"}`` per top-level module, and totals, for one image."""
    if in_channels is None:
        in_channels = net.conv1.conv.in_channels
    was_training = net.training
    net.eval()
    shapes: dict[str, list[int]] = {}
    features: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
            shapes[name] = list(out.shape[1:])
            if name in net._aux_after:
                features[name] = out
        return record

    names = [*net._order, "avgpool", "dropout", "fc"]
    handles = [getattr(net, name).register_forward_hook(hook(name)) for name in names]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            device = next(net.parameters()).device
            net(torch.zeros(1, in_channels, image_size, image_size, device=device))
            aux_shapes = {aux: list(getattr(net, aux)(features[block]).shape[1:])
                          for block, aux in net._aux_after.items()}
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)

    counts = counter.get_flop_counts()
    prefix = type(net).__name__

    def macs(name: str) -> int:
        return sum(counts.get(f"{prefix}.{name}", {}).values()) // 2

    rows = [{"name": _row_name(name), "output_shape": shapes[name], "params": _params(getattr(net, name)),
             "macs": macs(name)} for name in names]
    aux_rows = [{"name": f"{aux} (after {block.removeprefix('inception')}, training only)",
                 "output_shape": aux_shapes[aux], "params": _params(getattr(net, aux)), "macs": macs(aux)}
                for block, aux in net._aux_after.items()]
    return {"image_size": image_size, "rows": rows + aux_rows,
            "total_params": sum(r["params"] for r in rows), "total_macs": sum(r["macs"] for r in rows),
            "aux_params": sum(r["params"] for r in aux_rows), "aux_macs": sum(r["macs"] for r in aux_rows)}


def _row_name(name: str) -> str:
    return f"inception({name.removeprefix('inception')})" if name.startswith("inception") else name


def format_table(summary: dict[str, Any]) -> str:
    from matplotlib.ticker import EngFormatter  # as compare's tables read: 3 significant digits, 9.41k, 118M, 1.5G

    def _si(n: float) -> str:
        return EngFormatter(sep="")(float(f"{n:.3g}"))

    lines = [f"{'layer':<34}{'output size':>16}{'params':>10}{'ops (MACs)':>12}"]
    for row in summary["rows"]:
        shape = "x".join(map(str, row["output_shape"][1:] + row["output_shape"][:1]))
        lines.append(f"{row['name']:<34}{shape:>16}{_si(row['params']):>10}{_si(row['macs']):>12}")
    lines.append(f"{'total (inference, no aux)':<34}{'':>16}{summary['total_params']:>10,}"
                 f"{_si(summary['total_macs']):>12}")
    if summary["aux_params"]:
        lines.append(f"{'aux heads (training only)':<34}{'':>16}{summary['aux_params']:>10,}"
                     f"{_si(summary['aux_macs']):>12}")
    return "\n".join(lines)
