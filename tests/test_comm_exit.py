"""A finished multi-rank job exits 0 on every rank, with REAL torchrun / mpiexec ranks.

The rank script is what a user writes: ``oncoscale.comm.init()``, a few collectives (some of
them non-blocking), then either ``world.shutdown()`` or a plain return - no ``os._exit``.
Before the exit hook, a gloo worker thread still alive at interpreter finalisation could drop
the last reference to a tensor, need the GIL, be ended by Python inside a C++ frame, and
abort the rank ("terminate called without an active exception", SIGABRT), which torchrun
reports as a failed job. The ``forgotten`` mode leaves an allreduce in flight at exit: it
aborted (plain return) or hung (explicit shutdown) on most runs before the fix.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
VENV_BIN = Path(sys.executable).parent
ABORT = re.compile(r"terminate called|abort|SIGABRT|signal 6|core dumped|oncoscale\.comm: at exit",
                   re.IGNORECASE)
# (mode, explicit shutdown): an exit can only be checked once per process, so each case is
# its own small job; the jobs of one test run side by side.
CASES = (("collectives", True), ("collectives", False), ("forgotten", True),
         ("forgotten", False))


def _launch_all(cmds: list[list[str]], tmp_path: Path, env: dict[str, str]
                ) -> list[tuple[int, str, str]]:
    """Start every job at once (they are small and mostly wait), collect (rc, out, err).

    Output goes to files, not pipes: a hung rank must not keep the test waiting on a pipe.
    """
    procs = []
    for i, cmd in enumerate(cmds):
        with open(tmp_path / f"job{i}.out", "w") as out, open(tmp_path / f"job{i}.err", "w") as err:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err,
                                          start_new_session=True))
    done = []
    for i, p in enumerate(procs):
        note = ""
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.terminate()  # the launchers pass SIGTERM on to their ranks
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            note = "\n[test] the job hung and was killed"
        done.append((p.returncode, (tmp_path / f"job{i}.out").read_text(),
                     (tmp_path / f"job{i}.err").read_text() + note))
    return done


def _check(jobs: list[tuple[str, bool]], results: list[tuple[int, str, str]]) -> None:
    for (mode, explicit), (rc, out, err) in zip(jobs, results, strict=True):
        what = f"{mode}, {'explicit shutdown' if explicit else 'no shutdown'}"
        oks = sorted(line for line in out.splitlines() if line.startswith("EXIT-OK "))
        assert oks == ["EXIT-OK 0", "EXIT-OK 1"], f"{what}: rc {rc}\n{out[-2000:]}\n{err[-4000:]}"
        assert rc == 0, f"{what}: launcher exit {rc}\n{err[-4000:]}"
        bad = [ln for ln in err.splitlines() if ABORT.search(ln)]
        assert not bad, f"{what}: abort on stderr: {bad[:5]}\n{err[-4000:]}"


@pytest.mark.multiproc
def test_torchrun_ranks_exit_zero_with_and_without_shutdown(tmp_path: Path,
                                                            job_env: dict[str, str]) -> None:
    cmds = [[str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", str(HERE),
             mode, "shutdown" if explicit else "return", "torch"] for mode, explicit in CASES]
    _check(list(CASES), _launch_all(cmds, tmp_path, job_env))


@pytest.mark.multiproc
@pytest.mark.skipif(shutil.which("mpiexec", path=str(VENV_BIN)) is None, reason="no mpiexec")
def test_mpiexec_ranks_exit_zero_with_and_without_shutdown(tmp_path: Path,
                                                            job_env: dict[str, str]) -> None:
    """The MPI backend, and the torch backend launched by mpiexec (gloo again)."""
    jobs = [("collectives", True, "mpi"), ("collectives", False, "mpi"),
            ("forgotten", False, "mpi"), ("forgotten", False, "torch")]
    cmds = [[str(VENV_BIN / "mpiexec"), "--oversubscribe", "-n", "2", sys.executable,
             str(HERE), mode, "shutdown" if explicit else "return", backend]
            for mode, explicit, backend in jobs]
    _check([(m, e) for m, e, _ in jobs], _launch_all(cmds, tmp_path, job_env))


# ===================================== rank script ==========================================


def _rank(mode: str, ending: str, backend: str) -> None:
    import torch

    import oncoscale.comm as C

    world = C.init(backend, timeout=60)
    r, p = world.rank, world.size
    t = torch.full((1000,), float(r + 1))
    world.allreduce(t)
    assert float(t[0]) == p * (p + 1) / 2, t[0]
    v = C.SparseVector(torch.tensor([r, 10 + r]), torch.tensor([1.0, 2.0]), 100)
    if mode == "collectives":
        handles = [C.sparse_allreduce(v, async_op=True),
                   C.sparse_allreduce(v, "split_allgather", async_op=True)]
        for h in handles:
            assert float(h.wait().to_dense().sum()) == 3.0 * p
        buf = torch.empty(50)
        works = [world.isend(torch.full((50,), float(r)), (r + 1) % p),
                 world.irecv(buf, (r - 1) % p)]
        for w in works:
            w.wait()
        assert float(buf[0]) == (r - 1) % p
        parts = world.allgatherv(torch.arange(r + 3, dtype=torch.float32))
        assert [len(x) for x in parts] == [q + 3 for q in range(p)]
        assert len(C.sparse_allgather(v)) == p
    else:  # handles never waited for: the engine still has them in flight at exit
        C.sparse_allreduce(v, async_op=True)
        if world.backend == "torch":
            import torch.distributed as dist

            dist.all_reduce(torch.ones(100_000), group=world.torch_group, async_op=True)
    if ending == "shutdown":
        world.shutdown()
        world.shutdown()  # idempotent
    print(f"EXIT-OK {r}", flush=True)


if __name__ == "__main__":
    _rank(*sys.argv[1:4])
