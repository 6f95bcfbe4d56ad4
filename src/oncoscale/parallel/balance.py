"""Balance pipeline stages: a linear partition of profiled unit costs.

The units of a :class:`~oncoscale.parallel.partition.SplitGraph` are split into ``P``
contiguous, non-empty stages, cutting only where a cut is allowed, so that the largest
stage cost is as small as possible (exact dynamic programme, vectorised with numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oncoscale.errors import ConfigurationError
from oncoscale.parallel.partition import SplitGraph

BALANCE_MODES = ("auto", "time", "memory", "params", "layers")


def linear_partition(costs: Sequence[float], parts: int,
                     allowed: Sequence[int] | None = None) -> list[int]:
    """Start index of each of ``parts`` contiguous non-empty groups minimising the max sum.

    Args:
        costs: non-negative cost of each item, length ``n``.
        parts: number of groups ``P`` (``1 <= P``).
        allowed: positions ``c`` (``1 <= c < n``) where a group may start; all if None.

    Returns:
        ``[0, c_1, ..., c_{P-1}]`` with ``c_k`` strictly increasing and allowed.
    """
    n = len(costs)
    cuts = sorted(set(range(1, n) if allowed is None else allowed))
    if any(c <= 0 or c >= n for c in cuts):
        raise ValueError("allowed cut positions must lie in 1..n-1")
    if parts < 1:
        raise ConfigurationError(f"need at least one partition, found {parts}")
    if len(cuts) < parts - 1:
        raise ConfigurationError(
            f"cannot split {n} layers into {parts} partitions: only {len(cuts)} cut points "
            f"are possible, so at most {len(cuts) + 1} partitions")
    if parts == 1:
        return [0]
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    points = np.asarray(cuts + [n])
    ps = prefix[points]
    m = len(cuts)
    dp = ps.copy()  # one group covering 0..points[j]
    choice = np.zeros((parts, len(points)), dtype=np.int64)
    for p in range(2, parts + 1):
        new = np.full(len(points), np.inf)
        # group p ends at points[j]; the previous group ends at cuts[i], i < j, i >= p-2
        for j in range(p - 1, len(points)):
            hi = min(j, m)
            lo = p - 2
            if hi <= lo:
                continue
            vals = np.maximum(dp[lo:hi], ps[j] - ps[lo:hi])
            k = int(np.argmin(vals))
            new[j] = vals[k]
            choice[p - 1, j] = lo + k
        dp = new
    starts = []
    j = len(points) - 1
    for p in range(parts, 1, -1):
        i = int(choice[p - 1, j])
        starts.append(int(points[i]))
        j = i
    return [0, *reversed(starts)]


def unit_costs(sg: SplitGraph, mode: str = "auto", *, inflight: int = 1) -> np.ndarray:
    """Cost of each unit under ``mode`` (see :data:`BALANCE_MODES`).

    ``time`` = forward + backward seconds; ``memory`` = bytes of weights, gradients and two
    optimizer slots plus activations of ``inflight`` micro-batches; ``auto`` = share of total
    time + share of total memory; ``params`` = parameter bytes; ``layers`` = one per unit.
    """
    if mode not in BALANCE_MODES:
        raise ConfigurationError(f"balance mode must be one of {BALANCE_MODES}, found {mode!r}")
    n = sg.num_units
    if mode == "layers" or not sg.profiles:
        return np.ones(n)
    t = np.array([p.fwd_s + p.bwd_s for p in sg.profiles])
    mem = np.array([4.0 * p.param_bytes + inflight * p.activation_bytes for p in sg.profiles])
    if mode == "time":
        return t
    if mode == "memory":
        return mem
    if mode == "params":
        return np.array([float(p.param_bytes) for p in sg.profiles])
    return t / max(t.sum(), 1e-12) + mem / max(mem.sum(), 1e-12)


def resolve_boundaries(sg: SplitGraph, parts: int, balance: object = None, *,
                       inflight: int = 1) -> list[int]:
    """Stage start indices from ``balance``.

    ``balance`` is None/"auto" or a mode name (profiled linear partition), a sequence of
    ``P`` ints (units per stage), or a sequence of ``P-1`` unit/module names that start
    stages 1..P-1 (explicit boundaries).
    """
    n = sg.num_units
    if n < parts:
        raise ConfigurationError(
            f"the model has {n} layers but {parts} partitions were requested; "
            "use fewer partitions or split the model into more layers")
    if balance is None or isinstance(balance, str):
        mode = balance or "auto"
        return linear_partition(unit_costs(sg, mode, inflight=inflight), parts,
                                sg.valid_cuts())
    items = list(balance)  # type: ignore[call-overload]
    if all(isinstance(b, int) for b in items):
        if len(items) != parts or sum(items) != n or min(items) < 1:
            raise ConfigurationError(
                f"balance={items} must give {parts} positive unit counts summing to {n}")
        starts = [0, *np.cumsum(items)[:-1].tolist()]
    elif all(isinstance(b, str) for b in items):
        if len(items) != parts - 1:
            raise ConfigurationError(
                f"explicit boundaries must name {parts - 1} modules (the first of stages "
                f"1..{parts - 1}), found {len(items)}: {items}")
        starts = [0, *(sg.index_of(b) for b in items)]
        if starts != sorted(set(starts)):
            raise ConfigurationError(f"explicit boundaries {items} are not in model order")
    else:
        raise ConfigurationError(
            f"balance must be None, a mode {BALANCE_MODES}, ints or names; found {balance!r}")
    for c in starts[1:]:
        if not sg.valid[c]:
            bad = [v.name for v in sg.live[c]]
            raise ConfigurationError(
                f"cannot cut before unit {sg.names[c]!r}: the values crossing it ({bad}) are "
                "not all tensors with the batch as first dimension")
    return [int(s) for s in starts]


@dataclass
class StagePlan:
    """One stage of the plan: units ``start..end-1`` and their estimated cost."""

    index: int
    start: int
    end: int
    first: str
    last: str
    params: int
    time_s: float
    param_bytes: int
    activation_bytes: int
    crossing: int


@dataclass
class Plan:
    """The per-stage plan printed before training."""

    stages: list[StagePlan]
    num_units: int

    @property
    def boundaries(self) -> list[int]:
        return [s.start for s in self.stages]

    def table(self) -> str:
        """A plain-text table: stage, units, first..last unit, parameters, time, memory."""
        head = (f"{'stage':>5} {'units':>6}  {'layers':<44} {'params':>10} {'est ms':>8} "
                f"{'param MB':>9} {'act MB':>8} {'sends':>5}")
        rows = [head, "-" * len(head)]
        for s in self.stages:
            span = f"{s.first} .. {s.last}"
            if len(span) > 44:
                span = span[:20] + "..." + span[-21:]
            rows.append(f"{s.index:>5} {s.end - s.start:>6}  {span:<44} {s.params:>10,} "
                        f"{1e3 * s.time_s:>8.2f} {s.param_bytes / 2**20:>9.2f} "
                        f"{s.activation_bytes / 2**20:>8.2f} {s.crossing:>5}")
        return "\n".join(rows)


def make_plan(sg: SplitGraph, starts: list[int]) -> Plan:
    """Summarise stages that start at ``starts`` (uses the unit profiles when present)."""
    ends = [*starts[1:], sg.num_units]
    params = {id(p): p for p in sg.model.parameters()}
    stages = []
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        ids = sg.stage_params(a, b)
        prof = sg.profiles[a:b]
        stages.append(StagePlan(
            index=k, start=a, end=b, first=sg.names[a], last=sg.names[b - 1],
            params=sum(params[i].numel() for i in ids),
            time_s=sum(p.fwd_s + p.bwd_s for p in prof),
            param_bytes=sum(params[i].numel() * params[i].element_size() for i in ids),
            activation_bytes=sum(p.activation_bytes for p in prof),
            crossing=len(sg.live[b]) if b < sg.num_units else 0))
    return Plan(stages=stages, num_units=sg.num_units)
