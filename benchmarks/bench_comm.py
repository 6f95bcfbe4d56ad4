"""Benchmark of oncoscale.comm (SparCML sparse collectives).

    .venv/bin/python benchmarks/bench_comm.py --quick     # 1M entries, p = 2 and 4
    .venv/bin/python benchmarks/bench_comm.py             # 1M and 10M entries
    .venv/bin/python benchmarks/bench_comm.py --link-rate 1gbit --sizes 1000000  # shaped lo
    .venv/bin/python benchmarks/bench_comm.py --backend mpi    # mpiexec + mpi4py engine

Launches torchrun jobs (world sizes 2 and 4) that time our sparse allreduce algorithms and
"auto" against the dense allreduce of the same engine, torch's gloo sparse COO all_reduce and
the plain allgather of (index, value) pairs, report bytes sent per rank against the cost
model, and 8-bit QSGD values. Compressed training (TopK 1 % + error feedback vs dense on the
GDC autoencoder and a small CNN) is benchmarks/bench_comm_training.py.
Writes bench-out/comm.json. Same as `oncoscale comm bench`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from oncoscale.comm.bench import run_benchmark  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1M-entry vectors only")
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4],
                    help="ranks per job, 1-8 (more ranks than cores oversubscribe)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--densities", type=float, nargs="+", default=None,
                    help="fractions of non-zeros per rank (default 0.0001 0.001 0.01 0.1 0.5)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds per cell at 10M entries; smaller vectors get "
                         "proportionally more (8x at 1M), being shorter and noisier")
    ap.add_argument("--out", default="bench-out/comm.json")
    ap.add_argument("--link-rate", default=None, metavar="RATE",
                    help="shape the loopback to RATE (tc syntax, e.g. 1gbit) for the run: a "
                         "bandwidth-bound link (needs root and tc)")
    ap.add_argument("--backend", choices=("torch", "mpi"), default="torch",
                    help="torch: torchrun + gloo (default); mpi: mpiexec + mpi4py, against "
                         "MPI_Allreduce")
    a = ap.parse_args()
    run_benchmark(quick=a.quick, world_sizes=tuple(a.world_sizes),
                  sizes=tuple(a.sizes) if a.sizes else None, repeats=a.repeats,
                  out=a.out,
                  densities=tuple(a.densities) if a.densities else None,
                  link_rate=a.link_rate, backend=a.backend)


if __name__ == "__main__":
    main()
