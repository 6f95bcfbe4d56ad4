"""The thin seam between the parallel engine and the communication layer.

Everything the engine needs from the world goes through these few functions so that the
engine runs on ``oncoscale.comm`` when it is present and on plain ``torch.distributed``
otherwise (switching is one line in :func:`init_world`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from oncoscale.errors import CommunicationError


@dataclass
class WorldInfo:
    """Rank, size and device of this process (``size == 1`` when not launched distributed)."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    comm_world: Any = None  # an oncoscale.comm World when that layer is in use


def launched_size() -> int:
    """World size a launcher (torchrun, mpiexec, srun) gave this process; 1 when none."""
    if dist.is_initialized():
        return dist.get_world_size()
    try:
        from oncoscale.comm import discover
    except ImportError:
        return int(os.environ.get("WORLD_SIZE", "1"))
    return int(discover().size)


def _launched() -> bool:
    return launched_size() > 1


def init_world(backend: str = "auto", timeout_s: float = 600.0) -> WorldInfo:
    """Join the world of ranks (idempotent); a single process when nothing launched us."""
    try:  # preferred: the oncoscale communication layer
        from oncoscale.comm import init as comm_init  # type: ignore[attr-defined]
    except ImportError:
        comm_init = None
    if comm_init is not None:
        # point-to-point activations and bucketed allreduces run on torch.distributed, so
        # the engine asks for the torch backend (it rendezvouses under mpiexec/srun too)
        if backend not in ("auto", "torch"):
            from oncoscale.errors import ConfigurationError

            raise ConfigurationError(
                f"the parallel engine runs on torch.distributed (backend 'torch' or 'auto'), "
                f"found backend={backend!r}; launch with mpiexec and keep backend='auto'")
        world = comm_init(backend="torch")
        device = getattr(world, "device", None) or _default_device(world.local_rank)
        return WorldInfo(world.rank, world.size, world.local_rank, torch.device(device), world)
    if not _launched():
        return WorldInfo(0, 1, 0, _default_device(0))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _default_device(local_rank)
    if not dist.is_initialized():
        name = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s))
    return WorldInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def new_group(world: WorldInfo, ranks: list[int]) -> Any:
    """A torch ProcessGroup over ``ranks`` (every rank must call this, in the same order)."""
    if world.size == 1:
        return None
    if world.comm_world is not None and hasattr(world.comm_world, "new_group"):
        group = world.comm_world.new_group(ranks)
        return getattr(group, "torch_group", group)
    return dist.new_group(ranks)


def broadcast_object(obj: Any, src: int, world: WorldInfo) -> Any:
    """Broadcast a picklable object from ``src`` to every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(world: WorldInfo) -> None:
    if world.size > 1:
        try:
            dist.barrier()
        except RuntimeError as exc:  # a peer died or timed out
            raise CommunicationError(f"rank {world.rank}: barrier failed: {exc}") from exc
