"""torch.distributed backend: gloo for CPU tensors, NCCL for CUDA tensors."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
import weakref
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from oncoscale.comm._backend import Backend, CommStats, Work
from oncoscale.comm._launch import LaunchInfo
from oncoscale.errors import CommunicationError, ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from oncoscale.comm.world import Group

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class _TorchWork(Work):
    def __init__(self, backend: TorchBackend, work: Any, op: str, group: Group,
                 result: Any, after: Any = None) -> None:
        self._backend, self._work, self._op, self._group = backend, work, op, group
        self._result, self._after, self._done = result, after, False

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done:
            try:
                self._work.wait()
            except Exception as exc:  # noqa: BLE001 - every engine error becomes ours
                raise self._backend.fail(self._op, self._group, exc) from exc
            if self._after is not None:
                self._after()
            self._done = True
        return self._result

    def is_completed(self) -> bool:
        return self._done or bool(self._work.is_completed())


def _mpi_rendezvous(info: LaunchInfo) -> tuple[str, int, Any]:
    """Under mpiexec without MASTER_ADDR/PORT: rank 0 opens a store on a free port, bcasts it."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigurationError(
            "torch backend under mpiexec needs MASTER_ADDR and MASTER_PORT in the environment "
            "or mpi4py installed (pip install 'oncoscale[mpi]')") from None
    comm = MPI.COMM_WORLD
    store = None
    if comm.Get_rank() == 0:
        host = info.master_addr or socket.gethostname()
        store = dist.TCPStore("0.0.0.0", 0, world_size=info.size, is_master=True,
                              wait_for_workers=False)
        try:
            host = socket.gethostbyname(host)
        except OSError:
            host = "127.0.0.1"
        addr = comm.bcast((host, store.port), root=0)
    else:
        addr = comm.bcast(None, root=0)
    return addr[0], int(addr[1]), store


class TorchBackend(Backend):
    """torch.distributed process groups; adopts an already initialised default group."""

    name = "torch"

    def __init__(self, info: LaunchInfo, timeout: float) -> None:
        self.timeout = timeout
        self.stats = CommStats()
        self._td = timedelta(seconds=timeout)
        self.adopted = dist.is_initialized()
        if not self.adopted:
            self._init(info)
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self._world_channel: Any = None
        self._created: list[Any] = []  # process groups made here, released by shutdown

    def _init(self, info: LaunchInfo) -> None:
        engine = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        try:
            if info.size == 1:
                dist.init_process_group(engine, store=dist.HashStore(), rank=0, world_size=1,
                                        timeout=self._td)
            elif info.launcher == "torchrun":
                restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
                if restart == "0" or "MASTER_ADDR" not in os.environ:
                    dist.init_process_group(engine, init_method="env://", rank=info.rank,
                                            world_size=info.size, timeout=self._td)
                else:
                    # torchrun hands every attempt the same agent store and the default
                    # group's keys carry no attempt prefix: a restarted rank could read a dead
                    # peer's address. Prefix the keys with the attempt number.
                    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                    store = dist.TCPStore(os.environ["MASTER_ADDR"],
                                          int(os.environ["MASTER_PORT"]), info.size,
                                          is_master=info.rank == 0 and not agent,
                                          timeout=self._td, wait_for_workers=False)
                    dist.init_process_group(
                        engine, store=dist.PrefixStore(f"oncoscale/attempt{restart}", store),
                        rank=info.rank, world_size=info.size, timeout=self._td)
            else:
                store = None
                addr, port = info.master_addr, info.master_port
                if info.launcher == "mpi" and (addr is None or port is None):
                    addr, port, store = _mpi_rendezvous(info)
                if store is None:
                    store = dist.TCPStore(addr or "127.0.0.1", port, world_size=info.size,
                                          is_master=info.rank == 0, timeout=self._td,
                                          wait_for_workers=False)
                dist.init_process_group(engine, store=store, rank=info.rank,
                                        world_size=info.size, timeout=self._td)
        except Exception as exc:  # noqa: BLE001
            raise CommunicationError(
                f"rank {info.rank}: rendezvous of {info.size} ranks ({info.launcher} launch, "
                f"master {info.master_addr}:{info.master_port}) did not complete within "
                f"{self.timeout:g} s - is every rank started and the address reachable? "
                f"({str(exc).strip()[:300]})") from exc

    # -- groups ---------------------------------------------------------------------------
    def world_native(self) -> tuple[Any, Any]:
        if self._world_channel is None:
            self._world_channel = dist.new_group(list(range(self.size)), timeout=self._td)
            self._created.append(self._world_channel)
        return dist.group.WORLD, self._world_channel

    def new_native_group(self, ranks: list[int]) -> tuple[Any, Any]:
        main = dist.new_group(ranks, timeout=self._td)
        chan = dist.new_group(ranks, timeout=self._td)
        self._created += [main, chan]
        return main, chan

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _pg(group: Group, channel: bool) -> Any:
        return group._channel if channel else group._native

    def _run(self, op: str, group: Group, fn: Any) -> Any:
        try:
            return fn()
        except CommunicationError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self.fail(op, group, exc) from exc

    # -- point to point -------------------------------------------------------------------
    def isend(self, tensor: torch.Tensor, dst: int, group: Group, *, tag: int = 0,
              channel: bool = False) -> Work:
        t = tensor.contiguous()
        self.stats.add(t.numel() * t.element_size())
        w = self._run("isend", group,
                      lambda: dist.isend(t, group=self._pg(group, channel), tag=tag, group_dst=dst))
        return _TorchWork(self, w, f"send to group rank {dst}", group, tensor)

    def irecv(self, tensor: torch.Tensor, src: int, group: Group, *, tag: int = 0,
              channel: bool = False) -> Work:
        buf = tensor if tensor.is_contiguous() else torch.empty_like(tensor)
        w = self._run("irecv", group,
                      lambda: dist.irecv(buf, group=self._pg(group, channel), tag=tag,
                                         group_src=src))
        after = None if buf is tensor else (lambda: tensor.copy_(buf))
        return _TorchWork(self, w, f"recv from group rank {src}", group, tensor, after)

    # -- collectives ----------------------------------------------------------------------
    def allreduce(self, tensor: torch.Tensor, op: str, group: Group, *,
                  channel: bool = False) -> torch.Tensor:
        p = group.size
        self.stats.add(2 * (p - 1) / p * tensor.numel() * tensor.element_size())
        torch_op = _OPS["sum" if op == "avg" else op]
        buf = tensor if tensor.is_contiguous() else tensor.contiguous()

        def go() -> None:
            dist.all_reduce(buf, op=torch_op, group=self._pg(group, channel), async_op=True).wait()

        self._run(f"allreduce({op})", group, go)
        if op == "avg":
            buf.div_(p)
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def allgather(self, tensor: torch.Tensor, group: Group, *,
                  channel: bool = False) -> list[torch.Tensor]:
        p = group.size
        t = tensor.contiguous()
        self.stats.add((p - 1) * t.numel() * t.element_size())
        out = [torch.empty_like(t) for _ in range(p)]
        self._run("allgather", group, lambda: dist.all_gather(
            out, t, group=self._pg(group, channel), async_op=True).wait())
        return out

    def allgatherv(self, tensor: torch.Tensor, group: Group, *, channel: bool = False,
                   counts: list[int] | None = None) -> list[torch.Tensor]:
        p = group.size
        t = tensor.contiguous()
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        if counts is None:  # sizes not known in advance: one small allgather first
            counts = [int(c) for c in self.allgather(n, group, channel=channel)]
        elif counts[group.rank] != int(n):
            raise ValueError(f"allgatherv: counts say {counts[group.rank]} rows here, "
                             f"the tensor has {int(n)}")
        top = max(counts)
        if top == t.shape[0]:
            padded = t
        else:
            padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
            padded[: t.shape[0]] = t
        # count what a true allgatherv sends rather than the padding
        row = t[0:1].numel() * t.element_size() if t.dim() > 1 else t.element_size()
        self.stats.add((sum(counts) - counts[group.rank]) * row - (p - 1) * padded.numel()
                       * padded.element_size(), messages=0)
        gathered = self.allgather(padded, group, channel=channel)
        return [g[:c] for g, c in zip(gathered, counts, strict=True)]

    def broadcast(self, tensor: torch.Tensor, src: int, group: Group, *,
                  channel: bool = False) -> torch.Tensor:
        if group.rank == src:
            self.stats.add(tensor.numel() * tensor.element_size())
        buf = tensor if tensor.is_contiguous() else tensor.contiguous()
        self._run("broadcast", group, lambda: dist.broadcast(
            buf, group=self._pg(group, channel), group_src=src, async_op=True).wait())
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def barrier(self, group: Group, *, channel: bool = False) -> None:
        # a tiny allreduce: bounded by the group's timeout on every engine
        device = "cpu" if "gloo" in str(dist.get_backend(self._pg(group, channel))) else "cuda"
        t = torch.zeros(1, device=device)
        self._run("barrier", group, lambda: dist.all_reduce(
            t, group=self._pg(group, channel), async_op=True).wait())

    def shutdown(self) -> None:
        """Destroy the process groups made here (all of them unless the default group was
        the caller's). The caller drops its own handles first: a gloo group's worker threads
        end (joined, with the GIL released) only when its last reference goes."""
        created, self._created, self._world_channel = self._created, [], None
        if not dist.is_initialized():
            return
        refs = _weak_groups(created if self.adopted else None)
        try:
            if self.adopted:
                for pg in reversed(created):
                    with contextlib.suppress(ValueError):  # the caller destroyed it already
                        dist.destroy_process_group(pg)
            else:
                dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001
            raise CommunicationError(
                f"rank {self.rank}: releasing the torch.distributed process groups failed: "
                f"{str(exc).strip()[:300]}") from exc
        finally:
            del created
            gc.collect()  # groups held only by garbage cycles go now too, not at finalisation
        if any(r() is not None for r in refs):
            # a group still held elsewhere (e.g. by a live DDP model) keeps its worker
            # threads; give them a moment to drop finished work while Python is whole
            time.sleep(_LINGER)


_LINGER = 0.2  # seconds


def _weak_groups(groups: list[Any] | None) -> list[Any]:
    """Weak references to ``groups`` (default: every group torch.distributed knows)."""
    if groups is None:
        world = getattr(dist.distributed_c10d, "_world", None)
        groups = list(getattr(world, "pg_map", {}) or {})
    refs = []
    for pg in groups:
        with contextlib.suppress(TypeError):
            refs.append(weakref.ref(pg))
    return refs
