"""Multi-process tests of oncoscale.comm with REAL processes (torchrun, mpiexec, srun-like env).

Each pytest test launches one job; the workers (this file run as a script) execute a whole
battery of checks, collect failures instead of stopping (a stopped rank would make the
others wait), and print one ``RESULT <rank> <json>`` line each. Hypothesis draws the sparse
inputs inside the workers with a fixed seed (``derandomize``), so every rank draws the same
sizes; each rank then builds its own vector from (seed, rank).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
VENV_BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT = 240


def _results(out: str, nranks: int) -> list[dict]:
    rows = [json.loads(line.split(" ", 2)[2]) for line in out.splitlines()
            if line.startswith("RESULT ")]
    assert len(rows) == nranks, f"expected {nranks} RESULT lines, got {len(rows)}:\n{out[-6000:]}"
    return rows


def _run(cmd: list[str], env: dict[str, str], nranks: int) -> list[dict]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    out = proc.stdout + proc.stderr
    rows = _results(out, nranks)
    failures = [f for r in rows for f in r["failures"]]
    assert not failures, "\n".join(failures[:40]) + "\n" + out[-3000:]
    assert proc.returncode == 0, out[-6000:]
    return rows


def _torchrun(n: int, mode: str) -> list[str]:
    return [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", str(n),
            str(HERE), mode]


@pytest.mark.multiproc
def test_torch_battery_world_sizes_1_to_8(job_env: dict[str, str]) -> None:
    rows = _run(_torchrun(8, "battery-torch"), job_env, 8)
    checked = sum(r["checks"] for r in rows)
    assert checked > 500, checked
    assert rows[0]["sizes"] == [1, 2, 3, 4, 5, 6, 7, 8] if rows[0]["rank"] == 0 else True
    assert sorted(max(r["sizes"]) for r in rows) == [8] * 8


@pytest.mark.multiproc
def test_torch_battery_on_the_device_code_paths(job_env: dict[str, str]) -> None:
    """The paths CUDA tensors take (torch ops instead of numpy, no eager header messages),
    run on CPU tensors: 3 ranks, so groups of 1, 2 (power of two) and 3 (the fold)."""
    rows = _run(_torchrun(3, "battery-torch"), dict(job_env, ONCOSCALE_TEST_TORCH_PATHS="1"), 3)
    assert sum(r["checks"] for r in rows) > 200
    assert all(r["torch_paths"] for r in rows)


@pytest.mark.multiproc
@pytest.mark.skipif(shutil.which("mpiexec", path=str(VENV_BIN)) is None, reason="no mpiexec")
def test_mpi_battery_and_torch_under_mpiexec(job_env: dict[str, str]) -> None:
    cmd = [str(VENV_BIN / "mpiexec"), "--oversubscribe", "-n", "4", sys.executable, str(HERE),
           "battery-mpi"]
    rows = _run(cmd, job_env, 4)
    assert all(r["backend"] == "mpi" for r in rows)
    assert all(r["torch_under_mpi"] for r in rows)
    assert sum(r["checks"] for r in rows) > 200


@pytest.mark.multiproc
def test_ddp_hook_matches_plain_ddp(job_env: dict[str, str]) -> None:
    rows = _run(_torchrun(2, "ddp"), job_env, 2)
    r = rows[0]
    plain, ours, topk = r["loss_plain"], r["loss_hook_dense"], r["loss_topk_ef"]
    assert abs(ours - plain) <= 1e-4 * max(1.0, plain), (ours, plain)
    assert topk <= plain * 1.05 + 1e-3, (topk, plain)  # TopK 1 % + error feedback
    assert r["loss_initial"] > 3 * plain
    assert r["topk_sent_fraction"] < 0.02
    # a model in several DDP buckets: (hook calls, messages) per step; the first steps agree
    # through the header (more messages than calls), the last ones send one message a call
    traffic = r["wide_traffic"]
    # (DDP runs its first step in one bucket, then rebuilds them in gradient order)
    assert all(calls >= 2 for calls, _ in traffic[1:]), traffic
    assert traffic[1][1] > traffic[1][0], traffic
    assert all(msgs == calls for calls, msgs in traffic[-3:]), traffic
    for a, b in zip(r["wide_hook"], r["wide_plain"], strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, b), (r["wide_hook"], r["wide_plain"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
def test_faults_raise_communication_error_fast(job_env: dict[str, str]) -> None:
    """Three 2-rank jobs at once, launched with the variables srun sets (no srun here):
    a rank that never joins, a rank that dies, a rank that skips a collective."""
    modes = ("never-joins", "dies", "skips")
    t0 = time.monotonic()
    jobs = {}
    for mode in modes:
        port = _free_port()
        for rank in range(2):
            env = dict(job_env)
            env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                       SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242",
                       MASTER_PORT=str(port))
            jobs[(mode, rank)] = subprocess.Popen(
                [sys.executable, str(HERE), f"fault-{mode}"], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = {key: p.communicate(timeout=120)[0] for key, p in jobs.items()}
    assert time.monotonic() - t0 < 90
    for mode in modes:
        out0 = outs[(mode, 0)]
        line = next((ln for ln in out0.splitlines() if ln.startswith("FAULT ")), None)
        assert line is not None, (mode, out0[-3000:])
        info = json.loads(line[6:])
        assert info["error"] == "CommunicationError", (mode, info)
        assert "rank 0" in info["message"], info
        assert info["what"] in info["message"], info
        assert info["seconds"] < 15, info  # the world timeout is 3 s: fail fast, never hang


# ===================================== workers ==============================================


def _emit(rank: int, info: dict) -> None:
    """One RESULT line in a single write (ranks share stdout; short writes do not interleave)."""
    sys.stdout.flush()
    os.write(1, f"RESULT {rank} {json.dumps(info)}\n".encode())


def _battery(backend: str) -> None:  # noqa: C901 - one launch runs many checks on purpose
    import numpy as np
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    import oncoscale.comm as C
    from oncoscale.errors import CommunicationError, ConfigurationError, InputError

    world = C.init(backend, timeout=60)
    rank, size = world.rank, world.size
    # where the input vectors live: "cpu" by default; scripts/device_check.sh runs the battery
    # with "cuda" (one rank on the torch backend - NCCL wants a GPU per rank - or several
    # ranks on the MPI backend, which stages CUDA tensors through the host)
    dev = torch.device(os.environ.get("ONCOSCALE_TEST_DEVICE", "cpu"))
    # host tensors down the torch-op paths that CUDA tensors take (no numpy fast paths, no
    # eager messages in the header): the CPU suite's check of the device code
    torch_paths = os.environ.get("ONCOSCALE_TEST_TORCH_PATHS") == "1"
    if torch_paths:
        from oncoscale.comm import _hostpath
        _hostpath.TORCH_OPS_ONLY = True
    failures: list[str] = []
    checks = 0
    sizes_done: list[int] = []

    def check(cond: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not cond:
            failures.append(f"rank {rank}: {what}")

    algos = ("recursive_doubling", "split_allgather", "dsar", "dense", "allgather", "auto")

    def make(n: int, density: float, seed: int, dtype: torch.dtype, grank: int
             ) -> C.SparseVector:
        gen = torch.Generator().manual_seed(seed * 101 + grank)
        d = min(1.0, density * (0.5 + grank % 3 * 0.5))
        k = int(round(d * n))
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        vals = torch.randn(k, generator=gen, dtype=torch.float64).to(dtype)
        return C.SparseVector(idx.to(dev), vals.to(dev), n)

    def run_case(g: C.Group, n: int, density: float, seed: int, dtype: torch.dtype,
                 codecs: tuple) -> None:
        vec = make(n, density, seed, dtype, g.rank)
        ref = vec.to_dense().to("cpu", torch.float64).clone()
        g.allreduce(ref)
        for alg in algos:
            for codec in codecs:
                if alg == "dense" and codec == "qsgd8":
                    continue
                tag = f"group {g.size} n={n} d={density} {dtype} {alg} {codec}"
                try:
                    out = C.sparse_allreduce(vec, alg, group=g, codec=codec)
                except Exception as exc:  # noqa: BLE001
                    check(False, f"{tag}: raised {exc!r}")
                    return
                check(out.values.device == dev, f"{tag}: result on {out.values.device}")
                dense = out.to_dense().to("cpu", torch.float64)
                scale = float(ref.abs().max()) if n else 1.0
                tol = {None: 1e-5 if dtype != torch.float16 and dtype != torch.bfloat16
                       else 2e-2, "fp16": 2e-2, "bf16": 4e-2, "qsgd8": 0.08}[codec]
                if dtype == torch.bfloat16:
                    tol = max(tol, 4e-2)
                check(out.size == n and out.dtype == dtype, f"{tag}: size/dtype")
                check(bool(torch.allclose(dense, ref, atol=tol * max(scale, 1.0), rtol=tol)),
                      f"{tag}: max err {float((dense - ref).abs().max()) if n else 0}")
                # identical on every rank
                mine = torch.tensor([float(dense.sum()), float(dense.abs().sum()), out.nnz],
                                    dtype=torch.float64)
                both = torch.cat([mine, -mine])
                g.allreduce(both, "max")
                check(bool(torch.equal(both[:3], -both[3:])), f"{tag}: results differ across ranks")

    for gsize in range(1, size + 1):
        g = world.new_group(list(range(gsize)))
        if not g.is_member:
            continue
        sizes_done.append(gsize)
        few = 6 if gsize in (1, 2, 3, 4, size) else 3

        @settings(max_examples=few, derandomize=True, database=None, deadline=None,
                  phases=(Phase.explicit, Phase.generate),
                  suppress_health_check=list(HealthCheck))
        @given(n=st.sampled_from([0, 1, 5, 64, 1000, 4099]),
               density=st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 1.0]),
               seed=st.integers(0, 10_000),
               dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
        def prop(n: int, density: float, seed: int, dtype: torch.dtype) -> None:
            run_case(g, n, density, seed, dtype, (None,))  # noqa: B023 - called right here

        prop()
        # edge cases always: empty everywhere, fully dense everywhere, bf16, codecs
        run_case(g, 3000, 0.0, 1, torch.float32, (None,))
        run_case(g, 3000, 1.0, 2, torch.float32, (None, "fp16", "qsgd8"))
        run_case(g, 20000, 0.02, 3, torch.float32, ("fp16", "bf16", "qsgd8"))
        run_case(g, 777, 0.05, 4, torch.bfloat16, (None,))
        # avg and sparse allgather with different sizes per rank
        v = C.SparseVector(torch.tensor([g.rank]), torch.tensor([2.0]), g.size)
        avg = C.sparse_allreduce(v, group=g, op="avg").to_dense()
        check(bool(torch.allclose(avg, torch.full((g.size,), 2.0 / g.size))), "avg")
        mine = make(50 + 7 * g.rank, 0.2, 9, torch.float32, g.rank)
        got = C.sparse_allgather(mine, group=g)
        check(len(got) == g.size and all(x.size == 50 + 7 * j for j, x in enumerate(got)),
              "sparse_allgather sizes")
        check(got[g.rank].allclose(mine), "sparse_allgather own vector")

    world.barrier()
    # ---- bad input: the same clear error on every rank, and the world still works --------
    def expect_error(vec: C.SparseVector, kind: type, words: str, alg: str = "auto") -> None:
        try:
            C.sparse_allreduce(vec, alg)
            check(False, f"bad input ({words}) did not raise")
        except kind as exc:
            check(words in str(exc), f"bad input message lacks {words!r}: {exc}")
        except Exception as exc:  # noqa: BLE001
            check(False, f"bad input ({words}) raised {exc!r}")

    last = size - 1
    if size > 1:
        expect_error(C.SparseVector([0], [1.0], 10 + (rank == last)), InputError,
                     "sizes differ")
    bad_idx = C.SparseVector(torch.tensor([3, 12 if rank == last else 4]),
                             torch.ones(2), 10, check=False)
    expect_error(bad_idx, InputError, "out of range")
    nan = C.SparseVector([1], [float("nan") if rank == last else 1.0], 10)
    expect_error(nan, InputError, "NaN")
    if size > 1:
        mixed = C.SparseVector([1], torch.ones(1, dtype=torch.float64 if rank == last
                                                else torch.float32), 10)
        expect_error(mixed, InputError, "dtypes differ")
    # the same errors when the header carries no message (explicit algorithm, big vector)
    big_nan = C.SparseVector(None, torch.full((50_000,), float("nan") if rank == last
                                              else 1.0), 50_000)
    expect_error(big_nan, InputError, "NaN", "recursive_doubling")
    expect_error(bad_idx, InputError, "out of range", "dsar")
    if size > 1:
        expect_error(C.SparseVector([0], [1.0], 10 + (rank == last)), InputError,
                     "sizes differ", "split_allgather")
    # small inputs under auto: one header exchange carries every message (eager), a large
    # one next does not, and both give the dense sum
    for n_eager, want in ((1000, True), (400_000, False), (1000, True)):
        v = C.SparseVector(torch.arange(rank, n_eager, 7), torch.ones(len(range(rank,
                                                                                n_eager, 7))),
                           n_eager) if n_eager < 10_000 else \
            C.SparseVector(None, torch.ones(n_eager), n_eager)
        C.sparse_allreduce(v)  # the capacity follows the previous calls
        res = C.sparse_allreduce(v)
        ref = v.to_dense().clone()
        world.allreduce(ref)
        check(bool(torch.allclose(res.to_dense(), ref)), f"eager sequence n={n_eager}")
        if size > 1:
            eager = bool(world.cache.get(("last_eager", world.ranks)))
            want = want and not torch_paths
            check(eager == want, f"eager path for n={n_eager}: {eager}, expected {want}")
    # steady dense path: a repeated dense call skips the header (one allreduce with a
    # validity trailer), a cycle of sizes (DDP buckets) too; bad input still raises the
    # header's error on every rank, and "auto" leaves dense when the inputs thin out
    if size > 1:
        def steady() -> bool:
            return bool(world.cache.get(("last_steady", world.ranks)))

        def full(n: int, value: float = 1.0, dtype: torch.dtype = torch.float32
                 ) -> C.SparseVector:
            return C.SparseVector(None, torch.full((n,), value, dtype=dtype, device=dev), n)

        for alg in ("dense", "auto"):
            seen = []
            for i in range(8):  # a cycle of two sizes
                n_st = (150_000, 90_000)[i % 2]
                res = C.sparse_allreduce(full(n_st, rank + 1.0), alg)
                check(bool((res.to_dense() == size * (size + 1) / 2).all()) and res.size == n_st
                      and res.values.device == dev, f"steady {alg} call {i}: wrong sum")
                seen.append(steady() and C.last_algorithm(world) == "dense")
            want = [False] * 4 + [True] * 4  # two periods of history, then steady
            if alg == "dense" or C.last_algorithm(world) == "dense":
                check(seen == want, f"steady {alg}: path per call {seen}, expected {want}")
            for bad, words in ((full(150_000, float("nan") if rank == last else 1.0), "NaN"),
                               (full(150_000 + (rank == last)), "sizes differ"),
                               (full(150_000, dtype=torch.float64 if rank == last
                                     else torch.float32), "dtypes differ"),
                               (C.SparseVector(torch.tensor([3, 150_000 if rank == last else 4],
                                                            device=dev),
                                               torch.ones(2, device=dev), 150_000, check=False),
                                "out of range")):
                for n_st in (150_000, 90_000):  # after these a 150k call is predicted dense
                    C.sparse_allreduce(full(n_st), alg)
                check(steady() or alg == "auto", f"steady {alg}: 90k call before {words!r}")
                expect_error(bad, InputError, words, alg)
            # the cycle goes on (150k next): a non-blocking call on the steady path, and the
            # mean (op is an argument: its own history)
            res = C.sparse_allreduce(full(150_000, rank + 1.0), alg, async_op=True).wait()
            check(bool((res.to_dense() == size * (size + 1) / 2).all()) and
                  (steady() or alg == "auto"), f"steady {alg}: async call")
            for i in range(3):
                res = C.sparse_allreduce(full(90_000, 2.0 * rank), alg, op="avg")
                check(bool(torch.allclose(res.to_dense().cpu(), torch.full((90_000,), size - 1.0)))
                      and (steady() == (i == 2) or alg == "auto"), f"steady {alg}: avg call {i}")
        # "auto" after steady dense calls: a sparse input still sums right, and the next call
        # goes back to the header (and to a sparse algorithm)
        for _ in range(3):
            C.sparse_allreduce(full(150_000))
        if C.last_algorithm(world) == "dense":
            thin = C.SparseVector(torch.tensor([rank, 100 + rank], device=dev),
                                  torch.ones(2, device=dev), 150_000)
            # what the calibrated model picks for 2 entries per rank: a sparse algorithm
            # almost always, but dense where latency is high next to 600 KB of bandwidth (seen
            # now and then with 3 ranks on 2 cores, where no message rides in the header)
            stays = C.choose_algorithm(world, [2] * size, 150_000) == "dense"
            for i in range(2):
                res = C.sparse_allreduce(thin)
                ref = thin.to_dense().cpu()
                world.allreduce(ref)
                check(bool(torch.equal(res.to_dense().cpu(), ref)), f"thin call {i} after steady")
                check(steady() == (i == 0 or stays), f"thin call {i}: steady path {steady()}")
            check((C.last_algorithm(world) == "dense") == stays,
                  f"thin input: auto ran {C.last_algorithm(world)}, the model picks "
                  f"{'dense' if stays else 'a sparse algorithm'}")
    try:  # (one rank alone cannot disagree)
        C.sparse_allreduce(C.SparseVector([0], [1.0], 4),
                           algorithm="dsar" if rank == last else "split_allgather")
        check(size == 1, "mismatched algorithm did not raise")
    except ConfigurationError as exc:
        check("algorithm" in str(exc), f"algorithm mismatch message: {exc}")
    ok = C.sparse_allreduce(C.SparseVector([rank % 4], [1.0], 4))
    check(float(ok.to_dense().sum()) == size, "world usable after errors")
    try:
        world.layout(replicas=3, partitions=3)
        check(False, "bad layout accepted")
    except ConfigurationError as exc:
        check("replicas x partitions" in str(exc), str(exc))

    # ---- layout ------------------------------------------------------------------------------
    for R in (1, 2, size // 2, size):
        if R < 1 or size % R:
            continue
        P = size // R
        lay = world.layout(replicas=R, partitions=P)
        check(lay.rank_of(lay.replica_index, lay.partition_index) == rank, "layout rank_of")
        check(lay.pipeline_group.rank == lay.partition_index, "pipeline rank")
        check(lay.partition_group.size == R and lay.pipeline_group.size == P, "group sizes")
        t = torch.tensor([float(lay.replica_index)])
        lay.partition_group.allreduce(t)
        check(float(t) == R * (R - 1) / 2, "partition group allreduce")
        if P > 1:  # pass a token down the pipeline
            tok = torch.zeros(1)
            if lay.prev_rank is not None:
                lay.pipeline_group.recv(tok, lay.partition_index - 1)
            tok += 1
            if lay.next_rank is not None:
                lay.pipeline_group.send(tok, lay.partition_index + 1)
            check(float(tok) == lay.partition_index + 1, "pipeline send/recv")
        native = lay.partition_group.torch_group if backend == "torch" \
            else lay.partition_group.mpi_comm
        check(native is not None, "native handle")

    # ---- non-blocking: compute and other traffic overlap a pending sparse allreduce ---------
    if size >= 2:
        big = C.SparseVector(torch.arange(0, 200_000, 50), torch.ones(4000), 200_000)
        token = torch.zeros(1)
        if rank == 0:
            work = C.sparse_allreduce(big, async_op=True)
            check(not work.is_completed(), "async op completed before rank 1 joined")
            x = torch.randn(256, 256)
            for _ in range(20):  # compute while the collective is in flight
                x = torch.tanh(x @ x.T / 256)
            world.send(torch.ones(1), 1)  # main-channel traffic while it is pending
            res = work.wait()
            check(bool(torch.isfinite(x).all()), "overlapped compute")
        else:
            if rank == 1:
                world.recv(token, 0)  # join only after rank 0 computed
            res = C.sparse_allreduce(big, async_op=True).wait()
        check(float(res.to_dense().sum()) == 4000.0 * size, "async result")
        check(world.stats.bytes_sent > 0, "byte counters")

    info: dict = {"rank": rank, "checks": checks, "failures": failures, "sizes": sizes_done,
                  "backend": world.backend, "torch_paths": torch_paths}

    if backend == "mpi":
        # torch backend under mpiexec: rank 0 opens the store and broadcasts host:port over MPI
        try:
            tw = C.init("torch", timeout=60)
            t = torch.ones(3)
            tw.allreduce(t)
            r = C.sparse_allreduce(C.SparseVector([rank], [1.0], size), group=tw)
            info["torch_under_mpi"] = bool(float(t[0]) == size and tw.launcher == "mpi"
                                           and float(r.to_dense().sum()) == size)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"rank {rank}: torch under mpiexec: {exc!r}")
            info["torch_under_mpi"] = False
        # a rank that does not join: the others get CommunicationError by the deadline
        world.barrier()
        world._backend.timeout = 2.0
        if rank == 0:
            t0 = time.monotonic()
            try:
                world.barrier()
                failures.append("rank 0: barrier without peers did not time out")
            except CommunicationError as exc:
                info["mpi_timeout_s"] = time.monotonic() - t0
                check("rank 0" in str(exc) and "barrier" in str(exc), str(exc))
        else:
            time.sleep(3.5)
            world.barrier()  # completes rank 0's abandoned request
        world._backend.timeout = 60.0
        world.barrier()
    info["checks"] = checks
    info["failures"] = failures
    _emit(rank, info)
    _ = np
    world.shutdown()


def _ddp() -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import oncoscale.comm as C

    world = C.init("torch", timeout=60)
    rank = world.rank
    torch.manual_seed(0)
    X = torch.randn(512, 20)
    w_true = torch.randn(20, 1)
    y = torch.tanh(X @ w_true) + 0.05 * torch.randn(512, 1)
    shard = slice(rank * 256, (rank + 1) * 256)

    def train(hook: object | None, steps: int = 400) -> tuple[float, float]:
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(),
                                  torch.nn.Linear(64, 1))
        model = DistributedDataParallel(net)
        if hook is not None:
            model.register_comm_hook(hook.state, hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # EF-TopK wants no heavy momentum
        with torch.no_grad():
            initial = float(torch.nn.functional.mse_loss(net(X), y))
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(X[shard]), y[shard])
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = float(torch.nn.functional.mse_loss(net(X), y))
        return initial, final

    initial, plain = train(None)
    _, ours = train(C.ddp_comm_hook(compressor=None))
    # several buckets (a cycle of sizes): once the cycle has repeated, every bucket's call is
    # one message (the dense allreduce with its trailer, or the eager exchange of a small
    # bucket) instead of a header exchange and then the collective, and the model still
    # trains exactly as plain DDP does
    def wide(hook: object | None) -> tuple[list[float], list[tuple[int, int]]]:
        torch.manual_seed(2)
        net = torch.nn.Sequential(torch.nn.Linear(20, 512), torch.nn.Tanh(),
                                  torch.nn.Linear(512, 64), torch.nn.Tanh(),
                                  torch.nn.Linear(64, 1))
        model = DistributedDataParallel(net, bucket_cap_mb=0.02)
        calls = [0]
        if hook is not None:
            def counted(state, bucket):  # noqa: ANN001,ANN202 - DDP inspects annotations
                calls[0] += 1
                return hook(state, bucket)

            model.register_comm_hook(hook.state, counted)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses, traffic = [], []
        for _ in range(6):
            opt.zero_grad()
            world.stats.reset()
            calls[0] = 0
            loss = torch.nn.functional.mse_loss(model(X[shard]), y[shard])
            loss.backward()
            opt.step()
            losses.append(float(loss))
            traffic.append((calls[0], world.stats.reset().messages))
        return losses, traffic

    wide_plain, _ = wide(None)
    wide_hook, wide_traffic = wide(C.ddp_comm_hook(compressor=None))
    topk_hook = C.ddp_comm_hook(compressor=C.TopK(0.01), error_feedback=True)
    _, topk = train(topk_hook)
    st = topk_hook.state
    info = {"rank": rank, "failures": [], "loss_initial": initial, "loss_plain": plain,
            "loss_hook_dense": ours, "loss_topk_ef": topk,
            "topk_sent_fraction": st.sent_entries / max(1, st.dense_entries),
            "wide_plain": wide_plain, "wide_hook": wide_hook, "wide_traffic": wide_traffic}
    _emit(rank, info)
    dist.barrier()
    world.shutdown()


def _fault(mode: str) -> None:
    import torch

    import oncoscale.comm as C
    from oncoscale.errors import CommunicationError

    rank = int(os.environ["SLURM_PROCID"])
    what = {"never-joins": "rendezvous", "dies": "allreduce", "skips": "sparse_allreduce"}[mode]
    if mode == "never-joins" and rank == 1:
        return  # never calls init
    t0 = time.monotonic()
    try:
        world = C.init("auto", timeout=3)
        assert world.launcher == "slurm" and world.size == 2, world
        if mode == "dies":
            if rank == 1:
                os._exit(7)
            time.sleep(0.5)
            t0 = time.monotonic()
            world.allreduce(torch.ones(8))
        elif mode == "skips":
            if rank == 1:
                time.sleep(5)  # alive but never joins the collective (timeout is 3 s)
                os._exit(0)
            t0 = time.monotonic()
            C.sparse_allreduce(C.SparseVector([0], [1.0], 4))
        print("FAULT " + json.dumps({"error": None}), flush=True)
    except CommunicationError as exc:
        print("FAULT " + json.dumps({"error": type(exc).__name__, "message": str(exc),
                                     "what": what, "seconds": time.monotonic() - t0}),
              flush=True)
    # a normal exit: the atexit hook of oncoscale.comm releases the broken world, bounded


if __name__ == "__main__":
    arg = sys.argv[1]
    if arg.startswith("battery-"):
        _battery(arg.split("-", 1)[1])
    elif arg == "ddp":
        _ddp()
    elif arg.startswith("fault-"):
        _fault(arg.split("-", 1)[1])
