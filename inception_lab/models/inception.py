"""Configurable Inception-v1 (GoogLeNet) networks, built from the paper's Table 1.

Szegedy et al., "Going Deeper with Convolutions", 2014 (arXiv 1409.4842).

The architecture is data: ``TABLE1`` holds the inception blocks and max-pools of the paper's Table 1, and
:class:`Inception` builds the network from it in a loop. Every ablation axis of the paper is one typed constructor
argument, so an experiment file, a sweep parameter (``model.net.init_args.filter_sizes``) and a test all name the
same thing. Child modules carry torchvision's names (``conv1``, ``inception3a.branch2.1.conv``, ``aux1.fc2``), so
``preset="torchvision"`` loads torchvision's state_dict with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Union

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor, nn

from inception_lab.arguments import UnitInterval, check_arguments
from inception_lab.errors import ArgumentValueError
from inception_lab.models.footprint import dry_run, largest_side, smallest_side, training_memory


@dataclass(frozen=True)
class InceptionSpec:
    """One row of Table 1: an inception block and its branch widths (output channels)."""

    name: str
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int


@dataclass(frozen=True)
class PoolSpec:
    """A max-pool between stages (Table 1: 3x3/2)."""

    kernel_size: int = 3
    stride: int = 2


StageSpec = Union[InceptionSpec, PoolSpec]

# Table 1 of the paper, from inception(3a) on; the stem is built by `_stem`. The pool before 3a belongs to the stem.
TABLE1: tuple[StageSpec, ...] = (
    InceptionSpec("3a", 64, 96, 128, 16, 32, 32),  # N x 256 x 28 x 28
    InceptionSpec("3b", 128, 128, 192, 32, 96, 64),  # N x 480 x 28 x 28
    PoolSpec(3, 2),  # N x 480 x 14 x 14
    InceptionSpec("4a", 192, 96, 208, 16, 48, 64),  # N x 512 x 14 x 14
    InceptionSpec("4b", 160, 112, 224, 24, 64, 64),
    InceptionSpec("4c", 128, 128, 256, 24, 64, 64),
    InceptionSpec("4d", 112, 144, 288, 32, 64, 64),  # N x 528 x 14 x 14
    InceptionSpec("4e", 256, 160, 320, 32, 128, 128),  # N x 832 x 14 x 14
    PoolSpec(3, 2),  # N x 832 x 7 x 7
    InceptionSpec("5a", 256, 160, 320, 32, 128, 128),
    InceptionSpec("5b", 384, 192, 384, 48, 128, 128),  # N x 1024 x 7 x 7
)

# torchvision departs from Table 1 in one pool: 2x2/2 before 5a (same 7x7 output at 224, different values).
TORCHVISION_STAGES: tuple[StageSpec, ...] = tuple(
    PoolSpec(2, 2) if i == 8 else stage for i, stage in enumerate(TABLE1)
)

STAGE_TABLES: dict[str, tuple[StageSpec, ...]] = {"table1": TABLE1, "torchvision": TORCHVISION_STAGES}

Norm = Literal["batch", "lrn", "none"]
Stem = Literal["imagenet", "cifar"]
Head = Literal["gap", "fc"]
Stages = Literal["table1", "torchvision"]
AuxPool = Literal["adaptive", "caffe"]
WeightInit = Literal["caffe", "kaiming", "torchvision"]
KernelStack = Union[int, tuple[int, ...]]


class InceptionOutput(NamedTuple):
    """What every Inception network returns, in train and eval alike."""

    logits: Tensor
    aux: tuple[Tensor, ...]  # one per aux head, in attach order (4a first); empty in eval or without heads


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to the nearest multiple of ``divisor`` (at least ``divisor``), as MobileNet/timm do."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # never round down by more than 10%
        rounded += divisor
    return rounded


class BasicConv2d(nn.Module):
    """conv -> norm -> ReLU. With ``norm="batch"`` the conv has no bias (torchvision's layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 norm: Norm = "batch", bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=norm != "batch")
        # The paper's LRN sits in the stem only (Figure 3); inside the blocks it is plain conv + ReLU.
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps) if norm == "batch" else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


def _branch(in_channels: int, reduce: int, out_channels: int, kernels: tuple[int, ...], norm: Norm,
            bn_eps: float) -> nn.Sequential:
    """Optional 1x1 reduction, then a stack of kxk convs (a single 5x5, or two 3x3 for the factorized 5x5)."""
    layers: list[nn.Module] = []
    if reduce:
        layers.append(BasicConv2d(in_channels, reduce, 1, norm=norm, bn_eps=bn_eps))
        in_channels = reduce
    for k in kernels:
        layers.append(BasicConv2d(in_channels, out_channels, k, norm=norm, bn_eps=bn_eps))
        in_channels = out_channels
    return nn.Sequential(*layers)


class InceptionBlock(nn.Module):
    """Figure 2b of the paper (Figure 2a, the naive module, when the reductions are 0)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, kernels: tuple[tuple[int, ...], tuple[int, ...]] = ((3,), (5,)),
                 norm: Norm = "batch", bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1, norm=norm, bn_eps=bn_eps)
        self.branch2 = _branch(in_channels, ch3x3red, ch3x3, kernels[0], norm, bn_eps)
        self.branch3 = _branch(in_channels, ch5x5red, ch5x5, kernels[1], norm, bn_eps)
        pool: list[nn.Module] = [nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)]
        if pool_proj:
            pool.append(BasicConv2d(in_channels, pool_proj, 1, norm=norm, bn_eps=bn_eps))
        self.branch4 = nn.Sequential(*pool)
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + (pool_proj or in_channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier (Section 5): 5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 0.7.

    ``pool``: ``caffe`` is the paper's and BVLC's pool (``loss{1,2}/ave_pool``: 5x5, stride 3, Caffe's ceil
    rounding; on a 14x14 map its windows start at 0, 3, 6, 9), whose output side, and so fc1's width, follows the
    input size (``side``: the side of the map it pools). ``adaptive`` pools to 4x4 whatever the input (torchvision's
    head, and every batch-norm preset's): on a 14x14 map its windows start at 0, 3, 7, 10 and are 4 wide, so it is
    *not* the paper's pool there; it keeps torchvision's state_dict parity and a 4x4 map at any input size.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_channels: int = 128, hidden: int = 1024,
                 dropout: float = 0.7, norm: Norm = "batch", bn_eps: float = 1e-3, pool: AuxPool = "adaptive",
                 side: int = 14) -> None:
        super().__init__()
        self.pool = pool
        pooled = math.ceil(max(side - 5, 0) / 3) + 1 if pool == "caffe" else 4
        self.conv = BasicConv2d(in_channels, conv_channels, 1, norm=norm, bn_eps=bn_eps)
        self.fc1 = nn.Linear(conv_channels * pooled * pooled, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool == "caffe":  # a side under 5 makes one window of all of it, as Caffe clips its windows
            x = nn.functional.avg_pool2d(x, (min(5, x.shape[-2]), min(5, x.shape[-1])), 3, ceil_mode=True)  # 4x4 at 14
        else:
            x = _avg_pool_to(x, 4)  # N x C x 4 x 4
        x = self.conv(x)  # N x 128 x 4 x 4
        x = nn.functional.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # N x 1024
        return self.fc2(self.dropout(x))


class LocalResponseNorm(nn.LocalResponseNorm):
    """Caffe's across-channel LRN (``b = a / (k + alpha / n * sum of a^2 over n channels)^beta``), computed in fp32
    under autocast: in bf16 the denominator's ``1 + 1e-4 / 5 * sum`` rounds to 1 unless the inputs are at Caffe's
    scale (0-255 pixels less the mean), and even then loses most of its digits."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def _avg_pool_to(x: Tensor, size: int) -> Tensor:
    """Adaptive average pooling to ``size x size``. Where the input side is a multiple of ``size`` (every CIFAR-stem
    input) it is a plain average pool with the same values, whose CUDA backward is deterministic (adaptive pooling's
    is not, and ``trainer.deterministic: true`` refuses it)."""
    height, width = x.shape[-2:]
    if height % size == 0 and width % size == 0:
        return nn.functional.avg_pool2d(x, (height // size, width // size))
    return nn.functional.adaptive_avg_pool2d(x, size)


class GlobalAvgPool(nn.Module):
    """The paper's global average pool as a mean over H and W: the values of ``AdaptiveAvgPool2d(1)``, with a
    deterministic CUDA backward."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


def _kernel_stacks(filter_sizes: Sequence[KernelStack]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    stacks = tuple((k,) if isinstance(k, int) else tuple(k) for k in filter_sizes)
    for stack in stacks:
        if not stack or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in stack):
            raise ArgumentValueError(Inception, "kernel sizes must be odd positive integers (1, 3, 5, 7, ...) so that "
                                     "'same' padding keeps the branches aligned", filter_sizes=list(filter_sizes))
    return stacks  # type: ignore[return-value]


class Inception(nn.Module):
    """An Inception-v1 network. The defaults are the paper's GoogLeNet with batch norm (see ``googlenet()``).

    Args:
        num_classes: classes of the linear classifier(s); linked from the DataModule in configs.
        in_channels: image channels.
        image_size: input side in pixels; only the ``fc`` head and the ``caffe`` aux pool depend on it. Linked from
            the DataModule. Refused outside [``smallest_input()``, ``largest_input(this host's memory)``].
        stem: ``imagenet`` (7x7/2, pool, 1x1, 3x3, pool: Table 1) or ``cifar`` (one 3x3 conv to 192 channels at
            full resolution, for 32x32 inputs).
        stages: the table the network is built from: ``table1`` (the paper's Table 1, ``TABLE1``), ``torchvision``
            (Table 1 with torchvision's 2x2/2 pool before 5a) or a tuple of ``InceptionSpec``/``PoolSpec`` rows.
        filter_sizes: kernel sizes of the two spatial branches (paper: ``[3, 5]``; torchvision: ``[3, 3]``); an
            entry may be a list of kernels applied in sequence: ``[3, [3, 3]]`` factorizes the 5x5 into two 3x3.
        reduce_width_mult: multiplier on the 1x1 reductions before the 3x3/5x5 convs; ``"naive"`` removes them
            and the pool projection: the paper's naive module (Figure 2a), whose cost explodes.
        pool_proj_mult: multiplier on the pool-projection widths.
        width_mult: multiplier on every width, rounded to a multiple of 8.
        aux_positions: blocks after which an auxiliary classifier attaches (paper: 4a and 4d); ``[]`` for none.
        aux_dropout: dropout in the aux heads (paper: 0.7).
        aux_pool: the aux heads' first pool: ``caffe`` (the paper's and BVLC's 5x5/3 average pool, ceil rounding) or
            ``adaptive`` (to 4x4, torchvision's; not the paper's windows on a 14x14 map: :class:`InceptionAux`).
        head: ``gap`` (global average pool, dropout, linear: the paper) or ``fc`` (flatten the last feature map
            into a linear classifier: the paper's comparison, Section 5: GAP gave +0.6% top-1).
        dropout: dropout before the final linear layer (paper: 0.4; torchvision: 0.2).
        norm: ``batch`` (BN after every conv), ``lrn`` (the paper: local response norm in the stem, Figure 3),
            or ``none``. Without batch norm every layer starts as in BVLC's reproduction of the paper (Caffe's
            "xavier": uniform, variance 1 / fan-in; biases 0.2 on the convs and the aux heads' fc1, 0 on the
            classifiers), so the activations keep their scale through the 22 layers; LRN's alpha (1e-4) is set for
            Caffe's input scale, 0-255 pixels less the mean (``ImageNetDataModule(normalization="caffe")``).
        bn_eps: batch-norm epsilon (torchvision: 1e-3).
        weight_init: ``caffe`` (BVLC's, above), ``kaiming`` (fan-out normal convs, linear weights from a truncated
            N(0, 0.01), biases 0) or ``torchvision`` (``torchvision.models.googlenet``'s: every conv and linear weight
            from a truncated N(0, 0.01), linear biases at PyTorch's default; on torchvision's architecture the same
            seed gives torchvision's weights). Default: ``caffe`` without batch norm, ``kaiming`` with it.
    """

    def __init__(self, num_classes: PositiveInt = 1000, in_channels: PositiveInt = 3, image_size: PositiveInt = 224,
                 stem: Stem = "imagenet", stages: Union[Stages, tuple[StageSpec, ...]] = "table1",
                 filter_sizes: tuple[KernelStack, KernelStack] = (3, 5),
                 reduce_width_mult: Union[PositiveFloat, Literal["naive"]] = 1.0, pool_proj_mult: PositiveFloat = 1.0,
                 width_mult: PositiveFloat = 1.0, aux_positions: tuple[str, ...] = ("4a", "4d"),
                 aux_dropout: UnitInterval = 0.7, aux_pool: AuxPool = "adaptive", head: Head = "gap",
                 dropout: UnitInterval = 0.4, norm: Norm = "batch", bn_eps: PositiveFloat = 1e-3,
                 weight_init: WeightInit | None = None) -> None:
        super().__init__()
        check_arguments(Inception, locals())
        kernels = _kernel_stacks(filter_sizes)
        if isinstance(stages, str):
            stages = STAGE_TABLES[stages]
        block_names = [s.name for s in stages if isinstance(s, InceptionSpec)]
        for pos in aux_positions:
            if pos not in block_names:
                raise ArgumentValueError(Inception, f"{pos!r} is not an inception block; allowed: "
                                         f"{', '.join(block_names)}", aux_positions=list(aux_positions))

        def width(channels: float) -> int:
            return make_divisible(channels * width_mult)

        self.num_classes, self.in_channels, self.image_size, self.head = num_classes, in_channels, image_size, head
        self.aux_positions = tuple(aux_positions)
        self._order: list[str] = []  # forward order of the children; names follow torchvision's
        self._aux_after: dict[str, str] = {}
        self._aux_args = (width(128), width(1024), aux_dropout, norm, bn_eps, aux_pool)
        channels = self._stem(stem, in_channels, width, norm, bn_eps)
        pools = 2
        for stage in stages:
            if isinstance(stage, PoolSpec):
                pools += 1
                self._add(f"maxpool{pools}", nn.MaxPool2d(stage.kernel_size, stage.stride, ceil_mode=True))
                continue
            naive = reduce_width_mult == "naive"
            reduce = 0.0 if naive else float(reduce_width_mult)  # type: ignore[arg-type]
            block = InceptionBlock(
                channels, width(stage.ch1x1),
                0 if naive else width(stage.ch3x3red * reduce), width(stage.ch3x3),
                0 if naive else width(stage.ch5x5red * reduce), width(stage.ch5x5),
                0 if naive else width(stage.pool_proj * pool_proj_mult),
                kernels=kernels, norm=norm, bn_eps=bn_eps,
            )
            self._add(f"inception{stage.name}", block)
            channels = block.out_channels
            if stage.name in aux_positions:
                aux = self._aux_after[f"inception{stage.name}"] = f"aux{len(self._aux_after) + 1}"
                self.add_module(aux, None)  # its place; built after the trunk (torchvision's order), for a checked size
        self.out_channels = channels
        self.avgpool = GlobalAvgPool() if head == "gap" else nn.Identity()
        self.dropout = nn.Dropout(p=dropout)
        sides = self.check_input(image_size, *training_memory())
        for name, module in self._heads(sides).items():  # the parts whose size follows the input's, once it is checked
            setattr(self, name, module)
        self._init_weights(weight_init or ("kaiming" if norm == "batch" else "caffe"))

    def smallest_input(self) -> int:
        """The smallest input side the network runs at: the one its strides and pools leave a pixel of."""
        return smallest_side(lambda size: self._footprint(size)[0])

    def largest_input(self, memory_bytes: int) -> int:
        """The largest input side whose one-image training footprint fits ``memory_bytes`` (0: none does). The
        footprint is the activations autograd keeps for backward of one image and the parameters (the ``fc`` head's
        and the ``caffe`` aux heads' grow with the input): less than a step needs, so a larger side never fits."""
        return largest_side(lambda size: self._footprint(size)[0], memory_bytes, self.smallest_input())

    def check_input(self, image_size: int, memory_bytes: int, memory: str = "this host's memory") -> dict[str, int]:
        """Refuse an input side the network cannot take in ``memory_bytes`` (``memory`` names them: "GPU 0's
        memory"): ``ArgumentValueError`` naming ``image_size`` and the allowed range. Else the side of each trunk
        module's output."""
        try:
            footprint, sides = self._footprint(image_size)
        except RuntimeError:  # the strides and pools leave no pixel
            footprint, sides = None, {}
        if footprint is None or footprint > memory_bytes:
            smallest, largest = self.smallest_input(), self.largest_input(memory_bytes)
            raise ArgumentValueError(type(self), f"must be in [{smallest}, {largest}]: a smaller input leaves no pixel "
                                     f"after the strides and pools; a larger one's training footprint (one image: "
                                     f"activations kept for backward, parameters) exceeds {memory} "
                                     f"({memory_bytes / 2**30:.1f} GiB)", image_size=image_size)
        return sides

    def _footprint(self, image_size: int) -> tuple[int, dict[str, int]]:
        """One image's training footprint in bytes (:func:`dry_run`'s activations, the parameters) and the side of
        each trunk module's output."""
        trunk = [(name, self.get_submodule(name)) for name in self._order]
        activations, sides = dry_run(trunk, self.in_channels, image_size)
        with torch.device("meta"):
            heads = self._heads(sides)
        return activations + sum(p.nbytes for _, m in (*trunk, *heads.items()) for p in m.parameters()), sides

    def _heads(self, sides: dict[str, int]) -> dict[str, nn.Module]:
        """The aux heads and the classifier for the trunk's output sides: the ``caffe`` aux pool's width and the
        ``fc`` head's follow the input size."""
        heads: dict[str, nn.Module] = {
            aux: InceptionAux(self.get_submodule(block).out_channels, self.num_classes, *self._aux_args,
                              side=sides[block]) for block, aux in self._aux_after.items()}
        last = sides[self._order[-1]]  # N x 1024 x 7 x 7 at 224
        heads["fc"] = nn.Linear(self.out_channels * (last ** 2 if self.head == "fc" else 1), self.num_classes)
        return heads

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self._order.append(name)

    def _stem(self, stem: Stem, in_channels: int, width, norm: Norm, bn_eps: float) -> int:
        if stem == "cifar":  # 32x32 stays 32x32 into 3a; widths of Table 1's conv3 row
            self._add("conv1", BasicConv2d(in_channels, width(192), 3, norm=norm, bn_eps=bn_eps))
            return width(192)
        lrn = norm == "lrn"  # Figure 3: LocalRespNorm after the first pool and after conv3
        self._add("conv1", BasicConv2d(in_channels, width(64), 7, stride=2, norm=norm, bn_eps=bn_eps))  # 112x112
        self._add("maxpool1", nn.MaxPool2d(3, stride=2, ceil_mode=True))  # N x 64 x 56 x 56
        if lrn:
            self._add("lrn1", LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
        self._add("conv2", BasicConv2d(width(64), width(64), 1, norm=norm, bn_eps=bn_eps))
        self._add("conv3", BasicConv2d(width(64), width(192), 3, norm=norm, bn_eps=bn_eps))  # N x 192 x 56 x 56
        if lrn:
            self._add("lrn2", LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
        self._add("maxpool2", nn.MaxPool2d(3, stride=2, ceil_mode=True))  # N x 192 x 28 x 28
        return width(192)

    def _init_weights(self, weight_init: WeightInit) -> None:
        # torchvision's init redraws every conv and linear weight in the order it builds them (trunk, aux heads,
        # classifier: the order they are built here too) and keeps the linear biases PyTorch's default drew
        tops = (*self._order, *self._aux_after.values(), "fc")
        built = [m for top in tops for m in self.get_submodule(top).modules()]
        aux_fc1 = {id(self.get_submodule(aux).fc1) for aux in self._aux_after.values()}
        for m in built if weight_init == "torchvision" else self.modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            if weight_init == "caffe":  # the paper's network: BVLC's reproduction, Caffe's "xavier" (uniform,
                # variance 1 / fan_in) and biases 0.2 but on the classifiers (loss{1,2,3}/classifier: 0). Fan-out init
                # grew the activations ~500x from the stem to 5b (logits' rms 32 at init); the recipe's SGD went to NaN.
                bound = math.sqrt(3 / m.weight[0].numel())
                nn.init.uniform_(m.weight, -bound, bound)
            elif weight_init == "kaiming" and isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)
            if m.bias is not None and weight_init != "torchvision":
                caffe_bias = weight_init == "caffe" and (isinstance(m, nn.Conv2d) or id(m) in aux_fc1)
                nn.init.constant_(m.bias, 0.2 if caffe_bias else 0.0)

    def forward(self, x: Tensor, with_aux: bool | None = None) -> InceptionOutput:
        """``with_aux`` defaults to ``self.training``; pass True to evaluate the aux heads in eval mode."""
        with_aux = self.training if with_aux is None else with_aux
        aux: list[Tensor] = []
        for name in self._order:
            x = getattr(self, name)(x)
            if with_aux and name in self._aux_after:
                aux.append(getattr(self, self._aux_after[name])(x))
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024 (gap) or N x 1024*7*7 (fc)
        return InceptionOutput(self.fc(self.dropout(x)), tuple(aux))


Preset = Literal["paper", "torchvision", "cifar"]

PRESETS: dict[str, dict] = {
    # The paper as it specifies it (and BVLC's reproduction builds it): true 5x5 branches, LRN in the stem, no batch
    # norm, dropout 0.4, the aux heads' 5x5/3 pool.
    "paper": dict(norm="lrn", filter_sizes=(3, 5), aux_pool="caffe"),
    # torchvision.models.googlenet(aux_logits=True): 3x3 in its "5x5" branch (vision#906), BN eps 1e-3,
    # dropout 0.2, a 2x2 pool before 5a and its init (a seed gives its weights).
    "torchvision": dict(norm="batch", bn_eps=1e-3, filter_sizes=(3, 3), dropout=0.2, stages="torchvision",
                        weight_init="torchvision"),
    # GoogLeNet widths on 32x32 inputs (CIFAR): the 3x3-to-192 stem, batch norm, the paper's 5x5 branches.
    "cifar": dict(stem="cifar", norm="batch", filter_sizes=(3, 5), num_classes=10, image_size=32),
}


def googlenet(preset: Preset = "paper", **overrides) -> Inception:
    """A GoogLeNet preset with aux heads on (as in the paper); keyword arguments override any ``Inception`` arg."""
    check_arguments(googlenet, locals())
    return Inception(**{**PRESETS[preset], **overrides})
