"""NSGA-II pieces on fronts whose answer is known."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oncoscale.nas.selection import (
    crowding_distance,
    dominates,
    hypervolume_2d,
    non_dominated_sort,
    nsga2_select,
    pareto_mask,
    rank_and_crowding,
    tournament,
)


def test_known_fronts():
    # three nested staircases: rank k sits on the line x + y = 10 + 10k
    pts, ranks = [], []
    for k in range(3):
        for x in range(5):
            pts.append((x + 5 * k, 10 + 5 * k - x))
            ranks.append(k)
    F = np.array(pts, float)
    perm = np.random.default_rng(0).permutation(len(F))
    fronts = non_dominated_sort(F[perm])
    assert len(fronts) == 3
    for k, idx in enumerate(fronts):
        assert sorted(np.asarray(ranks)[perm][idx].tolist()) == [k] * 5
    rank, _ = rank_and_crowding(F)
    np.testing.assert_array_equal(rank, ranks)


def test_duplicates_and_single_objective():
    F = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    assert [f.tolist() for f in non_dominated_sort(F)] == [[0, 1], [2]]
    assert [f.tolist() for f in non_dominated_sort(np.array([[3.0], [1.0], [2.0]]))] == \
        [[1], [2], [0]]


def test_crowding_distance_values():
    F = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(F)
    assert np.isinf(d[0]) and np.isinf(d[3])
    np.testing.assert_allclose(d[1:3], [3 / 4 + 3 / 4, 3 / 4 + 3 / 4])
    assert np.all(np.isinf(crowding_distance(F[:2])))


def test_nsga2_select_prefers_fronts_then_spread():
    front = np.array([[0.0, 10.0], [1.0, 5.0], [1.1, 4.9], [10.0, 0.0]])
    worse = front + 20
    F = np.vstack([front, worse])
    sel = nsga2_select(F, 3)
    assert set(sel.tolist()) == {0, 3, 1} or set(sel.tolist()) == {0, 3, 2}
    assert set(nsga2_select(F, 6).tolist()) >= {0, 1, 2, 3}


def test_hypervolume_known():
    F = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5]])
    assert hypervolume_2d(F, (4.0, 4.0)) == 3 + 2 + 1
    assert hypervolume_2d(np.array([[5.0, 5.0]]), (4.0, 4.0)) == 0.0


def test_tournament_prefers_better_rank():
    rank = np.array([0, 1, 1, 2])
    crowd = np.array([1.0, np.inf, 0.5, 0.1])
    rng = np.random.default_rng(0)
    wins = np.bincount([tournament(rank, crowd, rng) for _ in range(4000)], minlength=4)
    assert wins[0] > wins[1] > wins[2] > wins[3]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 25), st.integers(1, 3)),
              elements=st.integers(0, 6).map(float)))
def test_sort_properties(F):
    fronts = non_dominated_sort(F)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(len(F)))
    for k, idx in enumerate(fronts):
        for i in idx:  # nothing in the same front dominates i
            assert not any(dominates(F[j], F[i]) for j in idx)
            if k:  # something in the previous front does
                assert any(dominates(F[j], F[i]) for j in fronts[k - 1])
    mask = pareto_mask(F)
    assert mask.sum() == len(fronts[0])
    k = max(1, len(F) // 2)
    assert len(set(nsga2_select(F, k).tolist())) == k
