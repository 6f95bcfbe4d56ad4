"""The small interface every engine implements, work handles and traffic counters.

A backend works on torch tensors. Ranks given to its point-to-point and rooted operations
are ranks *within the group* (``group.rank`` numbering). All operations are collective over
the group unless they are point to point; every blocking wait is bounded by the backend's
timeout and raises :class:`~oncoscale.errors.CommunicationError` naming the rank and the
operation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oncoscale.errors import CommunicationError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from oncoscale.comm.world import Group

REDUCE_OPS = ("sum", "avg", "max", "min")


def check_op(op: str) -> str:
    """Normalise a reduction name (``"sum"``, ``"avg"``, ``"max"``, ``"min"``)."""
    name = str(getattr(op, "name", op)).lower()
    if name not in REDUCE_OPS:
        from oncoscale.errors import ConfigurationError
        raise ConfigurationError(f"reduction op must be one of {REDUCE_OPS}, found {op!r}")
    return name


class Work:
    """Handle of a non-blocking operation: ``wait()`` returns its result, ``is_completed()``."""

    def wait(self, timeout: float | None = None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def is_completed(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class DoneWork(Work):
    """A handle that is already complete (e.g. a no-op on a group of one rank)."""

    def __init__(self, result: Any = None) -> None:
        self._result = result

    def wait(self, timeout: float | None = None) -> Any:
        return self._result

    def is_completed(self) -> bool:
        return True


class FutureWork(Work):
    """A handle on a :class:`concurrent.futures.Future` run by a world's background thread."""

    def __init__(self, future: Any, what: str, rank: int, default_timeout: float) -> None:
        self._future = future
        self._what = what
        self._rank = rank
        self._timeout = default_timeout

    def wait(self, timeout: float | None = None) -> Any:
        import concurrent.futures as cf
        limit = self._timeout if timeout is None else timeout
        try:
            return self._future.result(timeout=limit)
        except cf.TimeoutError:
            raise CommunicationError(
                f"rank {self._rank}: {self._what} did not complete within {limit:g} s") from None

    def is_completed(self) -> bool:
        return self._future.done()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(future)`` once the operation finished (from the communication thread)."""
        self._future.add_done_callback(fn)


@dataclass
class CommStats:
    """Payload bytes and messages this rank put on the wire (ring-equivalent for collectives).

    Point-to-point sends count their exact size. A collective counts what a bandwidth-optimal
    (ring) implementation sends per rank: allreduce ``2 (p-1)/p * n`` bytes, allgather(v)
    ``(p-1)/p`` of the gathered bytes, broadcast ``n`` on the root.
    """

    bytes_sent: int = 0
    messages: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, nbytes: float, messages: int = 1) -> None:
        with self._lock:
            self.bytes_sent += int(nbytes)
            self.messages += messages

    def reset(self) -> CommStats:
        """Return a copy of the counters and set them to zero."""
        with self._lock:
            snap = CommStats(self.bytes_sent, self.messages)
            self.bytes_sent = 0
            self.messages = 0
        return snap


class Backend(ABC):
    """One engine (torch.distributed or MPI) under a :class:`~oncoscale.comm.World`."""

    name: str
    rank: int
    size: int
    timeout: float
    stats: CommStats
    broken: bool = False  # set once an operation failed: shutdown then skips its barrier

    def fail(self, op: str, group: Group, exc: BaseException | str) -> CommunicationError:
        """Build the error raised when ``op`` failed on ``group`` (and mark the engine broken)."""
        self.broken = True
        text = str(exc)
        low = text.lower()
        if "timeout" in low or "timed out" in low:
            text = f"timed out after {self.timeout:g} s ({text.strip()})"
        elif any(w in low for w in ("closed", "reset by peer", "broken pipe", "connection")):
            text = f"a peer rank died or closed its connection ({text.strip()})"
        return CommunicationError(
            f"rank {self.rank}: {op} on {self.name} group of ranks {list(group.ranks)} "
            f"failed: {text}")

    @abstractmethod
    def new_native_group(self, ranks: list[int]) -> tuple[Any, Any]:
        """Create (collectively over the world) the native group and its duplicate channel."""

    @abstractmethod
    def world_native(self) -> tuple[Any, Any]:
        """Native world group and its duplicate channel."""

    @abstractmethod
    def isend(self, tensor: torch.Tensor, dst: int, group: Group, *, tag: int = 0,
              channel: bool = False) -> Work: ...

    @abstractmethod
    def irecv(self, tensor: torch.Tensor, src: int, group: Group, *, tag: int = 0,
              channel: bool = False) -> Work: ...

    @abstractmethod
    def allreduce(self, tensor: torch.Tensor, op: str, group: Group, *,
                  channel: bool = False) -> torch.Tensor: ...

    @abstractmethod
    def allgather(self, tensor: torch.Tensor, group: Group, *,
                  channel: bool = False) -> list[torch.Tensor]: ...

    @abstractmethod
    def allgatherv(self, tensor: torch.Tensor, group: Group, *, channel: bool = False,
                   counts: list[int] | None = None) -> list[torch.Tensor]: ...

    @abstractmethod
    def broadcast(self, tensor: torch.Tensor, src: int, group: Group, *,
                  channel: bool = False) -> torch.Tensor: ...

    @abstractmethod
    def barrier(self, group: Group, *, channel: bool = False) -> None: ...

    @abstractmethod
    def shutdown(self) -> None: ...
