"""mpi4py backend: zero-copy on contiguous CPU tensors (numpy views, buffer protocol).

Every operation is issued non-blocking and polled against a deadline, so a rank that never
joins makes the others raise :class:`CommunicationError` instead of hanging. CUDA tensors
are staged through host memory (no CUDA-aware MPI assumed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from oncoscale.comm._backend import Backend, CommStats, Work
from oncoscale.comm._launch import LaunchInfo, usable_cores
from oncoscale.errors import CommunicationError, ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from oncoscale.comm.world import Group


_NBC_ALGO = "OMPI_MCA_coll_libnbc_iallreduce_algorithm"
_SPIN = 0.02  # seconds a wait polls without sleeping (an op's latency is not padded by naps)
_NATIVE_REDUCE = {torch.float32, torch.float64, torch.int32, torch.int64}


def _bytes_view(t: torch.Tensor) -> np.ndarray:
    """Zero-copy uint8 numpy view of a contiguous CPU tensor."""
    return t.reshape(-1).view(torch.uint8).numpy()


class _MPIWork(Work):
    def __init__(self, backend: MPIBackend, req: Any, op: str, group: Group,
                 result: Any, after: Any = None, keep: Any = None) -> None:
        self._b, self._req, self._op, self._group = backend, req, op, group
        self._result, self._after, self._keep, self._done = result, after, keep, False

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done:
            self._b._poll(self._req, self._op, self._group, timeout)
            if self._after is not None:
                self._after()
            self._done = True
            self._keep = None
        return self._result

    def is_completed(self) -> bool:
        if not self._done and self._req.Test():
            if self._after is not None:
                self._after()
            self._done = True
        return self._done


class MPIBackend(Backend):
    """MPI through mpi4py (``COMM_WORLD`` duplicated, so user traffic never mixes with ours)."""

    name = "mpi"

    def __init__(self, info: LaunchInfo, timeout: float) -> None:
        # Open MPI's non-blocking allreduce (libnbc, which the timeouts need) defaults to a
        # binomial tree that ran 2-4x slower than the blocking MPI_Allreduce on 4-16 MB
        # vectors here; its ring matches it. A default only: the user's setting wins, and it
        # has no effect once MPI is initialised or under another MPI.
        late = "mpi4py.MPI" in sys.modules  # imported = already initialised: too late
        unset = _NBC_ALGO not in os.environ
        os.environ.setdefault(_NBC_ALGO, "1")
        try:
            from mpi4py import MPI
        except ImportError:
            raise ConfigurationError(
                "backend='mpi' needs mpi4py (pip install 'oncoscale[mpi]')") from None
        if late and unset and MPI.Get_library_version().startswith("Open MPI"):
            warnings.warn(
                "mpi4py was imported before oncoscale.comm.init(): Open MPI's non-blocking "
                "allreduce (which the timeouts need) keeps its default binomial tree, up to "
                f"2-4x slower than MPI_Allreduce on large vectors; export {_NBC_ALGO}=1 or "
                "call init() before importing mpi4py", RuntimeWarning, stacklevel=3)
        self.MPI = MPI
        self.timeout = timeout
        self.stats = CommStats()
        world = MPI.COMM_WORLD
        self.rank = world.Get_rank()
        self.size = world.Get_size()
        if info.launcher != "single" and (info.rank, info.size) != (self.rank, self.size):
            raise ConfigurationError(
                f"launcher says rank {info.rank} of {info.size} but MPI says {self.rank} of "
                f"{self.size}; is mpi4py built against the MPI that launched this job?")
        self._world = world.Dup()
        self._world_chan = world.Dup()
        # more ranks on this node than cores it lets us use: a polling wait must yield the
        # core (a peer needs it to progress), as Open MPI's own waits do when oversubscribed
        # (the node's cores: the union of its ranks' affinity sets, so ranks bound one to a
        # core are not taken for oversubscribed)
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        cores = set().union(*node.allgather(usable_cores()))
        self._yield = node.Get_size() > len(cores)
        node.Free()
        self._comms: list[Any] = [self._world, self._world_chan]
        self._ops = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    # -- polling --------------------------------------------------------------------------
    def _poll(self, req: Any, op: str, group: Group, timeout: float | None = None) -> None:
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + limit
        try:
            while not req.Test():
                now = time.monotonic()
                if now > deadline:
                    self.broken = True
                    raise CommunicationError(
                        f"rank {self.rank}: {op} on mpi group of ranks {list(group.ranks)} "
                        f"timed out after {limit:g} s (a peer rank is missing, dead or "
                        "running a different operation)")
                # MPI progresses inside Test(): poll for the first _SPIN seconds, as MPI_Wait
                # does (yielding the core when oversubscribed: sched_yield, which returns at
                # once when no peer waits for the core; time.sleep(0) is a timed sleep that
                # costs tens of us each, +30-40 % on a 1M-entry allreduce), then back off to
                # at most 1 ms naps
                waited = now - start
                if waited >= _SPIN:
                    time.sleep(min(1e-3, 0.1 * (waited - _SPIN) + 1e-5))
                elif self._yield:
                    os.sched_yield()
        except CommunicationError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self.fail(op, group, exc) from exc

    @staticmethod
    def _comm(group: Group, channel: bool) -> Any:
        return group._channel if channel else group._native

    # -- groups ---------------------------------------------------------------------------
    def world_native(self) -> tuple[Any, Any]:
        return self._world, self._world_chan

    def new_native_group(self, ranks: list[int]) -> tuple[Any, Any]:
        MPI = self.MPI
        member = self.rank in ranks
        color = 0 if member else MPI.UNDEFINED
        key = ranks.index(self.rank) if member else 0
        main = self._world.Split(color, key)
        if main == MPI.COMM_NULL:
            return None, None
        chan = main.Dup()
        self._comms += [main, chan]
        return main, chan

    # -- point to point -------------------------------------------------------------------
    def isend(self, tensor: torch.Tensor, dst: int, group: Group, *, tag: int = 0,
              channel: bool = False) -> Work:
        host = tensor.detach().contiguous().cpu()
        buf = _bytes_view(host)
        self.stats.add(buf.nbytes)
        req = self._comm(group, channel).Isend([buf, self.MPI.BYTE], dest=dst, tag=tag)
        return _MPIWork(self, req, f"send to group rank {dst}", group, tensor, keep=host)

    def irecv(self, tensor: torch.Tensor, src: int, group: Group, *, tag: int = 0,
              channel: bool = False) -> Work:
        direct = tensor.device.type == "cpu" and tensor.is_contiguous()
        host = tensor if direct else torch.empty(tensor.shape, dtype=tensor.dtype)
        req = self._comm(group, channel).Irecv([_bytes_view(host), self.MPI.BYTE],
                                               source=src, tag=tag)
        after = None if direct else (lambda: tensor.copy_(host))
        return _MPIWork(self, req, f"recv from group rank {src}", group, tensor, after, host)

    # -- collectives ----------------------------------------------------------------------
    def allreduce(self, tensor: torch.Tensor, op: str, group: Group, *,
                  channel: bool = False) -> torch.Tensor:
        p = group.size
        self.stats.add(2 * (p - 1) / p * tensor.numel() * tensor.element_size())
        direct = (tensor.device.type == "cpu" and tensor.is_contiguous()
                  and tensor.dtype in _NATIVE_REDUCE)
        if direct:
            work = tensor
        else:
            wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
            work = tensor.detach().to("cpu", wide if tensor.is_floating_point()
                                      else torch.int64).contiguous()
        arr = work.reshape(-1).numpy()
        req = self._comm(group, channel).Iallreduce(self.MPI.IN_PLACE, arr, op=self._ops[op])
        self._poll(req, f"allreduce({op})", group)
        if op == "avg":
            work.div_(p) if work.is_floating_point() else work.floor_divide_(p)
        if not direct:
            tensor.copy_(work)
        return tensor

    def allgather(self, tensor: torch.Tensor, group: Group, *,
                  channel: bool = False) -> list[torch.Tensor]:
        p = group.size
        host = tensor.detach().contiguous().cpu()
        out = torch.empty((p, *host.shape), dtype=host.dtype)
        send = _bytes_view(host)
        self.stats.add((p - 1) * send.nbytes)
        req = self._comm(group, channel).Iallgather([send, self.MPI.BYTE],
                                                    [_bytes_view(out), self.MPI.BYTE])
        self._poll(req, "allgather", group)
        return [o.to(tensor.device) for o in out.unbind(0)]

    def allgatherv(self, tensor: torch.Tensor, group: Group, *, channel: bool = False,
                   counts: list[int] | None = None) -> list[torch.Tensor]:
        host = tensor.detach().contiguous().cpu()
        row_shape = tuple(host.shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * host.element_size()
        n = torch.tensor([host.shape[0]], dtype=torch.int64)
        if counts is None:  # sizes not known in advance: one small allgather first
            counts = [int(c) for c in self.allgather(n, group, channel=channel)]
        elif counts[group.rank] != int(n):
            raise ValueError(f"allgatherv: counts say {counts[group.rank]} rows here, "
                             f"the tensor has {int(n)}")
        total = sum(counts)
        out = torch.empty((total, *row_shape), dtype=host.dtype)
        byte_counts = [c * row_bytes for c in counts]
        displs = np.concatenate([[0], np.cumsum(byte_counts)[:-1]]).astype(np.int64).tolist()
        self.stats.add((total - counts[group.rank]) * row_bytes)
        req = self._comm(group, channel).Iallgatherv(
            [_bytes_view(host), self.MPI.BYTE],
            [_bytes_view(out), (byte_counts, displs), self.MPI.BYTE])
        self._poll(req, "allgatherv", group)
        parts = list(torch.split(out, counts, dim=0))
        return [q.to(tensor.device) for q in parts]

    def broadcast(self, tensor: torch.Tensor, src: int, group: Group, *,
                  channel: bool = False) -> torch.Tensor:
        direct = tensor.device.type == "cpu" and tensor.is_contiguous()
        host = tensor if direct else tensor.detach().contiguous().cpu()
        if group.rank == src:
            self.stats.add(host.numel() * host.element_size())
        req = self._comm(group, channel).Ibcast([_bytes_view(host), self.MPI.BYTE], root=src)
        self._poll(req, "broadcast", group)
        if not direct:
            tensor.copy_(host)
        return tensor

    def barrier(self, group: Group, *, channel: bool = False) -> None:
        self._poll(self._comm(group, channel).Ibarrier(), "barrier", group)

    def shutdown(self) -> None:
        for c in reversed(self._comms):
            with contextlib.suppress(Exception):  # best effort at exit
                c.Free()
        self._comms = []
