"""World bootstrap: ranks, groups and the replicas x partitions layout.

>>> world = init()                       # torchrun, mpiexec, srun or a single process
>>> lay = world.layout(replicas=2, partitions=2)
>>> lay.partition_group.allreduce(grad)  # gradients across replicas of one partition

Ranks given to :class:`Group` point-to-point and rooted operations are *group* ranks
(``group.rank`` numbering, ``group.ranks[i]`` is the world rank of group rank ``i``); on the
world group they equal world ranks. Creating a group is collective over the whole world:
every rank calls :meth:`World.new_group` with the same ranks in the same order.

Exit: :meth:`World.shutdown` finishes queued work and releases the engine; a script that
never calls it is shut down by an ``atexit`` hook (bounded by :data:`EXIT_TIMEOUT`), so a
finished job exits 0 on every rank without ``os._exit``. The engine's worker threads must
be gone before the interpreter finalises: a gloo worker that drops the last reference to a
tensor during finalisation needs the GIL, is ended by Python with ``pthread_exit`` inside a
C++ frame, and the process aborts ("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from oncoscale.comm._backend import Backend, CommStats, FutureWork, Work, check_op
from oncoscale.comm._launch import LaunchInfo, discover
from oncoscale.errors import CommunicationError, ConfigurationError

BACKENDS = ("auto", "torch", "mpi")
DEFAULT_TIMEOUT = 300.0
EXIT_TIMEOUT = 30.0  # seconds the exit hook waits for queued work (a dead peer cannot hang it)


class Group:
    """An ordered set of world ranks that communicate together.

    Attributes: ``ranks`` (world ranks, tuple), ``rank`` (this process's rank in the group,
    ``-1`` when not a member), ``size``. ``torch_group`` (torch backend) / ``mpi_comm``
    (mpi backend) give the native handle for code that talks to the engine directly.
    """

    def __init__(self, world: World, ranks: Sequence[int], native: Any, channel: Any) -> None:
        self.world = world
        self.ranks: tuple[int, ...] = tuple(int(r) for r in ranks)
        self.size = len(self.ranks)
        self.rank = self.ranks.index(world.rank) if world.rank in self.ranks else -1
        self._native = native
        self._channel = channel  # a duplicate used by the sparse collectives' thread

    # -- identity ---------------------------------------------------------------------------
    @property
    def is_member(self) -> bool:
        """Whether this process belongs to the group."""
        return self.rank >= 0

    @property
    def backend(self) -> str:
        """Name of the engine: ``"torch"`` or ``"mpi"``."""
        return self.world._backend.name

    @property
    def torch_group(self) -> Any:
        """The ``torch.distributed`` ProcessGroup (torch backend only)."""
        if self.backend != "torch":
            raise ConfigurationError(f"torch_group exists on the torch backend, this group "
                                     f"runs on {self.backend!r}")
        return self._native

    @property
    def mpi_comm(self) -> Any:
        """The ``mpi4py`` communicator (mpi backend only)."""
        if self.backend != "mpi":
            raise ConfigurationError(f"mpi_comm exists on the mpi backend, this group "
                                     f"runs on {self.backend!r}")
        return self._native

    def global_rank(self, group_rank: int) -> int:
        """World rank of ``group_rank``."""
        return self.ranks[group_rank]

    def group_rank(self, global_rank: int) -> int:
        """Group rank of world rank ``global_rank`` (``-1`` if not a member)."""
        return self.ranks.index(global_rank) if global_rank in self.ranks else -1

    def __repr__(self) -> str:
        return f"Group(ranks={list(self.ranks)}, rank={self.rank}, backend={self.backend!r})"

    # -- operations -------------------------------------------------------------------------
    def _check(self, what: str, peer: int | None = None) -> Backend:
        if self.world._closed:
            raise CommunicationError(
                f"rank {self.world.rank}: {what} on a world that was shut down")
        if not self.is_member:
            raise ConfigurationError(
                f"rank {self.world.rank} called {what} on a group it is not in "
                f"(ranks {list(self.ranks)})")
        if peer is not None and not 0 <= peer < self.size:
            raise ConfigurationError(
                f"{what}: group rank {peer} out of range for a group of {self.size} ranks")
        return self.world._backend

    def isend(self, tensor: torch.Tensor, dst: int, *, tag: int = 0) -> Work:
        """Start sending ``tensor`` to group rank ``dst``; returns a work handle."""
        return self._check("isend", dst).isend(tensor, dst, self, tag=tag)

    def irecv(self, tensor: torch.Tensor, src: int, *, tag: int = 0) -> Work:
        """Start receiving into ``tensor`` (shape and dtype must match the sender's)."""
        return self._check("irecv", src).irecv(tensor, src, self, tag=tag)

    def send(self, tensor: torch.Tensor, dst: int, *, tag: int = 0) -> None:
        """Send ``tensor`` to group rank ``dst`` and wait until it left."""
        self.isend(tensor, dst, tag=tag).wait()

    def recv(self, tensor: torch.Tensor, src: int, *, tag: int = 0) -> torch.Tensor:
        """Receive into ``tensor`` from group rank ``src``; returns ``tensor``."""
        return self.irecv(tensor, src, tag=tag).wait()

    def allreduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``tensor`` in place over the group (``sum``, ``avg``, ``max``, ``min``)."""
        return self._check("allreduce").allreduce(tensor, check_op(op), self)

    def allgather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape everywhere), in group-rank order."""
        return self._check("allgather").allgather(tensor, self)

    def allgatherv(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Like :meth:`allgather` but the first dimension may differ between ranks."""
        return self._check("allgatherv").allgatherv(tensor, self)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``tensor`` with group rank ``src``'s."""
        return self._check("broadcast", src).broadcast(tensor, src, self)

    def barrier(self) -> None:
        """Wait for every rank of the group (bounded by the world's timeout)."""
        self._check("barrier").barrier(self)


@dataclass(frozen=True)
class Layout:
    """Ranks arranged as ``replicas`` x ``partitions`` (world rank = replica * P + partition).

    ``partition_group``: the R ranks that hold this rank's partition, one per replica (the
    gradient allreduce group). ``pipeline_group``: the P ranks of this rank's replica,
    partitions 0..P-1 in order, so ``pipeline_group.rank == partition_index``.
    """

    replicas: int
    partitions: int
    rank: int
    replica_index: int
    partition_index: int
    partition_group: Group
    pipeline_group: Group

    def rank_of(self, replica: int, partition: int) -> int:
        """World rank holding ``partition`` of ``replica``."""
        return replica * self.partitions + partition

    @property
    def prev_rank(self) -> int | None:
        """World rank of the previous pipeline stage (``None`` on partition 0)."""
        return None if self.partition_index == 0 else self.rank - 1

    @property
    def next_rank(self) -> int | None:
        """World rank of the next pipeline stage (``None`` on the last partition)."""
        return None if self.partition_index == self.partitions - 1 else self.rank + 1


class _CommThread:
    """One daemon thread running queued callables in FIFO order (a world's sparse collectives).

    A daemon, unlike a ``ThreadPoolExecutor`` worker, is not joined without a limit by the
    interpreter before the ``atexit`` hooks run, so the exit hook can bound the wait.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        self._queue.put((fut, fn))
        return fut

    @staticmethod
    def _run_one(fut: cf.Future, fn: Callable[[], Any]) -> None:
        # a function of its own: no reference to the result outlives the call
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._run_one(*item)
            del item

    def stop(self, timeout: float | None) -> bool:
        """Let queued work finish, then end the thread; ``False`` if it is still running."""
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()


class World(Group):
    """All ranks of the job. Made by :func:`init`; a :class:`Group` of every rank.

    Attributes: ``rank``, ``size``, ``local_rank`` (rank on this node), ``backend``
    (``"torch"`` or ``"mpi"``), ``device`` (``cuda:<local_rank>`` when CUDA is available,
    else ``cpu``), ``launcher``, ``timeout`` (seconds), ``stats`` (bytes sent by this rank).
    """

    def __init__(self, backend: Backend, info: LaunchInfo, device: torch.device) -> None:
        self._backend = backend
        self.rank = backend.rank
        self.local_rank = info.local_rank
        self.launcher = info.launcher
        self.device = device
        self.timeout = backend.timeout
        self._layouts: dict[tuple[int, int], Layout] = {}
        self._thread: _CommThread | None = None
        self._executor_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one sparse collective at a time, in call order
        self._pending = 0
        self._closed = False
        self._released = False
        self.cache: dict[Any, Any] = {}  # per-world memo (e.g. cost-model calibration)
        native, channel = backend.world_native()
        super().__init__(self, range(backend.size), native, channel)
        self._groups: list[Group] = [self]  # every group made here, to release at shutdown
        _LIVE.add(self)

    @property
    def stats(self) -> CommStats:
        """Traffic counters of this rank (``.bytes_sent``, ``.messages``, ``.reset()``)."""
        return self._backend.stats

    def __repr__(self) -> str:
        return (f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"backend={self.backend!r}, device={str(self.device)!r}, "
                f"launcher={self.launcher!r})")

    def new_group(self, ranks: Sequence[int]) -> Group:
        """A group of the given world ranks (collective: every world rank must call it)."""
        ranks = [int(r) for r in ranks]
        if not ranks or len(set(ranks)) != len(ranks) or not all(
                0 <= r < self.size for r in ranks):
            raise ConfigurationError(
                f"group ranks must be distinct world ranks in [0, {self.size}), found {ranks}")
        if ranks == list(range(self.size)):
            return self
        with self._executor_lock:
            if self._closed:
                raise CommunicationError(
                    f"rank {self.rank}: new_group on a world that was shut down")
        native, channel = self._backend.new_native_group(ranks)
        group = Group(self, ranks, native, channel)
        self._groups.append(group)
        return group

    def layout(self, replicas: int, partitions: int) -> Layout:
        """Arrange the world as ``replicas`` x ``partitions`` (collective; cached)."""
        R, P = int(replicas), int(partitions)
        if R < 1 or P < 1 or self.size != R * P:
            raise ConfigurationError(
                f"layout needs replicas x partitions == world size: {R} x {P} = {R * P}, "
                f"world size is {self.size}")
        if (R, P) in self._layouts:
            return self._layouts[(R, P)]
        rep, part = divmod(self.rank, P)
        part_groups = [self.new_group([p + r * P for r in range(R)]) for p in range(P)]
        pipe_groups = [self.new_group([r * P + p for p in range(P)]) for r in range(R)]
        lay = Layout(R, P, self.rank, rep, part, part_groups[part], pipe_groups[rep])
        self._layouts[(R, P)] = lay
        return lay

    def submit(self, fn: Callable[[], Any], what: str) -> FutureWork:
        """Run ``fn`` on this world's communication thread (FIFO); returns a handle."""
        with self._executor_lock:
            if self._closed:
                raise CommunicationError(f"rank {self.rank}: {what} on a world that was shut down")
            if self._thread is None:
                self._thread = _CommThread(f"oncoscale-comm-r{self.rank}")
            self._pending += 1
            fut = self._thread.submit(lambda: self._serial(fn))
        return FutureWork(fut, what, self.rank, self.timeout * 4)

    def _serial(self, fn: Callable[[], Any]) -> Any:
        try:
            with self._run_lock:
                return fn()
        finally:
            with self._executor_lock:
                self._pending -= 1

    def run_now(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` in the calling thread when no queued work is pending (keeps FIFO order,
        saves two thread hand-overs on a blocking call); else queue it and wait."""
        with self._executor_lock:
            if self._closed:
                raise CommunicationError(f"rank {self.rank}: {what} on a world that was shut down")
            idle = self._pending == 0
            if idle:
                self._pending += 1
        if not idle:
            return self.submit(fn, what).wait()
        try:
            with self._run_lock:
                return fn()
        finally:
            with self._executor_lock:
                self._pending -= 1

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish queued work and release the engine (idempotent, safe from any thread).

        ``timeout`` (seconds, default the world's timeout) bounds the wait for queued
        non-blocking work; past it (a peer rank died or never joins) this raises
        :class:`CommunicationError` and leaves the engine in place (releasing it would wait
        for the stuck operation). After a shutdown every operation on the world or its
        groups raises :class:`CommunicationError`.
        """
        global _DEFAULT
        limit = self.timeout if timeout is None else float(timeout)
        with self._executor_lock:
            self._closed = True
            thread = self._thread
        if thread is not None and not thread.stop(limit):
            raise CommunicationError(
                f"rank {self.rank}: shutdown: queued communication did not finish within "
                f"{limit:g} s (a peer rank may have died or skipped a collective); "
                "the engine was not released")
        with self._executor_lock:
            if self._released:
                return
            self._released = True
        # no barrier here: whether a rank saw a failure is local knowledge, and a barrier
        # that only some ranks enter would cost the others the whole timeout. Drop every
        # handle on the engine's groups first, so that releasing the engine really ends
        # its worker threads now, while the interpreter is still whole.
        for group in self._groups:
            group._native = group._channel = None
        self._groups = []
        self._layouts.clear()
        self._backend.shutdown()
        _LIVE.discard(self)
        if _DEFAULT is self:
            _DEFAULT = None


_DEFAULT: World | None = None
_LIVE: weakref.WeakSet[World] = weakref.WeakSet()  # worlds not shut down yet
_EXIT_HOOKED = False


def _shutdown_at_exit() -> None:
    """``atexit`` hook: shut down every live world before the interpreter finalises.

    Runs in a helper thread bounded by :data:`EXIT_TIMEOUT` (or the world's timeout if
    shorter): queued work and operations still in flight finish first, so peers that wait
    for them are served. When they cannot finish (a peer died or never joins) the process
    leaves at once with exit status 1 and a message on stderr: waiting would hang, and
    finalising with the engine still busy would abort.
    """
    for world in list(_LIVE):
        limit = min(world.timeout, EXIT_TIMEOUT)
        errors: list[BaseException] = []
        closer = threading.Thread(target=_close_into, args=(world, limit, errors),
                                  name="oncoscale-comm-exit", daemon=True)
        closer.start()
        closer.join(limit + 5.0)
        if closer.is_alive() or any(isinstance(e, CommunicationError) for e in errors):
            why = (str(errors[0]) if errors else
                   f"rank {world.rank}: releasing the {world.backend} engine did not finish "
                   f"within {limit + 5.0:g} s (a peer rank may have died)")
            sys.stdout.flush()
            sys.stderr.write(f"oncoscale.comm: at exit: {why}; leaving without waiting\n")
            sys.stderr.flush()
            os._exit(1)
        for exc in errors:  # best effort at exit: report, never mask the exit status
            sys.stderr.write(f"oncoscale.comm: rank {world.rank}: shutdown at exit failed: "
                             f"{exc}\n")


def _close_into(world: World, limit: float, errors: list[BaseException]) -> None:
    try:
        world.shutdown(timeout=limit)
    except BaseException as exc:  # noqa: BLE001 - reported by the exit hook
        errors.append(exc)


def _seconds(timeout: float | timedelta | None) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT
    sec = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if sec <= 0:
        raise ConfigurationError(f"timeout must be positive, found {timeout!r}")
    return sec


def _mpi_importable() -> bool:
    import importlib.util
    return importlib.util.find_spec("mpi4py") is not None


def init(backend: str = "auto", *, timeout: float | timedelta | None = None,
         device: str | torch.device | None = None) -> World:
    """Start (or return) the world of this job.

    ``backend``: ``"torch"`` (torch.distributed: gloo for CPU tensors, NCCL for CUDA),
    ``"mpi"`` (mpi4py), or ``"auto"`` (mpi under ``mpiexec`` when mpi4py is installed,
    torch otherwise). ``timeout`` (seconds or timedelta, default 300 s) bounds rendezvous
    and every blocking operation. ``device`` overrides the default ``cuda:<local_rank>``
    (or ``cpu``). Calling ``init`` again with the same backend returns the same world.
    """
    global _DEFAULT, _EXIT_HOOKED
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, found {backend!r}")
    info = discover()
    if backend == "auto":
        backend = "mpi" if info.launcher == "mpi" and _mpi_importable() else "torch"
    if _DEFAULT is not None and _DEFAULT.backend == backend:
        return _DEFAULT
    seconds = _seconds(timeout)
    if device is None:
        if torch.cuda.is_available():
            dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        else:
            dev = torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if backend == "torch":
        from oncoscale.comm._torch_backend import TorchBackend
        engine: Backend = TorchBackend(info, seconds)
    else:
        from oncoscale.comm._mpi_backend import MPIBackend
        engine = MPIBackend(info, seconds)
    world = World(engine, info, dev)
    if not _EXIT_HOOKED:
        atexit.register(_shutdown_at_exit)
        _EXIT_HOOKED = True
    if _DEFAULT is None:
        _DEFAULT = world
    return world


def default_world() -> World:
    """The world made by the first :func:`init` (initialising a default one if needed)."""
    return _DEFAULT if _DEFAULT is not None else init()


def resolve_group(group: Group | None) -> Group:
    """``group`` or the default world."""
    return default_world() if group is None else group
