"""Pipeline schedules: the order of forward (F) and backward (B) micro-batch steps per stage.

Every stage runs its own list of ``(op, micro_batch)`` pairs. Backward steps run in
micro-batch order on every stage, so the messages between neighbours always match.
"""

from __future__ import annotations

from typing import Literal

from oncoscale.errors import ConfigurationError

Op = tuple[Literal["F", "B"], int]
SCHEDULES = ("gpipe", "1f1b")


def gpipe(stage: int, num_stages: int, micro_batches: int) -> list[Op]:
    """GPipe: all forwards, then all backwards (``M`` activations in flight)."""
    _check(stage, num_stages, micro_batches)
    return [("F", m) for m in range(micro_batches)] + [("B", m) for m in range(micro_batches)]


def one_f_one_b(stage: int, num_stages: int, micro_batches: int) -> list[Op]:
    """1F1B (PipeDream-flush): ``K-k-1`` warm-up forwards, then alternate F and B.

    At most ``K - k`` micro-batches are in flight on stage ``k``; the bubble equals GPipe's.
    """
    _check(stage, num_stages, micro_batches)
    warmup = min(num_stages - stage - 1, micro_batches)
    ops: list[Op] = [("F", m) for m in range(warmup)]
    f, b = warmup, 0
    while f < micro_batches:
        ops.append(("F", f))
        f += 1
        ops.append(("B", b))
        b += 1
    ops += [("B", m) for m in range(b, micro_batches)]
    return ops


def make_schedule(name: str, stage: int, num_stages: int, micro_batches: int) -> list[Op]:
    """The op list of ``stage`` under schedule ``name`` ("gpipe" or "1f1b")."""
    if name == "gpipe":
        return gpipe(stage, num_stages, micro_batches)
    if name == "1f1b":
        return one_f_one_b(stage, num_stages, micro_batches)
    raise ConfigurationError(f"schedule must be one of {SCHEDULES}, found {name!r}")


def bubble_fraction(num_stages: int, micro_batches: int) -> float:
    """Ideal idle fraction of a synchronous pipeline, ``(K-1)/(M+K-1)``."""
    return (num_stages - 1) / (micro_batches + num_stages - 1)


def _check(stage: int, num_stages: int, micro_batches: int) -> None:
    if num_stages < 1 or not 0 <= stage < num_stages or micro_batches < 1:
        raise ConfigurationError(
            f"bad schedule request: stage {stage} of {num_stages}, {micro_batches} micro-batches")
