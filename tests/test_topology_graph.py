"""Neighbourhood graph: β-skeleton against its brute-force definition, symmetry, streaming,
chunk/process/rank splits, kNN recall, and bad input."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.topology.graph import knn, neighborhood_graph, read_edges


def brute_beta_skeleton(X: np.ndarray, beta: float) -> set[tuple[int, int]]:
    """The lune-based β-skeleton by its definition: explicit balls / angles, every point."""
    n = X.shape[0]
    edges = set()
    for p, q in itertools.combinations(range(n), 2):
        P, Q = X[p], X[q]
        L = np.linalg.norm(Q - P)
        empty = True
        for r in range(n):
            if r in (p, q):
                continue
            R = X[r]
            if beta >= 1:
                c1 = (1 - beta / 2) * P + (beta / 2) * Q
                c2 = (beta / 2) * P + (1 - beta / 2) * Q
                rad = beta * L / 2
                inside = np.linalg.norm(R - c1) < rad and np.linalg.norm(R - c2) < rad
            else:
                a, b = P - R, Q - R
                na, nb = np.linalg.norm(a), np.linalg.norm(b)
                if na == 0 or nb == 0:
                    continue
                ang = np.arccos(np.clip(a @ b / (na * nb), -1, 1))
                inside = ang > np.pi - np.arcsin(beta)
            if inside:
                empty = False
                break
        if empty:
            edges.add((p, q))
    return edges


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 22), d=st.integers(1, 4),
       beta=st.sampled_from([0.6, 1.0, 1.3, 2.0]), relaxed=st.booleans(),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_beta_skeleton_matches_brute_force(seed, n, d, beta, relaxed, scale):
    X = np.random.default_rng(seed).normal(size=(n, d)) * scale
    g = neighborhood_graph(X, k=n - 1, beta=beta, relaxed=relaxed, chunk_size=5)
    got = set(map(tuple, g.edges.tolist()))
    assert len(got) == g.n_edges, "duplicate edges"
    assert got == brute_beta_skeleton(X, beta)


def test_graph_symmetric_streamed_and_split_consistently(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 5))
    ref = neighborhood_graph(X, k=12, chunk_size=257)
    e = ref.edges
    assert (e[:, 0] < e[:, 1]).all()
    assert len(np.unique(e[:, 0] * X.shape[0] + e[:, 1])) == len(e)
    np.testing.assert_allclose(ref.lengths, np.linalg.norm(X[e[:, 0]] - X[e[:, 1]], axis=1))
    key = set(map(tuple, e.tolist()))
    # Gabriel pruning keeps a subset of the symmetrised kNN graph, including every 1-NN edge
    nn = knn(X, 1).indices[:, 0]
    assert all((min(i, j), max(i, j)) in key for i, j in enumerate(nn.tolist()))

    out = tmp_path / "edges.parquet"
    g2 = neighborhood_graph(X, k=12, chunk_size=1000, out=out, n_jobs=2)
    assert set(map(tuple, g2.edges.tolist())) == key
    streamed, lengths = read_edges(out)
    assert set(map(tuple, streamed.tolist())) == key
    assert lengths.shape[0] == len(key)

    parts = [tmp_path / f"part{r}.parquet" for r in range(3)]
    for r in range(3):
        neighborhood_graph(X, k=12, chunk_size=300, out=parts[r], rank=r, size=3)
    joined, _ = read_edges(parts)
    assert sorted(map(tuple, joined.tolist())) == sorted(key)

    strict = neighborhood_graph(X, k=12, relaxed=False)
    assert strict.n_edges > 0


def test_hnsw_recall_is_measured_and_high():
    X = np.random.default_rng(0).normal(size=(2500, 8)).astype(np.float32)
    res = knn(X, 10, method="hnsw", recall_sample=300)
    assert res.method == "hnsw" and res.recall_sample == 300
    assert 0.9 <= res.recall <= 1.0
    exact = knn(X, 10, method="exact")
    assert exact.recall == 1.0
    tree = knn(X, 10, method="kdtree")
    np.testing.assert_allclose(tree.distances, exact.distances, rtol=1e-5, atol=1e-5)
    assert knn(X[:, :3], 5).method == "kdtree"  # auto: few dimensions
    assert (exact.indices != np.arange(2500)[:, None]).all()
    g = neighborhood_graph(X, k=10, knn_method="auto", exact_threshold=1000, recall_sample=200)
    assert g.knn_method == "hnsw" and g.knn_recall > 0.9


def test_duplicates_d1_and_small_n():
    X = np.array([[0.0], [1.0], [1.0], [3.0], [0.0]])
    g = neighborhood_graph(X, k=3)
    keys = set(map(tuple, g.edges.tolist()))
    assert (1, 2) in keys and (0, 4) in keys  # duplicates joined by zero-length edges
    assert np.isclose(g.lengths[g.edges.tolist().index([1, 2])], 0.0)
    assert len(keys) == g.n_edges
    # d = 1: a Gabriel graph on a line is the chain of consecutive samples
    x = np.random.default_rng(1).permutation(50).astype(float)
    g = neighborhood_graph(x, k=6)
    order = np.argsort(x)
    chain = {tuple(sorted(p)) for p in zip(order[:-1].tolist(), order[1:].tolist(), strict=True)}
    assert set(map(tuple, g.edges.tolist())) == chain
    with pytest.warns(UserWarning, match="k=15 is not smaller"):
        g = neighborhood_graph(np.random.default_rng(2).normal(size=(6, 2)), k=15)
    assert g.k == 5


def test_bad_input_is_rejected():
    X = np.random.default_rng(0).normal(size=(20, 3))
    bad = X.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InputError, match="sample 7, dimension 2"):
        neighborhood_graph(bad)
    bad[7, 2] = np.inf
    with pytest.raises(InputError, match="finite"):
        neighborhood_graph(bad)
    with pytest.raises(InputError, match="at least 2 samples"):
        neighborhood_graph(X[:1])
    with pytest.raises(InputError, match="numeric"):
        neighborhood_graph(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ConfigurationError, match="beta"):
        neighborhood_graph(X, beta=0)
    with pytest.raises(ConfigurationError, match="rank"):
        neighborhood_graph(X, rank=3, size=2)
    with pytest.raises(InputError, match="k must be"):
        neighborhood_graph(X, k=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neighborhood_graph(X, k=5)


def _region_holds(X: np.ndarray, p: int, q: int, r: int, beta: float) -> bool:
    """Whether X[r] is strictly inside the β-region of (X[p], X[q]) (explicit geometry)."""
    P, Q, R = X[p], X[q], X[r]
    L = np.linalg.norm(Q - P)
    if beta >= 1:
        c1 = (1 - beta / 2) * P + (beta / 2) * Q
        c2 = (beta / 2) * P + (1 - beta / 2) * Q
        return bool(np.linalg.norm(R - c1) < beta * L / 2 > 0
                    and np.linalg.norm(R - c2) < beta * L / 2)
    a, b = P - R, Q - R
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return bool(na > 0 and nb > 0 and np.arccos(np.clip(a @ b / (na * nb), -1, 1))
                > np.pi - np.arcsin(beta))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(20, 600), d=st.integers(2, 5),
       k=st.integers(3, 9), beta=st.sampled_from([0.6, 1.0, 1.7]))
def test_ngl_graph_matches_its_definition(seed, n, d, k, beta):
    """ngl=True: candidate sets = kNN made symmetric; {p, q} kept when its region is empty of
    the candidates of p or empty of the candidates of q (brute force over the definition)."""
    X = np.random.default_rng(seed).normal(size=(n, d))
    nbr = knn(X, k, method="exact").indices
    N = [set(nbr[i].tolist()) for i in range(n)]
    for i in range(n):
        for j in nbr[i].tolist():
            N[j].add(i)
    expected = set()
    for p in range(n):
        for q in N[p]:
            if p < q and any(not any(_region_holds(X, p, q, r, beta) for r in N[s] - {p, q})
                             for s in (p, q)):
                expected.add((p, q))
    g = neighborhood_graph(X, k, beta=beta, relaxed=False, ngl=True, knn_method="exact",
                           chunk_size=int(np.random.default_rng(seed).integers(7, 600)))
    assert set(map(tuple, g.edges.tolist())) == expected
    assert g.n_edges == len(expected)


def test_ngl_graph_equals_nglpy():
    nglpy = pytest.importorskip("nglpy")
    X = np.random.default_rng(3).uniform(-6, 6, size=(2500, 4))
    for beta in (1.0, 1.5):
        ref = nglpy.EmptyRegionGraph(max_neighbors=16, relaxed=False, beta=beta)
        ref.build(X)
        want = {(min(i, j), max(i, j)) for i, nb in ref.neighbors().items() for j in nb
                if i != j}
        g = neighborhood_graph(X, 15, beta=beta, relaxed=False, ngl=True)
        assert set(map(tuple, g.edges.tolist())) == want
    with pytest.raises(ConfigurationError):
        neighborhood_graph(X[:50], 5, relaxed=True, ngl=True)
