"""Preprocessing: log2(1+x), gene filters, min-max scaling fitted on the training cohort."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.expression import MinMaxScaler, filter_genes, log2_1p, preprocess


def make(X: np.ndarray, types: list[str] | None = None, prefix: str = "s") -> ad.AnnData:
    n, g = X.shape
    types = types or ["protein_coding"] * g
    var = pd.DataFrame({"gene_name": [f"G{j}" for j in range(g)], "gene_type": types},
                       index=[f"ENSG{j:011d}" for j in range(g)])
    obs = pd.DataFrame(index=[f"{prefix}{i}" for i in range(n)])
    return ad.AnnData(X=X.astype(np.float32), obs=obs, var=var)


def test_log2_1p() -> None:
    a = make(np.array([[0.0, 1.0, 3.0], [7.0, 15.0, 1023.0]]))
    b = log2_1p(a)
    np.testing.assert_allclose(b.X, [[0, 1, 2], [3, 4, 10]], rtol=1e-6)
    assert b.X.dtype == np.float32
    np.testing.assert_array_equal(a.X, [[0, 1, 3], [7, 15, 1023]])  # input untouched
    assert list(b.uns["oncoscale_preprocess"]["steps"]) == ["log2_1p"]
    with pytest.raises(InputError, match="already log2"):
        log2_1p(b)
    c = log2_1p(b, force=True)
    assert list(c.uns["oncoscale_preprocess"]["steps"]) == ["log2_1p", "log2_1p_2"]
    same = log2_1p(a, copy=False)
    assert same is a and a.X[1, 2] == pytest.approx(10.0)
    with pytest.raises(InputError, match="negative"):
        log2_1p(make(np.array([[1.0, -1.0]])))
    with pytest.raises(InputError, match="expects an AnnData"):
        log2_1p(np.zeros((2, 2)))


def test_filter_genes_types_and_variance() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (50, 6)) * np.array([0.1, 1, 2, 3, 0.5, 4]) + 10
    types = ["protein_coding", "lncRNA", "protein_coding", "protein_coding", "miRNA",
             "protein_coding"]
    a = make(X, types)
    b = filter_genes(a)
    assert list(b.var_names) == [a.var_names[j] for j in (0, 2, 3, 5)]
    c = filter_genes(a, gene_types=None, top_n_variance=2)
    assert list(c.var_names) == [a.var_names[3], a.var_names[5]]  # original order kept
    np.testing.assert_allclose(c.var["variance"], X[:, [3, 5]].var(axis=0), rtol=1e-4)
    d = filter_genes(a, gene_types=("protein_coding", "lncRNA"), min_variance=0.5)
    assert list(d.var_names) == [a.var_names[j] for j in (1, 2, 3, 5)]
    rec = d.uns["oncoscale_preprocess"]["filter_genes"]
    assert rec["n_genes_before"] == 6 and rec["n_genes_after"] == 4
    with pytest.raises(InputError, match="no gene of type"):
        filter_genes(a, gene_types=("snRNA",))
    with pytest.raises(InputError, match="no gene left"):
        filter_genes(a, gene_types=None, min_variance=1e9)
    a.var["gene_type"] = ""
    with pytest.raises(InputError, match="no 'gene_type' annotation"):
        filter_genes(a)
    with pytest.raises(ConfigurationError):
        filter_genes(make(X), top_n_variance=0)


def test_minmax_fit_on_train_apply_to_pairs() -> None:
    train = make(np.array([[0.0, 5.0, 2.0], [10.0, 7.0, 2.0], [5.0, 6.0, 2.0]]))
    pairs = make(np.array([[-5.0, 6.0, 3.0], [20.0, 5.5, 2.0]]), prefix="p")
    sc = MinMaxScaler().fit(train)
    np.testing.assert_array_equal(sc.min_, [0, 5, 2])
    np.testing.assert_array_equal(sc.max_, [10, 7, 2])
    t = sc.transform(train)
    np.testing.assert_allclose(t.X, [[0, 0, 0], [1, 1, 0], [0.5, 0.5, 0]])
    p = sc.transform(pairs)
    np.testing.assert_allclose(p.X, [[0, 0.5, 1], [1, 0.25, 0]])  # clipped to [0, 1]
    unclipped = MinMaxScaler(clip=False).fit(train).transform(pairs)
    np.testing.assert_allclose(unclipped.X, [[-0.5, 0.5, 1], [2, 0.25, 0]])
    np.testing.assert_array_equal(p.var["scale_min"], [0, 5, 2])
    # genes are aligned by id: reordered / extra genes in the other cohort
    shuffled = pairs[:, [2, 0, 1]].copy()
    np.testing.assert_allclose(sc.transform(shuffled).X, p.X)
    with pytest.raises(InputError, match="1 of the 3 fitted genes are missing"):
        sc.transform(pairs[:, [0, 1]].copy())
    re = MinMaxScaler.from_anndata(p)
    np.testing.assert_allclose(re.transform(pairs).X, p.X)
    with pytest.raises(ConfigurationError, match="not fitted"):
        MinMaxScaler().transform(train)
    np.testing.assert_allclose(MinMaxScaler().fit(train.X).transform(pairs.X), p.X)


@settings(max_examples=40, deadline=None)
@given(X=arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 6)),
                elements=st.floats(0, 1e6, width=32)),
       Y=arrays(np.float32, st.tuples(st.integers(1, 5), st.just(6)),
                elements=st.floats(0, 1e6, width=32)))
def test_minmax_property(X: np.ndarray, Y: np.ndarray) -> None:
    Y = Y[:, : X.shape[1]]
    sc = MinMaxScaler().fit(X)
    tx, ty = sc.transform(X), sc.transform(Y)
    for t in (tx, ty):
        assert t.dtype == np.float32 and (t >= 0).all() and (t <= 1).all()
    const = X.max(0) == X.min(0)
    assert np.allclose(tx.min(0)[~const], 0) and np.allclose(tx.max(0)[~const], 1, atol=1e-5)
    assert (tx[:, const] == 0).all()


def test_preprocess_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    types = ["protein_coding"] * 8 + ["lncRNA"] * 2
    train = make(rng.gamma(2.0, 50.0, (40, 10)), types)
    pairs = make(rng.gamma(2.0, 80.0, (6, 10)), types, prefix="p")
    pairs = pairs[:, ::-1].copy()  # other gene order
    t, p = preprocess(train, pairs, top_n_variance=5)
    assert t.n_vars == p.n_vars == 5 and list(t.var_names) == list(p.var_names)
    assert set(t.var["gene_type"]) == {"protein_coding"}
    assert t.X.min() >= 0 and t.X.max() <= 1 and p.X.min() >= 0 and p.X.max() <= 1
    logged = np.log2(1 + train[:, t.var_names].X.astype(np.float64))
    np.testing.assert_allclose(t.var["scale_min"], logged.min(0), rtol=1e-5)
    np.testing.assert_allclose(p.var["scale_max"], logged.max(0), rtol=1e-5)
    assert list(t.uns["oncoscale_preprocess"]["steps"]) == ["log2_1p", "filter_genes",
                                                            "minmax_scale"]
    assert p.uns["oncoscale_preprocess"]["filter_genes"]["selected_on"] == "train"
    t.write_h5ad(tmp_path / "t.h5ad")  # the uns record is h5ad-writable
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    assert list(back.uns["oncoscale_preprocess"]["steps"]) == ["log2_1p", "filter_genes",
                                                               "minmax_scale"]
    with pytest.raises(InputError, match="lacks 1 of the training genes"):
        preprocess(train, pairs[:, 1:].copy(), gene_types=None)
    (only,) = preprocess(train, scale=False, gene_types=None)
    np.testing.assert_allclose(only.X, np.log2(1 + train.X.astype(np.float64)), rtol=1e-5)
