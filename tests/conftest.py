"""Shared test fixtures: running a test file's ``worker`` entry on real torchrun ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
VENV_BIN = Path(sys.executable).parent
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH_PREFIXES = ("SLURM_", "PMI_", "OMPI_COMM_WORLD")

RankRun = Callable[..., tuple[list[dict[str, Any]], str, subprocess.CompletedProcess]]


def rank_env(**extra: str) -> dict[str, str]:
    """This process's environment for a fresh multi-rank job: one thread per rank, the
    source tree on the path, the venv's launchers (torchrun, mpiexec) first on PATH, Open MPI
    allowed to run as root and to oversubscribe, and no launcher variables inherited from
    the test runner; ``extra`` on top."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(SRC), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    for key in [k for k in env if k in _LAUNCH_VARS or k.startswith(_LAUNCH_PREFIXES)]:
        del env[key]
    env.update(extra)
    return env


@pytest.fixture
def job_env(tmp_path: Path) -> dict[str, str]:
    """:func:`rank_env` with the cost-model cache in the test's own ``tmp_path``."""
    return rank_env(ONCOSCALE_CACHE_DIR=str(tmp_path))


@pytest.fixture
def run_ranks() -> RankRun:
    """``run_ranks(script, nproc=2, timeout=300, env=None, args=("worker",))``: run
    ``torchrun --standalone --nproc-per-node nproc script *args``; every rank prints one
    ``RESULT <rank> <json>`` line with a ``failures`` list; ``env``: extra variables on top
    of :func:`rank_env`. Asserts that every rank reported,
    none failed and the job exited 0; returns (the JSON rows, the output, the process)."""

    def run(script: Path, nproc: int = 2, *, timeout: float = 300,
            env: dict[str, str] | None = None, args: tuple[str, ...] = ("worker",)
            ) -> tuple[list[dict[str, Any]], str, subprocess.CompletedProcess]:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc),
               str(script), *args]
        proc = subprocess.run(cmd, env=rank_env(**(env or {})), capture_output=True, text=True,
                              timeout=timeout)
        out = proc.stdout + proc.stderr
        rows = [json.loads(line.split(" ", 2)[2]) for line in out.splitlines()
                if line.startswith("RESULT ")]
        assert len(rows) == nproc, out[-6000:]
        failures = [f for r in rows for f in r["failures"]]
        assert not failures, "\n".join(failures) + "\n" + out[-3000:]
        assert proc.returncode == 0, out[-6000:]  # a clean exit on every rank too
        return rows, out, proc

    return run
