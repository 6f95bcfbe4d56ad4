"""Single-process tests of oncoscale.comm: launch discovery, SparseVector, codecs,
compressors with error feedback, the cost model and a world of one rank."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oncoscale.comm as C
from oncoscale.comm._launch import discover, expand_nodelist
from oncoscale.comm.quant import CastCodec, QSGDCodec, ValueCodec, get_codec
from oncoscale.errors import ConfigurationError, InputError

# ---- launch discovery -------------------------------------------------------------------------


def test_discover_each_launcher() -> None:
    tr = discover({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                   "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"})
    assert (tr.launcher, tr.rank, tr.size, tr.local_rank, tr.master_addr, tr.master_port) == \
        ("torchrun", 3, 4, 1, "h", 1234)
    om = discover({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "8",
                   "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    assert (om.launcher, om.rank, om.size, om.master_addr, om.master_port) == \
        ("mpi", 2, 8, None, None)
    pmi = discover({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})
    assert (pmi.launcher, pmi.rank, pmi.size, pmi.local_rank) == ("mpi", 1, 2, 1)
    sl = discover({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2",
                   "SLURM_JOB_NODELIST": "gpu[07-09],cpu1", "SLURM_JOB_ID": "123"})
    assert (sl.launcher, sl.rank, sl.size, sl.local_rank, sl.master_addr) == \
        ("slurm", 5, 6, 2, "gpu07")
    assert sl.master_port == 20123
    single = discover({})
    assert (single.launcher, single.rank, single.size) == ("single", 0, 1)


def test_discover_rejects_bad_values() -> None:
    with pytest.raises(ConfigurationError, match="RANK"):
        discover({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigurationError, match="rank 4 of world size 4"):
        discover({"RANK": "4", "WORLD_SIZE": "4"})


def test_expand_nodelist() -> None:
    assert expand_nodelist("a[01-03,10],b,c[7]") == ["a01", "a02", "a03", "a10", "b", "c7"]
    assert expand_nodelist("node5") == ["node5"]


# ---- SparseVector -------------------------------------------------------------------------------


@st.composite
def sparse_vectors(draw: st.DrawFn, size: int | None = None) -> C.SparseVector:
    n = draw(st.integers(0, 300)) if size is None else size
    idx = sorted(draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n))) if n else []
    vals = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=len(idx), max_size=len(idx)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return C.SparseVector(torch.tensor(idx, dtype=torch.int64),
                          torch.tensor(vals, dtype=dtype), n)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 200).flatmap(lambda n: st.tuples(sparse_vectors(n), sparse_vectors(n))))
def test_merge_equals_dense_sum(pair: tuple[C.SparseVector, C.SparseVector]) -> None:
    a, b = pair
    s = a + b
    expect = a.to_dense().double() + b.to_dense().double()
    assert s.size == a.size
    assert torch.allclose(s.to_dense().double(), expect, atol=1e-3)
    vb = s.values.element_size()
    if not s.is_dense:  # the stream rule: sparse only while cheaper than dense
        assert s.size == 0 or s.nnz * (4 + vb) < s.size * vb
        assert bool((s.indices[1:] > s.indices[:-1]).all())


@settings(max_examples=40, deadline=None)
@given(sparse_vectors())
def test_roundtrips(v: C.SparseVector) -> None:
    dense = v.to_dense()
    back = C.SparseVector.from_dense(dense)
    assert torch.equal(back.to_dense(), dense)
    assert torch.equal(C.SparseVector.from_torch(v.to_torch()).to_dense(), dense)
    assert torch.equal(v.densify().to_dense(), dense)
    assert torch.equal(v.densify().sparsify().to_dense(), dense)
    if v.size:
        lo, hi = v.size // 3, v.size
        assert torch.equal(v.slice(lo, hi).to_dense(), dense[lo:hi])


def test_stream_rule_switches_to_dense() -> None:
    n = 100
    # float32 + int32 index: dense once nnz * 8 >= n * 4, i.e. nnz >= 50
    assert not C.prefers_dense(49, n, 4)
    assert C.prefers_dense(50, n, 4)
    a = C.SparseVector(torch.arange(0, 100, 2), torch.ones(50), n)
    assert a.compact().is_dense
    b = C.SparseVector(torch.arange(0, 100, 4), torch.ones(25), n)
    c = C.SparseVector(torch.arange(1, 100, 4), torch.ones(25), n)
    assert not b.compact().is_dense
    assert (b + c).is_dense  # fill-in: 50 entries now


def test_sparse_vector_validation() -> None:
    with pytest.raises(InputError, match="sorted and unique"):
        C.SparseVector([3, 1], [1.0, 2.0], 5)
    with pytest.raises(InputError, match=r"in \[0, 5\)"):
        C.SparseVector([1, 5], [1.0, 2.0], 5)
    with pytest.raises(InputError, match="floating"):
        C.SparseVector([1], torch.tensor([1]), 5)
    with pytest.raises(InputError, match="equal length"):
        C.SparseVector([1, 2], [1.0], 5)
    with pytest.raises(InputError, match="5 values"):
        C.SparseVector(None, torch.ones(4), 5)
    v = C.SparseVector([1, 2], torch.tensor([1.0, 2.0], dtype=torch.bfloat16), 5)
    assert v.dtype == torch.bfloat16 and v.nnz == 2


# ---- codecs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_is_unbiased_and_bounded(bits: int) -> None:
    codec = QSGDCodec(bits, bucket_size=64, seed=0)
    x = torch.randn(640) * torch.linspace(0.1, 3, 640)
    trials = 3000
    acc = torch.zeros_like(x)
    for _ in range(trials):
        buf = codec.encode(x)
        assert buf.numel() == codec.nbytes(x.numel(), x.dtype)
        q = codec.decode(buf, x.numel(), torch.float32)
        acc += q
    mean = acc / trials
    scale = x.view(10, 64).abs().amax(1).repeat_interleave(64)
    # each sample deviates by at most scale/levels; the mean by ~ that / sqrt(trials)
    step = scale / codec.levels
    assert float(((mean - x).abs() / step).max()) < 6 / math.sqrt(trials) * 2 + 1e-6
    one = codec.decode(codec.encode(x), x.numel(), torch.float32)
    assert bool(((one - x).abs() <= step + 1e-5).all())
    assert codec.value_bytes(torch.float32) < 4 * bits / 16


def test_qsgd_seed_makes_codes_equal() -> None:
    codec = QSGDCodec(4, 32)
    x = torch.randn(100)
    assert torch.equal(codec.encode(x, seed=5), codec.encode(x, seed=5))


def test_cast_codecs_and_lookup() -> None:
    x = torch.randn(33)
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        c = get_codec(name)
        assert isinstance(c, CastCodec) and c.lossy
        buf = c.encode(x)
        assert buf.numel() == 66
        assert torch.allclose(c.decode(buf, 33, torch.float32), x.to(dt).float())
    assert isinstance(get_codec(None), ValueCodec) and not get_codec(None).lossy
    assert get_codec("qsgd2").bits == 2
    with pytest.raises(ConfigurationError):
        get_codec("int3")


# ---- compressors and error feedback -----------------------------------------------------------


def test_topk_per_tensor_and_per_bucket() -> None:
    x = torch.randn(1000)
    v = C.TopK(0.01).compress(x)
    assert v.nnz == 10
    assert set(v.indices.tolist()) == set(torch.topk(x.abs(), 10).indices.tolist())
    b = C.TopK(0.02, bucket_size=100).compress(x)
    assert b.nnz == 20
    for j in range(10):  # two per bucket, the largest of that bucket
        inside = b.indices[(b.indices >= 100 * j) & (b.indices < 100 * (j + 1))]
        assert set(inside.tolist()) == set((torch.topk(x[100 * j:100 * (j + 1)].abs(), 2)
                                            .indices + 100 * j).tolist())
    assert torch.equal(b.values, x[b.indices])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1 << 16, 400_000), frac=st.sampled_from([0.0005, 0.003, 0.01, 0.05, 0.2]),
       kind=st.sampled_from(["normal", "ties", "zeros", "ramp", "nan"]), seed=st.integers(0, 99))
def test_top_k_indices_equals_topk(n: int, frac: float, kind: str, seed: int) -> None:
    """The sampled-threshold selection picks what ``torch.topk`` picks (the same values; the
    same indices up to ties), whatever the sample sees: heavy ties, mostly zeros, sorted
    input (a strided sample of a ramp), NaN."""
    from oncoscale.comm.compress import top_k_indices

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    if kind == "ties":
        x = torch.round(x * 4) / 4
    elif kind == "zeros":
        x[torch.rand(n, generator=g) < 0.97] = 0.0
    elif kind == "ramp":
        x = torch.linspace(0, 1, n)
    elif kind == "nan":
        x[torch.randint(0, n, (3,), generator=g)] = float("nan")
    a = x.abs()
    k = max(1, round(frac * n))
    got = top_k_indices(a, k)
    ref = torch.topk(a, k, sorted=False).indices
    assert got.numel() == k and bool((got[1:] > got[:-1]).all())
    def chosen(i: torch.Tensor) -> torch.Tensor:  # NaN as +inf: comparable
        return torch.nan_to_num(a[i], nan=math.inf).sort().values

    assert torch.equal(chosen(got), chosen(ref))
    if kind in ("normal", "ramp"):
        assert torch.equal(got, ref.sort().values)


def test_randomk_threshold_qsgd_compose() -> None:
    x = torch.randn(500)
    r1, r2 = C.RandomK(0.1, seed=3), C.RandomK(0.1, seed=3)
    a, b = r1.compress(x), r2.compress(x)
    assert a.nnz == 50 and torch.equal(a.indices, b.indices)  # same seed: same picks
    assert not torch.equal(r1.compress(x).indices, a.indices)  # next step: new picks
    t = C.Threshold(1.5).compress(x)
    assert bool((t.values.abs() >= 1.5).all()) and t.nnz == int((x.abs() >= 1.5).sum())
    q = C.QSGD(8).compress(x)
    assert q.is_dense and float((q.values - x).abs().max()) < x.abs().max() / 100
    comp = C.TopK(0.1) | C.QSGD(8)
    assert isinstance(comp.codec, QSGDCodec)
    cv = comp.compress(x)
    assert cv.nnz <= 50
    with pytest.raises(ConfigurationError):
        C.TopK(0.0)


def test_error_feedback_transmits_everything_eventually() -> None:
    torch.manual_seed(0)
    g = torch.randn(200)
    ef = C.ErrorFeedback(C.TopK(0.05), enabled=True)
    sent = torch.zeros(200)
    steps = 200
    for _ in range(steps):
        sent += ef.compress("w", g).to_dense()
    # sum of what was sent + residual memory == sum of gradients (nothing is lost)
    assert torch.allclose(sent + ef.memory["w"], g * steps, atol=1e-3)
    assert float((sent / steps - g).abs().max()) < 0.2
    off = C.ErrorFeedback(C.TopK(0.05), enabled=False)
    total = sum(off.compress("w", g).to_dense() for _ in range(steps))
    assert int((total != 0).sum()) == 10  # without memory the same 10 entries, forever
    with pytest.raises(InputError, match="memory"):
        ef.compress("w", torch.randn(10))


# ---- cost model --------------------------------------------------------------------------------


def test_cost_model_prefers_sparse_when_sparse_and_dense_when_dense() -> None:
    m = C.CostModel(alpha=5e-5, beta=1e-9, alpha_ar=1e-4, beta_ar=2e-9, alpha_ag=1e-4,
                    beta_ag=1e-9, gamma_sparse=3e-8, gamma_dense=5e-10)
    n, p = 10_000_000, 4
    sparse_pick = m.choose(p, n, [n // 10_000] * p, 4, 4)
    dense_pick = m.choose(p, n, [n // 2] * p, 4, 4)
    assert sparse_pick in ("recursive_doubling", "split_allgather", "allgather")
    # filled-in pieces travel dense by the stream rule: split-allgather becomes DSAR
    assert dense_pick in ("dense", "dsar", "split_allgather")
    assert m.predict("split_allgather", p, n, [n // 2] * p, 4, 4).bytes_per_rank == \
        pytest.approx(m.predict("dsar", p, n, [n // 2] * p, 4, 4).bytes_per_rank, rel=1e-3)
    for alg in C.ALGORITHMS:
        lo = m.predict(alg, p, n, [1000] * p, 4, 4)
        hi = m.predict(alg, p, n, [100_000] * p, 4, 4)
        assert hi.seconds >= lo.seconds and hi.bytes_per_rank >= lo.bytes_per_rank
    assert m.predict("dense", p, n, [0] * p, 4, 4).bytes_per_rank == pytest.approx(
        2 * 3 / 4 * n * 4)


# ---- a world of one process ---------------------------------------------------------------------


def test_single_process_world(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    for k in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMI_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ONCOSCALE_CACHE_DIR", str(tmp_path))
    w = C.init("torch", timeout=30)
    try:
        assert (w.rank, w.size, w.local_rank, w.backend) == (0, 1, 0, "torch")
        assert w.device == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        assert C.init("torch") is w
        lay = w.layout(replicas=1, partitions=1)
        assert (lay.replica_index, lay.partition_index, lay.prev_rank, lay.next_rank) == \
            (0, 0, None, None)
        with pytest.raises(ConfigurationError, match="replicas x partitions"):
            w.layout(replicas=2, partitions=1)
        with pytest.raises(ConfigurationError, match="distinct world ranks"):
            w.new_group([0, 1])
        with pytest.raises(ConfigurationError, match="mpi backend"):
            _ = w.mpi_comm
        assert w.torch_group is not None
        v = C.SparseVector([1, 3], [1.0, 2.0], 6)
        for alg in ("auto", *C.ALGORITHMS):
            out = C.sparse_allreduce(v, alg)
            assert torch.equal(out.to_dense(), v.to_dense())
        work = C.sparse_allreduce(v, async_op=True, op="avg")
        assert torch.equal(work.wait().to_dense(), v.to_dense())
        assert work.is_completed()
        assert C.last_algorithm(w) == "none"
        got = C.sparse_allgather(v)
        assert len(got) == 1 and torch.equal(got[0].to_dense(), v.to_dense())
        with pytest.raises(InputError, match="NaN"):
            C.sparse_allreduce(C.SparseVector([0], [float("nan")], 2))
        with pytest.raises(ConfigurationError, match="algorithm"):
            C.sparse_allreduce(v, "butterfly")
        t = torch.ones(3)
        w.allreduce(t, "avg")
        assert torch.equal(t, torch.ones(3))
        assert [x.tolist() for x in w.allgatherv(torch.arange(2.0))] == [[0.0, 1.0]]
        w.barrier()
    finally:
        w.shutdown()
    with pytest.raises(ConfigurationError, match="backend"):
        C.init("nccl")


@pytest.mark.parametrize("mpi_first", [True, False])
def test_mpi_backend_warns_when_mpi4py_was_initialised_first(mpi_first: bool) -> None:
    """Open MPI reads its non-blocking allreduce algorithm at MPI_Init: imported first,
    mpi4py has already initialised MPI, and the user is told how to get the fast one."""
    pytest.importorskip("mpi4py")
    init = "import oncoscale.comm as C; w = C.init('mpi'); "
    code = ("import mpi4py.MPI; " + init) if mpi_first else (init + "import mpi4py.MPI; ")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_MCA_coll", "PMI"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.run([sys.executable, "-c", code + "w.shutdown()"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = "mpi4py was imported before oncoscale.comm.init()" in proc.stderr
    assert warned == mpi_first, proc.stderr[-2000:]


def test_ranks_per_core_counts_the_busiest_node() -> None:
    import numpy as np

    from oncoscale.comm.costmodel import _MAX_CPUS, _placement_row, ranks_per_core

    def row(host: int, cpus: list[int]) -> np.ndarray:
        r = np.zeros(4 + _MAX_CPUS // 8, dtype=np.uint8)
        r[:4] = np.frombuffer(host.to_bytes(4, "little"), dtype=np.uint8)
        for c in cpus:
            r[4 + c // 8] |= np.uint8(1 << (c % 8))
        return r

    # 8 unbound ranks on a 2-core node: 4 ranks per core
    assert ranks_per_core([row(1, [0, 1])] * 8) == 4.0
    # ranks bound one per core are not oversubscribed; the union of their sets is the node
    assert ranks_per_core([row(1, [c]) for c in range(4)]) == 1.0
    # two nodes: the busiest one counts (3 ranks on 2 cores), cpu ids past the first byte
    assert ranks_per_core([row(1, [0, 1, 2, 3])] * 2 + [row(2, [9, 700])] * 3) == 1.5
    # never below 1 (fewer ranks than cores)
    assert ranks_per_core([row(7, list(range(64)))]) == 1.0
    mine = _placement_row()
    assert int(np.unpackbits(mine[4:]).sum()) == min(len(os.sched_getaffinity(0)), _MAX_CPUS)
