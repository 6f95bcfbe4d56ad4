"""Run a module's ``--worker`` entry on N local ranks (torchrun or mpiexec), read its JSON.

Used by the benchmark drivers (:mod:`oncoscale.comm.bench`,
:mod:`oncoscale.comm.training_bench`): gloo, one thread per rank, rank 0 writes ``--out``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def run_local_job(module: str, nproc: int, args: list[str], *, timeout: float,
                  what: str = "job", launcher: str = "torchrun") -> Any:
    """``torchrun --standalone --nproc-per-node nproc -m module --worker *args --out F`` (or
    ``mpiexec -n nproc python -m module ...`` with ``launcher="mpiexec"``); returns the JSON
    rank 0 wrote to ``F``. Raises RuntimeError with the log tail on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if launcher == "mpiexec":
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd0 = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(nproc),
                "--oversubscribe", "-x", "OMP_NUM_THREADS", sys.executable, "-m", module]
        # Open MPI refuses root unless told; containers often run as root
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd0 = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m",
                                                           "torch.distributed.run"]
        cmd0 += ["--standalone", "--nproc-per-node", str(nproc), "-m", module]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [*cmd0, "--worker", *args, "--out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(out.read_text())
