"""Discover rank, size, local rank and the rendezvous address from the launcher's environment.

Supported launchers (checked in this order):

* ``torchrun`` / any ``env://`` launch: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``;
* Open MPI ``mpiexec``: ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``,
  ``OMPI_COMM_WORLD_LOCAL_RANK``;
* Slurm ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the master is the
  first host of ``SLURM_NODELIST`` (or ``SLURM_JOB_NODELIST``) unless ``MASTER_ADDR`` is set;
* MPICH / Intel MPI (Hydra): ``PMI_RANK``, ``PMI_SIZE``, local rank from ``MPI_LOCALRANKID``
  or ``PMI_LOCAL_RANK``;
* nothing of the above: a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from oncoscale.errors import ConfigurationError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchInfo:
    """What the launcher told this process.

    ``launcher`` is one of ``"single"``, ``"torchrun"``, ``"env"``, ``"mpi"``, ``"slurm"``.
    ``master_addr`` / ``master_port`` are ``None`` when the environment does not say them
    (under ``mpiexec`` rank 0 then picks a port and broadcasts it over MPI).
    """

    launcher: str
    rank: int
    size: int
    local_rank: int
    master_addr: str | None = None
    master_port: int | None = None


def _int(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"environment variable {name} must be an integer, found {raw!r}") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm compact host list, e.g. ``"gpu[01-03,07],cpu5"`` -> 5 host names."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(\[([^\]]*)\])?", nodelist):
        prefix, _, ranges = m.group(1), m.group(2), m.group(3)
        prefix = prefix.strip(",")
        if not prefix:
            continue
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
            elif part:
                hosts.append(prefix + part)
    return hosts


def _port(env: Mapping[str, str]) -> int | None:
    return _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None


def discover(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read the launcher's variables from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    addr = env.get("MASTER_ADDR")
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        info = LaunchInfo(launcher, _int(env, "RANK"), _int(env, "WORLD_SIZE"), local,
                          addr or "127.0.0.1", _port(env) or DEFAULT_PORT)
    elif "OMPI_COMM_WORLD_RANK" in env:
        info = LaunchInfo("mpi", _int(env, "OMPI_COMM_WORLD_RANK"),
                          _int(env, "OMPI_COMM_WORLD_SIZE"),
                          _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
                          if "OMPI_COMM_WORLD_LOCAL_RANK" in env else 0,
                          addr, _port(env))
    elif "SLURM_PROCID" in env and ("SLURM_NTASKS" in env or "SLURM_NPROCS" in env):
        size = _int(env, "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") \
            or env.get("SLURM_NODELIST")
        if addr is None:
            hosts = expand_nodelist(nodelist) if nodelist else []
            addr = hosts[0] if hosts else "127.0.0.1"
        port = _port(env)
        if port is None:  # the same on every task of the job, different between jobs
            job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "0"
            port = 20000 + (int(job) % 20000 if job.isdigit() else 0)
        info = LaunchInfo("slurm", _int(env, "SLURM_PROCID"), size,
                          _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                          addr, port)
    elif "PMI_RANK" in env and "PMI_SIZE" in env:
        local_name = next((n for n in ("MPI_LOCALRANKID", "PMI_LOCAL_RANK") if n in env), None)
        info = LaunchInfo("mpi", _int(env, "PMI_RANK"), _int(env, "PMI_SIZE"),
                          _int(env, local_name) if local_name else 0, addr, _port(env))
    else:
        info = LaunchInfo("single", 0, 1, 0, addr or "127.0.0.1", _port(env))
    if info.size < 1 or not 0 <= info.rank < info.size:
        raise ConfigurationError(
            f"launcher ({info.launcher}) gave rank {info.rank} of world size {info.size}; "
            "expected 0 <= rank < size")
    return info


def usable_cores() -> set[int]:
    """The CPUs this process may run on (its affinity set)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))
