"""What an input costs a network to train, from a dry run on the meta device (shapes only: nothing allocated or drawn):
each module's output side, and the activations autograd keeps for backward of one image. :class:`Inception` states
from them the smallest input it takes and the largest that fits a memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode


def dry_run(modules: Sequence[tuple[str, nn.Module]], in_channels: int, image_size: int) -> tuple[int, dict[str, int]]:
    """The bytes of the activations one ``image_size`` input keeps for backward through ``modules`` (run in sequence)
    and the side of each one's output. RuntimeError where the strides and pools leave no pixel."""
    kept: dict[int, Tensor] = {}  # by storage: a tensor two ops keep (a conv's input, a ReLU's output) counts once

    def keep(t: Tensor) -> Tensor:
        kept[t.untyped_storage()._cdata] = t
        return t

    x, sides = torch.zeros(1, in_channels, image_size, image_size, device="meta"), {}
    with torch.inference_mode(False), torch.enable_grad():  # whatever the caller's grad mode
        states = [{k: v.to("meta") for k, v in m.state_dict(keep_vars=True).items()} for _, m in modules]
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), _Shortcuts(keep):
            for (name, module), state in zip(modules, states):
                x = (nn.LocalResponseNorm.forward(module, x) if isinstance(module, nn.LocalResponseNorm)  # ours: in
                     else functional_call(module, state, x))  # autocast, which knows no meta device
                sides[name] = x.shape[-1]
    own = {v.untyped_storage()._cdata for state in states for v in state.values()}  # parameters and buffers
    return sum(t.untyped_storage().nbytes() for storage, t in kept.items() if storage not in own), sides


class _Shortcuts(TorchFunctionMode):
    """Batch norm and (in-place) ReLU without the Python decompositions that torch runs their meta kernels through
    (1-8 ms a layer): each hands ``keep`` what it keeps for backward (batch norm its input, the ReLU its output) and
    returns a tensor of its output's shape."""

    def __init__(self, keep: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is nn.functional.batch_norm:
            return torch.empty_like(self.keep(args[0]), requires_grad=True)
        if func is nn.functional.relu:
            return self.keep(args[0])
        return func(*args, **(kwargs or {}))


def smallest_side(footprint: Callable[[int], int]) -> int:
    """The smallest input side a network runs at, by its ``footprint`` (a dry run: RuntimeError where the strides and
    pools leave no pixel)."""

    def runs(size: int) -> bool:
        try:
            footprint(size)
        except RuntimeError:
            return False
        return True

    return 1 if runs(1) else _first_change(runs, 1)


def largest_side(footprint: Callable[[int], int], memory_bytes: int, smallest: int) -> int:
    """The largest input side from ``smallest`` on whose ``footprint`` fits ``memory_bytes``; 0 if none does."""

    def fits(size: int) -> bool:
        return footprint(size) <= memory_bytes

    return _first_change(fits, smallest) - 1 if fits(smallest) else 0


def _first_change(test: Callable[[int], bool], low: int) -> int:
    """The least n > ``low`` where ``test(n)`` differs from ``test(low)``, for a test that changes once (doubling,
    then bisection)."""
    start, high = test(low), 2 * low
    while test(high) == start:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if test(middle) == start else (low, middle)
    return high


def host_memory() -> int:
    """This host's physical memory in bytes: where a network's parameters are allocated when it is built."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def training_memory() -> tuple[int, str]:
    """The memory a network's input is checked against, and its name: this host's (the parameters are allocated
    there when it is built), or GPU 0's where CUDA is available and it is the smaller (a fit trains there)."""
    if torch.cuda.is_available() and (gpu := torch.cuda.get_device_properties(0).total_memory) < host_memory():
        return gpu, "GPU 0's memory"
    return host_memory(), "this host's memory"
