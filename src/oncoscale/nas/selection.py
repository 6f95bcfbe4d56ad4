"""NSGA-II selection (Deb et al. 2002): fast non-dominated sorting, crowding distance,
crowded binary tournament, and the 2-D hypervolume used to compare fronts.

Objectives are an ``(N, M)`` array to be *minimised* (pass ``-accuracy`` for accuracy).
"""

from __future__ import annotations

import numpy as np


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in at least one."""
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_sort(F: np.ndarray) -> list[np.ndarray]:
    """Split rows of ``F`` (N, M) into fronts; ``fronts[0]`` holds the non-dominated indices."""
    F = np.asarray(F, dtype=float)
    n = F.shape[0]
    if n == 0:
        return []
    le = np.all(F[:, None, :] <= F[None, :, :], axis=2)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=2)
    dom = le & lt  # dom[i, j]: i dominates j
    n_dominators = dom.sum(axis=0)
    fronts: list[np.ndarray] = []
    current = np.flatnonzero(n_dominators == 0)
    assigned = np.zeros(n, dtype=bool)
    while current.size:
        fronts.append(current)
        assigned[current] = True
        n_dominators = n_dominators - dom[current].sum(axis=0)
        current = np.flatnonzero((n_dominators == 0) & ~assigned)
    return fronts


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """Crowding distance of each row of one front ``F`` (K, M); extremes get ``inf``."""
    F = np.asarray(F, dtype=float)
    k, m = F.shape
    d = np.zeros(k)
    if k <= 2:
        return np.full(k, np.inf)
    for j in range(m):
        order = np.argsort(F[:, j], kind="stable")
        lo, hi = F[order[0], j], F[order[-1], j]
        d[order[0]] = d[order[-1]] = np.inf
        if hi > lo:
            d[order[1:-1]] += (F[order[2:], j] - F[order[:-2], j]) / (hi - lo)
    return d


def rank_and_crowding(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row front rank (0 = best) and crowding distance within its front."""
    F = np.asarray(F, dtype=float)
    rank = np.zeros(F.shape[0], dtype=int)
    crowd = np.zeros(F.shape[0])
    for r, idx in enumerate(non_dominated_sort(F)):
        rank[idx] = r
        crowd[idx] = crowding_distance(F[idx])
    return rank, crowd


def nsga2_select(F: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` survivors: whole fronts in order, the last one cut by crowding."""
    F = np.asarray(F, dtype=float)
    chosen: list[int] = []
    for idx in non_dominated_sort(F):
        if len(chosen) + idx.size <= k:
            chosen.extend(idx.tolist())
        else:
            d = crowding_distance(F[idx])
            order = np.argsort(-d, kind="stable")
            chosen.extend(idx[order[: k - len(chosen)]].tolist())
        if len(chosen) >= k:
            break
    return np.asarray(chosen, dtype=int)


def tournament(rank: np.ndarray, crowd: np.ndarray, rng: np.random.Generator) -> int:
    """Crowded binary tournament: lower rank wins, ties go to the larger crowding distance."""
    n = rank.shape[0]
    i, j = (int(v) for v in rng.integers(n, size=2))
    if rank[i] != rank[j]:
        return i if rank[i] < rank[j] else j
    if crowd[i] != crowd[j]:
        return i if crowd[i] > crowd[j] else j
    return i if rng.random() < 0.5 else j


def pareto_mask(F: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``F`` (N, M)."""
    F = np.asarray(F, dtype=float)
    mask = np.zeros(F.shape[0], dtype=bool)
    fronts = non_dominated_sort(F)
    if fronts:
        mask[fronts[0]] = True
    return mask


def hypervolume_2d(F: np.ndarray, ref: tuple[float, float]) -> float:
    """Area dominated by the points ``F`` (N, 2) (minimisation) and bounded by ``ref``."""
    F = np.asarray(F, dtype=float).reshape(-1, 2)
    F = F[np.all(np.asarray(ref) > F, axis=1)]
    if F.shape[0] == 0:
        return 0.0
    F = F[pareto_mask(F)]
    F = F[np.argsort(F[:, 0])]
    hv, prev_y = 0.0, ref[1]
    for x, y in F:
        if y < prev_y:
            hv += (ref[0] - x) * (prev_y - y)
            prev_y = y
    return float(hv)
