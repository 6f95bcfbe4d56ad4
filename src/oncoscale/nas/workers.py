"""Asynchronous master/worker evaluation with a pluggable transport.

The search (master) talks to a :class:`WorkerPool`: it ``submit``s :class:`Task` objects to
idle workers and ``wait``s for events, each either :class:`Done` (a result) or :class:`Died`
(the worker vanished; the search re-queues the task). Pools:

* :class:`InlinePool` - evaluates in the calling process (tests, debugging, ``workers = 0``).
* :class:`ProcessPool` - local worker processes started with ``multiprocessing`` *spawn*,
  each with ``torch.set_num_threads(threads)`` and ``OMP_NUM_THREADS=threads``. The master
  kills a worker that overruns the hard time limit (a failed ``timeout``) or whose resident
  memory grows past the memory budget during a task (a failed ``memory budget exceeded``),
  and restarts dead or killed workers.
* :class:`CommPool` - ranks of an ``oncoscale.comm`` world: rank 0 is the master, every
  other rank runs :func:`serve_comm_worker`. Messages are pickled and sent as uint8 tensors
  with the world's point-to-point ``send``/``recv``. Workers send heartbeats; a rank whose
  connection breaks or whose heartbeats stop is marked dead and its task re-queued.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from oncoscale.nas.evaluate import STATUS_FAILED, EvalResult, rss_mib


@dataclass
class Task:
    """One candidate to evaluate (``attempt`` counts re-queues after worker deaths)."""

    cand_id: int
    genome: str
    seed: int
    attempt: int = 0


@dataclass
class Done:
    task: Task
    result: EvalResult
    worker: str


@dataclass
class Died:
    task: Task
    worker: str
    reason: str


Event = Done | Died


class WorkerPool(Protocol):
    """What the search needs from a transport."""

    n_workers: int

    def idle(self) -> int:
        """Number of workers without a task."""

    def submit(self, task: Task) -> None:
        """Hand ``task`` to an idle worker."""

    def wait(self, timeout: float) -> list[Event]:
        """Block up to ``timeout`` seconds; return the events that arrived."""

    def close(self) -> None:
        """Stop all workers."""


EvaluateFn = Callable[[str, int, int], EvalResult]


# --------------------------------------------------------------------------- inline

class InlinePool:
    """Evaluate in the calling process, one task at a time."""

    n_workers = 1

    def __init__(self, evaluator: EvaluateFn) -> None:
        self.evaluator = evaluator
        self._task: Task | None = None

    def idle(self) -> int:
        return 0 if self._task is not None else 1

    def submit(self, task: Task) -> None:
        self._task = task

    def wait(self, timeout: float) -> list[Event]:
        if self._task is None:
            return []
        task, self._task = self._task, None
        return [Done(task, self.evaluator(task.genome, task.seed, task.cand_id), "inline")]

    def close(self) -> None:
        self._task = None


# --------------------------------------------------------------------------- processes

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _worker_main(conn: Connection, evaluator: EvaluateFn, threads: int) -> None:
    """Loop of a worker process: receive a Task, send back (cand_id, EvalResult)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    setup = getattr(evaluator, "setup", None)
    if setup is not None:
        setup()
    conn.send("ready")  # the master starts the task clock from here
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        result = evaluator(task.genome, task.seed, task.cand_id)
        conn.send((task.cand_id, result))


@dataclass
class _Slot:
    name: str
    proc: Any
    conn: Connection
    task: Task | None = None
    started: float = 0.0
    ready: bool = False
    base_mib: float | None = None  # resident memory when the task started
    peak_mib: float = 0.0  # largest growth over base_mib seen during the task


class ProcessPool:
    """``n_workers`` spawned processes, each evaluating one task at a time.

    ``threads``: torch intra-op threads of each worker (``OMP_NUM_THREADS`` is set to the
    same before torch loads, so ``n_workers x threads`` should not exceed the cores).
    ``timeout_s``: a task running longer than this (wall time, as seen by the master) has
    its worker killed and is reported as a failed ``timeout``; None disables the check.
    ``max_memory_mb``: a task whose worker's resident memory grows by more than this many
    MiB over its level when the task started (the candidate's own use: weights, gradients,
    optimiser state, activations; not torch and the data, which every worker holds) has its
    worker killed and is reported as failed ``memory budget exceeded (X MiB > Y MiB)``.
    Memory is sampled every ``poll_s`` seconds from ``/proc`` (Linux; elsewhere the
    evaluator's estimate is the only check).
    """

    def __init__(self, evaluator: EvaluateFn, n_workers: int = 2, *, threads: int = 1,
                 timeout_s: float | None = None, max_memory_mb: float | None = None,
                 poll_s: float = 0.1) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.evaluator = evaluator
        self.n_workers = n_workers
        self.threads = threads
        self.timeout_s = timeout_s
        self.max_memory_mb = max_memory_mb
        self.poll_s = poll_s
        self._ctx = mp.get_context("spawn")
        self._slots: list[_Slot] = []
        self._counter = 0
        for _ in range(n_workers):
            self._slots.append(self._spawn())

    def _spawn(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        name = f"proc-{self._counter}"
        self._counter += 1
        proc = self._ctx.Process(target=_worker_main, args=(child, self.evaluator, self.threads),
                                 name=f"oncoscale-nas-{name}", daemon=True)
        # the child inherits the environment at start: OpenMP reads it when torch loads,
        # which under spawn may happen while unpickling, before _worker_main runs
        saved = {v: os.environ.get(v) for v in _THREAD_VARS}
        os.environ.update({v: str(self.threads) for v in _THREAD_VARS})
        try:
            proc.start()
        finally:
            for v, old in saved.items():
                if old is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = old
        child.close()
        return _Slot(name, proc, parent)

    def idle(self) -> int:
        return sum(s.task is None for s in self._slots)

    def wait_ready(self, timeout: float = 300.0) -> bool:
        """Block until every idle worker has started (torch imported, data set up)."""
        deadline = time.monotonic() + timeout
        for s in self._slots:
            while s.task is None and not s.ready:
                left = deadline - time.monotonic()
                if left <= 0 or not s.conn.poll(min(left, 1.0)):
                    if left <= 0 or not s.proc.is_alive():
                        return False
                    continue
                try:
                    s.ready = s.conn.recv() == "ready"
                except (EOFError, OSError):
                    return False  # died while starting; wait() reports it with its task
        return True

    def _start_clock(self, s: _Slot) -> None:
        s.started = time.monotonic()
        s.base_mib = rss_mib(s.proc.pid) if self.max_memory_mb is not None else None
        s.peak_mib = 0.0

    def submit(self, task: Task) -> None:
        for s in self._slots:
            if s.task is None:
                s.task = task
                self._start_clock(s)
                with contextlib.suppress(BrokenPipeError, OSError):
                    s.conn.send(task)  # a dead worker is noticed by wait()
                return
        raise RuntimeError("no idle worker")

    def _replace(self, slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            slot.conn.close()
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(timeout=5)
        new = self._spawn()
        slot.name, slot.proc, slot.conn, slot.task = new.name, new.proc, new.conn, None
        slot.ready, slot.base_mib, slot.peak_mib = False, None, 0.0

    def _over_memory(self, s: _Slot) -> float | None:
        """The task's memory growth in MiB when it exceeds the budget, else None."""
        if self.max_memory_mb is None or not s.ready or s.base_mib is None:
            return None
        now = rss_mib(s.proc.pid)
        if now is None:
            return None
        used = now - s.base_mib
        s.peak_mib = max(s.peak_mib, used)
        return used if used > self.max_memory_mb else None

    def wait(self, timeout: float) -> list[Event]:
        """Block up to ``timeout`` s (sampling memory every ``poll_s`` s when it is limited);
        return as soon as something happened."""
        end = time.monotonic() + timeout
        while True:
            left = max(0.0, end - time.monotonic())
            step = left if self.max_memory_mb is None else min(left, self.poll_s)
            events = self._wait_once(step)
            if events or time.monotonic() >= end or not any(s.task for s in self._slots):
                return events

    def _wait_once(self, timeout: float) -> list[Event]:
        events: list[Event] = []
        busy = [s for s in self._slots if s.task is not None]
        if not busy:
            return events
        limit = timeout
        clocked = [s for s in busy if s.ready]
        if self.timeout_s is not None and clocked:
            now = time.monotonic()
            limit = min(limit, max(0.0, min(s.started + self.timeout_s - now for s in clocked)))
        handles: list[Any] = [s.conn for s in busy] + [s.proc.sentinel for s in busy]
        ready = set(wait(handles, timeout=limit))
        for s in busy:
            assert s.task is not None
            if s.conn in ready:
                try:
                    msg = s.conn.recv()
                except (EOFError, OSError):
                    events.append(Died(s.task, s.name, "connection lost"))
                    self._replace(s)
                    continue
                if msg == "ready":  # start-up (torch import, data setup) is not task time
                    s.ready = True
                    self._start_clock(s)
                    continue
                _cand_id, result = msg
                events.append(Done(s.task, result, s.name))
                s.task = None
            elif s.proc.sentinel in ready or not s.proc.is_alive():
                s.proc.join(timeout=1)
                events.append(Died(s.task, s.name, f"exit code {s.proc.exitcode}"))
                self._replace(s)
            elif self.timeout_s is not None and s.ready and \
                    time.monotonic() - s.started > self.timeout_s:
                res = EvalResult(STATUS_FAILED, reason=f"timeout: no result after "
                                 f"{self.timeout_s:g} s, worker killed",
                                 seconds=time.monotonic() - s.started)
                events.append(Done(s.task, res, s.name))
                self._replace(s)
            elif (used := self._over_memory(s)) is not None:
                res = EvalResult(STATUS_FAILED, reason=f"memory budget exceeded ({used:.0f} MiB"
                                 f" > {self.max_memory_mb:.0f} MiB), worker killed",
                                 seconds=time.monotonic() - s.started)
                events.append(Done(s.task, res, s.name))
                self._replace(s)
        return events

    def close(self) -> None:
        for s in self._slots:
            with contextlib.suppress(Exception):
                s.conn.send(None)
        deadline = time.monotonic() + 5
        for s in self._slots:
            s.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(timeout=2)
            with contextlib.suppress(Exception):
                s.conn.close()
        self._slots = []

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- comm world

_TAG_LEN, _TAG_MSG = 7100, 7101
_HEARTBEAT = "hb"


def _send_obj(world: Any, obj: Any, dst: int) -> None:
    import torch

    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    world.send(torch.tensor([data.numel()], dtype=torch.int64), dst, tag=_TAG_LEN)
    world.send(data, dst, tag=_TAG_MSG)


def _recv_obj(world: Any, src: int) -> Any:
    import torch

    n = torch.zeros(1, dtype=torch.int64)
    world.recv(n, src, tag=_TAG_LEN)
    buf = torch.empty(int(n.item()), dtype=torch.uint8)
    world.recv(buf, src, tag=_TAG_MSG)
    return pickle.loads(buf.numpy().tobytes())


class CommPool:
    """Workers are ranks 1..size-1 of an ``oncoscale.comm`` world; this process is rank 0.

    Uses the world's blocking tensor ``send``/``recv``: one receiver thread per worker rank
    waits for that rank's messages (gloo's point-to-point handles cannot be polled), so the
    master stays asynchronous. Liveness:

    * a rank whose connection breaks (the process died: the engine reports "connection
      closed by peer") or whose heartbeats stop for ``heartbeat_timeout_s`` seconds
      (``startup_timeout_s`` before its first message: data loading) is marked dead; its
      task comes back as :class:`Died` (the search re-queues it on a live rank) and it gets
      no more tasks;
    * a rank that keeps sending heartbeats but has no result ``timeout_s`` seconds after it
      started the task is running a hung candidate: the task is reported as a failed
      ``timeout`` and the rank is parked until its late answer arrives (then it is idle
      again; the late result is dropped);
    * :attr:`n_alive` counts ranks not marked dead; the search stops with a
      :class:`~oncoscale.errors.CommunicationError` when it reaches 0 with work left.

    A launcher may end the whole job when one rank exits with an error (``torchrun`` and
    ``mpiexec`` do); then the checkpoint and ``--resume`` (or ``torchrun --max-restarts``)
    carry the search on. Launches that leave the other ranks running (``env://`` with one
    process per rank, ``srun`` without ``--kill-on-bad-exit``) keep the search going.
    """

    def __init__(self, world: Any, *, timeout_s: float | None = None,
                 heartbeat_timeout_s: float = 60.0, startup_timeout_s: float = 600.0) -> None:
        import queue
        import threading

        if world.rank != 0:
            raise ValueError("CommPool is created on rank 0; other ranks call serve_comm_worker")
        if world.size < 2:
            raise ValueError("CommPool needs a world of at least 2 ranks")
        self.world = world
        self.n_workers = world.size - 1
        self.timeout_s = timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.startup_timeout_s = startup_timeout_s
        ranks = range(1, world.size)
        now = time.monotonic()
        self.state_: dict[int, str] = {r: "idle" for r in ranks}  # idle busy parked dead
        self.reasons_: dict[int, str] = {}  # why a rank was marked dead
        self._task: dict[int, Task] = {}
        self._started: dict[int, float] = {}
        self._ready: dict[int, bool] = {r: False for r in ranks}
        self._seen: dict[int, float] = {r: now for r in ranks}
        self._heard: set[int] = set()  # ranks that sent anything (before: start-up grace)
        self._pending: list[Event] = []
        self._results: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._threads = [threading.Thread(target=self._receive, args=(r,), daemon=True,
                                          name=f"nas-comm-recv-{r}") for r in ranks]
        for t in self._threads:
            t.start()

    @property
    def n_alive(self) -> int:
        """Worker ranks not marked dead."""
        return sum(st != "dead" for st in self.state_.values())

    def _receive(self, rank: int) -> None:
        while True:
            try:
                msg = _recv_obj(self.world, rank)
            except Exception as exc:  # the engine failed (peer gone): report, stop listening
                self._results.put((rank, exc))
                return
            self._seen[rank] = time.monotonic()
            self._heard.add(rank)
            if msg == _HEARTBEAT:
                continue
            self._results.put((rank, msg))
            if msg == "bye":
                return

    def idle(self) -> int:
        return sum(st == "idle" for st in self.state_.values())

    def submit(self, task: Task) -> None:
        for r, st in self.state_.items():
            if st == "idle":
                self.state_[r], self._task[r] = "busy", task
                self._started[r] = time.monotonic()
                try:
                    _send_obj(self.world, task, r)
                except Exception as exc:  # the rank is gone: the task comes back as Died
                    self._mark_dead(r, f"send failed: {type(exc).__name__}: {exc}")
                return
        raise RuntimeError("no idle worker")

    def _mark_dead(self, rank: int, reason: str) -> None:
        task = self._task.pop(rank, None)
        if self.state_[rank] == "busy" and task is not None:
            self._pending.append(Died(task, f"rank-{rank}", reason))
        self.state_[rank] = "dead"
        self.reasons_[rank] = reason

    def _handle(self, rank: int, msg: Any) -> None:
        st = self.state_[rank]
        if st == "dead":
            return
        if isinstance(msg, Exception):
            self._mark_dead(rank, f"{type(msg).__name__}: {str(msg)[:300]}")
        elif msg == "ready":  # start-up (torch import, data setup) is not task time
            self._ready[rank] = True
            self._started[rank] = time.monotonic()
        elif msg == "bye":
            self.state_[rank] = "dead"
            self.reasons_[rank] = "closed"
        elif isinstance(msg, tuple) and msg and msg[0] in ("result", "died"):
            kind, cand_id, payload = msg
            task = self._task.get(rank)
            if st == "busy" and task is not None and task.cand_id == cand_id:
                del self._task[rank]
                if kind == "result":
                    self._pending.append(Done(task, payload, f"rank-{rank}"))
                else:  # the rank's evaluation process died; the rank lives on
                    self._pending.append(Died(task, f"rank-{rank}", str(payload)))
            if st in ("busy", "parked"):  # a parked rank's late answer frees it
                self.state_[rank] = "idle"
                self._task.pop(rank, None)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for r, st in self.state_.items():
            if st == "dead":
                continue
            silent = now - self._seen[r]
            limit = self.heartbeat_timeout_s if r in self._heard else self.startup_timeout_s
            if silent > limit:
                self._mark_dead(r, f"no heartbeat for {silent:.0f} s")
            elif st == "busy" and self.timeout_s is not None and self._ready[r] and \
                    now - self._started[r] > self.timeout_s:
                task = self._task[r]
                res = EvalResult(STATUS_FAILED, seconds=now - self._started[r],
                                 reason=f"timeout: no result after {self.timeout_s:g} s "
                                        f"(rank {r} alive; parked until it answers)")
                self._pending.append(Done(task, res, f"rank-{r}"))
                self.state_[r] = "parked"

    def wait(self, timeout: float) -> list[Event]:
        import queue

        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                item = self._results.get(timeout=max(0.0, min(left, 0.5)))
            except queue.Empty:
                item = None
            while item is not None:
                self._handle(*item)
                try:
                    item = self._results.get_nowait()
                except queue.Empty:
                    item = None
            self._check_deadlines()
            if self._pending or time.monotonic() >= end:
                events, self._pending = self._pending, []
                return events

    def close(self) -> None:
        """Tell every rank to stop (one only thought dead, e.g. silent for too long, then
        leaves too) and wait up to 10 s for the live ones' goodbyes; receiver threads of dead
        ranks are daemons and are left behind."""
        live = [r for r, st in self.state_.items() if st != "dead"]
        for r, st in self.state_.items():
            if st != "dead" or self.reasons_.get(r, "").startswith("no heartbeat"):
                with contextlib.suppress(Exception):
                    _send_obj(self.world, None, r)
        deadline = time.monotonic() + 10
        for r in live:
            self._threads[r - 1].join(timeout=max(0.0, deadline - time.monotonic()))


def serve_comm_worker(world: Any, evaluator: EvaluateFn, threads: int = 1, *,
                      heartbeat_s: float = 2.0) -> None:
    """Run on ranks >= 1: evaluate tasks from rank 0 until told to stop.

    A background thread sends a heartbeat to rank 0 every ``heartbeat_s`` seconds (also
    while a candidate trains) so the master can tell a live rank from a vanished one.
    """
    import threading

    import torch

    torch.set_num_threads(threads)
    lock = threading.Lock()
    stop = threading.Event()

    def send(obj: Any) -> None:
        with lock:  # a message is two sends (length, bytes): never interleave two messages
            _send_obj(world, obj, 0)

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                with lock:
                    if stop.is_set():
                        return
                    _send_obj(world, _HEARTBEAT, 0)
            except Exception:  # the master is gone; the main loop notices on its next recv
                return

    beater = threading.Thread(target=beat, daemon=True, name="nas-comm-heartbeat")
    beater.start()
    setup = getattr(evaluator, "setup", None)
    if setup is not None:
        setup()
    send("ready")
    while True:
        task = _recv_obj(world, 0)
        if task is None:
            with lock:
                stop.set()
            send("bye")
            return
        result = evaluator(task.genome, task.seed, task.cand_id)
        send(("result", task.cand_id, result))
