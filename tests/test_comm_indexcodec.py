"""The wire format of sparse indices (oncoscale.comm.indexcodec): round trips, sizes, choice."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oncoscale.comm import indexcodec as IC
from oncoscale.comm.sparse import index_bytes_for


@st.composite
def index_sets(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """Sorted unique indices of an n-vector: random, in contiguous runs (full buckets), or
    at the ends of the range."""
    n = draw(st.integers(1, 5000))
    kind = draw(st.sampled_from(["random", "runs", "ends"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        k = draw(st.integers(0, n))
        idx = np.sort(rng.choice(n, k, replace=False))
    elif kind == "runs":
        starts = rng.integers(0, n, draw(st.integers(1, 6)))
        lengths = rng.integers(1, 600, starts.size)
        idx = np.unique(np.concatenate([np.arange(a, min(n, a + b))
                                        for a, b in zip(starts, lengths, strict=True)]))
    else:
        idx = np.unique(np.array([0, n - 1, max(0, n - 255), min(n - 1, 254)]))
    return torch.from_numpy(idx.astype(np.int64)), n


@settings(max_examples=200, deadline=None)
@given(index_sets())
def test_round_trip_size_and_choice(case: tuple[torch.Tensor, int]) -> None:
    idx, n = case
    k = idx.numel()
    buf = IC.encode_indices(idx, n)
    assert buf.dtype == torch.uint8
    assert buf.numel() == IC.wire_index_bytes(k, n)
    assert buf.numel() <= k * index_bytes_for(n)  # never larger than plain int32
    assert IC.uses_packed(k, n) == (IC.packed_bytes(k, n) < k * index_bytes_for(n))
    out = IC.decode_indices(buf, k, n)
    assert out.dtype == torch.int64 and torch.equal(out, idx)
    # the torch implementation (used on GPUs) writes and reads the same bytes
    if IC.uses_packed(k, n):
        nb = -(-n // IC.BUCKET)
        assert torch.equal(IC._pack_torch(idx, nb), buf)
        assert torch.equal(IC._unpack_torch(buf, k, nb), idx)
    # the bucketed format on its own (always packed) round-trips too
    packed = IC.pack_indices(idx, n)
    assert packed.numel() == IC.packed_bytes(k, n)
    assert torch.equal(IC.unpack_indices(packed, k, n), idx)


def test_decodes_from_a_misaligned_slice_of_a_message() -> None:
    n = 10**6
    idx = torch.arange(0, n, 997, dtype=torch.int64)  # 0.1 %: plain int32 on the wire
    assert not IC.uses_packed(idx.numel(), n)
    msg = torch.cat([torch.zeros(3, dtype=torch.uint8), IC.encode_indices(idx, n)])
    assert torch.equal(IC.decode_indices(msg[3:], idx.numel(), n), idx)


def test_packed_is_about_four_times_smaller_when_dense() -> None:
    n = 10**6
    k = n // 2
    assert IC.wire_index_bytes(k, n) == k + -(-n // 255)
    assert k * 4 / IC.wire_index_bytes(k, n) > 3.9
