"""Probe: what a small gloo exchange costs when the ranks also compute (2 ranks).

Run:  .venv/bin/torchrun --nproc-per-node 2 benchmarks/probe_gloo_latency.py

Each iteration swaps a 6 KB message with the peer (``irecv`` + ``isend`` + ``wait``, the
pattern of our eager sparse allreduce) and busy-computes ``before`` us before posting and
``after`` us after the wait. It prints the median iteration and wait times, then the median
time of our eager ``sparse_allreduce`` of a 1M-entry vector at 0.1 % density in the same job.
On the 2-core VM, 190 us of computation per iteration turns a 0.1 ms exchange into a
~0.5 ms iteration: while both ranks compute, gloo's receiving threads wait for a core.
That is the floor under our 1M x 0.1 % loopback figure, not the collective's own work.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist


def _spin(us: float) -> None:
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def main() -> None:
    import oncoscale.comm as C

    world = C.init("torch")
    if world.size != 2:
        raise SystemExit("run with torchrun --nproc-per-node 2")
    peer = 1 - world.rank
    msg = torch.zeros(6000, dtype=torch.uint8)
    inbox = torch.empty_like(msg)

    def swap(before: float, after: float) -> float:
        _spin(before)
        works = [dist.irecv(inbox, peer, tag=7), dist.isend(msg, peer, tag=7)]
        t0 = time.perf_counter()
        for w in works:
            w.wait()
        waited = time.perf_counter() - t0
        _spin(after)
        return waited

    lines = []
    for before, after in ((0, 0), (0, 190), (60, 130), (190, 0)):
        for _ in range(50):
            swap(before, after)
        dist.barrier()
        its, waits = [], []
        for _ in range(2000):
            t0 = time.perf_counter()
            waits.append(swap(before, after))
            its.append(time.perf_counter() - t0)
        lines.append(f"compute {before:3d} us before + {after:3d} us after: iteration "
                     f"{np.median(its) * 1e6:5.0f} us, wait {np.median(waits) * 1e6:5.0f} us")
    n, k = 1_000_000, 1000
    gen = torch.Generator().manual_seed(world.rank)
    vec = C.SparseVector(torch.randperm(n, generator=gen)[:k].sort().values,
                         torch.randn(k, generator=gen), n)
    for _ in range(50):
        C.sparse_allreduce(vec)
    dist.barrier()
    calls = []
    for _ in range(1000):
        t0 = time.perf_counter()
        C.sparse_allreduce(vec)
        calls.append(time.perf_counter() - t0)
    lines.append(f"sparse_allreduce 1M x 0.1 % (auto, {C.last_algorithm(world)}): "
                 f"{np.median(calls) * 1e6:5.0f} us per call")
    if world.rank == 0:
        print("\n".join(lines), flush=True)
    world.shutdown()


if __name__ == "__main__":
    main()
