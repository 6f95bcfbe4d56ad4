"""Decode an architecture genome (plain layer specs) into an ``nn.Module`` with shape inference.

The genome is given as plain data so that ``models`` does not depend on ``nas``::

    layers = [{"type": "conv", "filters": 16, "kernel": 3, "stride": 1, "act": "relu"},
              {"type": "bn"}, {"type": "pool", "kind": "max", "size": 2},
              {"type": "res", "filters": 32, "stride": 2, "act": "relu"},
              {"type": "dropout", "p": 0.2}]
    head = {"hidden": 64, "dropout": 0.1}

Convolutions use "same" padding (``kernel // 2``), so a stride ``s`` maps ``H`` to
``ceil(H / s)``; a pool of size ``k`` maps ``H`` to ``H // k``. The decoder walks the layers
with the running shape ``(C, H, W)``; it *repairs* what has an obvious fix (a down-sampling
layer that would shrink the map below 1 x 1 is dropped or its stride set to 1, an even kernel
becomes odd, a repeated batch-norm is dropped) and records each repair, and it *rejects* what
has none (no convolution at all, too many parameters, unknown layer kinds) by raising
:class:`GenomeRejectedError` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from oncoscale.errors import ConfigurationError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "tanh": nn.Tanh,
}


class GenomeRejectedError(ConfigurationError):
    """A genome that cannot be turned into a working network; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"genome rejected: {reason}")


@dataclass
class NetInfo:
    """What decoding found: parameters, output shape after each layer, repairs made."""

    params: int
    shapes: list[tuple[int, int, int]]
    repairs: list[str] = field(default_factory=list)
    feature_shape: tuple[int, int, int] = (0, 0, 0)


class ResidualBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with an identity (or 1x1 projection) skip.

    (B, C_in, H, W) -> (B, filters, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, c_in: int, filters: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters)
        self.act = ACTIVATIONS[act]()
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != filters:
            self.skip = nn.Sequential(nn.Conv2d(c_in, filters, 1, stride, bias=False),
                                      nn.BatchNorm2d(filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.skip(x))


def _same_out(h: int, stride: int) -> int:
    return -(-h // stride)


def build_network(layers: Sequence[Mapping[str, Any]], head: Mapping[str, Any] | None = None,
                  input_shape: tuple[int, int, int] = (3, 96, 96), num_classes: int = 2, *,
                  max_params: int | None = None, max_layers: int = 64
                  ) -> tuple[nn.Sequential, NetInfo]:
    """Build ``nn.Sequential(features..., head)`` mapping (B, C, H, W) -> (B, num_classes) logits.

    Returns the module and a :class:`NetInfo`; raises :class:`GenomeRejectedError` when the genome
    has no valid decoding.
    """
    head = dict(head or {})
    if len(layers) == 0:
        raise GenomeRejectedError("no layers")
    if len(layers) > max_layers:
        raise GenomeRejectedError(f"{len(layers)} layers exceed the limit of {max_layers}")
    c, h, w = input_shape
    modules: list[nn.Module] = []
    shapes: list[tuple[int, int, int]] = []
    repairs: list[str] = []
    n_conv = 0
    prev = None
    for i, spec in enumerate(layers):
        kind = spec.get("type")
        if kind == "conv" or kind == "res":
            filters = int(spec.get("filters", 0))
            stride = int(spec.get("stride", 1))
            act = str(spec.get("act", "relu"))
            if filters < 1:
                raise GenomeRejectedError(f"layer {i}: {kind} with {filters} filters")
            if act not in ACTIVATIONS:
                raise GenomeRejectedError(f"layer {i}: unknown activation '{act}'")
            if stride < 1:
                raise GenomeRejectedError(f"layer {i}: stride {stride} < 1")
            if stride > 1 and min(h, w) < 2 * stride - 1:
                repairs.append(f"layer {i}: stride {stride} on a {h}x{w} map set to 1")
                stride = 1
            if kind == "conv":
                k = int(spec.get("kernel", 3))
                if k < 1:
                    raise GenomeRejectedError(f"layer {i}: kernel {k} < 1")
                if k % 2 == 0:
                    repairs.append(f"layer {i}: even kernel {k} made {k + 1}")
                    k += 1
                modules.append(nn.Sequential(nn.Conv2d(c, filters, k, stride, k // 2),
                                             ACTIVATIONS[act]()))
            else:
                modules.append(ResidualBlock(c, filters, stride, act))
            c, h, w = filters, _same_out(h, stride), _same_out(w, stride)
            n_conv += 1
        elif kind == "pool":
            size = int(spec.get("size", 2))
            pk = str(spec.get("kind", "max"))
            if pk not in ("max", "avg"):
                raise GenomeRejectedError(f"layer {i}: unknown pooling '{pk}'")
            if size < 2:
                repairs.append(f"layer {i}: pool of size {size} dropped")
                continue
            if min(h, w) < size:
                repairs.append(f"layer {i}: pool {size} on a {h}x{w} map dropped")
                continue
            modules.append(nn.MaxPool2d(size) if pk == "max" else nn.AvgPool2d(size))
            h, w = h // size, w // size
        elif kind == "bn":
            if prev == "bn":
                repairs.append(f"layer {i}: repeated batch-norm dropped")
                continue
            modules.append(nn.BatchNorm2d(c))
        elif kind == "dropout":
            p = float(spec.get("p", 0.0))
            if not 0.0 <= p < 1.0:
                raise GenomeRejectedError(f"layer {i}: dropout p={p} outside [0, 1)")
            modules.append(nn.Dropout2d(p))
        else:
            raise GenomeRejectedError(f"layer {i}: unknown layer type {kind!r}")
        prev = kind
        shapes.append((c, h, w))
    if n_conv == 0:
        raise GenomeRejectedError("no convolution or residual layer")
    hidden = int(head.get("hidden", 0))
    hp = float(head.get("dropout", 0.0))
    if not 0.0 <= hp < 1.0:
        raise GenomeRejectedError(f"head dropout p={hp} outside [0, 1)")
    head_mods: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    width = c
    if hidden > 0:
        head_mods += [nn.Linear(c, hidden), nn.ReLU()]
        width = hidden
    if hp > 0:
        head_mods.append(nn.Dropout(hp))
    head_mods.append(nn.Linear(width, num_classes))
    net = nn.Sequential(*modules, nn.Sequential(*head_mods))
    params = sum(p.numel() for p in net.parameters())
    if max_params is not None and params > max_params:
        raise GenomeRejectedError(f"{params} parameters exceed the limit of {max_params}")
    return net, NetInfo(params, shapes, repairs, (c, h, w))


def activation_bytes(info: NetInfo, batch_size: int) -> int:
    """Rough float32 activation memory of one training step (forward maps kept for backward)."""
    return 4 * batch_size * sum(c * h * w for c, h, w in info.shapes) * 3
