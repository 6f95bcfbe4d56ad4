"""Variation operators: mutation of every gene kind, and crossover between two parents.

All randomness comes from the ``numpy.random.Generator`` passed in, so a search is
reproducible from its checkpointed RNG state.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from oncoscale.nas.genome import (
    BatchNorm,
    Conv,
    Dropout,
    Genome,
    Head,
    Pool,
    Residual,
    SearchSpace,
    Training,
    random_layer,
)

MUTATIONS = (
    "add_layer", "remove_layer", "swap_layers", "conv_filters", "conv_kernel", "conv_stride",
    "conv_act", "pool_kind", "toggle_bn", "dropout_p", "res_filters", "res_stride", "res_act",
    "head_hidden", "head_dropout", "lr", "batch_size", "optimizer",
)


#: layer-gene field -> the SearchSpace attribute holding its choices
_SPACE_FIELD = {"filters": "filters", "kernel": "kernels", "stride": "strides",
                "act": "activations"}


def _neighbour(rng: np.random.Generator, seq: tuple, value: object) -> object:
    """A different value from ``seq``, preferring the neighbours of ``value``."""
    if len(seq) < 2:
        return value
    if value in seq and rng.random() < 0.7:
        i = seq.index(value)
        j = i + (1 if rng.random() < 0.5 else -1)
        j = min(max(j, 0), len(seq) - 1)
        if j == i:
            j = i + 1 if i == 0 else i - 1
        return seq[j]
    others = [v for v in seq if v != value]
    return others[int(rng.integers(len(others)))]


def _indices(layers: tuple, cls: type) -> list[int]:
    return [i for i, g in enumerate(layers) if isinstance(g, cls)]


def _apply(op: str, g: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome | None:
    """Apply one named mutation; ``None`` when it does not apply to this genome."""
    L = list(g.layers)

    def pick(idx: list[int]) -> int:
        return idx[int(rng.integers(len(idx)))]

    if op == "add_layer":
        if len(L) >= space.max_layers:
            return None
        L.insert(int(rng.integers(len(L) + 1)), random_layer(space, rng))
    elif op == "remove_layer":
        if len(L) <= space.min_layers:
            return None
        L.pop(int(rng.integers(len(L))))
    elif op == "swap_layers":
        if len(L) < 2:
            return None
        i = int(rng.integers(len(L) - 1))
        L[i], L[i + 1] = L[i + 1], L[i]
    elif op.startswith(("conv_", "res_")):
        kind = Conv if op.startswith("conv_") else Residual
        field = op.split("_", 1)[1]
        idx = _indices(g.layers, kind)
        if not idx:
            return None
        i = pick(idx)
        choices = getattr(space, _SPACE_FIELD[field])
        L[i] = replace(L[i], **{field: _neighbour(rng, choices, getattr(L[i], field))})
    elif op == "pool_kind":
        idx = _indices(g.layers, Pool)
        if not idx:
            return None
        i = pick(idx)
        L[i] = replace(L[i], kind=_neighbour(rng, space.pool_kinds, L[i].kind))
    elif op == "toggle_bn":
        idx = _indices(g.layers, BatchNorm)
        if idx and (rng.random() < 0.5 or len(L) >= space.max_layers):
            if len(L) <= space.min_layers:
                return None
            L.pop(pick(idx))
        else:
            if len(L) >= space.max_layers:
                return None
            convs = _indices(g.layers, Conv) + _indices(g.layers, Residual)
            at = pick(convs) + 1 if convs else int(rng.integers(len(L) + 1))
            L.insert(at, BatchNorm())
    elif op == "dropout_p":
        idx = _indices(g.layers, Dropout)
        if not idx:
            return None
        i = pick(idx)
        choices = tuple(p for p in space.dropouts if p > 0) or (0.1,)
        L[i] = Dropout(float(_neighbour(rng, choices, L[i].p)))
    elif op == "head_hidden":
        return replace(g, head=replace(g.head, hidden=_neighbour(rng, space.hidden,
                                                                  g.head.hidden)))
    elif op == "head_dropout":
        return replace(g, head=replace(g.head, dropout=_neighbour(rng, space.dropouts,
                                                                   g.head.dropout)))
    elif op == "lr":
        lo, hi = space.lr_range
        lr = g.train.lr * math.exp(rng.normal(0.0, 0.7))
        lr = float(f"{min(max(lr, lo), hi):.3g}")
        return replace(g, train=replace(g.train, lr=lr))
    elif op == "batch_size":
        return replace(g, train=replace(
            g.train, batch_size=_neighbour(rng, space.batch_sizes, g.train.batch_size)))
    elif op == "optimizer":
        return replace(g, train=replace(
            g.train, optimizer=_neighbour(rng, space.optimizers, g.train.optimizer)))
    else:
        raise ValueError(f"unknown mutation {op!r}; known: {MUTATIONS}")
    return replace(g, layers=tuple(L))


def mutate(genome: Genome, space: SearchSpace, rng: np.random.Generator, *,
           n_mutations: int | None = None, log: list[str] | None = None) -> Genome:
    """Apply 1 + Geometric(0.5) random mutations (or ``n_mutations``) and return the child.

    Names of the applied operators are appended to ``log`` when given. The child always
    differs from the parent unless no operator applies.
    """
    n = n_mutations if n_mutations is not None else int(rng.geometric(0.5))
    child = genome
    done = 0
    for _attempt in range(20 * n + 40):
        # stop after n applied operators, unless they cancelled out (e.g. swap, swap back)
        if done >= n and child != genome:
            break
        op = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
        new = _apply(op, child, space, rng)
        if new is not None and new != child:
            child = new
            done += 1
            if log is not None:
                log.append(op)
    return child


def crossover(a: Genome, b: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """One-point crossover of the layer lists (a cut in each parent), uniform on other genes.

    The child is ``a.layers[:i] + b.layers[j:]``, trimmed to ``space.max_layers``; the head
    and each training gene come from either parent with probability 1/2.
    """
    i = int(rng.integers(len(a.layers) + 1))
    j = int(rng.integers(len(b.layers) + 1))
    layers = (a.layers[:i] + b.layers[j:])[: space.max_layers]
    if len(layers) < max(1, space.min_layers):
        layers = a.layers
    head: Head = a.head if rng.random() < 0.5 else b.head
    ta, tb = a.train, b.train
    train = Training(ta.lr if rng.random() < 0.5 else tb.lr,
                     ta.batch_size if rng.random() < 0.5 else tb.batch_size,
                     ta.optimizer if rng.random() < 0.5 else tb.optimizer)
    return Genome(layers, head, train)


__all__ = ["MUTATIONS", "crossover", "mutate"]
