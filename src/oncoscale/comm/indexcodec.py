"""Wire format of sparse indices: plain int32/int64, or bucketed offsets when that is smaller.

Bucketed ("packed") format for ``nnz`` sorted unique indices of an ``n``-vector: the index
range is cut in buckets of :data:`BUCKET` = 255 entries; the message holds one uint8 count
per bucket (``ceil(n / 255)`` bytes), then one uint8 offset per index inside its bucket.
That is ``nnz + ceil(n / 255)`` bytes against ``4 * nnz`` for int32: smaller from a density
of about 0.13 % up, 4x smaller at high density. Which format a message uses is a pure
function of (nnz, n), so the receiver knows it, and every message size, from the header.
"""

from __future__ import annotations

import numpy as np
import torch

from oncoscale.comm._hostpath import numpy_path
from oncoscale.comm.sparse import index_bytes_for, index_dtype_for

BUCKET = 255


def packed_bytes(nnz: float, n: int) -> float:
    """Bytes of the bucketed format (``nnz`` may be an expected, fractional count)."""
    return nnz + -(-n // BUCKET)


def uses_packed(nnz: int, n: int) -> bool:
    """Does a message of ``nnz`` indices of an ``n``-vector use the bucketed format?"""
    return nnz > 0 and packed_bytes(nnz, n) < nnz * index_bytes_for(n)


def wire_index_bytes(nnz: float, n: int) -> float:
    """Bytes the indices of a sparse message take on the wire (the smaller format)."""
    if nnz <= 0:
        return 0
    return min(nnz * index_bytes_for(n), packed_bytes(nnz, n))


def wire_prefers_dense(nnz: float, n: int, value_bytes: float,
                       index_bytes: float | None = None) -> bool:
    """The stream rule on the wire: a dense message (``n`` values) once the sparse one
    (``nnz`` values and their indices in the smaller format) would not be smaller.
    ``index_bytes``: width of a plain index (default: int32/int64 by ``n``)."""
    ib = index_bytes_for(n) if index_bytes is None else index_bytes
    if n <= 0:
        return False
    idx = min(nnz * ib, packed_bytes(nnz, n)) if nnz > 0 else 0
    return nnz * value_bytes + idx >= n * value_bytes


def encode_indices(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted unique int64 indices -> uint8 wire bytes (format chosen by :func:`uses_packed`)."""
    k = idx.numel()
    if not k:
        return torch.empty(0, dtype=torch.uint8, device=idx.device)
    if not uses_packed(k, n):
        return idx.to(index_dtype_for(n)).contiguous().view(torch.uint8)
    return pack_indices(idx, n)


def decode_indices(buf: torch.Tensor, nnz: int, n: int) -> torch.Tensor:
    """Inverse of :func:`encode_indices`: ``buf`` holds exactly the index bytes; int64 out."""
    if not uses_packed(nnz, n):
        raw = buf.contiguous()
        dt = index_dtype_for(n)
        try:
            view = raw.view(dt)
        except RuntimeError:  # a misaligned slice of a larger message
            view = raw.clone().view(dt)
        return view.to(torch.int64)
    return unpack_indices(buf, nnz, n)


def pack_indices(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted unique int64 indices of an ``n``-vector -> the bucketed format, always
    (``packed_bytes(len(idx), n)`` uint8: per-bucket counts, then offsets)."""
    nb = -(-n // BUCKET)
    if not numpy_path(idx):
        return _pack_torch(idx, nb)
    x = idx.numpy()
    starts = np.arange(0, (nb + 1) * BUCKET, BUCKET, dtype=np.int64)
    counts = np.diff(np.searchsorted(x, starts))
    out = np.empty(nb + x.size, dtype=np.uint8)
    out[:nb] = counts
    out[nb:] = x - np.repeat(starts[:-1], counts)
    return torch.from_numpy(out)


def unpack_indices(buf: torch.Tensor, nnz: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices` (``buf`` may be longer: only its head is read)."""
    nb = -(-n // BUCKET)
    if not numpy_path(buf):
        return _unpack_torch(buf, nnz, nb)
    b = buf.numpy()
    bases = np.repeat(np.arange(0, nb * BUCKET, BUCKET, dtype=np.int64),
                      b[:nb].astype(np.int64))
    return torch.from_numpy(bases + b[nb:nb + nnz])


def _pack_torch(idx: torch.Tensor, nb: int) -> torch.Tensor:
    """Bucketed format with torch ops (any device)."""
    bucket = torch.div(idx, BUCKET, rounding_mode="floor")
    counts = torch.bincount(bucket, minlength=nb).to(torch.uint8)
    return torch.cat([counts, (idx - bucket * BUCKET).to(torch.uint8)])


def _unpack_torch(buf: torch.Tensor, nnz: int, nb: int) -> torch.Tensor:
    """Inverse of :func:`_pack_torch` (any device)."""
    counts = buf[:nb].to(torch.int64)
    bases = torch.repeat_interleave(
        torch.arange(0, nb * BUCKET, BUCKET, dtype=torch.int64, device=buf.device), counts)
    return bases + buf[nb:nb + nnz].to(torch.int64)
