"""AnnData front ends (scanpy style): read the latent from ``obsm``, store results in the object.

- :func:`ans_adata` stores the ANS table in ``adata.uns["ans"]`` (a DataFrame, written to and
  read back from ``.h5ad`` by anndata with its integer ``node`` index) and its settings in
  ``adata.uns["ans_params"]``.
- :func:`compare_adata` stores ``obsm["X_pca"]``, ``obsm["X_tsne"]``,
  ``uns["pca"]["variance_ratio"]`` and the comparison table in ``uns["ans_comparison"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oncoscale.errors import InputError
from oncoscale.saliency.comparison import ComparisonResult, compare
from oncoscale.saliency.measures import ans

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["ans_adata", "compare_adata", "labels_from_obs"]


def _latent(adata: AnnData, obsm_key: str) -> np.ndarray:
    if obsm_key not in adata.obsm:
        raise InputError(f"obsm_key: adata.obsm has no {obsm_key!r}; found "
                         f"{sorted(adata.obsm.keys())}")
    return np.asarray(adata.obsm[obsm_key])


def labels_from_obs(adata: AnnData, label_key: str, positive: Any = None) -> np.ndarray:
    """0/1 labels from ``adata.obs[label_key]``.

    With ``positive`` given, class 1 is ``obs[label_key] == positive`` (e.g. ``"tumour"``) and
    every other value is class 0. Without it the column must already be boolean or 0/1.
    """
    if label_key not in adata.obs.columns:
        raise InputError(f"label_key: adata.obs has no column {label_key!r}; found "
                         f"{list(adata.obs.columns)}")
    col = adata.obs[label_key]
    if positive is None:
        values = col.to_numpy()
        if isinstance(col.dtype, pd.CategoricalDtype):
            values = np.asarray(col.astype(col.cat.categories.dtype))
        return values
    hit = (col == positive).to_numpy(dtype=bool)
    if not hit.any():
        found = pd.unique(col.astype(str))[:8].tolist()
        raise InputError(f"positive: the value {positive!r} does not occur in "
                         f"obs[{label_key!r}]; found {found}")
    return hit


def ans_adata(adata: AnnData, obsm_key: str = "X_ae", label_key: str = "label", *,
              positive: Any = None, bins: int = 10, rescale: bool = False,
              class_balanced: bool = False, key_added: str = "ans") -> pd.DataFrame:
    """Run :func:`~oncoscale.saliency.ans` on ``adata.obsm[obsm_key]`` and store the table.

    Parameters
    ----------
    adata
        AnnData whose ``obsm[obsm_key]`` is the (n_obs, n_nodes) latent in [0, 1].
    label_key
        Column of ``adata.obs`` with the classes (boolean / 0-1, or any values with
        ``positive`` naming class 1, e.g. ``label_key="sample_type", positive="tumour"``).
    bins, rescale, class_balanced
        As in :func:`~oncoscale.saliency.ans`.
    key_added
        The table goes to ``adata.uns[key_added]`` (a DataFrame that survives ``write_h5ad``),
        the settings to ``adata.uns[key_added + "_params"]``.

    Returns
    -------
    pandas.DataFrame
        The table (also stored), one row per node.
    """
    A = _latent(adata, obsm_key)
    lab = labels_from_obs(adata, label_key, positive)
    table = ans(A, lab, bins=bins, rescale=rescale, class_balanced=class_balanced)
    adata.uns[key_added] = table
    adata.uns[f"{key_added}_params"] = {
        "obsm_key": obsm_key, "label_key": label_key,
        "positive": "" if positive is None else str(positive),
        "bins": int(bins), "rescale": bool(rescale), "class_balanced": bool(class_balanced),
    }
    return table


def compare_adata(adata: AnnData, obsm_key: str = "X_ae", label_key: str = "label", *,
                  positive: Any = None, features_key: str | None = None,
                  ans_key: str = "ans", **kwargs: Any) -> ComparisonResult:
    """Run :func:`~oncoscale.saliency.compare` on an AnnData and store the embeddings.

    Uses ``adata.uns[ans_key]`` as the ANS table when it is there (else computes it and stores
    it there). PCA / t-SNE run on the latent, or on ``adata.X`` when ``features_key="X"``, or on
    ``adata.obsm[features_key]``. Stores ``obsm["X_pca"]``, ``obsm["X_tsne"]``,
    ``uns["pca"] = {"variance_ratio": ...}`` and ``uns["ans_comparison"]`` (the table).
    ``kwargs`` go to :func:`~oncoscale.saliency.compare` (``pca_components``,
    ``tsne_kwargs``, ``seed``, ``cv_folds``, ``bins``, ``rescale``).
    """
    A = _latent(adata, obsm_key)
    lab = labels_from_obs(adata, label_key, positive)
    table = adata.uns.get(ans_key)
    if not isinstance(table, pd.DataFrame) or len(table) != A.shape[1]:
        table = ans_adata(adata, obsm_key, label_key, positive=positive,
                          bins=kwargs.get("bins", 10), rescale=kwargs.get("rescale", False),
                          key_added=ans_key)
    features = None
    if features_key == "X":
        X = adata.X
        features = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    elif features_key is not None:
        features = _latent(adata, features_key)
    result = compare(A, lab, ans_table=table, features=features, **kwargs)
    adata.obsm["X_pca"] = result.pca
    adata.obsm["X_tsne"] = result.tsne
    adata.uns["pca"] = {"variance_ratio": result.pca_variance_ratio}
    adata.uns["ans_comparison"] = result.table
    return result
