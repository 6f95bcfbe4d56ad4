"""ResNets for 32x32 images with depth as a parameter (He et al. 2016; HyPar-Flow's models).

* ``6n+2`` layers of basic blocks (two 3x3 convolutions): ResNet-20 (n=3), -56, -110 (n=18).
* ``9n+2`` layers of pre-activation bottleneck blocks (1x1, 3x3, 1x1, expansion 4):
  ResNet-164 (n=18), ResNet-1001 (n=111), as used in the HyPar-Flow study.

Three stages of ``n`` blocks at 16, 32, 64 base channels (the bottleneck stages output 4x
that), strides 1, 2, 2, global average pooling and a linear classifier. Shapes: input
``(batch, in_channels, 32, 32)`` (other sizes work; the pooling is adaptive), output
``(batch, num_classes)`` logits. ``norm`` chooses ``"batch"`` (the published models),
``"group"`` (per-sample statistics, so micro-batching and replicas give exactly the same
gradients as whole-batch training) or ``"none"``.

The model is traceable with ``torch.fx``, so ``oncoscale.parallel`` can split it anywhere,
including inside a block with the identity branch crossing the cut.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from oncoscale.errors import ConfigurationError

__all__ = ["ResNet", "resnet_depths"]

NORMS = ("batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``.

    ``(b, c_in, h, w) -> (b, c_out, h/stride, w/stride)``.
    """

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=norm == "none")
        self.bn1 = _norm(norm, c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=norm == "none")
        self.bn2 = _norm(norm, c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Pre-activation bottleneck block (He et al., "Identity mappings", ResNet-164/-1001).

    ``(b, c_in, h, w) -> (b, 4 * planes, h/stride, w/stride)``.
    """

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = _norm(norm, c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=norm == "none")
        self.bn2 = _norm(norm, planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=norm == "none")
        self.bn3 = _norm(norm, planes)
        self.relu3 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + self.shortcut(x)


def resnet_depths(block: str) -> str:
    """The depth rule of ``block``: ``"6n+2"`` (basic) or ``"9n+2"`` (bottleneck)."""
    return "6n+2" if block == "basic" else "9n+2"


class ResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs.

    Parameters
    ----------
    depth:
        Number of weighted layers: ``6n+2`` for basic blocks (20, 32, 44, 56, 110, ...),
        ``9n+2`` for bottleneck blocks (164, 1001, ...).
    num_classes, in_channels:
        Classifier outputs and image channels.
    block:
        ``"basic"``, ``"bottleneck"`` or ``"auto"`` (bottleneck for depth >= 164 when
        ``depth = 9n+2``, else basic).
    norm:
        ``"batch"``, ``"group"`` or ``"none"``.
    width:
        Channels of the first stage (16 in the paper); stages use ``width * (1, 2, 4)``.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, *, in_channels: int = 3,
                 block: str = "auto", norm: str = "batch", width: int = 16) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8:
            raise ConfigurationError(f"depth: expected an integer >= 8, found {depth!r}")
        if norm not in NORMS:
            raise ConfigurationError(f"norm: expected one of {NORMS}, found {norm!r}")
        if block == "auto":
            block = "bottleneck" if depth >= 164 and (depth - 2) % 9 == 0 else "basic"
        if block == "basic" and (depth - 2) % 6 == 0:
            n, unit, exp = (depth - 2) // 6, BasicBlock, 1
        elif block == "bottleneck" and (depth - 2) % 9 == 0:
            n, unit, exp = (depth - 2) // 9, Bottleneck, 4
        elif block in ("basic", "bottleneck"):
            examples = "20, 56, 110" if block == "basic" else "164, 1001"
            raise ConfigurationError(
                f"depth {depth} does not fit {block} blocks: expected depth = "
                f"{resnet_depths(block)} (e.g. {examples})")
        else:
            raise ConfigurationError(
                f"block: expected 'basic', 'bottleneck' or 'auto', found {block!r}")
        self.depth, self.block, self.norm_kind, self.blocks_per_stage = depth, block, norm, n
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm == "none")
        pre = unit is Bottleneck
        self.bn1 = nn.Identity() if pre else _norm(norm, width)
        self.relu1 = nn.Identity() if pre else nn.ReLU()
        layers = []
        c_in = width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(unit(c_in, planes, stride, norm))
                c_in = planes * exp
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn_final = _norm(norm, c_in) if pre else nn.Identity()
        self.relu_final = nn.ReLU() if pre else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_channels, 32, 32) -> (batch, num_classes)``."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu_final(self.bn_final(x))
        return self.fc(torch.flatten(self.pool(x), 1))
