"""PCA / t-SNE comparison, the AnnData front ends and the plots."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.saliency import (
    ComparisonResult,
    ans,
    ans_adata,
    compare,
    compare_adata,
    figure_to_base64,
    figure_to_data_uri,
    figure_to_png,
    plot_comparison,
    plot_node_histograms,
    plot_saliency_curves,
)
from oncoscale.saliency.comparison import separation_auc

FAST_TSNE = {"n_iter": 100, "early_exaggeration_iter": 50}


def _synthetic(n: int = 80, m: int = 12, seed: int = 0):
    """Sigmoid-like latent where node 3 separates the classes and the rest is noise."""
    rng = np.random.default_rng(seed)
    L = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    Z = rng.normal(size=(n, m))
    Z[:, 3] += 4.0 * (2 * L - 1)
    return 1.0 / (1.0 + np.exp(-Z)), L


@pytest.fixture(scope="module")
def synthetic_result():
    A, L = _synthetic()
    return A, L, compare(A, L, tsne_kwargs=FAST_TSNE, pca_components=5, cv_folds=4)


def test_compare_finds_the_separating_node(synthetic_result):
    A, L, res = synthetic_result
    assert isinstance(res, ComparisonResult)
    t = res.table
    assert list(t.index) == ["ans_node", "pca_best", "pca_pc1", "tsne"]
    assert t.index.name == "method"
    assert list(t.columns) == ["coordinate", "auc", "cv_accuracy", "silhouette"]
    assert res.best_node == 3 and t.loc["ans_node", "coordinate"] == "node 3"
    assert t.loc["ans_node", "auc"] > 0.95 and t.loc["ans_node", "cv_accuracy"] > 0.9
    assert t["auc"].between(0.5, 1).all() and t["cv_accuracy"].between(0, 1).all()
    assert t["silhouette"].between(-1, 1).all()
    assert res.pca.shape == (80, 5) and res.tsne.shape == (80, 2)
    assert res.pca_variance_ratio.shape == (5,)
    np.testing.assert_array_equal(res.node_values, A[:, 3])
    # the best PC is the one with the highest separation AUC among the 5
    aucs = separation_auc(res.pca, L)
    assert res.best_pc == int(np.argmax(np.maximum(aucs, 1 - aucs)))
    assert t.loc["pca_best", "coordinate"] == f"PC{res.best_pc + 1}"


def test_separation_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    X = np.round(rng.random((50, 3)), 1)  # many ties
    y = rng.random(50) < 0.4
    np.testing.assert_allclose(separation_auc(X, y),
                               [roc_auc_score(y, X[:, j]) for j in range(3)])


def test_compare_is_seeded_and_validates():
    A, L = _synthetic(n=40, m=5, seed=2)
    a = compare(A, L, tsne_kwargs=FAST_TSNE, pca_components=3, seed=7, cv_folds=3)
    b = compare(A, L, tsne_kwargs=FAST_TSNE, pca_components=3, seed=7, cv_folds=3)
    np.testing.assert_allclose(a.tsne, b.tsne)
    pd.testing.assert_frame_equal(a.table, b.table)
    with pytest.raises(ConfigurationError, match="cv_folds"):
        compare(A, L, cv_folds=1)
    with pytest.raises(ConfigurationError, match="pca_components"):
        compare(A, L, pca_components=0)
    with pytest.raises(InputError, match="features: expected 40 rows"):
        compare(A, L, features=np.zeros((39, 3)))
    with pytest.raises(InputError, match="ans_table"):
        compare(A, L, ans_table=ans(A[:, :2], L))


def test_compare_on_the_real_fixture():
    d = Path(os.environ.get("ONCOSCALE_ANS_REFERENCE",
                            Path(__file__).resolve().parents[2] / "shared" / "data"
                            / "ans-reference"))
    if not (d / "A_c32.npy").is_file():
        pytest.skip(f"ANS reference fixture not found at {d}")
    A, L = np.load(d / "A_c32.npy"), np.load(d / "L_c32.npy")
    res = compare(A, L, tsne_kwargs=FAST_TSNE, pca_components=20)
    t = res.table
    # the published result: one autoencoder node separates tumour from normal about as well
    # as the best principal component, and far better than PC1
    assert t.loc["ans_node", "auc"] > 0.9 and t.loc["ans_node", "cv_accuracy"] > 0.85
    assert t.loc["ans_node", "auc"] > t.loc["pca_pc1", "auc"]
    fig = plot_comparison(res, class_names=("normal", "cancer"))
    assert len(fig.axes) == 3


def test_ans_adata_roundtrip_and_compare_adata(tmp_path):
    import anndata as ad

    A, L = _synthetic(n=60, m=6, seed=3)
    obs = pd.DataFrame({"sample_type": np.where(L == 1, "tumour", "normal"), "is_tumour": L == 1},
                       index=[f"s{i}" for i in range(60)])
    adata = ad.AnnData(X=np.random.default_rng(0).random((60, 20)).astype(np.float32), obs=obs)
    adata.obsm["X_ae"] = A
    t1 = ans_adata(adata, label_key="sample_type", positive="tumour")
    t2 = ans_adata(adata, label_key="is_tumour", key_added="ans_bool")
    pd.testing.assert_frame_equal(t1, t2)
    pd.testing.assert_frame_equal(adata.uns["ans"], ans(A, L))
    res = compare_adata(adata, label_key="is_tumour", features_key="X", tsne_kwargs=FAST_TSNE,
                        pca_components=4, cv_folds=3)
    assert adata.obsm["X_pca"].shape == (60, 4) and adata.obsm["X_tsne"].shape == (60, 2)
    assert res.best_node == 3
    path = tmp_path / "pairs.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    stored = back.uns["ans"]
    assert isinstance(stored, pd.DataFrame) and len(stored) == 6
    np.testing.assert_allclose(stored["sns_binary"].to_numpy(), t1["sns_binary"].to_numpy())
    np.testing.assert_array_equal(stored["ned_below_classes"].to_numpy().astype(bool),
                                  t1["ned_below_classes"].to_numpy())
    assert back.uns["ans_params"]["positive"] == "tumour"
    assert back.uns["ans_comparison"].loc["ans_node", "coordinate"] == "node 3"
    np.testing.assert_allclose(back.obsm["X_tsne"], res.tsne)
    with pytest.raises(InputError, match="obsm has no 'X_missing'"):
        ans_adata(adata, obsm_key="X_missing", label_key="is_tumour")
    with pytest.raises(InputError, match="obs has no column 'nope'"):
        ans_adata(adata, label_key="nope")
    with pytest.raises(InputError, match="'cancer' does not occur"):
        ans_adata(adata, label_key="sample_type", positive="cancer")
    with pytest.raises(InputError, match="labels: "):
        ans_adata(adata, label_key="sample_type")


def test_plots_and_png_export(synthetic_result):
    A, L, res = synthetic_result
    table = res.ans_table
    fig = plot_node_histograms(A, L, ans_table=table, top=3, class_names=("normal", "tumour"))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and visible[0].get_title().startswith("node 3")
    # stacked bars: the heights of the first panel add up to the samples in each bin
    bars = visible[0].patches
    assert sum(b.get_height() for b in bars) == pytest.approx(len(L))
    fig2 = plot_node_histograms(A, L, nodes=[0, 5], bins=5)
    assert len([ax for ax in fig2.axes if ax.get_visible()]) == 2
    curves = plot_saliency_curves(table, top=10)
    assert len(curves.axes) == 2 and len(curves.axes[0].lines[0].get_xdata()) == 10
    comp = plot_comparison(res)
    png = figure_to_png(comp)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    b64 = figure_to_base64(curves)
    assert base64.b64decode(b64).startswith(b"\x89PNG")
    assert figure_to_data_uri(fig).startswith("data:image/png;base64,iVBOR")
    with pytest.raises(InputError, match="nodes"):
        plot_node_histograms(A, L, nodes=[99])
    with pytest.raises(InputError, match="missing"):
        plot_saliency_curves(table.drop(columns=["ned0"]))
