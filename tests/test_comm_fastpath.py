"""Unit tests of the fast paths of oncoscale.comm: vectorised QSGD, the validation flags of
the agreement header, the eager capacity and the radix-sort merge (single process)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oncoscale.comm as C
from oncoscale.comm.collectives import (
    _EAGER_DEFAULT,
    _eager_cap,
    _local_flags,
    _SteadyHistory,
)
from oncoscale.comm.quant import QSGDCodec


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_qsgd_unbiased_over_whole_periods_and_a_tail(bits: int) -> None:
    codec = QSGDCodec(bits, bucket_size=512, seed=1)
    n = 2 * codec.period + 700  # two whole dither periods and a partial last bucket
    x = torch.randn(n) * torch.linspace(0.1, 2, n)
    trials = 300
    acc = torch.zeros(n, dtype=torch.float64)
    b = codec.bucket_size
    scale = torch.nn.functional.pad(x.abs(), (0, -n % b)).view(-1, b).amax(1)
    step = (scale / codec.levels).repeat_interleave(b)[:n]
    for _ in range(trials):
        buf = codec.encode(x)
        assert buf.numel() == codec.nbytes(n, x.dtype)
        q = codec.decode(buf, n, torch.float32)
        assert bool(((q - x).abs() <= step * (1 + 1e-5) + 1e-6).all())
        acc += q.double()
    z = ((acc / trials - x.double()) / step.double()).abs()
    # each rounding error lies in (-step, step): the mean of 300 is within ~6 / sqrt(300)
    assert float(z.max()) < 6 / math.sqrt(trials) + 1e-6
    # and the errors of neighbouring values are not all of one sign (a working dither)
    err = codec.decode(codec.encode(x), n, torch.float32) - x
    assert 0.2 < float((err > 0).float().mean()) < 0.8


def test_qsgd_seeds_out_buffer_and_decode_into() -> None:
    codec = QSGDCodec(8)
    x, y = torch.randn(10_000), torch.randn(10_000)
    a, b = codec.encode(x, seed=7), codec.encode(x, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, codec.encode(x, seed=8))
    big = torch.zeros(a.numel() + 3, dtype=torch.uint8)  # a misaligned slice
    codec.encode(x, seed=7, out=big[3:])
    assert torch.equal(big[3:], a)
    by = codec.encode(y, seed=2)
    out = torch.empty(10_000)
    codec.decode_into(a, out, accumulate=False)
    codec.decode_into(by, out, accumulate=True)
    ref = codec.decode(a, 10_000, torch.float32) + codec.decode(by, 10_000, torch.float32)
    assert torch.allclose(out, ref, atol=1e-6)
    assert codec.decode(a, 10_000, torch.float64).dtype == torch.float64


def test_validation_flags_are_cheap_and_complete() -> None:
    ok = C.SparseVector([1, 4], [1.0, 2.0], 10)
    assert _local_flags(ok) == 0 and ok._checked
    unsorted = C.SparseVector(torch.tensor([4, 1]), torch.ones(2), 10, check=False)
    assert _local_flags(unsorted) & 2 and not unsorted._checked
    out_of_range = C.SparseVector(torch.tensor([1, 10]), torch.ones(2), 10, check=False)
    assert _local_flags(out_of_range) & 1
    negative = C.SparseVector(torch.tensor([-1, 3]), torch.ones(2), 10, check=False)
    assert _local_flags(negative) & 1
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert _local_flags(C.SparseVector([2], [bad], 10)) & 4
    # finite values whose float32 sum overflows are not an error
    huge = C.SparseVector(None, torch.full((4,), 3e38), 4)
    assert _local_flags(huge) == 0
    half = C.SparseVector(None, torch.full((3000,), 60000.0, dtype=torch.float16), 3000)
    assert _local_flags(half) == 0
    assert _local_flags(C.SparseVector(torch.tensor([1]), torch.ones(2), 10, check=False)) == 8


class _FakeWorld:
    def __init__(self) -> None:
        self.cache: dict = {}


class _FakeGroup:
    def __init__(self, size: int) -> None:
        self.world, self.size, self.ranks = _FakeWorld(), size, tuple(range(size))


def test_eager_capacity_follows_agreed_history() -> None:
    g = _FakeGroup(2)
    assert _eager_cap(g) == _EAGER_DEFAULT
    g.world.cache[("eager", g.ranks)] = [1000, 70]
    assert _eager_cap(g) == 1024  # rounded up to 256 bytes
    g.world.cache[("eager", g.ranks)] = [10**7]  # too big to go eager: header only
    assert _eager_cap(g) == 0
    g8 = _FakeGroup(8)
    g8.world.cache[("eager", g8.ranks)] = [120_000, 120_000]  # capped at 1 MiB / 8
    assert _eager_cap(g8) == 120_064
    # half the calls would not fit (200 000 > 1 MiB / 8): 7 x 120 kB per call for them is
    # more than the latency the others save, so no capacity
    g8.world.cache[("eager", g8.ranks)] = [200_000, 120_000]
    assert _eager_cap(g8) == 0
    g.world.cache[("eager", g.ranks)] = [90_000, 2000, 2000, 2000]  # mostly small: keep
    assert _eager_cap(g) == 90_112


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), parts=st.integers(1, 5), density=st.floats(0.0, 0.6),
       seed=st.integers(0, 1000))
def test_merge_matches_dense_sum(n: int, parts: int, density: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    vecs = []
    for _ in range(parts):
        k = int(density * n)
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        vecs.append(C.SparseVector(idx, torch.randn(k, generator=gen, dtype=torch.float64), n))
    out = C.merge(vecs)
    ref = sum(v.to_dense() for v in vecs)
    assert torch.allclose(out.to_dense(), ref)
    if not out.is_dense:
        assert out.indices.dtype == torch.int64
        assert bool((out.indices[1:] > out.indices[:-1]).all())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 400), st.sampled_from([torch.float32, torch.float64]),
       st.integers(0, 2**31 - 1))
def test_numpy_merge_equals_torch_merge_and_the_dense_sum(
        streams: int, n: int, dtype: torch.dtype, seed: int) -> None:
    """The small-input numpy merge gives the torch path's indices and (within rounding) its
    sums, and both equal the dense sum."""
    import oncoscale.comm.sparse as S

    gen = torch.Generator().manual_seed(seed)
    vecs = []
    for _ in range(streams):
        k = int(torch.randint(0, n + 1, (1,), generator=gen))
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        vecs.append(C.SparseVector(idx, torch.randn(k, generator=gen, dtype=dtype), n))
    fast = S.merge(vecs, value_bytes=1e9)  # a huge value width keeps the result sparse
    old = S._NUMPY_MERGE_MAX
    S._NUMPY_MERGE_MAX = -1  # force the torch path
    try:
        slow = S.merge(vecs, value_bytes=1e9)
    finally:
        S._NUMPY_MERGE_MAX = old
    dense = sum(v.to_dense() for v in vecs)
    assert fast.dtype == slow.dtype == dtype
    assert torch.equal(fast.to_dense() != 0, slow.to_dense() != 0) or \
        torch.allclose(fast.to_dense(), slow.to_dense())
    if not fast.is_dense and not slow.is_dense:
        assert torch.equal(fast.indices, slow.indices)
        assert fast.indices.dtype == torch.int64
    assert torch.allclose(fast.to_dense(), dense, atol=1e-5)
    assert torch.allclose(slow.to_dense(), dense, atol=1e-5)


def test_steady_prediction_follows_the_repeating_pattern() -> None:
    cpu = torch.device("cpu")

    def predict(sizes: list[int], dense: list[bool] | None = None,
                dtypes: list[torch.dtype] | None = None) -> tuple | None:
        hist = _SteadyHistory()
        for i, n in enumerate(sizes):
            dt = dtypes[i] if dtypes else torch.float32
            hist.append(C.SparseVector(None, torch.zeros(n, dtype=dt), n),
                        dense[i] if dense else True)
        p = hist.predict()
        return None if p is None else (p[0], p[2])

    assert predict([]) is None and predict([5]) is None
    assert predict([5, 5]) == (5, cpu)
    assert predict([7, 5, 7, 5]) == (7, cpu)  # two buckets
    assert predict([7, 5, 7]) is None  # not yet one whole period repeated
    assert predict([3, 3, 9, 3, 3, 9]) == (3, cpu)  # repeated sizes within a cycle
    assert predict([3, 9, 3, 3, 9, 3, 3]) == (9, cpu)  # the cycle, not the last pair
    assert predict([3, 9, 3, 3, 9, 3]) == (3, cpu)
    # the call one period back ran sparse (or eager): no steady path
    assert predict([7, 5, 7, 5], [False, True, False, True]) is None
    assert predict([7, 5, 7, 5], [True, False, True, False]) == (7, cpu)
    # the dtype is part of the pattern
    assert predict([5, 5], dtypes=[torch.float64, torch.float32]) is None
    # a long steady run, then a change: the new pattern takes over once it repeats
    assert predict([4] * 80 + [6, 6]) == (6, cpu)
    # more buckets than half the window: never predicted
    assert predict(list(range(1, 41)) * 3) is None
