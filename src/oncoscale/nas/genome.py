"""Architecture genomes: layer genes, a classifier-head gene, training genes; JSON round trip.

A :class:`Genome` is immutable and hashable. Its compact JSON (``genome.to_json()``) is what
``history.csv`` stores and what :meth:`Genome.from_json` reads back, e.g.::

    {"l":[["conv",16,3,2,"relu"],["bn"],["pool","max",2],["res",32,2,"relu"],["drop",0.2]],
     "h":[32,0.1],"t":[0.001,32,"adam"]}

Decoding (:func:`decode`) goes through :func:`oncoscale.models.genome_net.build_network`,
which infers shapes, repairs what it can and rejects the rest with a reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oncoscale.errors import InputError

# --------------------------------------------------------------------------- genes


@dataclass(frozen=True)
class Conv:
    """Convolution + activation: ``filters`` output channels, odd ``kernel``, ``stride``."""

    filters: int
    kernel: int = 3
    stride: int = 1
    act: str = "relu"


@dataclass(frozen=True)
class Pool:
    """Max or average pooling with window and stride ``size``."""

    kind: str = "max"
    size: int = 2


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation over the current channels."""


@dataclass(frozen=True)
class Dropout:
    """Channel dropout with probability ``p``."""

    p: float = 0.2


@dataclass(frozen=True)
class Residual:
    """Residual block (two 3x3 conv + BN, identity or 1x1 projection skip)."""

    filters: int
    stride: int = 1
    act: str = "relu"


@dataclass(frozen=True)
class Head:
    """Classifier head: global average pool, optional hidden layer, dropout, linear."""

    hidden: int = 0
    dropout: float = 0.0


@dataclass(frozen=True)
class Training:
    """Training genes: learning rate, batch size, optimiser name."""

    lr: float = 1e-3
    batch_size: int = 32
    optimizer: str = "adam"


LayerGene = Conv | Pool | BatchNorm | Dropout | Residual
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class Genome:
    """An architecture (``layers`` + ``head``) and how to train it (``train``)."""

    layers: tuple[LayerGene, ...]
    head: Head = field(default_factory=Head)
    train: Training = field(default_factory=Training)

    # ---- serialisation
    def to_obj(self) -> dict[str, Any]:
        out = []
        for g in self.layers:
            if isinstance(g, Conv):
                out.append(["conv", g.filters, g.kernel, g.stride, g.act])
            elif isinstance(g, Pool):
                out.append(["pool", g.kind, g.size])
            elif isinstance(g, BatchNorm):
                out.append(["bn"])
            elif isinstance(g, Dropout):
                out.append(["drop", round(float(g.p), 3)])
            elif isinstance(g, Residual):
                out.append(["res", g.filters, g.stride, g.act])
            else:  # pragma: no cover
                raise TypeError(f"unknown gene {g!r}")
        return {"l": out, "h": [self.head.hidden, round(float(self.head.dropout), 3)],
                "t": [float(f"{self.train.lr:.3g}"), self.train.batch_size,
                      self.train.optimizer]}

    def to_json(self) -> str:
        """Compact, canonical JSON (equal genomes give equal strings)."""
        return json.dumps(self.to_obj(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> Genome:
        """Inverse of :meth:`to_json`; raises :class:`InputError` on malformed text."""
        try:
            obj = json.loads(text) if isinstance(text, str) else text
            layers: list[LayerGene] = []
            for item in obj["l"]:
                kind, *args = item
                if kind == "conv":
                    layers.append(Conv(int(args[0]), int(args[1]), int(args[2]), str(args[3])))
                elif kind == "pool":
                    layers.append(Pool(str(args[0]), int(args[1])))
                elif kind == "bn":
                    layers.append(BatchNorm())
                elif kind == "drop":
                    layers.append(Dropout(float(args[0])))
                elif kind == "res":
                    layers.append(Residual(int(args[0]), int(args[1]), str(args[2])))
                else:
                    raise ValueError(f"unknown layer gene {kind!r}")
            h, t = obj.get("h", [0, 0.0]), obj.get("t", [1e-3, 32, "adam"])
            return cls(tuple(layers), Head(int(h[0]), float(h[1])),
                       Training(float(t[0]), int(t[1]), str(t[2])))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(f"malformed genome JSON {str(text)[:80]!r}: {exc}") from exc

    # ---- decoding
    def layer_specs(self) -> list[dict[str, Any]]:
        """Plain dicts for :func:`oncoscale.models.genome_net.build_network`."""
        specs: list[dict[str, Any]] = []
        for g in self.layers:
            if isinstance(g, Conv):
                specs.append({"type": "conv", "filters": g.filters, "kernel": g.kernel,
                              "stride": g.stride, "act": g.act})
            elif isinstance(g, Pool):
                specs.append({"type": "pool", "kind": g.kind, "size": g.size})
            elif isinstance(g, BatchNorm):
                specs.append({"type": "bn"})
            elif isinstance(g, Dropout):
                specs.append({"type": "dropout", "p": g.p})
            elif isinstance(g, Residual):
                specs.append({"type": "res", "filters": g.filters, "stride": g.stride,
                              "act": g.act})
        return specs

    def head_spec(self) -> dict[str, Any]:
        return {"hidden": self.head.hidden, "dropout": self.head.dropout}


def decode(genome: Genome, input_shape: tuple[int, int, int], num_classes: int = 2, *,
           max_params: int | None = None, max_layers: int = 64) -> tuple[Any, Any]:
    """Genome -> ``(nn.Module, NetInfo)``; raises ``GenomeRejectedError`` (with ``.reason``).

    The module maps (B, C, H, W) float images to (B, num_classes) logits.
    """
    from oncoscale.models.genome_net import build_network

    return build_network(genome.layer_specs(), genome.head_spec(), input_shape, num_classes,
                         max_params=max_params, max_layers=max_layers)


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class SearchSpace:
    """The values every gene may take; mutation and random sampling draw from here."""

    filters: tuple[int, ...] = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
    kernels: tuple[int, ...] = (1, 3, 5, 7)
    strides: tuple[int, ...] = (1, 2)
    activations: tuple[str, ...] = ("relu", "leaky_relu", "elu", "gelu", "silu")
    pool_kinds: tuple[str, ...] = ("max", "avg")
    dropouts: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)
    hidden: tuple[int, ...] = (0, 16, 32, 64, 128)
    lr_range: tuple[float, float] = (1e-4, 3e-2)
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128)
    optimizers: tuple[str, ...] = OPTIMIZERS
    min_layers: int = 1
    max_layers: int = 14
    #: probabilities of (conv, pool, bn, dropout, residual) for a new layer gene
    layer_weights: tuple[float, float, float, float, float] = (0.45, 0.2, 0.15, 0.08, 0.12)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        known = {f for f in cls.__dataclass_fields__}
        bad = set(d) - known
        if bad:
            from oncoscale.errors import ConfigurationError

            raise ConfigurationError(f"unknown [space] keys {sorted(bad)}; known: "
                                     f"{sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _choice(rng: np.random.Generator, seq: tuple[Any, ...]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def random_layer(space: SearchSpace, rng: np.random.Generator) -> LayerGene:
    """One layer gene drawn from ``space.layer_weights``."""
    w = np.asarray(space.layer_weights, dtype=float)
    kind = int(rng.choice(5, p=w / w.sum()))
    if kind == 0:
        return Conv(_choice(rng, space.filters), _choice(rng, space.kernels),
                    _choice(rng, space.strides), _choice(rng, space.activations))
    if kind == 1:
        return Pool(_choice(rng, space.pool_kinds), 2)
    if kind == 2:
        return BatchNorm()
    if kind == 3:
        return Dropout(_choice(rng, space.dropouts[1:] or space.dropouts))
    return Residual(_choice(rng, space.filters), _choice(rng, space.strides),
                    _choice(rng, space.activations))


def random_lr(space: SearchSpace, rng: np.random.Generator) -> float:
    lo, hi = space.lr_range
    return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")


def random_genome(space: SearchSpace, rng: np.random.Generator) -> Genome:
    """A random genome: starts with a convolution, then 1 to ``max_layers/2`` random genes."""
    n = int(rng.integers(max(space.min_layers, 2), max(3, space.max_layers // 2) + 1))
    first = Conv(_choice(rng, space.filters), _choice(rng, space.kernels),
                 _choice(rng, space.strides), _choice(rng, space.activations))
    layers = (first, *(random_layer(space, rng) for _ in range(n - 1)))
    return Genome(layers, Head(_choice(rng, space.hidden), _choice(rng, space.dropouts)),
                  Training(random_lr(space, rng), _choice(rng, space.batch_sizes),
                           _choice(rng, space.optimizers)))


# --------------------------------------------------------------------------- baselines


def vgg_like(image_size: int = 96, width: int = 16) -> Genome:
    """VGG-style stack: stages of two 3x3 conv + BN, max-pool; widths w, 2w, 4w, 8w.

    Stages are added while the map is at least 12 px, so a 96-100 px patch gets 4 stages.
    """
    layers: list[LayerGene] = []
    size, f = image_size, width
    for _ in range(4):
        if size < 12:
            break
        layers += [Conv(f, 3, 1, "relu"), BatchNorm(), Conv(f, 3, 1, "relu"), BatchNorm(),
                   Pool("max", 2)]
        size //= 2
        f *= 2
    return Genome(tuple(layers), Head(4 * width, 0.3), Training(1e-3, 32, "adam"))


def resnet18_like(image_size: int = 96, width: int = 16) -> Genome:
    """ResNet-18 layout (stem, 4 stages x 2 basic blocks, widths w..8w) scaled to the patch.

    For patches >= 64 px the stem is a 7x7 stride-2 conv + max-pool (as in ResNet-18);
    smaller patches get a 3x3 stride-1 stem and no pool.
    """
    big = image_size >= 64
    layers: list[LayerGene] = [Conv(width, 7 if big else 3, 2 if big else 1, "relu"),
                               BatchNorm()]
    if big:
        layers.append(Pool("max", 2))
    for stage in range(4):
        f = width * 2 ** stage
        layers += [Residual(f, 1 if stage == 0 else 2, "relu"), Residual(f, 1, "relu")]
    return Genome(tuple(layers), Head(0, 0.0), Training(1e-3, 32, "adam"))


def baselines(image_size: int = 96, width: int = 16) -> dict[str, Genome]:
    """The known networks the search is seeded with: ``{"vgg_like": ..., "resnet18_like": ...}``."""
    return {"vgg_like": vgg_like(image_size, width),
            "resnet18_like": resnet18_like(image_size, width)}
