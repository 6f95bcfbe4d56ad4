"""ANS on the real breast tumour/normal activations of the published ANS repository.

The fixture (1000-node sigmoid autoencoder, 112 cancer + 112 matched normal samples) lives
outside the repository: ``../shared/data/ans-reference`` or ``$ONCOSCALE_ANS_REFERENCE``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from oncoscale.saliency import ans
from test_saliency_measures import assert_matches_reference, reference_ans

_DIR = Path(os.environ.get("ONCOSCALE_ANS_REFERENCE",
                           Path(__file__).resolve().parents[2] / "shared" / "data"
                           / "ans-reference"))


@pytest.fixture(scope="module")
def fixture_data():
    a, lab = _DIR / "A_c32.npy", _DIR / "L_c32.npy"
    if not (a.is_file() and lab.is_file()):
        pytest.skip(f"ANS reference fixture not found at {_DIR} (expected A_c32.npy and "
                    f"L_c32.npy; set ONCOSCALE_ANS_REFERENCE to its folder)")
    return np.load(a), np.load(lab)


@pytest.fixture(scope="module")
def table(fixture_data):
    A, L = fixture_data
    return ans(A, L, bins=10)


def test_runs_with_valid_ranges(fixture_data, table):
    A, L = fixture_data
    assert A.shape == (224, 1000) and set(np.unique(L)) == {0.0, 1.0}
    assert table.shape[0] == 1000 and list(table.index) == list(range(1000))
    for col in ("ned", "ned0", "ned1", "auc", "threshold_accuracy"):
        assert table[col].between(0, 1).all(), col
    assert (table["sns_binary"] >= 0).all() and (table["sns_increasing"] >= 0).all()
    assert table["n_occupied"].between(1, 10).all()
    assert table.attrs["n0"] == 112 and table.attrs["n1"] == 112
    assert sorted(table["rank_sns_binary"]) == list(range(1, 1001))


def test_best_nodes_by_sns_separate_tumour_from_normal(table):
    top = table.sort_values("sns_binary").head(10)
    # a real property of the measure: the lowest-SNS nodes are among the few separating ones
    share_separating = (table["auc_separation"] > 0.9).mean()
    assert share_separating < 0.1
    assert (top["auc_separation"] > 0.9).all(), top["auc_separation"]
    assert (top["threshold_accuracy"] > 0.85).all()
    # and SNS ranks nodes much as the AUC does over all 1000 nodes
    rho = spearmanr(table["sns_binary"], table["auc_separation"]).statistic
    assert rho < -0.5
    # the published sign of a classifying node is much more frequent among the top 20
    top20 = table.sort_values("sns_binary").head(20)["ned_below_classes"].mean()
    assert top20 > 3 * table["ned_below_classes"].mean()


def test_matches_per_node_reference_on_a_node_subset(fixture_data, table):
    A, L = fixture_data
    nodes = np.r_[table.sort_values("sns_binary").index[:10].to_numpy(), np.arange(0, 1000, 25)]
    ref = reference_ans(A[:, nodes], L, 10)
    got = table.loc[nodes].reset_index(drop=True)
    assert_matches_reference(got, ref)


def test_balanced_fixture_makes_class_balancing_irrelevant(fixture_data, table):
    A, L = fixture_data
    # h/112 instead of h changes nothing but rounding; ranks may swap only between nodes
    # whose SNS agree to rounding, so compare values, and ranks of clearly distinct SNS
    bal = ans(A, L, class_balanced=True)
    num = [c for c in table.columns if not c.startswith("rank_")]
    pd.testing.assert_frame_equal(table[num], bal[num], check_exact=False, rtol=1e-12,
                                  atol=1e-14)
    top = table.sort_values("sns_binary").head(50)
    assert (np.diff(top["sns_binary"]) > 1e-9).all()
    np.testing.assert_array_equal(top["rank_sns_binary"], bal.loc[top.index, "rank_sns_binary"])


def _published_semantics(A: np.ndarray, L: np.ndarray, B: int = 10):
    """The published ans.py's rules, written independently with numpy for comparison:
    bin edges (1/B) * k in floating point, first bin closed, raw class counts, and its
    increasing-distribution cross entropy that SUBTRACTS the (1 - r) log2(1 - q) term."""
    width = 1.0 / B
    edges = np.array([width * k for k in range(1, B)])
    bins = np.searchsorted(edges, A, side="left")  # a <= width * k -> lower bin
    n, m = A.shape
    h1 = np.stack([np.bincount(bins[L == 1, j], minlength=B) for j in range(m)])
    h0 = np.stack([np.bincount(bins[L == 0, j], minlength=B) for j in range(m)])
    p = (h0 + h1) / n
    mixed = (h0 > 0) & (h1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q1 = np.where(mixed, h1 / (h0 + h1), 0.5)
    q0 = 1 - q1
    r_b = (np.arange(B) > B / 2).astype(float)
    r_i = (np.arange(B) + 0.5) / B

    def ce(q, r, sign):
        return -np.where(mixed, p * (r * np.log2(q) + sign * (1 - r) * np.log2(1 - q)), 0).sum(1)

    return (np.minimum(ce(q0, r_b, 1), ce(q1, r_b, 1)),
            np.minimum(ce(q0, r_i, -1), ce(q1, r_i, -1)), h0, h1)


def test_agrees_with_published_semantics(fixture_data, table):
    A, L = fixture_data
    sns_b, sns_i_published, h0, h1 = _published_semantics(A, L)
    from oncoscale.saliency import ans_histograms

    g0, g1 = ans_histograms(A, L)
    # no fixture value sits within a rounding unit of an edge: identical histograms
    np.testing.assert_array_equal(g0, h0)
    np.testing.assert_array_equal(g1, h1)
    np.testing.assert_allclose(table["sns_binary"], sns_b, rtol=1e-12, atol=1e-15)
    assert int(np.argmin(sns_b)) == int(table["sns_binary"].idxmin())
    # the increasing variant differs on purpose (sign of the (1 - r) term, see ans docstring)
    assert not np.allclose(table["sns_increasing"], sns_i_published)
