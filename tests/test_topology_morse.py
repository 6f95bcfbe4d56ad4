"""Morse-Smale topology on functions whose topology is known, hierarchy invariants, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.topology import MorseSmale


def gaussians(seed: int, n: int, d: int, n_peaks: int, noise: float):
    """A sum of well-separated Gaussian bumps of different heights, plus noise."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n_peaks:  # rejection sampling: centres at least 4 sigma apart
        c = rng.uniform(-5, 5, size=d)
        if all(np.linalg.norm(c - o) > 4.0 for o in centres):
            centres.append(c)
    centres = np.array(centres)
    X = rng.uniform(-7, 7, size=(n, d))
    X = np.concatenate([X, centres + rng.normal(0, 0.05, size=centres.shape)])
    heights = 1.0 + 0.5 * np.arange(n_peaks)
    f = sum(h * np.exp(-((X - c) ** 2).sum(1) / (2 * 1.0**2)) for h, c in
            zip(heights, centres, strict=True))
    f = f + rng.normal(0, noise, size=f.shape[0])
    return X, f, centres


def superlevel_pairs(f: np.ndarray, edges: np.ndarray) -> list[float]:
    """0-dim persistence (death - birth > 0 omitted as equal) of the superlevel sets of f on
    a graph: add vertices from high to low; a vertex joining components kills the younger."""
    n = f.shape[0]
    order = np.lexsort((np.arange(n), f))[::-1]
    rank = np.empty(n, int)
    rank[order] = np.arange(n)[::-1]
    adj = [[] for _ in range(n)]
    for a, b in edges.tolist():
        adj[a].append(b)
        adj[b].append(a)
    parent = list(range(n))
    top = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    added = np.zeros(n, bool)
    out = []
    for v in order.tolist():
        added[v] = True
        for u in adj[v]:
            if not added[u]:
                continue
            ru, rv = find(u), find(v)
            if ru == rv:
                continue
            young, old = (ru, rv) if rank[top[ru]] < rank[top[rv]] else (rv, ru)
            if top[young] != v:  # a real (non-zero-length) pair: born at a maximum
                out.append(f[top[young]] - f[v])
            parent[young] = old
    return out


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 4), n_peaks=st.integers(1, 4))
def test_sum_of_gaussians_has_k_maxima_after_simplification(seed, d, n_peaks):
    X, f, centres = gaussians(seed, 2500 * (d - 1), d, n_peaks, noise=0.01)
    ms = MorseSmale(k=15).fit(X, f)
    assert len(ms.maxima(0.0)) > n_peaks  # the noise creates spurious maxima ...
    top = ms.maxima(persistence=0.2)  # ... which simplification removes
    assert len(top) == n_peaks
    # every surviving maximum sits near a distinct centre
    near = [int(np.argmin(np.linalg.norm(centres - X[m], axis=1))) for m in top]
    assert sorted(near) == list(range(n_peaks))
    assert all(np.linalg.norm(centres[j] - X[m]) < 1.0 for j, m in zip(near, top, strict=True))
    # topopy's cancellation semantics find the same k peaks
    tp = MorseSmale(k=15, hierarchy="topopy").fit(X, f, graph=ms.graph_)
    assert sorted(tp.maxima(persistence=0.2).tolist()) == sorted(top.tolist())
    seg = ms.segmentation(persistence=0.2)
    assert seg.shape == (X.shape[0],) and seg.min() == 0
    up = ms.regions(0.2, "max")
    assert set(np.unique(up)) == set(top.tolist())
    # the sample at each centre flows to the maximum at that centre
    for j, c in enumerate(centres):
        i = int(np.argmin(np.linalg.norm(X - c, axis=1)))
        assert near[list(top).index(up[i])] == j


def test_hierarchy_invariants_and_queries():
    X, f, _ = gaussians(7, 3000, 2, 3, noise=0.02)
    ms = MorseSmale(k=12).fit(X, f)
    n = X.shape[0]
    # ascending_ ends in local maxima: no neighbour is higher in the (f, index) order
    e = ms.graph_.edges
    higher = np.zeros(n, dtype=bool)
    hi_key = np.lexsort((np.arange(n), f))
    rank = np.empty(n, int)
    rank[hi_key] = np.arange(n)
    higher[e[:, 0][rank[e[:, 1]] > rank[e[:, 0]]]] = True
    higher[e[:, 1][rank[e[:, 0]] > rank[e[:, 1]]]] = True
    assert set(np.flatnonzero(~higher).tolist()) == set(ms.maxima_["extremum"].tolist())
    assert (f[ms.ascending_] >= f).all() and (f[ms.descending_] <= f).all()
    # every cancelled maximum is paired with a lower saddle; levels nest: the regions at a
    # higher level are unions of the regions at a lower level
    mx = ms.maxima_.set_index("extremum")
    dead = mx[mx["into"] >= 0]
    assert (dead["value"] >= dead["saddle_value"]).all()
    assert set(dead["into"]) <= set(mx.index)
    levels = [0.0, 0.005, 0.02, 0.1, 0.3, 1.0]
    for lo, hi in zip(levels[:-1], levels[1:], strict=True):
        fine, coarse = ms.segmentation(lo), ms.segmentation(hi)
        pairs = np.unique(fine * n + coarse)
        assert len(np.unique(pairs // n)) == len(pairs)  # each fine segment in one coarse one
    # elder rule: the persistence pairs are those of the superlevel-set filtration, computed
    # here independently by sweeping vertices from high to low with a union-find
    assert sorted(np.round(dead["persistence"].to_numpy() * ms.f_range_, 12)) == \
        sorted(np.round(superlevel_pairs(f, e), 12))
    counts = [len(ms.maxima(p)) for p in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0)]
    assert counts == sorted(counts, reverse=True) and counts[-1] >= 1
    assert np.isclose(ms.maxima_["persistence"][np.isfinite(ms.maxima_["persistence"])].max()
                      <= 1.0, True)
    # merges are ordered by persistence; the diagram has one row per maximum
    m = ms.merge_sequence()
    assert (np.diff(m["persistence"].to_numpy()) >= 0).all()
    assert len(ms.persistence_diagram("max")) == len(ms.maxima_)
    # segments: (max, min) pairs, sizes add up, labels consistent with segmentation
    segs = ms.segments(0.1)
    assert segs["size"].sum() == n
    lab = ms.segmentation(0.1)
    assert np.array_equal(np.bincount(lab), segs["size"].to_numpy())
    sad = ms.saddles(0.1)
    alive = set(ms.maxima(0.1).tolist())
    assert set(sad["a"]).union(sad["b"]) <= alive
    assert len(ms.minima(0.0)) >= len(ms.minima(0.5)) >= 1


def test_one_dimensional_function_with_known_extrema():
    x = np.linspace(0, 4 * np.pi, 2001)
    f = -np.cos(x) + 0.2 * np.cos(9 * x)  # 2 big bumps (at pi, 3 pi), small wiggles
    ms = MorseSmale(k=4).fit(x, f)
    assert len(ms.maxima(0.0)) > 2
    big = ms.maxima(0.4)
    assert len(big) == 2
    assert all(abs(-np.cos(x[i]) - 1) < 0.2 for i in big)
    assert sorted(np.round(x[big] / np.pi).tolist()) == [1.0, 3.0]


def test_duplicates_and_ties_are_handled():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    X = np.concatenate([X, X[:50]])  # 50 duplicated points ...
    f = np.concatenate([X[:400, 0], X[:50, 0]])  # ... with the same values (ties)
    ms = MorseSmale(k=10).fit(X, f)
    assert len(ms.maxima(0.0)) >= 1
    # tied duplicates: the higher index counts as higher, so they flow together
    assert np.array_equal(ms.ascending_[:50], ms.ascending_[400:])
    assert ms.segmentation(0.0).shape == (450,)
    flat = MorseSmale(k=5).fit(X, np.zeros(450))  # a constant function
    assert len(flat.maxima(0.0)) >= 1 and np.isfinite(flat.f_range_)


def test_bad_input():
    X = np.random.default_rng(0).normal(size=(30, 2))
    f = X[:, 0].copy()
    f[4] = np.nan
    with pytest.raises(InputError, match="sample 4"):
        MorseSmale().fit(X, f)
    with pytest.raises(InputError, match="one value per sample"):
        MorseSmale().fit(X, X[:10, 0])
    with pytest.raises(ConfigurationError, match="not fitted"):
        MorseSmale().maxima(0.1)
    ms = MorseSmale(k=5).fit(X, X[:, 0])
    with pytest.raises(InputError, match="persistence"):
        ms.maxima(persistence=2.0)
    with pytest.raises(InputError, match="persistence"):
        ms.segmentation(persistence="high")
    with pytest.warns(UserWarning, match="k=15"):
        MorseSmale(k=15).fit(X[:5], X[:5, 0])
