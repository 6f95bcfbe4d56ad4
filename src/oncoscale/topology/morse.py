"""Extremum-graph topology on a neighbourhood graph: steepest flow, saddles, persistence.

Given samples X (n, d), a function f (n,) and an undirected graph on the samples
(`oncoscale.topology.graph`):

* **Order.** Samples are ordered by (f, sample index) ("simulation of simplicity"), so ties in f
  and duplicate points are handled consistently: of two samples with equal f the one with the
  larger index counts as higher.
* **Steepest ascent / descent.** Each sample points to the higher (lower) neighbour of largest
  slope |f(q) - f(p)| / |q - p|; a zero-length edge (duplicate points) has infinite slope.
  Samples without a higher (lower) neighbour are maxima (minima). Following the pointers with
  path compression (pointer jumping, log-depth rounds of ``up = up[up]``) assigns every sample
  to its extremum: ``ascending_[i]`` is the maximum sample i flows up to, ``descending_[i]`` the
  minimum it flows down to.
* **Saddles.** For every graph edge whose endpoints flow to different maxima A != B, the lower
  endpoint is a saddle candidate for {A, B}; the highest one is the pair's saddle.
* **Persistence.** Sweeping the pair saddles from high to low with a union-find over maxima,
  a saddle joining two components cancels the lower (younger) of their highest maxima, which
  dies with persistence ``f(max) - f(saddle)`` (elder rule; the same pairs as cancelling the
  lowest-persistence maximum first). Its region merges into the region across that saddle:
  ``into`` is the leaf maximum on the other side of the saddle edge, as in topopy's Morse
  complex cancellation. Persistence is normalised by the range of f, so it lies in [0, 1];
  the highest maximum of each connected component has persistence ``inf``. Minima are
  treated the same way with -f. At level p every extremum with persistence < p is cancelled
  and its samples follow ``into`` links to the first surviving extremum; levels nest (the
  segmentation at a higher level is a coarsening of the one at a lower level).
* **topopy's semantics** (``MorseSmale(hierarchy="topopy")``, for comparing like with like
  against topopy 1.0.4, whose C++ ``MorseComplex::ComputeMaximaPersistence`` was read for
  this): the same pairs, except where one saddle vertex is the highest saddle of a low region
  towards two or more higher regions. topopy queues pairs in a map keyed by (persistence,
  saddle vertex), so such pairs share a key and only one survives (the one whose higher
  maximum has the largest sample index); the region merges into that maximum and the other
  neighbours meet the merged region only through lower saddles, so they live longer than
  the elder rule says. topopy cancels the lowest-persistence pair first, re-resolving both
  ends to their current roots (a pair whose lower end was absorbed is re-queued with the
  raised persistence, and can again collide with a queued key); the dying root's ``into``
  is the surviving root, not a leaf. It computes in float32, which decides which keys
  collide, so this mode rounds f to float32 too. Saddle candidate of an edge: the lower
  endpoint (both on equal f), ties to the larger index. On the benchmark's inputs and the
  same graph this reproduces topopy's merge sequence and partitions exactly.
* **Morse-Smale segmentation** at level p: samples with the same (surviving maximum,
  surviving minimum) pair form one segment.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.topology._validate import check_function, check_points
from oncoscale.topology.graph import Graph, neighborhood_graph

__all__ = ["MorseSmale", "steepest_flow", "persistence_hierarchy", "resolve"]


def _sos_rank(f: np.ndarray) -> np.ndarray:
    """Rank of every sample in the (f, index) order, shape (n,) int64."""
    order = np.lexsort((np.arange(f.shape[0]), f))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return rank


def _jump(up: np.ndarray) -> np.ndarray:
    """Follow pointers to their fixed points (path compression by pointer jumping)."""
    up = up.copy()
    while True:
        nxt = up[up]
        if np.array_equal(nxt, up):
            return up
        up = nxt


def steepest_flow(
    edges: np.ndarray, lengths: np.ndarray, f: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Steepest ascent in the order ``rank`` along undirected ``edges`` (m, 2).

    Returns ``(step, extremum)``, both (n,) int64: the neighbour each sample steps to (itself
    at a maximum) and the maximum it finally reaches. Call with (-f, n-1-rank) for descent.
    """
    n = f.shape[0]
    s = np.concatenate([edges[:, 0], edges[:, 1]])
    t = np.concatenate([edges[:, 1], edges[:, 0]])
    ln = np.concatenate([lengths, lengths])
    up = rank[t] > rank[s]
    s, t, ln = s[up], t[up], ln[up]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(ln > 0, (f[t] - f[s]) / np.where(ln > 0, ln, 1.0), np.inf)
    order = np.lexsort((rank[t], slope, s))
    s, t = s[order], t[order]
    last = np.ones(s.shape[0], dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    step = np.arange(n, dtype=np.int64)
    step[s[last]] = t[last]
    return step, _jump(step)


def persistence_hierarchy(
    edges: np.ndarray, f: np.ndarray, rank: np.ndarray, extremum: np.ndarray, f_range: float,
    *, rule: str = "elder", key: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Saddles and elder-rule persistence of the maxima that ``extremum`` assigns.

    Returns ``(extrema, saddles)``: ``extrema`` has one row per maximum (columns ``extremum``,
    ``value``, ``persistence`` normalised by ``f_range``, ``into``, ``saddle``,
    ``saddle_value``; ``into``/``saddle`` are -1 and persistence is inf for the survivor of a
    component) and ``saddles`` one row per pair of neighbouring regions (``a``, ``b``,
    ``saddle``, ``value``).
    """
    a, b = extremum[edges[:, 0]], extremum[edges[:, 1]]
    cross = a != b
    p, q, a, b = edges[cross, 0], edges[cross, 1], a[cross], b[cross]
    low = np.where(rank[p] < rank[q], p, q)
    lo_ext, hi_ext = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((rank[low], hi_ext, lo_ext))
    lo_ext, hi_ext, low = lo_ext[order], hi_ext[order], low[order]
    last = np.ones(low.shape[0], dtype=bool)
    last[:-1] = (lo_ext[1:] != lo_ext[:-1]) | (hi_ext[1:] != hi_ext[:-1])
    pa, pb, ps = lo_ext[last], hi_ext[last], low[last]
    saddles = pd.DataFrame({"a": pa, "b": pb, "saddle": ps, "value": f[ps]})
    if rule == "topopy":
        if key is None:
            key = np.arange(f.shape[0], dtype=np.int64)
        maxima, pers, into, sad = _topopy_hierarchy(edges, f, extremum, key)
        alive = into < 0
        sval = np.where(alive, np.nan, f[np.where(alive, 0, sad)])
        extrema = pd.DataFrame({"extremum": maxima, "value": f[maxima],
                                "persistence": pers / f_range, "into": into, "saddle": sad,
                                "saddle_value": sval})
        return extrema, saddles
    if rule != "elder":
        raise ConfigurationError(f"hierarchy must be 'elder' or 'topopy', found {rule!r}")

    maxima = np.unique(extremum)
    m = maxima.shape[0]
    pos = np.full(f.shape[0], -1, dtype=np.int64)
    pos[maxima] = np.arange(m)
    parent = np.arange(m)
    top = maxima.copy()  # highest maximum of each union-find root (sample index)
    into = np.full(m, -1, dtype=np.int64)
    sad = np.full(m, -1, dtype=np.int64)

    # highest saddle first; several pairs at one saddle vertex (a degenerate saddle joining
    # three or more regions): the pair with the lowest maxima first, so a dying maximum
    # merges into its lowest higher neighbour
    order = np.lexsort((np.maximum(rank[pa], rank[pb]), -rank[ps]))
    la, lb, ls = pos[pa[order]].tolist(), pos[pb[order]].tolist(), ps[order].tolist()
    rk = rank.tolist() if m > 0 else []
    par = parent.tolist()
    tops = top.tolist()
    ea, eb = pa[order].tolist(), pb[order].tolist()
    for ia, ib, sv, la_ext, lb_ext in zip(la, lb, ls, ea, eb, strict=True):
        ra, rb = find(par, ia), find(par, ib)
        if ra == rb:
            continue
        ta, tb = tops[ra], tops[rb]
        # the younger top dies; its region joins the region across the saddle (topopy/MSC
        # cancellation: into = the leaf maximum on the other side of the saddle edge)
        if rk[ta] < rk[tb]:
            young, across, par[ra] = ta, lb_ext, rb
        else:
            young, across, par[rb] = tb, la_ext, ra
        into[pos[young]] = across
        sad[pos[young]] = sv
    alive = into < 0
    sval = np.where(alive, np.nan, f[np.where(alive, 0, sad)])
    pers = np.where(alive, np.inf, (f[maxima] - sval) / f_range)
    extrema = pd.DataFrame({"extremum": maxima, "value": f[maxima], "persistence": pers,
                            "into": into, "saddle": sad, "saddle_value": sval})
    return extrema, saddles


def _topopy_hierarchy(
    edges: np.ndarray, f: np.ndarray, extremum: np.ndarray, key: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cancellation as in topopy 1.0.4 (``MorseComplex::ComputeMaximaPersistence``,
    simplification 'difference'); ``key`` (n,) is the index order topopy sees (the sample
    index for maxima, the reversed index for minima, as topopy negates *and reverses* the
    data for the unstable complex).

    1. Every pair of neighbouring regions (A, B), A the lower maximum by (f, key), gets its
       highest saddle: over edges (i, j) from A to B the lower endpoint (on equal f both
       endpoints are candidates), pair persistence ``f(A) - f(saddle)``, ties to the larger
       key.
    2. Pairs are queued by (persistence, saddle) in a *map*: two pairs with the same
       persistence and saddle vertex (one saddle vertex that is the highest saddle of a low
       region towards two or more higher regions) keep only the pair whose (A, B) keys are
       largest - the other pairs are dropped, so that region only meets the others through
       lower saddles.
    3. Pop the lowest; re-resolve both ends to their current roots; if the lower root is no
       longer A, re-queue with the raised persistence; otherwise A's root dies into the other
       root (``into`` = that root, not a leaf).

    Persistences are rounded to float32 as topopy computes them (call with f rounded to
    float32, as topopy stores it), because its map keys collide only on exactly equal values.
    Returns ``(maxima, persistence, into, saddle)``: persistence in units of f (inf for
    survivors), into/saddle -1 for survivors.
    """
    import heapq

    maxima = np.unique(extremum)
    m = maxima.shape[0]
    pos = np.full(f.shape[0], -1, dtype=np.int64)
    pos[maxima] = np.arange(m)
    a, b = extremum[edges[:, 0]], extremum[edges[:, 1]]
    cross = a != b
    p, q, a, b = edges[cross, 0], edges[cross, 1], a[cross], b[cross]
    # saddle candidates: the lower endpoint; on a tie in f both endpoints
    tie = f[p] == f[q]
    s = np.concatenate([np.where(f[p] < f[q], p, q), p[tie]])
    a, b = np.concatenate([a, a[tie]]), np.concatenate([b, b[tie]])
    a_low = (f[a] < f[b]) | ((f[a] == f[b]) & (key[a] < key[b]))
    first, second = np.where(a_low, a, b), np.where(a_low, b, a)
    pers = (f[first] - f[s]).astype(np.float32).astype(np.float64)  # topopy: float32
    # 1. best saddle per pair: lowest persistence, then largest saddle key
    o = np.lexsort((key[s], -pers, key[second], key[first]))
    first, second, s, pers = first[o], second[o], s[o], pers[o]
    last = np.ones(s.shape[0], dtype=bool)
    last[:-1] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    first, second, s, pers = first[last], second[last], s[last], pers[last]
    # 2. the map (persistence, saddle) -> pair, pairs inserted in (first, second) key order:
    # the last inserted wins a shared key
    o = np.lexsort((key[second], key[first], key[s], pers))
    first, second, s, pers = first[o], second[o], s[o], pers[o]
    last = np.ones(s.shape[0], dtype=bool)
    last[:-1] = (pers[1:] != pers[:-1]) | (s[1:] != s[:-1])
    first, second, s, pers = first[last], second[last], s[last], pers[last]
    # 3. lazy priority queue
    fl = f.tolist()
    kl = key.tolist()
    live = {(pv, kl[sv], sv): (fa, sb) for pv, sv, fa, sb in
            zip(pers.tolist(), s.tolist(), first.tolist(), second.tolist(), strict=True)}
    heap = list(live)
    heapq.heapify(heap)
    merge = {int(x): int(x) for x in maxima.tolist()}
    out_p = np.full(m, np.inf)
    into = np.full(m, -1, dtype=np.int64)
    sad = np.full(m, -1, dtype=np.int64)

    while heap:
        k = heapq.heappop(heap)
        pair = live.pop(k, None)
        if pair is None:
            continue
        pv, _, sv = k
        old_first = pair[0]
        u, v = find(merge, pair[0]), find(merge, pair[1])
        if fl[u] > fl[v]:
            u, v = v, u
        if u == v:
            continue
        diff = float(np.float32(fl[u] - fl[old_first]))
        if diff > 0 or (diff == 0 and kl[u] > kl[old_first]):
            nk = (float(np.float32(pv + diff)), kl[sv], sv)
            if nk not in live:
                heapq.heappush(heap, nk)
            live[nk] = (u, v)
            continue
        merge[u] = v
        out_p[pos[u]] = pv
        into[pos[u]] = v
        sad[pos[u]] = sv
    return maxima, out_p, into, sad


def find(parent: list[int] | dict[int, int], x: int) -> int:
    """Union-find root of ``x`` with path compression (``parent``: a list or a dict)."""
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def resolve(extrema: pd.DataFrame, persistence: float) -> tuple[np.ndarray, np.ndarray]:
    """Map extrema to the surviving extremum they merge into at level ``persistence``.

    Returns ``(ids, reps)``: the sorted extremum sample indices and, for each, the sample
    index of its representative (itself when it survives).
    """
    ids = extrema["extremum"].to_numpy().astype(np.int64)
    order = np.argsort(ids)
    ids = ids[order]
    into = extrema["into"].to_numpy().astype(np.int64)[order]
    cancel = extrema["persistence"].to_numpy()[order] < persistence
    tgt = np.searchsorted(ids, into)
    tgt = np.clip(tgt, 0, max(len(ids) - 1, 0))
    valid = cancel & (into >= 0) & (ids[tgt] == into) if len(ids) else cancel
    up = np.where(valid, tgt, np.arange(len(ids)))
    return ids, ids[_jump(up)]


def _lookup(ids: np.ndarray, reps: np.ndarray, x: np.ndarray) -> np.ndarray:
    return reps[np.searchsorted(ids, x)]


def _check_level(persistence: float) -> float:
    try:
        p = float(persistence)
    except (TypeError, ValueError):
        raise InputError(f"persistence must be a number in [0, 1], found {persistence!r}") from None
    if not (0.0 <= p <= 1.0) and not np.isinf(p):
        raise InputError(f"persistence must be a number in [0, 1], found {persistence!r}")
    return p


class MorseSmale:
    """Approximate Morse-Smale complex of f over samples X (scikit-learn style).

    Parameters: ``k`` candidate neighbours, ``beta`` of the β-skeleton (1 = Gabriel),
    ``relaxed`` pruning (see `oncoscale.topology.graph`), ``knn_method`` ('auto', 'exact',
    'hnsw'), ``n_jobs`` processes for the pruning, ``chunk_size`` queries per chunk,
    ``graph_out`` an optional Parquet path for the edge list, ``progress`` bars.
    ``hierarchy``: ``"elder"`` (default; the elder rule, see the module docstring) or
    ``"topopy"`` (topopy 1.0.4's cancellation, computed in float32 as topopy does).
    ``ngl=True`` (with ``relaxed=False``) builds nglpy's strict graph. With
    ``relaxed=False, ngl=True, hierarchy="topopy"`` the result is the segmentation of
    ``nglpy.EmptyRegionGraph(max_neighbors=k+1, relaxed=False, beta=beta)`` +
    ``topopy.MorseSmaleComplex(gradient="steepest", normalization=None)``.

    Learned attributes: ``graph_`` (`Graph`), ``ascending_`` / ``descending_`` (n,) the sample
    index of the maximum / minimum each sample flows to, ``maxima_`` / ``minima_`` (DataFrames,
    one row per extremum with normalised ``persistence``), ``saddles_`` (DataFrame of saddles
    between neighbouring regions, column ``kind`` 'max'/'min'), ``merges_`` (the cancellation
    sequence, lowest persistence first), ``f_range_``, ``n_samples_``, ``n_features_in_``.

    Example::

        ms = MorseSmale(k=15).fit(X, f)
        ms.maxima(persistence=0.05)        # sample indices of the surviving maxima
        ms.segmentation(persistence=0.05)  # Morse-Smale segment label per sample
    """

    def __init__(self, k: int = 15, beta: float = 1.0, relaxed: bool = True, *,
                 knn_method: str = "auto", n_jobs: int = 1, chunk_size: int | None = None,
                 graph_out: str | os.PathLike[str] | None = None, progress: bool = False,
                 hierarchy: str = "elder", ngl: bool = False) -> None:
        self.k = k
        self.beta = beta
        self.relaxed = relaxed
        self.knn_method = knn_method
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size
        self.graph_out = graph_out
        self.progress = progress
        self.hierarchy = hierarchy
        self.ngl = ngl

    def fit(self, X: np.ndarray, f: np.ndarray, graph: Graph | None = None) -> MorseSmale:
        """Fit on X (n, d) and f (n,); ``graph`` reuses a prebuilt neighbourhood graph."""
        if self.hierarchy not in ("elder", "topopy"):
            raise ConfigurationError("hierarchy must be 'elder' or 'topopy', found "
                                     f"{self.hierarchy!r}")
        X = check_points(X)
        f = check_function(f, X.shape[0])
        if graph is None:
            graph = neighborhood_graph(X, self.k, beta=self.beta, relaxed=self.relaxed,
                                       out=self.graph_out, chunk_size=self.chunk_size,
                                       n_jobs=self.n_jobs, knn_method=self.knn_method,
                                       progress=self.progress, ngl=self.ngl)
        elif graph.n != X.shape[0]:
            raise ConfigurationError(f"graph has {graph.n} samples but X has {X.shape[0]}")
        n = X.shape[0]
        rng = float(f.max() - f.min())
        self.f_range_ = rng if rng > 0 else 1.0
        fw = f
        if self.hierarchy == "topopy":  # topopy computes in float32
            fw = f.astype(np.float32).astype(np.float64)
        rank = _sos_rank(fw)
        _, self.ascending_ = steepest_flow(graph.edges, graph.lengths, fw, rank)
        _, self.descending_ = steepest_flow(graph.edges, graph.lengths, -fw, n - 1 - rank)
        idx = np.arange(n, dtype=np.int64)
        self.maxima_, smax = persistence_hierarchy(graph.edges, fw, rank, self.ascending_,
                                                   self.f_range_, rule=self.hierarchy, key=idx)
        mins, smin = persistence_hierarchy(graph.edges, -fw, n - 1 - rank, self.descending_,
                                           self.f_range_, rule=self.hierarchy, key=n - 1 - idx)
        mins["value"] = -mins["value"]
        mins["saddle_value"] = -mins["saddle_value"]
        self.minima_ = mins
        smin["value"] = -smin["value"]
        self.saddles_ = pd.concat([smax.assign(kind="max"), smin.assign(kind="min")],
                                  ignore_index=True)
        merged = pd.concat([self.maxima_.assign(kind="max"), self.minima_.assign(kind="min")],
                           ignore_index=True)
        merged = merged[merged["into"] >= 0].sort_values("persistence", kind="stable")
        self.merges_ = merged.rename(columns={"extremum": "dying"})[
            ["kind", "dying", "into", "saddle", "saddle_value", "persistence", "value"]
        ].reset_index(drop=True)
        self.graph_ = graph
        self.n_samples_ = n
        self.n_features_in_ = X.shape[1]
        self.f_ = f
        return self

    # --- queries ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "graph_"):
            raise ConfigurationError("this MorseSmale is not fitted yet; call fit(X, f) first")

    def _table(self, kind: str) -> pd.DataFrame:
        if kind not in ("max", "min"):
            raise InputError(f"kind must be 'max' or 'min', found {kind!r}")
        return self.maxima_ if kind == "max" else self.minima_

    def extrema(self, persistence: float = 0.0, kind: str = "max") -> np.ndarray:
        """Sample indices of the extrema of ``kind`` surviving at normalised ``persistence``
        (those whose persistence is >= the level), highest (lowest) f first."""
        self._check_fitted()
        p = _check_level(persistence)
        t = self._table(kind)
        t = t[t["persistence"] >= p]
        t = t.sort_values("value", ascending=(kind == "min"), kind="stable")
        return t["extremum"].to_numpy()

    def maxima(self, persistence: float = 0.0) -> np.ndarray:
        """Sample indices of the maxima that survive at normalised ``persistence``."""
        return self.extrema(persistence, "max")

    def minima(self, persistence: float = 0.0) -> np.ndarray:
        """Sample indices of the minima that survive at normalised ``persistence``."""
        return self.extrema(persistence, "min")

    def regions(self, persistence: float = 0.0, kind: str = "max") -> np.ndarray:
        """(n,) sample index of the surviving maximum (minimum) each sample flows to."""
        self._check_fitted()
        p = _check_level(persistence)
        table = self._table(kind)
        ids, reps = resolve(table, p)
        leaf = self.ascending_ if kind == "max" else self.descending_
        return _lookup(ids, reps, leaf)

    def segmentation(self, persistence: float = 0.0) -> np.ndarray:
        """(n,) Morse-Smale segment label (0..S-1) per sample at normalised ``persistence``;
        labels are ordered by (maximum, minimum) sample index."""
        up = self.regions(persistence, "max")
        down = self.regions(persistence, "min")
        key = up * self.n_samples_ + down
        _, labels = np.unique(key, return_inverse=True)
        return labels.reshape(-1)

    def segments(self, persistence: float = 0.0) -> pd.DataFrame:
        """One row per Morse-Smale segment at ``persistence``: label, maximum, minimum, size."""
        up = self.regions(persistence, "max")
        down = self.regions(persistence, "min")
        df = pd.DataFrame({"maximum": up, "minimum": down})
        out = df.groupby(["maximum", "minimum"], sort=True).size().rename("size").reset_index()
        out.insert(0, "label", np.arange(len(out)))
        return out

    def saddles(self, persistence: float = 0.0, kind: str = "max") -> pd.DataFrame:
        """Saddles linking the surviving regions at ``persistence``: the highest (for maxima;
        lowest for minima) saddle of every pair of neighbouring surviving regions."""
        self._check_fitted()
        p = _check_level(persistence)
        ids, reps = resolve(self._table(kind), p)
        s = self.saddles_[self.saddles_["kind"] == kind]
        a = _lookup(ids, reps, s["a"].to_numpy())
        b = _lookup(ids, reps, s["b"].to_numpy())
        df = pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b),
                           "saddle": s["saddle"].to_numpy(), "value": s["value"].to_numpy()})
        df = df[df["a"] != df["b"]]
        df = df.sort_values("value", ascending=(kind == "min"), kind="stable")
        return df.drop_duplicates(["a", "b"]).reset_index(drop=True)

    def merge_sequence(self) -> pd.DataFrame:
        """Cancellations in order (lowest persistence first): kind, dying, into, saddle, ..."""
        self._check_fitted()
        return self.merges_.copy()

    def persistence_diagram(self, kind: str = "max") -> pd.DataFrame:
        """Birth (f at the extremum) and death (f at its saddle; NaN for survivors) pairs."""
        self._check_fitted()
        t = self._table(kind)
        return pd.DataFrame({"extremum": t["extremum"], "birth": t["value"],
                             "death": t["saddle_value"], "persistence": t["persistence"]})
