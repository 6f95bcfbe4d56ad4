"""Atomic training checkpoints and random-number-generator state capture.

Used by the single-process trainer (:mod:`oncoscale.parallel.sequential`) and by the parallel
engine (one file per rank, ``checkpoint_path(dir, rank=r)``).

A checkpoint is a plain ``dict`` saved with ``torch.save`` to a temporary file beside the
target and renamed over it only when complete, so a crash mid-save leaves the previous
checkpoint intact and never a partial file. Everything stored is loadable with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and dicts only
(numpy RNG state is kept as a tensor, histories as dicts of lists).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oncoscale._io import atomic_path
from oncoscale.errors import InputError

__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng_state",
    "checkpoint_path",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_path(directory: str | os.PathLike[str], rank: int | None = None) -> Path:
    """``directory/checkpoint.pt``, or ``directory/checkpoint-rank{rank:05d}.pt`` for a rank."""
    name = CHECKPOINT_NAME if rank is None else f"checkpoint-rank{int(rank):05d}.pt"
    return Path(directory) / name


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    A ``"format_version"`` entry is added. Returns ``path``.
    """
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_checkpoint(path: str | os.PathLike[str],
                    map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only`` safe loading).

    Raises ``InputError`` naming the file when it is missing, unreadable or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path=path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated / corrupt / foreign pickle
        raise InputError(f"unreadable checkpoint ({type(exc).__name__}: {exc})",
                         path=path) from exc
    if not isinstance(state, dict) or "format_version" not in state:
        raise InputError("not an oncoscale checkpoint (expected a dict with "
                         "'format_version')", path=path)
    if state["format_version"] > FORMAT_VERSION:
        raise InputError(f"checkpoint format {state['format_version']} is newer than this "
                         f"oncoscale understands ({FORMAT_VERSION})", path=path)
    return state


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Snapshot the torch (CPU and every CUDA device), numpy-global and python RNG states,
    plus ``generator``'s state when given. Safe for ``weights_only`` loading."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(np_state[0]), "key": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only where present)."""
    torch.set_rng_state(state["torch"].cpu())
    np_s = state["numpy"]
    np.random.set_state((np_s["kind"], np_s["key"].numpy().astype(np.uint32), np_s["pos"],
                         np_s["has_gauss"], np_s["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


def _python_state_to_plain(st: tuple[Any, ...]) -> tuple[Any, ...]:
    version, internal, gauss = st
    return (int(version), list(internal), gauss)
