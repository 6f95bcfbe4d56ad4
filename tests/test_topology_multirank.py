"""The neighbourhood graph over the ranks of an oncoscale.comm world, with REAL processes.

One pytest test launches ``torchrun --nproc-per-node 2`` on this file; each rank runs every
check (collecting failures instead of stopping, so no rank waits on a dead peer) and prints
one ``RESULT <rank> <json>`` line. Each check compares the gathered multi-rank graph with the
graph one process builds from the same data: the same edges in the same order, the same
lengths, the same Parquet file, and ``oncoscale topo build`` under torchrun writes the same
graph into its cube.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve()


def _env(tmp_path: Path) -> dict[str, str]:
    return {"ONCOSCALE_CACHE_DIR": str(tmp_path), "TOPO_TMP": str(tmp_path)}


@pytest.mark.multiproc
def test_graph_over_two_ranks_equals_one_process(tmp_path: Path,
                                                  run_ranks: Callable[..., Any]) -> None:
    rows, out, proc = run_ranks(HERE, 2, timeout=300, env=_env(tmp_path))
    assert proc.returncode == 0, out[-6000:]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["checks"] >= 10 for r in rows), rows
    # the ranks really split the work: each pruned only part of the chunks
    assert all(0 < r["own_share"] < 1 for r in rows), rows


# --- worker (run by torchrun) -------------------------------------------------------------
def _data(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[n // 3] = X[n // 2]  # a duplicate point (zero-length edge)
    f = np.sin(X).sum(1) + 0.01 * rng.normal(size=n)
    return X, f


def _worker() -> None:
    from oncoscale import comm
    from oncoscale.topology.graph import _chunks, neighborhood_graph, read_edges

    world = comm.init("torch", timeout=120)
    tmp = Path(os.environ["TOPO_TMP"])
    failures: list[str] = []
    checks = 0
    own_share = 0.0

    def check(cond: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not cond:
            failures.append(f"rank {world.rank}: {what}")

    cases = [  # (seed, n, d, k, beta, relaxed, knn, chunk, ngl)
        (1, 1500, 3, 10, 1.0, True, "auto", 128, False),    # KD-tree kNN, Gabriel, relaxed
        (2, 1100, 8, 12, 1.5, False, "exact", 100, False),  # FAISS exact, lune, strict
        (3, 900, 2, 8, 0.7, True, "exact", 1000, False),    # β < 1, one chunk: rank 1 idle
        (5, 1300, 4, 10, 1.0, False, "auto", 300, True),    # nglpy's strict graph
    ]
    for seed, n, d, k, beta, relaxed, method, chunk, ngl in cases:
        name = f"case seed={seed} n={n} d={d}"
        try:
            X, _ = _data(seed, n, d)
            out = tmp / f"edges-{seed}.parquet"
            g = neighborhood_graph(X, k, beta=beta, relaxed=relaxed, knn_method=method,
                                   chunk_size=chunk, out=out, world=world, ngl=ngl)
            ref = neighborhood_graph(X, k, beta=beta, relaxed=relaxed, knn_method=method,
                                     chunk_size=chunk, ngl=ngl)
            check(np.array_equal(g.edges, ref.edges), f"{name}: edges differ from one process")
            check(np.array_equal(g.lengths, ref.lengths), f"{name}: lengths differ")
            check(bool((g.edges[:, 0] < g.edges[:, 1]).all()), f"{name}: src < dst")
            keys = g.edges[:, 0] * n + g.edges[:, 1]
            check(np.unique(keys).shape[0] == keys.shape[0], f"{name}: duplicate edges")
            e2, l2 = read_edges(out)  # written by rank 0, complete after the barrier
            check(np.array_equal(e2, ref.edges) and np.array_equal(l2, ref.lengths),
                  f"{name}: Parquet written by rank 0 differs")
            check(g.knn_method == ref.knn_method, f"{name}: kNN method differs")
            if seed == 1:
                spans = _chunks(n, chunk, world.rank, world.size)
                own_share = sum(hi - lo for lo, hi in spans) / n
        except Exception:  # noqa: BLE001 - report, keep the other rank in step
            failures.append(f"rank {world.rank}: {name}: {traceback.format_exc()}")

    # the CLI under torchrun: every rank runs the same command, rank 0 writes the cube
    try:
        from typer.testing import CliRunner

        from oncoscale.cli import app
        from oncoscale.topology.cube import Cube

        X, f = _data(4, 1200, 4)
        data = tmp / "data.npy"
        if world.rank == 0:
            np.save(data, np.column_stack([X, f]))
        world.barrier()
        cube, gout = tmp / "cube.duckdb", tmp / "cli-edges.parquet"
        res = CliRunner().invoke(app, ["topo", "build", str(data), "--f", "4", "-o", str(cube),
                                       "--graph-out", str(gout), "--no-progress", "--k", "10",
                                       "--jobs", "1", "--bins", "16"])
        check(res.exit_code == 0, f"CLI exit {res.exit_code}: {res.output[-2000:]}")
        if world.rank == 0:
            ref = neighborhood_graph(X, 10, beta=1.0, relaxed=True)
            e2, _ = read_edges(gout)
            check(np.array_equal(np.sort(e2, axis=0), np.sort(ref.edges, axis=0)),
                  "CLI graph differs from one process")
            with Cube(cube) as c:
                check(int(c.meta["graph_ranks"]) == 2, f"cube meta {dict(c.meta)}")
                check(int(c.meta["n_edges"]) == ref.n_edges, "cube edge count")
            check("graph over 2 ranks" in res.output, f"CLI output: {res.output[-500:]}")
    except Exception:  # noqa: BLE001
        failures.append(f"rank {world.rank}: CLI: {traceback.format_exc()}")
    print("RESULT", world.rank, json.dumps({"rank": world.rank, "checks": checks,
                                            "failures": failures, "own_share": own_share}),
          flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    _worker()
