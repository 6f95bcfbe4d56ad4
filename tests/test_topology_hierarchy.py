"""The two cancellation semantics of `MorseSmale` on graphs where three regions meet at one
saddle vertex: ``hierarchy="elder"`` (default, the elder rule on superlevel sets) and
``hierarchy="topopy"`` (topopy 1.0.4's cancellation, used to compare like with like)."""

from __future__ import annotations

import numpy as np
import pytest

from oncoscale.topology import MorseSmale
from oncoscale.topology.graph import Graph

# A (f=1), B (f=2), C (f=3) are maxima; s (f=0.5) flows to A (shortest, steepest edge) and
# touches B and C, so s is the highest saddle of A-B *and* A-C; t (f=0.1) flows to C and is
# the only saddle of B-C.
F = {"A": 1.0, "B": 2.0, "C": 3.0, "s": 0.5, "t": 0.1}
EDGES = [("s", "A", 0.1), ("s", "B", 1.0), ("s", "C", 1.0), ("t", "C", 0.1), ("t", "B", 1.0)]


def _fit(order: str, hierarchy: str) -> tuple[MorseSmale, dict[str, int]]:
    idx = {name: i for i, name in enumerate(order)}
    f = np.empty(len(order))
    for name, i in idx.items():
        f[i] = F[name]
    e = np.array([sorted((idx[a], idx[b])) for a, b, _ in EDGES], dtype=np.int64)
    g = Graph(n=len(order), edges=e, lengths=np.array([ln for *_, ln in EDGES]), k=2,
              beta=1.0, relaxed=True, knn_method="given", knn_recall=1.0)
    X = np.arange(len(order), dtype=float)[:, None] * np.ones((1, 2))  # not used by the fit
    return MorseSmale(hierarchy=hierarchy).fit(X, f, graph=g), idx


def _groups(ms: MorseSmale, idx: dict[str, int], p: float) -> set[frozenset[str]]:
    """The maxima regions at level p as sets of the names of the maxima they hold."""
    reg = ms.regions(p, "max")
    out: dict[int, set[str]] = {}
    for name in "ABC":
        out.setdefault(int(reg[idx[name]]), set()).add(name)
    return {frozenset(v) for v in out.values()}


RANGE = 3.0 - 0.1


@pytest.mark.parametrize("order", ["ABCst", "ACBst", "stCBA", "sAtBC"])
def test_elder_rule_cancels_both_lower_maxima_at_the_shared_saddle(order: str) -> None:
    ms, idx = _fit(order, "elder")
    t = ms.maxima_.set_index("extremum")
    inv = {i: n for n, i in idx.items()}
    assert sorted(inv[int(m)] for m in t.index) == ["A", "B", "C"]
    # A dies at s (persistence 1.0 - 0.5), then B dies at the same s (2.0 - 0.5): at a
    # degenerate saddle the elder rule pairs every younger component with it
    assert t.loc[idx["A"], "persistence"] == pytest.approx(0.5 / RANGE)
    assert t.loc[idx["B"], "persistence"] == pytest.approx(1.5 / RANGE)
    assert t.loc[idx["A"], "saddle"] == idx["s"] and t.loc[idx["B"], "saddle"] == idx["s"]
    assert np.isinf(t.loc[idx["C"], "persistence"])
    # the dying region joins its lowest higher neighbour across the saddle: A -> B
    assert t.loc[idx["A"], "into"] == idx["B"]
    # partitions do not depend on how the samples are numbered
    assert _groups(ms, idx, 0.1) == {frozenset("A"), frozenset("B"), frozenset("C")}
    assert _groups(ms, idx, 0.3) == {frozenset("AB"), frozenset("C")}
    assert _groups(ms, idx, 0.6) == {frozenset("ABC")}


@pytest.mark.parametrize("order", ["ABCst", "ACBst", "stCBA", "sAtBC"])
def test_topopy_semantics_one_cancellation_per_saddle_key(order: str) -> None:
    ms, idx = _fit(order, "topopy")
    t = ms.maxima_.set_index("extremum")
    # pairs (A, B) and (A, C) share the queue key (persistence 0.5, saddle s); topopy keeps
    # the pair whose higher maximum has the larger sample index, so A merges into that one
    # and the other pair is lost: that maximum then meets the rest only through t
    winner, loser = ("B", "C") if idx["B"] > idx["C"] else ("C", "B")
    assert t.loc[idx["A"], "persistence"] == pytest.approx(0.5 / RANGE)
    assert t.loc[idx["A"], "into"] == idx[winner]
    assert t.loc[idx["A"], "saddle"] == idx["s"]
    assert t.loc[idx["B"], "saddle"] == idx["t"]  # B - C only through t now
    assert t.loc[idx["B"], "persistence"] == pytest.approx(1.9 / RANGE)
    assert np.isinf(t.loc[idx["C"], "persistence"])
    assert _groups(ms, idx, 0.3) == {frozenset("A" + winner), frozenset(loser)}
    # pers(B) = 1.9 / 2.9 > 0.6: B survives, and keeps A if A merged into it
    expected = ({frozenset("B"), frozenset("AC")} if winner == "C"
                else {frozenset("AB"), frozenset("C")})
    assert _groups(ms, idx, 0.6) == expected
    assert _groups(ms, idx, 0.7) == {frozenset("ABC")}


def test_semantics_agree_without_degenerate_saddles() -> None:
    # random data: regardless of the rule, the surviving maxima at every level coincide and
    # the hierarchies are both valid; partitions agree except near degenerate saddles
    rng = np.random.default_rng(5)
    X = rng.uniform(-3, 3, size=(1500, 2))
    f = np.exp(-((X - 1) ** 2).sum(1)) + 0.7 * np.exp(-((X + 1) ** 2).sum(1))
    elder = MorseSmale(k=10).fit(X, f + 0.01 * rng.normal(size=1500))
    topo = MorseSmale(k=10, hierarchy="topopy").fit(X, elder.f_, graph=elder.graph_)
    assert np.array_equal(elder.ascending_, topo.ascending_)
    for p in (0.0, 0.05, 0.3):
        assert set(elder.maxima(p)) == set(topo.maxima(p))
        assert len(np.unique(topo.segmentation(p))) >= 1
    assert len(topo.maxima(0.3)) == 2


def test_topopy_semantics_match_topopy_itself() -> None:
    topopy = pytest.importorskip("topopy")
    nglpy = pytest.importorskip("nglpy")
    rng = np.random.default_rng(11)
    n, k = 3000, 10
    X = rng.uniform(-6, 6, size=(n, 3))
    f = sum((1 + 0.3 * i) * np.exp(-((X - c) ** 2).sum(1) / 2)
            for i, c in enumerate(rng.uniform(-4, 4, size=(4, 3))))
    f = f + rng.normal(0, 0.01, n)
    g = nglpy.EmptyRegionGraph(max_neighbors=k + 1, relaxed=False, beta=1.0)
    msc = topopy.MorseSmaleComplex(graph=g, gradient="steepest", normalization=None)
    msc.build(X, f)
    e = np.array(sorted({(min(i, j), max(i, j)) for i, nb in g.neighbors().items()
                         for j in nb if i != j}), dtype=np.int64)
    graph = Graph(n=n, edges=e, lengths=np.linalg.norm(X[e[:, 0]] - X[e[:, 1]], axis=1), k=k,
                  beta=1.0, relaxed=False, knn_method="nglpy", knn_recall=1.0)
    ms = MorseSmale(hierarchy="topopy").fit(X, f, graph=graph)
    rng_f = float(f.max() - f.min())
    seq = msc.get_merge_sequence()
    for table in (ms.maxima_, ms.minima_):  # every cancellation: saddle and persistence
        for e_, pers, into, sad in table[["extremum", "persistence", "into", "saddle"]] \
                .itertuples(index=False):
            ref_p, ref_into, ref_sad = seq[int(e_)]
            if into < 0:
                assert ref_into == e_
            else:
                assert (ref_sad, ref_into) == (sad, into)
                assert ref_p == pytest.approx(pers * rng_f, rel=1e-5, abs=1e-6)
    for p in (0.0, 0.05, 0.2):
        ref = np.empty(n, dtype=np.int64)
        for lab, members in enumerate(msc.get_partitions(p * rng_f).values()):
            ref[np.asarray(members)] = lab
        ours = ms.segmentation(p)
        # identical partitions: a one-to-one map between the labels
        pairs = set(zip(ref.tolist(), ours.tolist(), strict=True))
        assert len(pairs) == len(set(ref.tolist())) == len(set(ours.tolist()))
