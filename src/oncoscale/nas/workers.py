"""Asynchronous master/worker evaluation with a pluggable transport.

The search (master) talks to a :class:`WorkerPool`: it ``submit``s :class:`Task` objects to
idle workers and ``wait``s for events, each either :class:`Done` (a result) or :class:`Died`
(the worker vanished; the search re-queues the task). Pools:

* :class:`InlinePool` - evaluates in the calling process (tests, debugging, ``workers = 0``).
* :class:`ProcessPool` - local worker processes started with ``multiprocessing`` *spawn*,
  each with ``torch.set_num_threads(threads)``. The master kills a worker that overruns the
  hard time limit (recorded as a failed ``timeout``) and restarts dead workers.
* :class:`CommPool` - ranks of an ``oncoscale.comm`` world: rank 0 is the master, every
  other rank runs :func:`serve_comm_worker`. Messages are pickled and sent as uint8 tensors
  with the world's point-to-point ``isend``/``irecv``.
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

from oncoscale.nas.evaluate import STATUS_FAILED, EvalResult


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

def _worker_main(conn: Connection, evaluator: EvaluateFn, threads: int) -> None:
    """Loop of a worker process: receive a Task, send back (cand_id, EvalResult)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
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


class ProcessPool:
    """``n_workers`` spawned processes, each evaluating one task at a time.

    ``timeout_s``: a task running longer than this (wall time, as seen by the master) has
    its worker killed and is reported as a failed ``timeout``; None disables the check.
    """

    def __init__(self, evaluator: EvaluateFn, n_workers: int = 2, *, threads: int = 1,
                 timeout_s: float | None = None) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.evaluator = evaluator
        self.n_workers = n_workers
        self.threads = threads
        self.timeout_s = timeout_s
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
        proc.start()
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

    def submit(self, task: Task) -> None:
        for s in self._slots:
            if s.task is None:
                s.task, s.started = task, time.monotonic()
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
        slot.ready = False

    def wait(self, timeout: float) -> list[Event]:
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
                    s.ready, s.started = True, time.monotonic()
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

    Uses the world's blocking tensor ``send(t, dst, tag=)`` / ``recv(t, src, tag=)``: one
    receiver thread per worker rank waits for its results (gloo's point-to-point handles
    cannot be polled), so the master stays asynchronous. Worker death is not detectable
    through a collective engine (the launcher aborts the job), so this pool re-queues
    nothing; on one node prefer :class:`ProcessPool`.
    """

    def __init__(self, world: Any) -> None:
        import queue
        import threading

        if world.rank != 0:
            raise ValueError("CommPool is created on rank 0; other ranks call serve_comm_worker")
        if world.size < 2:
            raise ValueError("CommPool needs a world of at least 2 ranks")
        self.world = world
        self.n_workers = world.size - 1
        self._busy: dict[int, Task] = {}
        self._results: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._threads = [threading.Thread(target=self._receive, args=(r,), daemon=True,
                                          name=f"nas-comm-recv-{r}")
                         for r in range(1, world.size)]
        for t in self._threads:
            t.start()

    def _receive(self, rank: int) -> None:
        while True:
            try:
                msg = _recv_obj(self.world, rank)
            except Exception as exc:  # the engine failed: report and stop listening
                self._results.put((rank, exc))
                return
            if msg == "bye":
                return
            self._results.put((rank, msg))

    def idle(self) -> int:
        return self.n_workers - len(self._busy)

    def submit(self, task: Task) -> None:
        for r in range(1, self.world.size):
            if r not in self._busy:
                self._busy[r] = task
                _send_obj(self.world, task, r)
                return
        raise RuntimeError("no idle worker")

    def wait(self, timeout: float) -> list[Event]:
        import queue

        events: list[Event] = []
        try:
            item = self._results.get(timeout=timeout)
        except queue.Empty:
            return events
        while True:
            rank, msg = item
            task = self._busy.pop(rank, None)
            if task is not None:
                if isinstance(msg, Exception):
                    events.append(Died(task, f"rank-{rank}", f"{type(msg).__name__}: {msg}"))
                else:
                    events.append(Done(task, msg[1], f"rank-{rank}"))
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return events

    def close(self) -> None:
        for r in range(1, self.world.size):
            with contextlib.suppress(Exception):
                _send_obj(self.world, None, r)
        for t in self._threads:
            t.join(timeout=10)


def serve_comm_worker(world: Any, evaluator: EvaluateFn, threads: int = 1) -> None:
    """Run on ranks >= 1: evaluate tasks from rank 0 until told to stop."""
    import torch

    torch.set_num_threads(threads)
    setup = getattr(evaluator, "setup", None)
    if setup is not None:
        setup()
    while True:
        task = _recv_obj(world, 0)
        if task is None:
            _send_obj(world, "bye", 0)
            return
        result = evaluator(task.genome, task.seed, task.cand_id)
        _send_obj(world, (task.cand_id, result), 0)
