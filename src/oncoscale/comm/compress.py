"""Gradient compressors with error feedback, composable with the sparse collectives.

A compressor maps a flat gradient (1-D float tensor of n entries) to a :class:`SparseVector`
to send, and may name a wire codec (QSGD) for the values. Compose a sparsifier and a
quantiser with ``TopK(0.01) | QSGD(8)``. :class:`ErrorFeedback` keeps, per key (e.g. a
bucket), the residual ``memory = (grad + memory) - sent`` and adds it back next step
(Seide et al. 2014; Stich et al. 2018), which makes biased compressors such as TopK converge.
:class:`GradientCompression` = compressor + memory + :func:`sparse_allreduce`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch

from oncoscale.comm._backend import Work
from oncoscale.comm.collectives import sparse_allreduce
from oncoscale.comm.quant import QSGDCodec, ValueCodec
from oncoscale.comm.sparse import SparseVector
from oncoscale.comm.world import Group
from oncoscale.errors import ConfigurationError, InputError


def _flat(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"compressors take a float tensor, found {type(x).__name__}"
                         + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    return x.reshape(-1)


def _ratio(ratio: float) -> float:
    if not 0 < ratio <= 1:
        raise ConfigurationError(f"ratio must be in (0, 1], found {ratio}")
    return float(ratio)


class Compressor:
    """Base: ``compress(x) -> SparseVector``; ``codec`` is the wire codec (or ``None``)."""

    codec: ValueCodec | None = None

    def compress(self, x: torch.Tensor) -> SparseVector:  # pragma: no cover - interface
        raise NotImplementedError

    def __or__(self, other: Compressor) -> Compose:
        return Compose(self, other)


class NoCompression(Compressor):
    """Send the dense gradient as is."""

    def compress(self, x: torch.Tensor) -> SparseVector:
        return SparseVector.from_dense(_flat(x), keep_dense=True)

    def __repr__(self) -> str:
        return "NoCompression()"


class TopK(Compressor):
    """Keep the ``ratio`` (or ``k``) largest-magnitude entries, per tensor or per bucket.

    ``bucket_size``: select ``ceil(ratio * bucket_size)`` entries in every bucket of that many
    consecutive entries (bounded work per bucket, spreads the selection); ``None``: per tensor.
    """

    def __init__(self, ratio: float = 0.01, *, k: int | None = None,
                 bucket_size: int | None = None) -> None:
        self.ratio = _ratio(ratio)
        self.k = k
        self.bucket_size = bucket_size

    def __repr__(self) -> str:
        return f"TopK(ratio={self.ratio}, k={self.k}, bucket_size={self.bucket_size})"

    def compress(self, x: torch.Tensor) -> SparseVector:
        v = _flat(x)
        n = v.numel()
        if n == 0:
            return SparseVector.from_dense(v)
        if self.bucket_size is None:
            k = min(n, self.k if self.k is not None else max(1, round(self.ratio * n)))
            idx = torch.topk(v.abs(), k, sorted=False).indices.sort().values
        else:
            b = int(self.bucket_size)
            rows = -(-n // b)
            kb = min(b, max(1, math.ceil(self.ratio * b)))
            padded = torch.nn.functional.pad(v.abs(), (0, rows * b - n), value=-1.0)
            top = torch.topk(padded.view(rows, b), kb, dim=1, sorted=False).indices
            idx = (top + torch.arange(rows, device=v.device)[:, None] * b).reshape(-1)
            idx = idx[idx < n].sort().values
        return SparseVector(idx, v[idx], n, check=False)


class RandomK(Compressor):
    """Keep a random ``ratio`` of entries. With the same ``seed`` on every rank all ranks pick
    the same indices each step (no fill-in). ``rescale=True`` multiplies by n/k (unbiased)."""

    def __init__(self, ratio: float = 0.01, *, seed: int = 0, rescale: bool = False) -> None:
        self.ratio = _ratio(ratio)
        self.seed = seed
        self.rescale = rescale
        self._step = 0

    def __repr__(self) -> str:
        return f"RandomK(ratio={self.ratio}, seed={self.seed}, rescale={self.rescale})"

    def compress(self, x: torch.Tensor) -> SparseVector:
        v = _flat(x)
        n = v.numel()
        k = min(n, max(1, round(self.ratio * n))) if n else 0
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._step)
        self._step += 1
        idx = torch.randperm(n, generator=gen)[:k].sort().values.to(v.device)
        vals = v[idx] * (n / k) if self.rescale and k else v[idx]
        return SparseVector(idx, vals, n, check=False)


class Threshold(Compressor):
    """Keep entries with ``|x| >= tau``."""

    def __init__(self, tau: float) -> None:
        if tau < 0:
            raise ConfigurationError(f"threshold tau must be >= 0, found {tau}")
        self.tau = float(tau)

    def __repr__(self) -> str:
        return f"Threshold(tau={self.tau})"

    def compress(self, x: torch.Tensor) -> SparseVector:
        v = _flat(x)
        idx = torch.nonzero(v.abs() >= self.tau, as_tuple=True)[0]
        return SparseVector(idx, v[idx], v.numel(), check=False)


class QSGD(Compressor):
    """Stochastic quantisation of every entry to ``bits`` (2, 4, 8) in buckets (unbiased).

    The returned vector holds the dequantised values (what peers will see), and ``codec``
    carries them on the wire at ``bits`` per value plus a float32 scale per bucket.
    """

    def __init__(self, bits: int = 8, bucket_size: int = 512, seed: int | None = None) -> None:
        self.codec = QSGDCodec(bits, bucket_size, seed)

    def __repr__(self) -> str:
        return f"QSGD(bits={self.codec.bits}, bucket_size={self.codec.bucket_size})"

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        """``decode(encode(values))``: one unbiased stochastic rounding."""
        c = self.codec
        return c.decode(c.encode(values), values.numel(), values.dtype)

    def compress(self, x: torch.Tensor) -> SparseVector:
        v = _flat(x)
        return SparseVector(None, self.quantize(v), v.numel(), check=False)


class Compose(Compressor):
    """A sparsifier followed by a quantiser: ``TopK(0.01) | QSGD(8)``."""

    def __init__(self, first: Compressor, second: Compressor) -> None:
        self.first, self.second = first, second
        self.codec = second.codec or first.codec

    def __repr__(self) -> str:
        return f"{self.first!r} | {self.second!r}"

    def compress(self, x: torch.Tensor) -> SparseVector:
        sel = self.first.compress(x)
        if isinstance(self.second, QSGD):
            return SparseVector(sel.indices, self.second.quantize(sel.values), sel.size,
                                check=False)
        inner = self.second.compress(sel.values)
        keep = inner.to_dense()
        if sel.is_dense:
            return SparseVector(None, keep, sel.size, check=False)
        mask = keep != 0
        return SparseVector(sel.indices[mask], keep[mask], sel.size, check=False)


class ErrorFeedback:
    """Residual memory per key: ``compress(key, g)`` sends ``C(g + m)``, keeps
    ``m = g + m - C(g + m)``. ``enabled=False`` passes straight through."""

    def __init__(self, compressor: Compressor, enabled: bool = True) -> None:
        self.compressor = compressor
        self.enabled = enabled
        self.memory: dict[Hashable, torch.Tensor] = {}

    def compress(self, key: Hashable, grad: torch.Tensor) -> SparseVector:
        g = _flat(grad)
        if not self.enabled:
            return self.compressor.compress(g)
        mem = self.memory.get(key)
        if mem is not None and mem.shape != g.shape:
            raise InputError(f"error-feedback memory for key {key!r} has {mem.numel()} entries, "
                             f"the gradient has {g.numel()}")
        corrected = g + mem if mem is not None else g.clone()
        sent = self.compressor.compress(corrected)  # may alias ``corrected``
        self.memory[key] = corrected - sent.to_dense().to(corrected.dtype)
        return sent

    def reset(self) -> None:
        """Forget every residual."""
        self.memory.clear()


class GradientCompression:
    """Compressor + error feedback + sparse allreduce: ``reduce(key, grad)`` -> mean gradient.

    ``compressor=None`` means dense (the collective still chooses its algorithm).
    ``codec`` sets the wire format of the values (``"fp16"``, ``"bf16"``, ``"qsgd8"``...)
    when the compressor does not name one.
    """

    def __init__(self, compressor: Compressor | None = None, *, error_feedback: bool = True,
                 algorithm: str = "auto", group: Group | None = None,
                 codec: str | ValueCodec | None = None) -> None:
        self.compressor = compressor or NoCompression()
        self.codec = self.compressor.codec or codec
        self.feedback = ErrorFeedback(self.compressor, error_feedback)
        self.algorithm = algorithm
        self.group = group
        self.sent_entries = 0
        self.dense_entries = 0

    def reduce(self, key: Hashable, grad: torch.Tensor, *, async_op: bool = False
               ) -> SparseVector | Work:
        """Average of every rank's compressed ``grad`` (collective over the group)."""
        vec = self.feedback.compress(key, grad)
        self.sent_entries += vec.nnz
        self.dense_entries += vec.size
        return sparse_allreduce(vec, self.algorithm, group=self.group, async_op=async_op,
                                op="avg", codec=self.codec)
