"""Compressed data-parallel training: error-feedback memory, bucket packing, the DDP hook.

Unit/property tests run in this process. The multi-rank test launches ONE real 2-rank
torchrun job (gloo, OMP_NUM_THREADS=1): this file run as a script executes every check on
both ranks, collects failures instead of stopping, and prints one ``RESULT <rank> <json>``
line per rank.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oncoscale.comm.compress import (
    BucketPacking,
    ErrorFeedback,
    GradientCompression,
    LocalAdam,
    Round,
    TopK,
)
from oncoscale.comm.sparse import SparseVector
from oncoscale.errors import ConfigurationError, InputError

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- properties
@st.composite
def _ef_case(draw: st.DrawFn) -> tuple[int, int, list[torch.Tensor], str]:
    n = draw(st.integers(1, 700))
    steps = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["tensor", "bucket", "bucket_fp16"]))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-4, 1.0, 1e3]))
    grads = [torch.randn(n, generator=gen) * scale for _ in range(steps)]
    if draw(st.booleans()):  # some exact zeros and ties
        for g in grads:
            g[torch.rand(n, generator=gen) < 0.3] = 0.0
    bucket = draw(st.integers(1, 300))
    return n, bucket, grads, kind


@settings(max_examples=60, deadline=None)
@given(_ef_case(), st.floats(0.001, 1.0))
def test_error_feedback_residual_memory(case: tuple, ratio: float) -> None:
    """memory_new = grad + memory_old - sent at every step, so sum(sent) + memory = sum(grad);
    the selection is the top-k of the corrected gradient (per tensor or per bucket)."""
    n, bucket, grads, kind = case
    top = TopK(ratio) if kind == "tensor" else TopK(ratio, bucket_size=bucket)
    comp = top | Round("fp16") if kind == "bucket_fp16" else top
    ef = ErrorFeedback(comp)
    total_sent = torch.zeros(n, dtype=torch.float64)
    memory = torch.zeros(n)
    for g in grads:
        corrected = g + memory
        sent = ef.compress("k", g)
        dense = sent.to_dense()
        new = ef.memory["k"]
        # conservation at every step (float32 arithmetic: one rounding per entry)
        assert torch.allclose(dense + new, corrected, rtol=1e-6, atol=1e-30)
        # what is kept and how many
        if kind == "tensor":
            k = min(n, max(1, round(ratio * n)))
            assert sent.nnz == k
            unsent = torch.ones(n, dtype=torch.bool)
            unsent[sent.indices] = False
            if unsent.any():
                assert float(corrected[sent.indices].abs().min()) >= \
                    float(corrected[unsent].abs().max())
        else:
            kb = min(bucket, max(1, math.ceil(ratio * bucket)))
            per_bucket = torch.bincount(sent.indices // bucket, minlength=-(-n // bucket))
            assert int(per_bucket.max()) <= kb
            assert sent.nnz == sum(min(kb, n - s) for s in range(0, n, bucket))
        # residual at sent positions: zero, or the fp16 rounding error only
        at = new[sent.indices]
        if kind == "bucket_fp16":
            ref = corrected[sent.indices]
            half = ref.to(torch.float16).to(torch.float32)
            assert torch.equal(dense[sent.indices], half)
            finite = half.isfinite()
            assert torch.allclose(at[finite], (ref - half)[finite], atol=0)
        else:
            assert torch.count_nonzero(at) == 0
        total_sent += dense.double()
        memory = new.clone()
    total = torch.stack(grads).double().sum(0)
    assert torch.allclose(total_sent + memory.double(), total, rtol=1e-5,
                          atol=1e-6 * max(1.0, float(total.abs().max())))


def test_error_feedback_off_and_mismatch() -> None:
    ef = ErrorFeedback(TopK(0.5), enabled=False)
    ef.compress(0, torch.arange(4.0))
    assert ef.memory == {}
    ef = ErrorFeedback(TopK(0.5))
    ef.compress(0, torch.arange(4.0))
    with pytest.raises(InputError, match="4 entries"):
        ef.compress(0, torch.arange(5.0))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 3000), st.sampled_from(["random", "runs", "topk"]),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), st.integers(0, 10**6))
def test_bucket_packing_round_trip(n: int, nnz: int, pattern: str, dtype: torch.dtype,
                                   seed: int) -> None:
    """Any selection (scattered, whole runs of 255+ entries, TopK) survives pack/unpack, and
    the message has exactly the documented length."""
    gen = torch.Generator().manual_seed(seed)
    nnz = min(nnz, n)
    if pattern == "random":
        idx = torch.randperm(n, generator=gen)[:nnz].sort().values
    elif pattern == "runs":  # full buckets: counts of 255 must fit
        start = int(torch.randint(0, n - nnz + 1, (1,), generator=gen))
        idx = torch.arange(start, start + nnz)
    else:
        idx = TopK(max(nnz, 1) / n).compress(torch.randn(n, generator=gen)).indices
    vec = SparseVector(idx, torch.randn(idx.numel(), generator=gen), n)
    pk = BucketPacking(dtype)
    msg = pk.pack(vec)
    assert msg.dtype == torch.uint8 and msg.numel() == pk.nbytes(n, vec.nnz)
    vb = torch.empty((), dtype=dtype).element_size()
    assert pk.nbytes(n, vec.nnz) == 16 + -(-n // 255) + vec.nnz * (1 + vb)
    got = pk.unpack(msg, n)
    assert torch.equal(got.indices, vec.indices)
    assert torch.equal(got.values, vec.values.to(dtype).float())


def test_bucket_packing_errors_and_sizes() -> None:
    pk = BucketPacking()
    vec = SparseVector(torch.tensor([5, 254, 255, 1999]), torch.tensor([1.0, 2, 3, 4]), 2000)
    with pytest.raises(InputError, match="expected 3000"):
        pk.unpack(pk.pack(vec), 3000)
    dense = SparseVector(None, vec.to_dense(), 2000)
    assert torch.equal(pk.unpack(pk.pack(dense), 2000).to_dense(), vec.to_dense())
    # TopK 1 % of a million: ~5.4 bytes per entry with fp32 values, 3.4 with fp16
    n, k = 1_000_000, 10_000
    assert BucketPacking().nbytes(n, k) / k < 5.4
    assert BucketPacking(torch.float16).nbytes(n, k) / k < 3.4
    # fp16 values on the wire: the rounding is part of what error feedback remembers
    gc = GradientCompression(TopK(0.5), codec="fp16")
    sent = gc.feedback.compress("b", torch.tensor([1.0001, 3.0001, -2.0, 0.5]))
    assert torch.equal(sent.values, torch.tensor([3.0001, -2.0]).half().float())
    x = torch.tensor(3.0001)
    assert gc.feedback.memory["b"][1] == x - x.half().float() != 0
    with pytest.raises(ConfigurationError, match="sparsifying"):
        GradientCompression(None, algorithm="packed_allgather")
    with pytest.raises(ConfigurationError, match="fp32, fp16 or bf16"):
        GradientCompression(TopK(0.01), algorithm="packed_allgather", codec="qsgd8")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(1, 8), st.integers(0, 10**6),
       st.sampled_from([1e-3, 1.0, 100.0]))
def test_local_adam_is_torch_adams_direction(n: int, steps: int, seed: int, scale: float
                                             ) -> None:
    """Uncompressed, SGD(lr) on LocalAdam's direction = torch.optim.Adam(lr)."""
    gen = torch.Generator().manual_seed(seed)
    w_ref = torch.nn.Parameter(torch.randn(n, generator=gen))
    w = w_ref.detach().clone()
    opt = torch.optim.Adam([w_ref], lr=0.01)
    la = LocalAdam()
    for _ in range(steps):
        g = torch.randn(n, generator=gen) * scale
        w_ref.grad = g.clone()
        opt.step()
        w -= 0.01 * la.direction("b", g)
    assert torch.allclose(w, w_ref.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="LocalAdam state"):
        la.direction("b", torch.zeros(n + 1))


def test_local_adam_noise_ratio_estimates_the_averaged_gradients_moment() -> None:
    """``LocalAdam(noise_ratio=1/p)`` on ONE rank's noisy gradient steps like Adam on the
    average of p ranks' gradients (same mean, 1/p of the noise variance); plain LocalAdam
    steps about sqrt(v_local / v_avg) = 1.6x shorter here. ``noise_ratio=1`` is plain Adam,
    and a noise-free gradient gets the same direction whatever the ratio."""
    p, n, steps = 4, 20000, 200
    gen = torch.Generator().manual_seed(7)
    mu = torch.rand(n, generator=gen) - 0.5
    dense, plain, vc = LocalAdam(), LocalAdam(), LocalAdam(noise_ratio=1 / p)
    same = LocalAdam(noise_ratio=1.0)
    for _ in range(steps):
        g = mu + torch.randn(p, n, generator=gen)  # p ranks: same mean, unit noise
        d_dense = dense.direction("b", g.mean(0))
        d_plain = plain.direction("b", g[0])
        d_vc = vc.direction("b", g[0])
        assert torch.equal(same.direction("b", g[0]), d_plain)
    a_dense, a_plain, a_vc = (float(d.abs().mean()) for d in (d_dense, d_plain, d_vc))
    assert abs(a_vc / a_dense - 1) < 0.1, (a_vc, a_dense)
    assert a_plain / a_dense < 0.8, (a_plain, a_dense)
    clean_1, clean_4 = LocalAdam(), LocalAdam(noise_ratio=0.25)
    for _ in range(5):
        assert torch.allclose(clean_1.direction("b", mu), clean_4.direction("b", mu),
                              rtol=1e-4, atol=1e-6)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigurationError, match="noise_ratio"):
            LocalAdam(noise_ratio=bad)


# ----------------------------------------------------------------------------- 2 ranks
@pytest.mark.multiproc
def test_two_ranks_hook_trains_like_plain_ddp(run_ranks: Callable[..., Any]) -> None:
    rows, out, proc = run_ranks(HERE, 2, timeout=240)
    assert proc.returncode == 0, out[-6000:]
    losses = rows[0]["losses"]
    # the hook with TopK 1 % + error feedback reaches plain DDP's loss within tolerance,
    # and the dense hook reproduces plain DDP
    assert losses["dense_hook"] == pytest.approx(losses["plain"], rel=1e-4)
    for name in ("topk_packed", "topk_packed_fp16", "topk_sparse_allreduce"):
        assert losses[name] <= losses["plain"] * 1.05 + 2e-3, (name, losses)
    assert losses["no_ef"] > losses["topk_packed"], losses  # error feedback matters
    assert rows[0]["checks"] >= 10


def _worker() -> None:  # pragma: no cover - runs under torchrun
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    import oncoscale.comm as C

    world = C.init("torch", timeout=120)
    rank, p = world.rank, world.size
    failures: list[str] = []
    checks = 0

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(f"rank {rank}: {what}")

    # -- packed allgather = mean of every rank's selection, bytes as documented ---------------
    from oncoscale.comm.compress import Threshold

    for codec, n, comp in ((None, 5000, TopK(0.01)), ("fp16", 4099, TopK(0.02, bucket_size=256)),
                           (None, 70001, TopK(0.005, bucket_size=1000)),
                           ("bf16", 3000, Threshold(1.0 + rank))):  # nnz differs by rank
        gen = torch.Generator().manual_seed(10 + rank)
        g = torch.randn(n, generator=gen)
        gc = GradientCompression(comp, error_feedback=True, algorithm="packed_allgather",
                                 codec=codec)
        world.stats.reset()
        res = gc.reduce("x", g).to_dense()
        sent_bytes = world.stats.reset().bytes_sent
        nnz = gc.sent_entries
        mine = (g - gc.feedback.memory["x"]).contiguous()  # what this rank sent
        ref = torch.stack(world.allgather(mine)).mean(0)
        nnzs = [int(t) for t in world.allgather(torch.tensor([nnz]))]
        world.stats.reset()
        check(torch.allclose(res, ref, rtol=1e-6, atol=1e-7), f"packed mean {codec} {n}")
        vdt = {None: torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[codec]
        want = (p - 1) * BucketPacking(vdt).nbytes(n, nnz)
        if isinstance(comp, Threshold):  # allgatherv: ring-equivalent (the others' messages
            # pass through every rank) + the exchange of message sizes
            want = sum(BucketPacking(vdt).nbytes(n, c) for j, c in enumerate(nnzs)
                       if j != rank) + (p - 1) * 8
        check(sent_bytes == want, f"bytes {sent_bytes} != {want} for {codec} {n}")
        if codec == "fp16":
            check(torch.equal(mine, mine.half().float()), "fp16 rounding kept in residual")
        work = gc.reduce("x", g, async_op=True)
        check(torch.isfinite(work.wait().to_dense()).all().item(), "async packed result")

    # -- training: plain DDP vs the hook -----------------------------------------------------
    torch.manual_seed(0)
    n_in, n_out, n_samples = 32, 4, 4096
    teacher = torch.randn(n_in, n_out) * (1.5 / math.sqrt(n_in))
    X = torch.randn(n_samples, n_in)
    Y = torch.tanh(X @ teacher) + 0.05 * torch.randn(n_samples, n_out)

    def net() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(n_in, 256), torch.nn.Tanh(),
                                   torch.nn.Linear(256, 256), torch.nn.Tanh(),
                                   torch.nn.Linear(256, n_out))

    def train(hook: object, steps: int = 400) -> float:
        m = net()
        model = DistributedDataParallel(m)
        if hook is not None:
            model.register_comm_hook(hook.state, hook)  # type: ignore[attr-defined]
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        for step in range(steps):
            lo = ((step * p + rank) * 32) % n_samples
            xb, yb = X[lo:lo + 32], Y[lo:lo + 32]
            opt.zero_grad()
            F.mse_loss(model(xb), yb).backward()
            opt.step()
        with torch.no_grad():
            flat = torch.cat([q.reshape(-1) for q in m.parameters()])
            same = world.allgather(flat.sum().double().reshape(1))
            check(bool(torch.equal(same[0], same[-1])), "replicas identical after training")
            return float(F.mse_loss(m(X), Y))

    losses = {
        "plain": train(None),
        "dense_hook": train(C.ddp_comm_hook(None, algorithm="dense")),
        "topk_packed": train(C.ddp_comm_hook(TopK(0.01), algorithm="packed_allgather")),
        "topk_packed_fp16": train(C.ddp_comm_hook(TopK(0.01), algorithm="packed_allgather",
                                                  codec="fp16")),
        "topk_sparse_allreduce": train(C.ddp_comm_hook(TopK(0.01), algorithm="auto")),
        "no_ef": train(C.ddp_comm_hook(TopK(0.01), error_feedback=False,
                                       algorithm="packed_allgather")),
    }
    sys.stdout.write(f"RESULT {rank} " + json.dumps({"failures": failures, "checks": checks,
                                                     "losses": losses}) + "\n")
    sys.stdout.flush()
    world.shutdown()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker()
