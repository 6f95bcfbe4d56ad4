"""ANS measures: hand-computed values, properties against a plain per-node reference, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oncoscale.errors import InputError
from oncoscale.saliency import COLUMNS, ans, ans_histograms, bin_edges, bin_index
from oncoscale.saliency import measures as measures_mod

# ---------------------------------------------------------------------------------------------
# A straightforward per-node reference, written from the definitions in the issue (loops, exact
# rational bin edges, pairwise AUC, brute-force thresholds). The vectorised code must agree.
# ---------------------------------------------------------------------------------------------


def _ref_bin(a: float, B: int, dtype=np.float64) -> int:
    """Bin 0 is [0, 1/B]; 0-based bin k >= 1 is (k/B, (k+1)/B], k/B as the nearest float
    of the data's precision (so the float 0.1 is on the edge 1/10 and goes to bin 0)."""
    k = 0
    while k < B - 1 and float(a) > float(dtype((k + 1) / B)):
        k += 1
    return k


def _ref_ned(counts: list[int]) -> float:
    total = sum(counts)
    ps = [c / total for c in counts if c > 0]
    m = len(ps)
    if m <= 1:
        return 1.0
    h = -sum(p * math.log2(p) for p in ps)
    return 1.0 - h / math.log2(m)


def _ref_ce(h_c: list[int], h_other: list[int], n: int, r: list[float]) -> float:
    ce = 0.0
    for k in range(len(h_c)):
        tot = h_c[k] + h_other[k]
        if h_c[k] == 0 or h_other[k] == 0:
            continue  # q in {0, 1}: the bin contributes nothing
        q = h_c[k] / tot
        p = tot / n
        ce -= p * (r[k] * math.log2(q) + (1 - r[k]) * math.log2(1 - q))
    return ce


def reference_ans(A: np.ndarray, L: np.ndarray, B: int, dtype=np.float64) -> pd.DataFrame:
    n, m = A.shape
    lab = np.asarray(L).astype(int)
    n1 = int(lab.sum())
    n0 = n - n1
    r_bin = [1.0 if k > B / 2 else 0.0 for k in range(B)]
    r_inc = [(k + 0.5) / B for k in range(B)]
    rows = []
    for j in range(m):
        x = [float(v) for v in A[:, j]]
        h0 = [0] * B
        h1 = [0] * B
        for a, c in zip(x, lab, strict=True):
            (h1 if c == 1 else h0)[_ref_bin(a, B, dtype)] += 1
        tot = [h0[k] + h1[k] for k in range(B)]
        ned, ned0, ned1 = _ref_ned(tot), _ref_ned(h0), _ref_ned(h1)
        ce0_b, ce1_b = _ref_ce(h0, h1, n, r_bin), _ref_ce(h1, h0, n, r_bin)
        ce0_i, ce1_i = _ref_ce(h0, h1, n, r_inc), _ref_ce(h1, h0, n, r_inc)
        xa = np.array(x)
        x0, x1 = xa[lab == 0], xa[lab == 1]
        # all pairs: P(x1 > x0) + P(x1 = x0) / 2
        u = float(((x1[:, None] > x0[None, :]) + 0.5 * (x1[:, None] == x0[None, :])).sum())
        values = sorted(set(x))
        best = -1.0
        for v in values:  # every split "a <= v | a > v" between two distinct values
            acc1 = float(((xa > v) == (lab == 1)).mean())
            best = max(best, acc1, 1 - acc1)
        rows.append({
            "n_occupied": sum(t > 0 for t in tot), "ned": ned, "ned0": ned0, "ned1": ned1,
            "ned_below_classes": ned < min(ned0, ned1),
            "ce0_binary": ce0_b, "ce1_binary": ce1_b, "sns_binary": min(ce0_b, ce1_b),
            "ce0_increasing": ce0_i, "ce1_increasing": ce1_i, "sns_increasing": min(ce0_i, ce1_i),
            "mean0": float(np.mean(x0)), "mean1": float(np.mean(x1)),
            "auc": u / (n0 * n1), "threshold_accuracy": best,
            "h0": h0, "h1": h1,
        })
    return pd.DataFrame(rows)


def assert_matches_reference(got: pd.DataFrame, ref: pd.DataFrame,
                             mean_rtol: float = 1e-9) -> None:
    for col in ("n_occupied", "ned_below_classes"):
        np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
    for col in ("ned", "ned0", "ned1", "ce0_binary", "ce1_binary", "sns_binary",
                "ce0_increasing", "ce1_increasing", "sns_increasing", "auc",
                "threshold_accuracy", "mean0", "mean1"):
        rtol = mean_rtol if col.startswith("mean") else 1e-9
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=rtol,
                                   atol=1e-12 if rtol < 1e-8 else 1e-7, err_msg=col)


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------


def test_hand_computed_eight_samples_four_bins():
    # B = 4: bins [0, .25], (.25, .5], (.5, .75], (.75, 1].
    # node 0: class 0 = 0.0, 0.25, 0.3, 0.6 -> bins 0, 0 (0.25 is on the edge: lower bin), 1, 2
    #         class 1 = 0.25, 0.7, 0.8, 1.0 -> bins 0, 2, 3, 3
    #   h0 = [2, 1, 1, 0], h1 = [1, 0, 1, 2], all = [3, 1, 2, 2], p = [3/8, 1/8, 1/4, 1/4]
    #   NED: M = 4, H = 3/8 log2(8/3) + 1/8 * 3 + 2 * 1/4 * 2 = 1.905639; NED = 1 - H/2
    #   NED0: shares [1/2, 1/4, 1/4] -> H = 1.5, M = 3 -> 1 - 1.5/log2(3) = 0.053605; NED1 same
    #   bins with both classes: 0 (q1 = 1/3) and 2 (q1 = 1/2); binary r_k = 1 only for k = 3
    #   CE1_bin = -(3/8 log2(2/3) + 1/4 log2(1/2)) = 0.469361
    #   CE0_bin = -(3/8 log2(1/3) + 1/4 log2(1/2)) = 0.844361 -> SNS_bin = 0.469361, class 1
    #   increasing r = midpoints: bin 0 -> 0.125, bin 2 -> 0.625
    #   CE1_inc = -(3/8 (0.125 log2(1/3) + 0.875 log2(2/3)) + 1/4 log2(1/2)) = 0.516236
    #   CE0_inc = -(3/8 (0.125 log2(2/3) + 0.875 log2(1/3)) + 1/4 log2(1/2)) = 0.797486
    #   AUC: 0.25 beats 0.0 and ties 0.25 (1.5), 0.7 / 0.8 / 1.0 beat all four -> 13.5 / 16
    #   threshold: between 0.6 and 0.7 (t = 0.65) misclassifies only the class-1 0.25 -> 7/8
    # node 1: constant 0.5 -> bin 1 only: NED = NED0 = NED1 = 1; q1 = 1/2 in the one bin, so
    #   CE = -(1 * log2(1/2)) = 1 for both classes and both r; AUC 1/2; accuracy 1/2.
    A = np.array([[0.0, 0.25, 0.3, 0.6, 0.25, 0.7, 0.8, 1.0], [0.5] * 8]).T
    L = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    df = ans(A, L, bins=4)
    assert list(df.columns) == list(COLUMNS)
    assert df.index.name == "node" and list(df.index) == [0, 1]
    r = df.loc[0]
    h = 3 / 8 * math.log2(8 / 3) + 1 / 8 * 3 + 2 * 0.25 * 2
    assert r["n_occupied"] == 4
    assert r["ned"] == pytest.approx(1 - h / 2)
    assert r["ned"] == pytest.approx(0.0471804, abs=1e-6)
    assert r["ned0"] == pytest.approx(1 - 1.5 / math.log2(3))
    assert r["ned1"] == pytest.approx(0.053605, abs=1e-6)
    assert bool(r["ned_below_classes"]) is True
    assert r["ce1_binary"] == pytest.approx(0.469361, abs=1e-6)
    assert r["ce0_binary"] == pytest.approx(0.844361, abs=1e-6)
    assert r["sns_binary"] == pytest.approx(0.469361, abs=1e-6)
    assert r["sns_binary_class"] == 1
    assert r["ce1_increasing"] == pytest.approx(0.516236, abs=1e-6)
    assert r["ce0_increasing"] == pytest.approx(0.797486, abs=1e-6)
    assert r["sns_increasing"] == pytest.approx(0.516236, abs=1e-6)
    assert r["auc"] == pytest.approx(13.5 / 16)
    assert r["auc_separation"] == pytest.approx(13.5 / 16)
    assert r["threshold_accuracy"] == pytest.approx(7 / 8)
    assert r["best_threshold"] == pytest.approx(0.65)
    assert r["threshold_above_class"] == 1
    assert r["mean0"] == pytest.approx(0.2875) and r["mean1"] == pytest.approx(0.6875)
    c = df.loc[1]
    assert (c["ned"], c["ned0"], c["ned1"]) == (1.0, 1.0, 1.0)
    assert c["n_occupied"] == 1 and not c["ned_below_classes"]
    for col in ("ce0_binary", "ce1_binary", "ce0_increasing", "ce1_increasing"):
        assert c[col] == pytest.approx(1.0)
    assert c["auc"] == 0.5 and c["threshold_accuracy"] == 0.5
    assert list(df["rank_sns_binary"]) == [1, 2]
    h0, h1 = ans_histograms(A, L, bins=4)
    assert h0.tolist() == [[2, 1, 1, 0], [0, 4, 0, 0]]
    assert h1.tolist() == [[1, 0, 1, 2], [0, 4, 0, 0]]
    assert_matches_reference(df, reference_ans(A, L, 4))


def test_perfect_separation_two_bins():
    # B = 2: class 0 at 0.1, 0.2 (bin 0), class 1 at 0.8, 0.9 (bin 1). Every bin holds one
    # class only -> no bin contributes -> CE = 0 -> SNS = 0 (the best possible). The mixture
    # is spread evenly over 2 bins (NED 0) while each class sits in one bin (NED 1).
    A = np.array([[0.1], [0.2], [0.8], [0.9]])
    df = ans(A, [0, 0, 1, 1], bins=2)
    r = df.loc[0]
    assert r["sns_binary"] == 0.0 and r["sns_increasing"] == 0.0
    assert r["ned"] == pytest.approx(0.0) and r["ned0"] == 1.0 and r["ned1"] == 1.0
    assert r["auc"] == 1.0 and r["threshold_accuracy"] == 1.0
    assert r["best_threshold"] == pytest.approx(0.5)


def test_binary_target_uses_index_above_half():
    # B = 3: B/2 = 1.5, so only 0-based bin 2 ((2/3, 1]) has r = 1. Class 1 at 0.9 (bin 2)
    # and 0.5 (bin 1), class 0 at 0.95 (bin 2) and 0.4 (bin 1): q1 = 1/2 in both bins,
    # p = 1/2 each -> CE = -(1/2 log2(1/2) + 1/2 log2(1/2)) = 1 for either class.
    # Now class 1 at 0.9, 0.95 and class 0 at 0.9, 0.4: bin 2 has q1 = 2/3, bin 1 only
    # class 0 (skipped) -> CE1 = -(3/4 log2(2/3)) = 0.438722, CE0 = -(3/4 log2(1/3)) = 1.188722.
    A = np.array([[0.9, 0.95, 0.9, 0.4]]).T
    df = ans(A, [1, 1, 0, 0], bins=3)
    assert df.loc[0, "ce1_binary"] == pytest.approx(-(0.75 * math.log2(2 / 3)))
    assert df.loc[0, "ce0_binary"] == pytest.approx(-(0.75 * math.log2(1 / 3)))
    assert df.loc[0, "sns_binary_class"] == 1


def test_bin_edges_are_the_nearest_floats_and_edge_values_go_down():
    # The float 0.1 is slightly ABOVE 1/10 and 0.3 slightly BELOW 3/10; both are "the edge"
    # as a user writes it, so both go to the lower bin. The next float above an edge goes up.
    # (The published ans.py compares with 0.1 * 3 = 0.30000000000000004 instead of 0.3.)
    assert Fraction(0.1) > Fraction(1, 10) and Fraction(0.3) < Fraction(3, 10)
    x = np.array([0.0, 0.1, np.nextafter(0.1, 1), 0.3, np.nextafter(0.3, 1), 0.7, 1.0])
    assert bin_index(x, 10).tolist() == [0, 0, 1, 2, 3, 6, 9]
    # float32 data use float32 edges: float32(0.3) is the edge 3/10 in float32.
    x32 = np.array([0.3, np.nextafter(np.float32(0.3), np.float32(1))], dtype=np.float32)
    assert bin_index(x32, 10).tolist() == [2, 3]
    for dt in (np.float32, np.float64):
        for k, v in enumerate(bin_edges(10, dt), start=1):
            err = abs(Fraction(float(v)) - Fraction(k, 10))
            for nb in (np.nextafter(v, dt(0)), np.nextafter(v, dt(1))):
                assert err <= abs(Fraction(float(nb)) - Fraction(k, 10))


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------

_EDGY = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.75, 0.9, 1.0, 1e-300,
                         1.0 - 2.0**-53, float(np.nextafter(0.5, 1.0))])  # adjacent floats


@st.composite
def problems(draw, max_n: int = 24, max_m: int = 4):
    n = draw(st.integers(4, max_n))
    m = draw(st.integers(1, max_m))
    value = st.one_of(_EDGY, st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=True))
    A = np.array(draw(st.lists(st.lists(value, min_size=m, max_size=m), min_size=n,
                               max_size=n)), dtype=np.float64)
    L = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    L[0], L[1] = 0, 1  # both classes present
    B = draw(st.integers(2, 12))
    return A, L, B


_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(problems())
def test_vectorised_equals_per_node_reference(problem):
    A, L, B = problem
    assert_matches_reference(ans(A, L, bins=B), reference_ans(A, L, B))


@_SETTINGS
@given(problems())
def test_ranges_and_threshold_rule(problem):
    A, L, B = problem
    df = ans(A, L, bins=B)
    for col in ("ned", "ned0", "ned1", "auc", "auc_separation", "threshold_accuracy"):
        assert ((df[col] >= -1e-12) & (df[col] <= 1 + 1e-12)).all(), col
    assert (df[["ce0_binary", "ce1_binary", "ce0_increasing", "ce1_increasing"]] >= 0).all().all()
    assert (df["n_occupied"].between(1, B)).all()
    n1 = L.sum()
    assert (df["threshold_accuracy"] >= max(n1, len(L) - n1) / len(L) - 1e-12).all()
    # the reported threshold really achieves the reported accuracy
    for j in range(A.shape[1]):
        t = df.loc[j, "best_threshold"]
        above = df.loc[j, "threshold_above_class"]
        pred = np.where(A[:, j] > t, above, 1 - above)
        assert (pred == L).mean() == pytest.approx(df.loc[j, "threshold_accuracy"])


@_SETTINGS
@given(problems())
def test_label_swap_symmetry(problem):
    A, L, B = problem
    a, b = ans(A, L, bins=B), ans(A, 1 - L, bins=B)
    for x, y in (("ned", "ned"), ("ned0", "ned1"), ("ce0_binary", "ce1_binary"),
                 ("ce0_increasing", "ce1_increasing"), ("sns_binary", "sns_binary"),
                 ("sns_increasing", "sns_increasing"), ("mean0", "mean1"),
                 ("threshold_accuracy", "threshold_accuracy"),
                 ("auc_separation", "auc_separation")):
        np.testing.assert_allclose(a[x], b[y], rtol=1e-9, atol=1e-12, err_msg=x)
    np.testing.assert_allclose(a["auc"], 1 - b["auc"], atol=1e-12)


@_SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_permutation_invariance_over_samples(problem, rnd):
    A, L, B = problem
    perm = np.arange(len(L))
    rnd.shuffle(perm)
    a, b = ans(A, L, bins=B), ans(A[perm], L[perm], bins=B)
    exact = [c for c in COLUMNS if c not in ("mean0", "mean1")]
    pd.testing.assert_frame_equal(a[exact], b[exact])
    np.testing.assert_allclose(a[["mean0", "mean1"]], b[["mean0", "mean1"]], rtol=1e-12)


@_SETTINGS
@given(problems(), st.integers(-3, 6), st.integers(-1000, 1000))
def test_scale_invariance_under_rescale(problem, log2_scale, shift):
    A, L, B = problem
    A = np.round(A * 64)  # integers 0..64: the affine map below is exact in float64
    scale = 2.0 ** log2_scale
    a = ans(A, L, bins=B, rescale=True)
    b = ans(A * scale + shift, L, bins=B, rescale=True)
    same = [c for c in COLUMNS if c not in ("mean0", "mean1", "best_threshold")]
    pd.testing.assert_frame_equal(a[same], b[same])
    np.testing.assert_allclose(b["mean1"], a["mean1"] * scale + shift, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(b["best_threshold"], a["best_threshold"] * scale + shift,
                               rtol=1e-12, atol=1e-9)


@_SETTINGS
@given(problems(max_n=40, max_m=6))
def test_blocks_threads_and_float32_agree(problem):
    A, L, B = problem
    A32 = A.astype(np.float32)
    base = ans(A32.astype(np.float64), L, bins=B)
    small = measures_mod._BLOCK_ELEMENTS
    try:
        measures_mod._BLOCK_ELEMENTS = 2 * len(L)  # blocks of 2 nodes
        split = ans(A32.astype(np.float64), L, bins=B, n_jobs=3)
    finally:
        measures_mod._BLOCK_ELEMENTS = small
    pd.testing.assert_frame_equal(base, split)
    # float32 input is binned with float32 edges; ranks and thresholds are the same values
    f32 = ans(A32, L, bins=B)
    assert_matches_reference(f32, reference_ans(A32, L, B, np.float32), mean_rtol=1e-5)
    for col in ("auc", "threshold_accuracy", "best_threshold", "threshold_above_class"):
        np.testing.assert_array_equal(f32[col], base[col], err_msg=col)


def test_threshold_between_adjacent_floats():
    # 1 - 2**-53 and 1.0 are adjacent float64 numbers: their midpoint rounds to 1.0, which
    # would put the 1.0 samples below the threshold. The threshold must stay below 1.0.
    below = 1.0 - 2.0**-53
    A = np.array([[below], [below], [1.0], [1.0]])
    df = ans(A, [0, 0, 1, 1])
    t = df.loc[0, "best_threshold"]
    assert below <= t < 1.0 and df.loc[0, "threshold_accuracy"] == 1.0


def test_class_balanced_equals_counts_when_classes_are_equal_and_differs_otherwise():
    rng = np.random.default_rng(3)
    A = rng.random((40, 6))
    L = np.r_[np.zeros(20), np.ones(20)]
    pd.testing.assert_frame_equal(ans(A, L), ans(A, L, class_balanced=True))
    # imbalanced: 10 class-1 samples, all in bin 9 together with 10 of 30 class-0 samples
    A = np.r_[np.full(20, 0.05), np.full(20, 0.95)][:, None]
    L = np.r_[np.zeros(30), np.ones(10)]
    raw, bal = ans(A, L, bins=10), ans(A, L, bins=10, class_balanced=True)
    # raw: q1 = 10/20 in bin 9 -> CE1 = -(1/2 log2 1/2) = 0.5
    assert raw.loc[0, "ce1_binary"] == pytest.approx(0.5)
    # balanced: w1 = 10/10, w0 = 10/30 -> q1 = 3/4 -> CE1 = -(1/2 log2 3/4)
    assert bal.loc[0, "ce1_binary"] == pytest.approx(-0.5 * math.log2(0.75))


def test_accepts_bool_labels_torch_like_and_constant_nodes_under_rescale():
    A = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    df = ans(A, np.array([False, False, True, True]), bins=2, rescale=True)
    assert df.loc[0, "sns_binary"] == 0.0
    assert df.loc[1, "n_occupied"] == 1  # constant node -> all in bin 0
    assert df.loc[0, "best_threshold"] == pytest.approx(2.5)  # in input units
    assert df.attrs["rescale"] is True and df.attrs["n1"] == 2


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("activations", "labels", "kwargs", "match"), [
    (np.array([[0.1], [np.nan], [0.3], [0.4]]), [0, 0, 1, 1], {}, "NaN or infinity in node 0"),
    (np.array([[0.1, 0.2], [0.2, np.inf], [0.3, 0.1], [0.4, 0.1]]), [0, 0, 1, 1], {},
     "node 1"),
    (np.array([[0.1], [1.5], [0.3], [0.4]]), [0, 0, 1, 1], {}, r"\[0, 1\].*rescale=True"),
    (np.array([[-0.1], [0.5], [0.3], [0.4]]), [0, 0, 1, 1], {}, "found -0.1"),
    (np.array([0.1, 0.2, 0.3]), [0, 1, 1], {}, "2-D"),
    (np.array([["a"], ["b"]]), [0, 1], {}, "dtype"),
    (np.array([[0.1], [0.2], [0.3]]), [0, 1], {}, r"labels: .*3 samples.*found 2"),
    (np.array([[0.1], [0.2], [0.3]]), [0, 1, 2], {}, r"labels: .*0 and 1.*\[2\]"),
    (np.array([[0.1], [0.2], [0.3]]), [1, 1, 1], {}, "labels: both classes"),
    (np.array([[0.1], [0.2], [0.3]]), ["a", "b", "a"], {}, "labels: .*map your classes"),
    (np.array([[0.1], [0.2], [0.3]]), [0.0, 1.0, np.nan], {}, "labels: found NaN"),
    (np.array([[0.1], [0.2], [0.3]]), [0, 1, 1], {"bins": 1}, "bins: expected an integer"),
    (np.array([[0.1], [0.2], [0.3]]), [0, 1, 1], {"bins": 2.5}, "bins"),
])
def test_errors_name_the_argument(activations, labels, kwargs, match):
    with pytest.raises(InputError, match=match):
        ans(activations, labels, **kwargs)


def test_rescale_accepts_out_of_range_values():
    A = np.array([[-3.0], [10.0], [2.0], [7.0]])
    df = ans(A, [0, 1, 0, 1], rescale=True)
    assert df.loc[0, "auc"] == 1.0
