"""What an input costs to train (``models/footprint.py``): the meta-device dry run counts what a real step keeps."""

from __future__ import annotations

import pytest
import torch

from inception_lab.models import googlenet
from inception_lab.models.footprint import dry_run


@pytest.mark.parametrize("preset", ["paper", "torchvision", "cifar"])
def test_the_dry_run_counts_what_a_real_forward_keeps_for_backward(preset: str) -> None:
    """Batch norm and ReLU take shortcuts in the dry run; the bytes autograd keeps for one real image agree."""
    net = googlenet(preset, width_mult=0.25).train()
    size = 32 if preset == "cifar" else 96
    trunk = [(name, net.get_submodule(name)) for name in net._order]
    kept: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x, own = torch.randn(1, 3, size, size), {t.untyped_storage().data_ptr() for t in net.state_dict().values()}
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        for _, module in trunk:
            x = module(x)
    real = sum(n for ptr, n in kept.items() if ptr not in own)
    activations, sides = dry_run(trunk, 3, size)
    assert activations == pytest.approx(real, rel=0.01) and sides[net._order[-1]] == x.shape[-1]


def test_a_gpu_smaller_than_the_host_is_the_memory_an_input_is_checked_against(monkeypatch) -> None:
    """Where CUDA is available, a fit trains on GPU 0: a side whose one-image footprint fits the host but not that
    GPU is refused naming the GPU's memory."""
    from types import SimpleNamespace

    from inception_lab.errors import ArgumentValueError
    from inception_lab.models.footprint import host_memory, training_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: SimpleNamespace(total_memory=2**30))
    assert training_memory() == (2**30, "GPU 0's memory") and host_memory() > 2**30
    largest = googlenet("paper").largest_input(2**30)
    with pytest.raises(ArgumentValueError, match=rf"\[31, {largest}\]: .* exceeds GPU 0's memory \(1.0 GiB\)"):
        googlenet("paper", image_size=largest + 1)
