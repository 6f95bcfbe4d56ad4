"""Run a module's ``--worker`` entry on N local ranks with torchrun and read its JSON result.

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
                  what: str = "job") -> Any:
    """``torchrun --standalone --nproc-per-node nproc -m module --worker *args --out F``;
    returns the JSON rank 0 wrote to ``F``. Raises RuntimeError with the log tail on failure."""
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m",
                                                          "torch.distributed.run"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [*launcher, "--standalone", "--nproc-per-node", str(nproc), "-m", module,
               "--worker", *args, "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(out.read_text())
