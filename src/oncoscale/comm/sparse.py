"""SparseVector: a length-``size`` vector stored as sorted unique indices + values, or dense.

The representation follows SparCML's streams: a vector stays sparse while that is cheaper to
send and switches to a dense payload once it has filled in, by the *stream rule*::

    dense  <=>  nnz * (index_bytes + value_bytes) >= size * value_bytes

``index_bytes`` is the wire width of an index (4 when ``size`` fits in int32, else 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from oncoscale.comm._hostpath import numpy_path
from oncoscale.errors import InputError

INT32_MAX = 2**31 - 1


def index_dtype_for(size: int) -> torch.dtype:
    """Narrowest index dtype that addresses ``size`` entries (int32 or int64)."""
    return torch.int32 if size <= INT32_MAX else torch.int64


def index_bytes_for(size: int) -> int:
    """Bytes per index on the wire for a vector of ``size`` entries."""
    return 4 if size <= INT32_MAX else 8


def prefers_dense(nnz: float, size: int, value_bytes: float, index_bytes: float | None = None
                  ) -> bool:
    """The stream rule: ``nnz * (index_bytes + value_bytes) >= size * value_bytes``."""
    ib = index_bytes_for(size) if index_bytes is None else index_bytes
    return size > 0 and nnz * (ib + value_bytes) >= size * value_bytes


class SparseVector:
    """A 1-D vector of ``size`` entries.

    Parameters
    ----------
    indices : int tensor of shape (nnz,), strictly increasing, in ``[0, size)``; or ``None``
        for a dense payload.
    values : float tensor of shape (nnz,) (or (size,) when dense), any floating dtype.
    size : total length of the vector.
    check : validate indices and values (default True). Collectives check the values
        (NaN/inf) on every call and the indices once per vector (here, or on the first
        collective call for ``check=False``), and agree on the outcome on every rank. Do
        not modify ``indices`` in place after that.

    Attributes: ``indices`` (int64 tensor or ``None``), ``values``, ``size``, ``is_dense``,
    ``nnz`` (stored entries), ``dtype``, ``device``.
    """

    __slots__ = ("indices", "values", "size", "_checked")

    def __init__(self, indices: Any, values: Any, size: int, *, check: bool = True) -> None:
        size = int(size)
        if size < 0:
            raise InputError(f"SparseVector size must be >= 0, found {size}")
        vals = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
        if indices is None:
            idx = None
        else:
            idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
            if not isinstance(indices, torch.Tensor) and idx.numel() == 0:
                idx = idx.to(torch.int64)
        if check:
            _validate(idx, vals, size)
        if idx is not None and idx.dtype != torch.int64:
            idx = idx.to(torch.int64)
        self.indices: torch.Tensor | None = idx
        self.values: torch.Tensor = vals
        self.size: int = size
        self._checked: bool = bool(check)  # indices validated (sorted, unique, in range)

    # -- properties -------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        """True when the payload is the full vector (``indices is None``)."""
        return self.indices is None

    @property
    def nnz(self) -> int:
        """Stored entries (``size`` for a dense payload)."""
        return self.size if self.indices is None else int(self.indices.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def density(self) -> float:
        """``nnz / size`` (1.0 for an empty vector of size 0)."""
        return 1.0 if self.size == 0 else self.nnz / self.size

    def wire_bytes(self, value_bytes: float | None = None) -> int:
        """Bytes of this payload on the wire (int32 indices when ``size`` allows)."""
        vb = self.values.element_size() if value_bytes is None else value_bytes
        if self.is_dense:
            return int(self.size * vb)
        return int(self.nnz * (index_bytes_for(self.size) + vb))

    def __repr__(self) -> str:
        kind = "dense" if self.is_dense else f"nnz={self.nnz}"
        return f"SparseVector(size={self.size}, {kind}, dtype={self.dtype})"

    # -- conversions ------------------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The full vector, shape (size,)."""
        if self.indices is None:
            return self.values
        out = torch.zeros(self.size, dtype=self.values.dtype, device=self.values.device)
        # unique indices: a scatter is 2x faster than index assignment (no accumulate path)
        return out.scatter_(0, self.indices, self.values)

    def densify(self) -> SparseVector:
        """The same vector with a dense payload."""
        return self if self.is_dense else SparseVector(None, self.to_dense(), self.size,
                                                       check=False)

    def sparsify(self) -> SparseVector:
        """The same vector with a sparse payload (non-zero entries of a dense payload)."""
        if not self.is_dense:
            return self
        return SparseVector.from_dense(self.values)

    def compact(self, value_bytes: float | None = None) -> SparseVector:
        """Switch to a dense payload if the stream rule says dense is cheaper."""
        vb = self.values.element_size() if value_bytes is None else value_bytes
        if not self.is_dense and prefers_dense(self.nnz, self.size, vb):
            return self.densify()
        return self

    def to(self, *args: Any, **kwargs: Any) -> SparseVector:
        """Move / cast values (indices follow the device)."""
        vals = self.values.to(*args, **kwargs)
        idx = None if self.indices is None else self.indices.to(vals.device)
        out = SparseVector(idx, vals, self.size, check=False)
        out._checked = self._checked
        return out

    @classmethod
    def from_dense(cls, tensor: torch.Tensor, *, keep_dense: bool = False) -> SparseVector:
        """The non-zero entries of a 1-D tensor (``keep_dense=True``: dense payload)."""
        t = torch.as_tensor(tensor)
        if t.dim() != 1:
            raise InputError(f"from_dense expects a 1-D tensor, found shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"values must be a floating dtype, found {t.dtype}")
        if keep_dense:
            return cls(None, t, t.numel(), check=False)
        idx = torch.nonzero(t, as_tuple=True)[0]
        return cls(idx, t[idx], t.numel(), check=False)

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> SparseVector:
        """From a 1-D torch sparse COO tensor (coalesced here) or a dense 1-D tensor."""
        if not tensor.is_sparse:
            return cls.from_dense(tensor)
        if tensor.dim() != 1:
            raise InputError(f"from_torch expects a 1-D sparse tensor, found {tensor.dim()}-D")
        t = tensor.coalesce()
        return cls(t.indices()[0], t.values(), t.shape[0], check=False)

    def to_torch(self) -> torch.Tensor:
        """A coalesced 1-D torch sparse COO tensor."""
        if self.is_dense:
            return self.values.to_sparse()
        return torch.sparse_coo_tensor(self.indices.unsqueeze(0), self.values, (self.size,),
                                       is_coalesced=True, check_invariants=False)

    # -- arithmetic -------------------------------------------------------------------------
    def add(self, other: SparseVector) -> SparseVector:
        """Element-wise sum (merge of the index sets); dense when the stream rule says so."""
        return merge([self, other])

    __add__ = add

    def scale(self, factor: float) -> SparseVector:
        """Values multiplied by ``factor``."""
        return SparseVector(self.indices, self.values * factor, self.size, check=False)

    def slice(self, lo: int, hi: int) -> SparseVector:
        """Entries in ``[lo, hi)`` as a vector of size ``hi - lo`` (indices shifted by lo)."""
        if self.indices is None:
            return SparseVector(None, self.values[lo:hi], hi - lo, check=False)
        a, b = torch.searchsorted(self.indices, torch.tensor([lo, hi], device=self.device)).tolist()
        return SparseVector(self.indices[a:b] - lo, self.values[a:b], hi - lo, check=False)

    def allclose(self, other: SparseVector | torch.Tensor, **kw: Any) -> bool:
        """Dense comparison with ``torch.allclose``."""
        o = other.to_dense() if isinstance(other, SparseVector) else other
        return bool(torch.allclose(self.to_dense(), o.to(self.dtype), **kw))


def _validate(idx: torch.Tensor | None, vals: torch.Tensor, size: int) -> None:
    if not vals.is_floating_point():
        raise InputError(f"SparseVector values must be a floating dtype, found {vals.dtype}")
    if vals.dim() != 1:
        raise InputError(f"SparseVector values must be 1-D, found shape {tuple(vals.shape)}")
    if idx is None:
        if vals.numel() != size:
            raise InputError(f"dense SparseVector payload must have {size} values, "
                             f"found {vals.numel()}")
        return
    if idx.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise InputError(f"SparseVector indices must be integers, found {idx.dtype}")
    if idx.dim() != 1 or idx.numel() != vals.numel():
        raise InputError(f"SparseVector indices and values must be 1-D of equal length, found "
                         f"shapes {tuple(idx.shape)} and {tuple(vals.shape)}")
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            raise InputError(f"SparseVector indices must lie in [0, {size}), found "
                             f"range [{lo}, {hi}]")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise InputError("SparseVector indices must be sorted and unique (strictly "
                             "increasing)")


def merge(vectors: Sequence[SparseVector], *, value_bytes: float | None = None) -> SparseVector:
    """Sum of vectors of the same size; dense payload when the stream rule says so.

    Summation happens in the promoted dtype of the inputs.
    """
    if not vectors:
        raise InputError("merge needs at least one vector")
    size = vectors[0].size
    for v in vectors:
        if v.size != size:
            raise InputError(f"cannot add vectors of sizes {size} and {v.size}")
    dtype = vectors[0].dtype
    for v in vectors[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    device = vectors[0].device
    vb = dtype.itemsize if value_bytes is None else value_bytes
    if len(vectors) == 1:
        v = vectors[0]
        return v.to(dtype).compact(vb) if v.dtype != dtype else v.compact(vb)
    total = sum(v.nnz for v in vectors)
    if any(v.is_dense for v in vectors) or prefers_dense(total, size, vb) and \
            _expected_union(vectors) >= size * vb / (index_bytes_for(size) + vb):
        out = torch.zeros(size, dtype=dtype, device=device)
        for v in vectors:
            if v.is_dense:
                out += v.values.to(dtype)
            elif v.nnz:
                out.index_add_(0, v.indices, v.values.to(dtype))
        return SparseVector(None, out, size, check=False)
    nonempty = [v for v in vectors if v.nnz]
    if not nonempty:
        return SparseVector(torch.zeros(0, dtype=torch.int64, device=device),
                            torch.zeros(0, dtype=dtype, device=device), size, check=False)
    if len(nonempty) == 1:
        v = nonempty[0]
        return SparseVector(v.indices, v.values.to(dtype), size, check=False)
    if numpy_path(vectors[0].values) and dtype in _NUMPY_DTYPES and \
            total <= _NUMPY_MERGE_MAX:
        return _merge_numpy(nonempty, size, dtype).compact(vb)
    # each stream is sorted: a stable (radix) sort of the narrow indices joins the runs, equal
    # indices stay in stream order, so the sum is the same on every rank
    idx = torch.cat([v.indices for v in nonempty]).to(index_dtype_for(size))
    vals = torch.cat([v.values.to(dtype) for v in nonempty])
    ordered, perm = torch.sort(idx, stable=True)
    uniq, inverse = torch.unique_consecutive(ordered, return_inverse=True)
    summed = torch.zeros(uniq.numel(), dtype=dtype, device=device).index_add_(0, inverse,
                                                                               vals[perm])
    return SparseVector(uniq.to(torch.int64), summed, size, check=False).compact(vb)


_NUMPY_DTYPES = (torch.float32, torch.float64)
_NUMPY_MERGE_MAX = 1 << 16  # stored entries: below this numpy's fixed cost per call wins


def _merge_numpy(vectors: Sequence[SparseVector], size: int, dtype: torch.dtype
                 ) -> SparseVector:
    """:func:`merge` of sparse CPU vectors with numpy (small inputs: a fraction of torch's
    per-call overhead)."""
    nd = np.float32 if dtype == torch.float32 else np.float64
    idx, vals = sum_sorted_runs([v.indices.detach().numpy() for v in vectors],
                                [v.values.detach().numpy().astype(nd, copy=False)
                                 for v in vectors])
    return SparseVector(torch.from_numpy(idx), torch.from_numpy(vals), size, check=False)


def sum_sorted_runs(indices: Sequence[np.ndarray], values: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Sum of sparse streams given as numpy (sorted unique indices, values) pairs ->
    (int64 sorted unique indices, summed values). A stable sort of the concatenated runs
    (timsort: linear in the runs) keeps equal indices in stream order; ``reduceat`` adds
    them in that order, so every rank that merges the same streams gets the same bits."""
    idx = np.concatenate(indices)
    vals = np.concatenate(values)
    if not idx.size:
        return idx.astype(np.int64), vals
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    first = np.empty(ordered.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return ordered[starts].astype(np.int64, copy=False), np.add.reduceat(vals[order], starts)


def _expected_union(vectors: Sequence[SparseVector]) -> float:
    """Expected nnz of the sum if the index sets were independent and uniform."""
    size = vectors[0].size
    if size == 0:
        return 0.0
    empty = 1.0
    for v in vectors:
        empty *= 1.0 - v.nnz / size
    return size * (1.0 - empty)
