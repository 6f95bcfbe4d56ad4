"""The comm benchmark driver runs its jobs on both engines and reads one result per job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oncoscale.comm.bench import run_benchmark


def test_mpi_job_result_is_written_by_rank_zero_only(tmp_path: Path) -> None:
    """Under mpiexec there is no RANK variable: every rank used to write the result file at
    once, and now and then the file was torn (about one run in four of this test)."""
    pytest.importorskip("mpi4py")
    out = tmp_path / "comm.json"
    dens = (0.001, 0.01, 0.1, 0.5)
    res = run_benchmark(world_sizes=(4,), sizes=(20_000,), densities=dens, repeats=1,
                        backend="mpi", out=out)
    rows = res["collectives"]
    assert [(r["p"], r["density"]) for r in rows] == [(4, d) for d in dens]
    assert rows[0]["err_auto"] < 1e-5 and rows[0]["t_dense_allreduce"] > 0
    assert json.loads(out.read_text())["backend"] == "mpi"
