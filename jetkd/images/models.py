"""Image models of the benchmarks the distillation methods were made on, in plain torch (no torchvision).

Every model follows one contract: ``model(images) -> logits``, images (B, C, H, W) float32, logits (B, n_class).
Each exposes ``n_class``, ``in_channels``, ``feature_dim`` (width of the last hidden representation),
``classifier`` (the final ``nn.Linear``, whose input is that representation, (B, feature_dim)), ``input_size``
(the nominal (C, H, W) of its benchmark) and ``hint_paths`` (the module paths that are meaningful hint / guided
layers, in depth order). Constructor arguments are plain config values (ints, sequences of ints, floats, one
string for the ReID block type), so ``{"name": "resnet8x4", "n_class": 100}`` builds through the model registry.

Families (registry names in :data:`IMAGE_MODELS`):

* CIFAR ResNets and wide ResNets of the CRD / NORM benchmarks (Tian et al., ICLR 2020, code ``RepDistiller``
  ``models/resnet.py`` and ``models/wrn.py``): :class:`CifarResNet` (``resnet8x4``, ``resnet32x4``,
  ``resnet20``, ``resnet56``, ``resnet110``, ``cifar_resnet``) and :class:`WideResNet` (``wrn_16_2``,
  ``wrn_40_2``, ``wrn_40_1``, ``wrn``). Parameter counts equal RepDistiller's (100 classes): resnet8x4 1,233,540,
  resnet32x4 7,433,860, wrn_16_2 703,284, wrn_40_2 2,255,156 (published 1.23M, 7.43M, 0.70M, 2.26M).
* FitNets (Romero et al., ICLR 2015): the thin-and-deep student :class:`FitNet` (``fitnet_thin``; default the
  19-layer FitNet-4 of the authors' ``cifar10_fitnet19`` configuration) and the wide-and-shallow teacher
  :class:`FitNetTeacher` (``fitnet_teacher``).
* Re-identification: :class:`ReIDResNet` (``reid_resnet``: ResNet-50, ``reid_resnet18``) with the BNNeck head of
  Luo et al., CVPRW 2019 ("Bag of Tricks"), and :func:`batch_hard_triplet_loss` (Hermans et al., 2017).
* 8x8 digits (1 channel): :class:`DigitsCNN` (``digits_cnn``), :class:`DigitsCNNSmall` (``digits_cnn_small``)
  and :class:`DigitsResNet` (``digits_resnet``), each trains in seconds on a CPU.

Residual blocks share one naming, which CDD-style pruning and the taps rely on:
    BasicBlock      conv1, bn1, relu1, conv2, bn2, shortcut, relu     (post-activation, RepDistiller / torchvision)
    Bottleneck      conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3, shortcut, relu
    WideBasicBlock  bn1, relu1, conv1, bn2, relu2, dropout, conv2, shortcut            (pre-activation, WRN)
``shortcut`` is ``nn.Identity()`` when the block keeps shape, else ``nn.Sequential(conv=1x1 conv[, bn=BatchNorm2d])``
(paths ``shortcut.conv``, ``shortcut.bn``); ``relu`` is the block's output activation and its *input* is the
pre-activation residual sum (CRD's ``preact`` features: take it with a forward pre-hook on ``relu``). No ReLU is
in-place, so a tapped tensor is never overwritten later in the forward pass.

Tap values of convolutional layers are (B, C, H, W) feature maps; ``pool`` taps are (B, feature_dim) vectors.
:func:`remap_state_dict` renames RepDistiller, torchvision and reid-strong-baseline checkpoints' keys to these
paths, so their published weights load into these models.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FITNET4_STAGES",
    "FITNET4_WIDTHS",
    "IMAGE_MODELS",
    "BNNeck",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvUnit",
    "DigitsCNN",
    "DigitsCNNSmall",
    "DigitsResNet",
    "FCUnit",
    "FitNet",
    "FitNetTeacher",
    "GlobalPool",
    "Maxout",
    "ReIDResNet",
    "ReIDResNet18",
    "ResNet8x4",
    "ResNet20",
    "ResNet32x4",
    "ResNet56",
    "ResNet110",
    "WRN16x2",
    "WRN40x1",
    "WRN40x2",
    "WideBasicBlock",
    "WideResNet",
    "batch_hard_triplet_loss",
    "pairwise_distances",
    "remap_state_dict",
]


# ============================================================================ building blocks


class Maxout(nn.Module):
    """Maxout over groups of ``pieces`` consecutive channels (Goodfellow et al. 2013; pylearn2's grouping).

    x: (B, C * pieces, ...) -> (B, C, ...), output channel c = max over input channels [c * pieces, (c+1) * pieces).
    """

    def __init__(self, pieces: int):
        super().__init__()
        if pieces < 2:
            raise ValueError(f"maxout needs at least 2 pieces, got {pieces}")
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (x.shape[1] // self.pieces, self.pieces)).amax(2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


def activation(pieces: int) -> nn.Module:
    """ReLU for ``pieces == 1``, else :class:`Maxout` over ``pieces``."""
    return nn.ReLU() if pieces == 1 else Maxout(pieces)


class GlobalPool(nn.Module):
    """Global average (``mode="avg"``) or max (``"max"``) pooling over space: (B, C, H, W) -> (B, C)."""

    def __init__(self, mode: str = "avg"):
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"pooling mode must be 'avg' or 'max', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) if self.mode == "avg" else x.amax((2, 3))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ConvUnit(nn.Module):
    """conv -> [BatchNorm2d] -> ReLU or maxout -> [max pool]: one layer of the plain CNNs.

    x (B, c_in, H, W) -> (B, c_out, H', W'). With ``pieces`` > 1 the convolution has ``c_out * pieces`` output
    channels and maxout takes the max over each group (pylearn2's ``MaxoutConvC01B``, one bias per channel and
    piece). ``pool`` > 1 adds ``MaxPool2d(pool, pool_stride)`` (pool_stride defaults to pool).
    Submodules: ``conv``, ``bn`` (Identity without BatchNorm), ``act``, ``pool`` (Identity without pooling).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, padding: int | None = None, pieces: int = 1,
                 batch_norm: bool = False, pool: int = 1, pool_stride: int | None = None):
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out * pieces, kernel, padding=padding, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(c_out * pieces) if batch_norm else nn.Identity()
        self.act = activation(pieces)
        self.pool = nn.MaxPool2d(pool, pool_stride or pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class FCUnit(nn.Module):
    """Flatten -> Linear -> ReLU or maxout: (B, ...) -> (B, d_out). Submodules: ``linear``, ``act``."""

    def __init__(self, d_in: int, d_out: int, pieces: int = 1):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out * pieces)
        self.act = activation(pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x.flatten(1)))


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def projection(c_in: int, c_out: int, stride: int, batch_norm: bool = True) -> nn.Sequential:
    """The projecting shortcut: ``Sequential(conv=1x1 conv (stride, no bias)[, bn=BatchNorm2d])``."""
    layers = OrderedDict(conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(c_out)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """Post-activation residual block (He et al. 2016; RepDistiller's and torchvision's ``BasicBlock``).

    x (B, c_in, H, W) -> relu(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x)): (B, planes, H / stride, W / stride).
    conv1 carries the stride; ``shortcut`` projects (1x1 conv + BN) when stride or width changes, else Identity.
    ``width``: the inner width (conv1's output channels = bn1's = conv2's input channels; default ``planes``),
    e.g. of a channel-pruned block (:mod:`jetkd.distill.cdd_conv`).
    """

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, width: int | None = None):
        super().__init__()
        width = planes if width is None else width
        self.conv1 = conv3x3(c_in, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(c_in, planes, stride) if stride != 1 or c_in != planes else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck block (torchvision's v1.5 ``Bottleneck``: the stride on the 3x3 convolution).

    x (B, c_in, H, W) -> relu(bn3(conv3(relu2(bn2(conv2(relu1(bn1(conv1(x)))))))) + shortcut(x)):
    (B, 4 * planes, H / stride, W / stride). conv1 and conv3 are 1x1, conv2 3x3.
    """

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = projection(c_in, c_out, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def make_stage(block: type[nn.Module], c_in: int, planes: int, n_blocks: int, stride: int,
               widths: Sequence[int] | None = None) -> nn.Sequential:
    """``n_blocks`` blocks; the first changes width and carries ``stride``. Paths ``<stage>.<i>``.
    ``widths``: the inner width of every block (``n_blocks`` ints, a ``width`` argument of ``block``), or None."""
    extra = [{}] * n_blocks if widths is None else [{"width": int(w)} for w in widths]
    blocks = [block(c_in, planes, stride, **extra[0])]
    blocks += [block(planes * block.expansion, planes, 1, **extra[i]) for i in range(1, n_blocks)]
    return nn.Sequential(*blocks)


def split_block_widths(block_widths: Sequence[int] | None, layers: Sequence[int]) -> list[list[int] | None]:
    """``block_widths`` (one int per residual block, in forward order) split into one list per stage (``layers``
    blocks each); a list of None when ``block_widths`` is None."""
    if block_widths is None:
        return [None] * len(layers)
    if len(block_widths) != sum(layers) or any(int(w) < 1 for w in block_widths):
        raise ValueError(f"block_widths needs {sum(layers)} positive ints (one per residual block), got {tuple(block_widths)}")
    starts = [sum(layers[:k]) for k in range(len(layers) + 1)]
    return [[int(w) for w in block_widths[a:b]] for a, b in itertools.pairwise(starts)]


def init_resnet_(model: nn.Module) -> None:
    """RepDistiller's / torchvision's initialisation: convolutions Kaiming-normal (fan_out, ReLU), BatchNorm
    weight 1 and bias 0; Linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ============================================================================ CIFAR ResNets (CRD / NORM benchmarks)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (He et al. 2016, Sec. 4.2) as in RepDistiller's ``models/resnet.py``.

    Stem 3x3 conv (``widths[0]`` channels) -> BN -> ReLU, then three stages of n :class:`BasicBlock` with
    ``widths[1:]`` channels, strides 1, 2, 2, global average pooling and ``classifier``. RepDistiller's
    ``resnet<d>`` use widths (16, 16, 32, 64); the "x4" variants (32, 64, 128, 256), so their first stage
    starts with a projecting shortcut. Input (B, in_channels, 32, 32) -> logits (B, n_class); other sizes work
    too (global pooling), stage maps are then H, H/2, H/4.

    Module paths (for forward hooks), with the shapes for a 32x32 input:
        conv1, bn1, relu   stem                                           relu: (B, widths[0], 32, 32)
        layer1             nn.Sequential of BasicBlock                    (B, widths[1], 32, 32)  hint/guided
        layer2             nn.Sequential of BasicBlock                    (B, widths[2], 16, 16)  hint/guided
        layer3             nn.Sequential of BasicBlock                    (B, widths[3], 8, 8)    hint/guided
        layer<k>.<i>       BasicBlock (conv1, bn1, relu1, conv2, bn2, shortcut, relu)
        pool               GlobalPool                                     (B, feature_dim): last hidden representation
        classifier         nn.Linear                                      (B, feature_dim) -> (B, n_class)
    ``layer<k>`` is the output of the stage's last block, after its ReLU (CRD's ``feat[k]``; CRD's ``preact``
    features are the input of ``layer<k>.<last>.relu``). ``pool`` is CRD's ``feat[-1]``, the representation
    CRD / NORM distil. Deviation: RepDistiller pools with a fixed ``AvgPool2d(8)``, equal to global pooling for
    32x32 inputs only.

    ``block_widths``: the inner width (conv1 / bn1 / conv2's input channels) of each of the 3n BasicBlocks, in
    forward order (``layer1.0`` .. ``layer3.<n-1>``); None: each block's ``planes`` (the architecture above).
    The residual stream (stem, stage widths, shortcuts, conv2's outputs) keeps ``widths``. A CDD-pruned student
    is this class with narrower blocks (:mod:`jetkd.distill.cdd_conv`).
    """

    def __init__(self, depth: int = 32, widths: Sequence[int] = (16, 16, 32, 64), n_class: int = 100,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must give the stem and three stages (4 ints), got {tuple(widths)}")
        n = (depth - 2) // 6
        inner = split_block_widths(block_widths, (n, n, n))
        self.n_class, self.in_channels, self.depth = n_class, in_channels, depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = make_stage(BasicBlock, widths[0], widths[1], n, 1, inner[0])
        self.layer2 = make_stage(BasicBlock, widths[1], widths[2], n, 2, inner[1])
        self.layer3 = make_stage(BasicBlock, widths[2], widths[3], n, 2, inner[2])
        self.pool = GlobalPool("avg")
        self.feature_dim = widths[3]
        self.classifier = nn.Linear(self.feature_dim, n_class)
        self.input_size = (in_channels, 32, 32)
        self.hint_paths = ("layer1", "layer2", "layer3", "pool")
        init_resnet_(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.pool(x))


class ResNet8x4(CifarResNet):
    """RepDistiller's ``resnet8x4``: depth 8, widths (32, 64, 128, 256); 1,233,540 parameters at 100 classes
    (CRD / NORM tables: 1.23M). The usual student of ``resnet32x4``."""

    def __init__(self, depth: int = 8, widths: Sequence[int] = (32, 64, 128, 256), n_class: int = 100,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None):
        super().__init__(depth, widths, n_class, in_channels, block_widths)


class ResNet32x4(CifarResNet):
    """RepDistiller's ``resnet32x4``: depth 32, widths (32, 64, 128, 256); 7,433,860 parameters at 100 classes
    (CRD / NORM tables: 7.43M)."""

    def __init__(self, depth: int = 32, widths: Sequence[int] = (32, 64, 128, 256), n_class: int = 100,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None):
        super().__init__(depth, widths, n_class, in_channels, block_widths)


class ResNet20(CifarResNet):
    """RepDistiller's ``resnet20``: depth 20, widths (16, 16, 32, 64); 278,324 parameters at 100 classes (0.28M)."""

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 16, 32, 64), n_class: int = 100,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None):
        super().__init__(depth, widths, n_class, in_channels, block_widths)


class ResNet56(CifarResNet):
    """RepDistiller's ``resnet56``: depth 56, widths (16, 16, 32, 64); 861,620 parameters at 100 classes (0.86M)."""

    def __init__(self, depth: int = 56, widths: Sequence[int] = (16, 16, 32, 64), n_class: int = 100,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None):
        super().__init__(depth, widths, n_class, in_channels, block_widths)


class ResNet110(CifarResNet):
    """RepDistiller's ``resnet110``: depth 110, widths (16, 16, 32, 64); 1,736,564 parameters at 100 classes
    (1.74M)."""

    def __init__(self, depth: int = 110, widths: Sequence[int] = (16, 16, 32, 64), n_class: int = 100,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None):
        super().__init__(depth, widths, n_class, in_channels, block_widths)


# ============================================================================ wide ResNets


class WideBasicBlock(nn.Module):
    """Pre-activation wide-ResNet block (Zagoruyko & Komodakis 2016), as in RepDistiller's ``models/wrn.py``.

    x (B, c_in, H, W) -> (B, c_out, H / stride, W / stride):
        a = relu1(bn1(x));  y = conv2(dropout(relu2(bn2(conv1(a)))))
        out = x + y             if c_in == c_out (``shortcut`` is Identity; the raw input is added)
        out = shortcut(a) + y   otherwise (``shortcut.conv``: 1x1 conv with the stride, no BatchNorm; it takes
                                the *activated* input, as the reference code does)
    The output is not activated (the next block's bn1/relu1, or the network's final bn/relu, do it). As in the
    reference, a block whose width is kept keeps its stride on conv1 but adds x unstrided, so a strided block
    must change width (true of every WRN stage).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(c_out, c_out)
        self.shortcut = nn.Identity() if c_in == c_out else projection(c_in, c_out, stride, batch_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        y = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(a)))))
        return (x if isinstance(self.shortcut, nn.Identity) else self.shortcut(a)) + y


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR (depth 6n + 4), as in RepDistiller's ``models/wrn.py`` (dropout 0 there).

    Stem 3x3 conv (16 channels) -> three stages of n :class:`WideBasicBlock` with 16k, 32k, 64k channels,
    strides 1, 2, 2 -> final BatchNorm -> ReLU -> global average pooling -> ``classifier``.
    Input (B, in_channels, 32, 32) -> logits (B, n_class).

    Module paths, shapes for a 32x32 input (k = widen_factor):
        conv1              stem                          (B, 16, 32, 32)
        layer1             nn.Sequential of WideBasicBlock  (B, 16k, 32, 32)  hint/guided (pre-activation sum)
        layer2                                              (B, 32k, 16, 16)  hint/guided
        layer3                                              (B, 64k, 8, 8)    hint/guided
        layer<k>.<i>       WideBasicBlock (bn1, relu1, conv1, bn2, relu2, dropout, conv2, shortcut)
        bn, relu           final BatchNorm and ReLU      (B, 64k, 8, 8)
        pool               GlobalPool                    (B, feature_dim = 64k): last hidden representation
        classifier         nn.Linear                     (B, feature_dim) -> (B, n_class)
    ``layer<k>`` are CRD's ``feat[k]`` (un-activated); CRD's ``preact`` versions are the outputs of
    ``layer2.0.bn1``, ``layer3.0.bn1`` and ``bn``. RepDistiller's names: ``block<k>.layer.<i>`` = ``layer<k>.<i>``,
    ``convShortcut`` = ``shortcut.conv``, top-level ``bn1`` = ``bn``, ``fc`` = ``classifier``
    (:func:`remap_state_dict`). Deviation: global average pooling instead of a fixed ``avg_pool2d(8)``.
    """

    def __init__(self, depth: int = 40, widen_factor: int = 2, n_class: int = 100, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.n_class, self.in_channels, self.depth, self.widen_factor = n_class, in_channels, depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        for k, stride in ((1, 1), (2, 2), (3, 2)):
            blocks = [WideBasicBlock(widths[k - 1] if i == 0 else widths[k], widths[k], stride if i == 0 else 1, dropout)
                      for i in range(n)]
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = GlobalPool("avg")
        self.feature_dim = widths[3]
        self.classifier = nn.Linear(self.feature_dim, n_class)
        self.input_size = (in_channels, 32, 32)
        self.hint_paths = ("layer1", "layer2", "layer3", "pool")
        # RepDistiller's initialisation: conv N(0, 2 / (k*k*c_out)) (= Kaiming fan_out), BN 1/0, Linear bias 0.
        init_resnet_(self)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(images))))
        return self.classifier(self.pool(self.relu(self.bn(x))))


class WRN16x2(WideResNet):
    """RepDistiller's ``wrn_16_2``: 703,284 parameters at 100 classes (CRD / NORM tables: 0.70M)."""

    def __init__(self, depth: int = 16, widen_factor: int = 2, n_class: int = 100, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__(depth, widen_factor, n_class, in_channels, dropout)


class WRN40x2(WideResNet):
    """RepDistiller's ``wrn_40_2``: 2,255,156 parameters at 100 classes (CRD / NORM tables: 2.26M)."""

    def __init__(self, depth: int = 40, widen_factor: int = 2, n_class: int = 100, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__(depth, widen_factor, n_class, in_channels, dropout)


class WRN40x1(WideResNet):
    """RepDistiller's ``wrn_40_1``: 569,780 parameters at 100 classes (0.57M)."""

    def __init__(self, depth: int = 40, widen_factor: int = 1, n_class: int = 100, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__(depth, widen_factor, n_class, in_channels, dropout)


# ============================================================================ FitNets


# FitNet-4, the paper's 19-layer CIFAR-10 student (2.5M parameters in its Table 1), layer by layer from the authors'
# configuration yaml/cifar10_fitnet19_all.yaml (github.com/adri-romsor/FitNets): 17 3x3 convolutions h0..h16,
# 2x2 max pools after h4 and h10, an 8x8 max pool after h16, a 500-unit maxout layer and the softmax.
FITNET4_WIDTHS = (32, 32, 32, 48, 48, 80, 80, 80, 80, 80, 80, 128, 128, 128, 128, 128, 128)
FITNET4_STAGES = (5, 6, 6)


class FitNet(nn.Module):
    """Thin and deep CIFAR student of FitNets (Romero et al. 2015), configurable layer by layer.

    ``widths`` gives the channels of every 3x3 convolution (padding 1), ``stage_sizes`` how many convolutions
    each stage has; a 2x2 max pool (stride 2) ends every stage but the last, which ends in global max pooling.
    Then ``fc`` (``fc_units`` units; none if 0) and ``classifier``. Input (B, in_channels, 32, 32) -> (B, n_class).
    The default is FitNet-4 (17 convolutions 32-32-32-48-48 | 80 x 6 | 128 x 6, fc 500: the paper's 19 layers);
    smaller FitNets are other ``widths`` / ``stage_sizes``, e.g. ``widths=(16, 16, 16, 32, 32, 32, 48, 48, 48)``,
    ``stage_sizes=(3, 3, 3)``. Parameters at 10 classes: 1,276,806 with ReLU (the default); 2,742,102 with the
    paper's maxout (2 pieces, fc 5 pieces), of which 2,736,712 weights -- the authors' counting rule
    (``scripts/computeNumberParams.py``, weights only) applied to their configuration; the paper's table says
    ~2.5M.

    Module paths (32x32 input, FitNet-4):
        layer<s>           nn.Sequential of ConvUnit; its output is the stage's pooled map    hint/guided
        layer<s>.<j>       ConvUnit (conv, bn, act, pool): the paper's layer h<i>, i counting convolutions from 0
                           (``layer1.0`` = h0 ... ``layer2.5`` = h10, ``layer3.5`` = h16)
        layer1 (B, 48, 16, 16); layer2 (B, 80, 8, 8); layer3 (B, 128, 8, 8)
        pool               GlobalPool("max")   (B, widths[-1])
        fc                 FCUnit (linear, act) (B, fc_units), Identity if fc_units == 0
        classifier         nn.Linear            (B, feature_dim) -> (B, n_class)
    The paper's guided layer for FitNet-4 is h10 = ``layer2.5`` = ``layer2`` (the authors' ``hints: [[10, 1]]``:
    student h10 guided by teacher h1 = :class:`FitNetTeacher` ``layer2``: (B, 80, 8, 8) against (B, 192, 6, 6),
    the paper's convolutional regressor being a 3x3 valid convolution).

    Differences from the paper, exactly:
      * ReLU instead of maxout by default (``maxout_pieces=1``; the paper: maxout with 2 pieces per
        convolution, ``fc_maxout_pieces`` 5 in the fc layer; set ``maxout_pieces=2, fc_maxout_pieces=5`` for
        that). With maxout the convolutions have ``width * pieces`` channels and one bias per channel and piece
        (pylearn2's tied biases), so the parameter count is the authors' count plus biases.
      * No max-norm constraints on the weights (paper: kernel norm <= 0.9, column norm <= 1.9 / 1.94), no
        GCN / ZCA input whitening (a data matter), PyTorch's Kaiming-normal initialisation instead of
        uniform(-0.005, 0.005), and optional BatchNorm (``batch_norm``, off by default; the paper has none).
      * The last pool is global (the paper: an 8x8 pool on the 8x8 map of a 32x32 input: the same there).
      * Only FitNet-4's layer table is reproduced (from the authors' configuration); FitNet-1..3 are other
        ``widths`` the user gives.
    """

    def __init__(self, widths: Sequence[int] = FITNET4_WIDTHS, stage_sizes: Sequence[int] = FITNET4_STAGES,
                 fc_units: int = 500, n_class: int = 10, in_channels: int = 3, maxout_pieces: int = 1,
                 fc_maxout_pieces: int = 1, batch_norm: bool = False):
        super().__init__()
        if sum(stage_sizes) != len(widths) or min(stage_sizes, default=0) < 1:
            raise ValueError(f"stage_sizes {tuple(stage_sizes)} must be positive and sum to len(widths) = {len(widths)}")
        self.n_class, self.in_channels = n_class, in_channels
        c_in, start = in_channels, 0
        for s, size in enumerate(stage_sizes):
            last_stage = s == len(stage_sizes) - 1
            units = []
            for j, width in enumerate(widths[start:start + size]):
                pool = 2 if j == size - 1 and not last_stage else 1
                units.append(ConvUnit(c_in, width, 3, 1, maxout_pieces, batch_norm, pool))
                c_in = width
            self.add_module(f"layer{s + 1}", nn.Sequential(*units))
            start += size
        self.n_stages = len(stage_sizes)
        self.pool = GlobalPool("max")
        self.fc = FCUnit(c_in, fc_units, fc_maxout_pieces) if fc_units else nn.Identity()
        self.feature_dim = fc_units or c_in
        self.classifier = nn.Linear(self.feature_dim, n_class)
        self.input_size = (in_channels, 32, 32)
        self.hint_paths = (*(f"layer{s + 1}" for s in range(self.n_stages)), "pool", *(("fc",) if fc_units else ()))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for s in range(self.n_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.classifier(self.fc(self.pool(x)))


class FitNetTeacher(nn.Module):
    """Wide and shallow CIFAR teacher in the role of FitNets' teacher, without maxout.

    The layout of the maxout network FitNets distils from (Goodfellow et al. 2013, pylearn2
    ``scripts/papers/maxout/cifar10.yaml``): three convolutions of 96, 192, 192 channels with 8x8, 8x8, 5x5
    kernels, paddings 4, 3, 3, each followed by max pooling 4x4/2, 4x4/2, 2x2/2, then a 500-unit fully
    connected layer on the flattened map and the classifier. Input (B, in_channels, image_size, image_size).
    With the defaults (ReLU, 10 classes, 32x32) 3,661,670 parameters; the maps are 15x15, 6x6, 4x4.

    Module paths:
        layer1, layer2, layer3   ConvUnit (conv, bn, act, pool): (B, 96, 15, 15), (B, 192, 6, 6), (B, 192, 4, 4)
                                 hint layers; FitNets' hint is the teacher's h1 = ``layer2``
        fc                       FCUnit (linear, act) on the flattened layer3 map: (B, feature_dim = fc_units)
        classifier               nn.Linear (B, feature_dim) -> (B, n_class)

    Differences from the maxout teacher: ReLU by default (``maxout_pieces=1``, ``fc_maxout_pieces=1``; 2 and 5
    give the maxout network: 11,927,830 parameters here; FitNets reports 9M for its teacher, whose exact
    layout we do not have), PyTorch's floor-mode pooling (cuda-convnet's pooling also covers the
    border: 16, 7, 5 maps there by our reading), no dropout on the input, no max-norm constraints, optional BatchNorm.
    """

    def __init__(self, widths: Sequence[int] = (96, 192, 192), kernels: Sequence[int] = (8, 8, 5),
                 paddings: Sequence[int] = (4, 3, 3), pools: Sequence[int] = (4, 4, 2), pool_strides: Sequence[int] = (2, 2, 2),
                 fc_units: int = 500, n_class: int = 10, in_channels: int = 3, image_size: int = 32,
                 maxout_pieces: int = 1, fc_maxout_pieces: int = 1, batch_norm: bool = False):
        super().__init__()
        if not len(widths) == len(kernels) == len(paddings) == len(pools) == len(pool_strides) >= 1:
            raise ValueError("widths, kernels, paddings, pools and pool_strides need one entry per layer")
        self.n_class, self.in_channels, self.n_layers = n_class, in_channels, len(widths)
        c_in, size = in_channels, image_size
        for i, (w, k, p, pk, ps) in enumerate(zip(widths, kernels, paddings, pools, pool_strides)):
            self.add_module(f"layer{i + 1}", ConvUnit(c_in, w, k, p, maxout_pieces, batch_norm, pk, ps))
            size = size + 2 * p - k + 1
            size = (size - pk) // ps + 1 if pk > 1 else size
            if size < 1:
                raise ValueError(f"image_size {image_size} is too small for these layers")
            c_in = w
        self.fc = FCUnit(c_in * size * size, fc_units, fc_maxout_pieces)
        self.feature_dim = fc_units
        self.classifier = nn.Linear(self.feature_dim, n_class)
        self.input_size = (in_channels, image_size, image_size)
        self.hint_paths = (*(f"layer{i + 1}" for i in range(self.n_layers)), "fc")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for i in range(self.n_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.classifier(self.fc(x))


# ============================================================================ re-identification


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose shift is fixed at zero (Luo et al. 2019's BNNeck): ``bias`` is a zero buffer, not a
    parameter, so no optimiser or weight decay can move it, and ``state_dict`` keeps the key ``bias`` (loads the
    reid-strong-baseline checkpoints, whose bias is frozen at zero). x (B, D) -> (B, D)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps, momentum, affine=True)
        del self.bias
        self.register_buffer("bias", torch.zeros(num_features))


class ReIDResNet(nn.Module):
    """ResNet backbone with the BNNeck head of Luo et al. 2019 ("Bag of Tricks and a Strong Baseline for Deep
    Person Re-identification") for re-identification.

    Backbone (torchvision's ResNet layout, plain torch): 7x7/2 stem conv (``stem_width``) -> BN -> ReLU ->
    3x3/2 max pool -> four stages of ``block`` ("basic" or "bottleneck") with ``layers`` blocks and ``widths``
    planes, strides 1, 2, 2, ``last_stride`` (1 in Bag of Tricks: a 16x8 map for 256x128 images). Head:
    global average pooling -> f_t (B, D), the feature of the triplet loss -> ``bottleneck`` (BatchNorm1d without
    bias, :class:`BNNeck`) -> f_i (B, D) -> ``classifier`` (Linear without bias, N(0, 0.001) init) -> ID logits.
    D = feature_dim = widths[-1] * expansion (2048 for ResNet-50, 512 for ResNet-18).

    ``model(images)`` -> ID logits (B, n_class); ``model.embed(images)`` -> (B, D) the retrieval embedding:
    f_i, the post-BN feature, as the paper uses at inference (``embed_feature="before"`` gives f_t instead);
    call ``model.eval()`` first, so the BNNeck uses its running statistics. ``model.forward_features(images)``
    -> (f_t, f_i) for a trainer that adds :func:`batch_hard_triplet_loss` on f_t.
    Defaults: ResNet-50 (bottleneck, (3, 4, 6, 3), widths (64, 128, 256, 512)), 751 classes (Market-1501
    training identities): backbone 23,508,032 parameters as torchvision's resnet50 without its fc.
    A tiny one for tests: ``ReIDResNet(block="basic", layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_width=8)``.
    ``block_widths`` (basic blocks only): the inner width of every block in forward order, as in
    :class:`CifarResNet`; None: each block's ``planes``.

    Module paths (shapes for a 256x128 input, ResNet-50):
        conv1, bn1, relu, maxpool   stem                               (B, 64, 64, 32)
        layer1 .. layer4            nn.Sequential of blocks            (B, 256, 64, 32) ... (B, 2048, 16, 8) hint/guided
        layer<k>.<i>                BasicBlock / Bottleneck
        pool                        GlobalPool: f_t                    (B, D)   triplet-loss feature
        bottleneck                  BNNeck: f_i                        (B, D)   retrieval embedding
        classifier                  nn.Linear(D, n_class, bias=False)
    Not here: ImageNet pre-training (load torchvision weights through :func:`remap_state_dict`), the paper's
    centre loss, label smoothing and random erasing (training / data matters).
    """

    def __init__(self, n_class: int = 751, block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3),
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, last_stride: int = 1,
                 in_channels: int = 3, embed_feature: str = "after", block_widths: Sequence[int] | None = None,
                 triplet_margin: float | None = 0.3, triplet_weight: float = 1.0):
        super().__init__()
        self.triplet_margin, self.triplet_weight = triplet_margin, triplet_weight
        self._f_t: torch.Tensor | None = None  # the latest training forward's f_t, for auxiliary_loss
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("layers and widths need 4 entries (the four stages)")
        if embed_feature not in ("after", "before"):
            raise ValueError(f"embed_feature must be 'after' (post-BN f_i) or 'before' (f_t), got {embed_feature!r}")
        if block_widths is not None and block != "basic":
            raise ValueError("block_widths sets the inner width of basic blocks; bottleneck blocks have two")
        inner = split_block_widths(block_widths, layers)
        kind = blocks[block]
        self.n_class, self.in_channels, self.embed_feature = n_class, in_channels, embed_feature
        self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = stem_width
        for k, (n, planes, stride) in enumerate(zip(layers, widths, (1, 2, 2, last_stride))):
            self.add_module(f"layer{k + 1}", make_stage(kind, c_in, planes, n, stride, inner[k]))
            c_in = planes * kind.expansion
        self.pool = GlobalPool("avg")
        self.feature_dim = c_in
        self.bottleneck = BNNeck(c_in)
        self.classifier = nn.Linear(c_in, n_class, bias=False)
        self.input_size = (in_channels, 256, 128)
        self.hint_paths = ("layer1", "layer2", "layer3", "layer4", "pool", "bottleneck")
        init_resnet_(self)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage's map (B, D, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_t, f_i): the pooled feature (B, D) and its BNNeck-normalised form (B, D)."""
        f_t = self.pool(self.backbone(images))
        return f_t, self.bottleneck(f_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f_t, f_i = self.forward_features(images)
        self._f_t = f_t if self.training else None
        return self.classifier(f_i)

    def auxiliary_loss(self, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``triplet_weight`` x the batch-hard triplet loss on f_t of the latest training forward (Luo et al. 2019:
        ID loss on the BNNeck output, triplet loss before it); the trainer adds it to any method's loss. Batches
        need several images per identity: train with ``data.identities_per_batch``."""
        if self._f_t is None or not self.triplet_weight:
            return torch.zeros(()), {}
        loss = batch_hard_triplet_loss(self._f_t.float(), labels, self.triplet_margin)
        self._f_t = None
        return self.triplet_weight * loss, {"triplet": loss.item()}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding (B, D): f_i (post-BN) by default, f_t if ``embed_feature == "before"``."""
        f_t, f_i = self.forward_features(images)
        return f_i if self.embed_feature == "after" else f_t


class ReIDResNet18(ReIDResNet):
    """:class:`ReIDResNet` with a ResNet-18 backbone (basic blocks (2, 2, 2, 2); 11,176,512 backbone parameters as
    torchvision's resnet18 without fc; D = 512): the usual re-identification student."""

    def __init__(self, n_class: int = 751, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, last_stride: int = 1,
                 in_channels: int = 3, embed_feature: str = "after", block_widths: Sequence[int] | None = None,
                 triplet_margin: float | None = 0.3, triplet_weight: float = 1.0):
        super().__init__(n_class, block, layers, widths, stem_width, last_stride, in_channels, embed_feature,
                         block_widths, triplet_margin, triplet_weight)


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances (B, B) between the rows of x (B, D), ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, eps))``: the
    clamp keeps the gradient finite at zero distance (the diagonal is ~sqrt(eps), not exactly 0)."""
    x = x.float()
    sq = (x * x).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp(min=eps).sqrt()


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    embeddings: (B, D); labels: (B,) int. For every anchor a, the hardest positive is the farthest sample of its
    class (itself when it is alone: distance ~0) and the hardest negative the nearest of another class, in
    Euclidean distance (:func:`pairwise_distances`):
        loss = mean_a max(0, margin + d(a, p_hard) - d(a, n_hard))         (margin a float; Bag of Tricks: 0.3)
        loss = mean_a log(1 + exp(d(a, p_hard) - d(a, n_hard)))            (margin None: the soft margin)
    Anchors without any negative in the batch are left out; 0 (with a gradient path) if none is left.
    Returns a scalar (float32 at least).
    """
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be (B, D) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    dist = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    d_an = dist.masked_fill(same, float("inf")).amin(1)
    valid = ~same.all(1)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    diff = d_ap[valid] - d_an[valid]
    loss = F.softplus(diff) if margin is None else F.relu(diff + margin)
    return loss.mean()


# ============================================================================ 8x8 digits


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 single-channel digit images (scikit-learn's digits): the teacher of the digits benchmark.

    One 3x3 ConvUnit (conv -> BatchNorm2d -> ReLU) per entry of ``widths``, a 2x2 max pool after every unit but
    the first (8x8 -> 8x8 -> 4x4 -> 2x2 ...), global average pooling, ``fc`` (``hidden`` units, Linear -> ReLU;
    Identity if 0), ``classifier``. Input (B, in_channels, 8, 8) -> (B, n_class). Defaults: widths (32, 64),
    hidden 128, 10 classes: 28,522 parameters.

    Module paths:
        layer<k>     ConvUnit (conv, bn, act, pool)   layer1 (B, 32, 8, 8), layer2 (B, 64, 4, 4)   hint/guided
        pool         GlobalPool("avg")                 (B, widths[-1])
        fc           FCUnit (linear, act) or Identity  (B, feature_dim)
        classifier   nn.Linear                         (B, feature_dim) -> (B, n_class)
    """

    def __init__(self, widths: Sequence[int] = (32, 64), hidden: int = 128, n_class: int = 10, in_channels: int = 1):
        super().__init__()
        if len(widths) < 1:
            raise ValueError("widths needs at least one entry")
        self.n_class, self.in_channels, self.n_layers = n_class, in_channels, len(widths)
        c_in = in_channels
        for k, w in enumerate(widths):
            self.add_module(f"layer{k + 1}", ConvUnit(c_in, w, 3, 1, 1, True, 2 if k else 1))
            c_in = w
        self.pool = GlobalPool("avg")
        self.fc = FCUnit(c_in, hidden) if hidden else nn.Identity()
        self.feature_dim = hidden or c_in
        self.classifier = nn.Linear(self.feature_dim, n_class)
        self.input_size = (in_channels, 8, 8)
        self.hint_paths = (*(f"layer{k + 1}" for k in range(self.n_layers)), "pool", *(("fc",) if hidden else ()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for k in range(self.n_layers):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.classifier(self.fc(self.pool(x)))


class DigitsCNNSmall(DigitsCNN):
    """:class:`DigitsCNN` with widths (8, 16) and no hidden fc: the digits student, 1,442 parameters."""

    def __init__(self, widths: Sequence[int] = (8, 16), hidden: int = 0, n_class: int = 10, in_channels: int = 1):
        super().__init__(widths, hidden, n_class, in_channels)


class DigitsResNet(CifarResNet):
    """A tiny :class:`CifarResNet` for 8x8 digits: depth 8, widths (8, 8, 16, 32), 1 channel; stage maps 8x8, 4x4,
    2x2; 19,810 parameters at 10 classes. Same module paths as :class:`CifarResNet`."""

    def __init__(self, depth: int = 8, widths: Sequence[int] = (8, 8, 16, 32), n_class: int = 10, in_channels: int = 1,
                 block_widths: Sequence[int] | None = None):
        super().__init__(depth, widths, n_class, in_channels, block_widths)
        self.input_size = (in_channels, 8, 8)


# ============================================================================ checkpoints of the reference code

_RENAMES = {
    # RepDistiller resnet.py / torchvision / reid-strong-baseline: downsample.0 / .1 -> shortcut.conv / .bn
    "resnet": ((r"\.downsample\.0\.", ".shortcut.conv."), (r"\.downsample\.1\.", ".shortcut.bn."), (r"^fc\.", "classifier.")),
    # RepDistiller wrn.py
    "wrn": ((r"^block(\d)\.layer\.", r"layer\1."), (r"\.convShortcut\.", ".shortcut.conv."), (r"^bn1\.", "bn."),
            (r"^fc\.", "classifier.")),
}


def remap_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A reference checkpoint's state dict with its keys renamed to this module's paths.

    source: ``"repdistiller_resnet"`` (``models/resnet.py``: :class:`CifarResNet`), ``"repdistiller_wrn"``
    (``models/wrn.py``: :class:`WideResNet`), ``"torchvision"`` (``resnet18/50``: :class:`ReIDResNet`; the
    ImageNet ``fc`` is dropped) or ``"reid_strong_baseline"`` (Luo et al.'s ``Baseline``: ``base.`` prefix
    stripped; ``bottleneck`` and ``classifier`` keep their names). Tensors are not copied. Load the result with
    ``model.load_state_dict(..., strict=source != "torchvision")``.
    """
    if source == "repdistiller_resnet":
        rules, drop = _RENAMES["resnet"], ()
    elif source == "repdistiller_wrn":
        rules, drop = _RENAMES["wrn"], ()
    elif source == "torchvision":
        rules, drop = _RENAMES["resnet"][:2], (r"^fc\.",)
    elif source == "reid_strong_baseline":
        rules, drop = ((r"^base\.", ""), *_RENAMES["resnet"][:2]), (r"^base\.fc\.",)
    else:
        raise ValueError(f"unknown source {source!r}: repdistiller_resnet, repdistiller_wrn, torchvision, reid_strong_baseline")
    out = {}
    for key, value in state_dict.items():
        if any(re.search(d, key) for d in drop):
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


# ============================================================================ registry

IMAGE_MODELS: dict[str, type[nn.Module]] = {
    "cifar_resnet": CifarResNet,
    "resnet8x4": ResNet8x4,
    "resnet32x4": ResNet32x4,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "resnet110": ResNet110,
    "wrn": WideResNet,
    "wrn_16_2": WRN16x2,
    "wrn_40_2": WRN40x2,
    "wrn_40_1": WRN40x1,
    "fitnet_thin": FitNet,
    "fitnet_teacher": FitNetTeacher,
    "reid_resnet": ReIDResNet,
    "reid_resnet18": ReIDResNet18,
    "digits_cnn": DigitsCNN,
    "digits_cnn_small": DigitsCNNSmall,
    "digits_resnet": DigitsResNet,
}
