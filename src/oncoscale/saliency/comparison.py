"""Compare the best ANS node with PCA and t-SNE on the same samples.

For each method one coordinate (or map) is scored on how well it separates the two classes:

- ``auc``: ROC AUC of the single best coordinate, as ``max(auc, 1 - auc)`` (direction-free);
- ``cv_accuracy``: mean accuracy of a logistic regression (standardised input) under stratified
  k-fold cross-validation, on the 1-D coordinate (node, principal component) or the 2-D t-SNE map;
- ``silhouette``: silhouette score of the coordinate (or map) with the labels as clusters.

The best ANS node and the best principal component are *chosen on the same labels* they are
scored with (by SNS and by AUC respectively), so their scores are optimistic in the same way;
``pca_pc1`` is the unsupervised first component for reference. t-SNE is fitted on all samples
(transductive), so its cross-validation only covers the classifier on a fixed map.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from oncoscale.errors import ConfigurationError, InputError
from oncoscale.saliency._validate import as_activations, as_binary_labels
from oncoscale.saliency.measures import ans

__all__ = ["ComparisonResult", "compare", "separation_auc"]

_SILHOUETTE_MAX_SAMPLES = 5000


@dataclass(frozen=True)
class ComparisonResult:
    """What :func:`compare` returns.

    Attributes
    ----------
    table
        Index ``method`` (``"ans_node"``, ``"pca_best"``, ``"pca_pc1"``, ``"tsne"``); columns
        ``coordinate`` (e.g. ``"node 315"``, ``"PC3"``, ``"tSNE1+tSNE2"``), ``auc``,
        ``cv_accuracy``, ``silhouette``.
    ans_table
        The ANS table used to pick the node (see :func:`oncoscale.saliency.ans`).
    best_node, second_node
        0-based numbers of the two nodes ranked first and second by ``sns_binary``.
    best_pc
        0-based index of the principal component with the highest separation AUC.
    node_values, second_values
        (n_samples,) activations of ``best_node`` and ``second_node``.
    pca
        (n_samples, n_components) principal-component scores.
    pca_variance_ratio
        (n_components,) explained variance ratio of each component.
    tsne
        (n_samples, 2) t-SNE map.
    labels
        (n_samples,) int8 class labels 0/1.
    """

    table: pd.DataFrame
    ans_table: pd.DataFrame
    best_node: int
    second_node: int
    best_pc: int
    node_values: np.ndarray
    second_values: np.ndarray
    pca: np.ndarray
    pca_variance_ratio: np.ndarray
    tsne: np.ndarray
    labels: np.ndarray


def separation_auc(X: Any, labels: Any) -> np.ndarray:
    """ROC AUC of every column of ``X`` (n_samples, k) for class 1, ties by mid-ranks.

    Returns float64 (k,) values of P(x1 > x0) + P(x1 = x0) / 2; take ``max(auc, 1 - auc)``
    for a direction-free separation score.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    lab = np.asarray(labels).astype(bool)
    n1 = int(lab.sum())
    n0 = lab.size - n1
    ranks = rankdata(X, axis=0)
    return (ranks[lab].sum(axis=0) - n1 * (n1 + 1) / 2.0) / (n0 * n1)


def _cv_accuracy(X: np.ndarray, lab: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(folds, int(np.bincount(lab, minlength=2).min()))
    if k < 2:
        return float("nan")
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    return float(cross_val_score(model, X, lab, cv=cv, scoring="accuracy").mean())


def _silhouette(X: np.ndarray, lab: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    size = _SILHOUETTE_MAX_SAMPLES if X.shape[0] > _SILHOUETTE_MAX_SAMPLES else None
    return float(silhouette_score(X, lab, sample_size=size, random_state=seed))


def compare(latent: Any, labels: Any, *, ans_table: pd.DataFrame | None = None,
            features: Any = None, pca_components: int = 50,
            tsne_kwargs: dict[str, Any] | None = None, seed: int = 0, cv_folds: int = 5,
            bins: int = 10, rescale: bool = False) -> ComparisonResult:
    """Score the best ANS node, the best principal component and a t-SNE map side by side.

    Parameters
    ----------
    latent
        (n_samples, n_nodes) autoencoder activations; the ANS node is a column of it.
    labels
        (n_samples,) 0/1 or boolean classes (validated as in :func:`~oncoscale.saliency.ans`).
    ans_table
        A table from :func:`~oncoscale.saliency.ans` on the same data; computed (with ``bins``
        and ``rescale``) when None. The best node is the one ranked first by ``sns_binary``.
    features
        (n_samples, n_features) matrix for PCA and t-SNE; default the latent itself. Pass the
        preprocessed expression to compare with PCA / t-SNE of the input instead.
    pca_components
        Number of principal components kept (capped by the data's shape); scikit-learn PCA.
    tsne_kwargs
        Extra arguments for ``openTSNE.TSNE`` (default: 2 components, perplexity
        ``min(30, (n - 1) / 3)``, ``n_jobs=1``, ``random_state=seed``). ``n_jobs=1`` is the
        default on purpose: on a busy 2-core machine openTSNE with ``n_jobs=2`` took 45 s
        instead of 2.5 s for the 224-sample breast fixture; pass ``{"n_jobs": 2}`` (or more)
        on a machine with idle cores.
    seed
        Seed of PCA's randomised solver, t-SNE, the CV splits and the silhouette subsample.
    cv_folds
        Folds of the stratified cross-validation (capped by the smaller class size).

    Returns
    -------
    ComparisonResult
        ``table`` (index ``method``, columns ``coordinate``, ``auc``, ``cv_accuracy``,
        ``silhouette``) plus the embeddings. The t-SNE ``auc`` is that of the better of its two
        axes (a t-SNE map has no preferred direction, so prefer ``cv_accuracy`` for it).
        The silhouette uses a random subsample of 5,000 samples above that size.
    """
    from openTSNE import TSNE
    from sklearn.decomposition import PCA

    A = as_activations(latent, "latent")
    n = A.shape[0]
    lab = as_binary_labels(labels, n)
    if isinstance(pca_components, bool) or not isinstance(pca_components, int | np.integer) \
            or pca_components < 1:
        raise ConfigurationError(f"pca_components: expected a positive integer, found "
                                 f"{pca_components!r}")
    if isinstance(cv_folds, bool) or not isinstance(cv_folds, int | np.integer) or cv_folds < 2:
        raise ConfigurationError(f"cv_folds: expected an integer >= 2, found {cv_folds!r}")
    if ans_table is None:
        ans_table = ans(A, lab, bins=bins, rescale=rescale)
    elif len(ans_table) != A.shape[1] or "sns_binary" not in ans_table.columns:
        raise InputError(f"ans_table: expected the table of ans() for these {A.shape[1]} nodes "
                         f"(with a sns_binary column), found {len(ans_table)} rows and columns "
                         f"{list(ans_table.columns)[:6]}")
    F = A if features is None else as_activations(features, "features")
    if F.shape[0] != n:
        raise InputError(f"features: expected {n} rows (one per sample of the latent), found "
                         f"{F.shape[0]}")
    F = np.asarray(F, dtype=np.float64)
    if not np.isfinite(F).all():
        raise InputError("features: expected finite values, found NaN or infinity")

    # the index holds node numbers (0-based columns of the latent); after a round trip through
    # .h5ad it may hold them as strings, and the table may have been re-sorted
    try:
        nodes = np.asarray(ans_table.index, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise InputError("ans_table: expected node numbers as index, found "
                         f"{list(ans_table.index[:3])}") from exc
    order = np.argsort(ans_table["sns_binary"].to_numpy(), kind="stable")
    best_node = int(nodes[order[0]])
    second_node = int(nodes[order[1]]) if order.size > 1 else best_node
    if not 0 <= best_node < A.shape[1]:
        raise InputError(f"ans_table: best node {best_node} is not a column of the latent "
                         f"({A.shape[1]} nodes)")
    node_values = np.asarray(A[:, best_node], dtype=np.float64)
    second_values = np.asarray(A[:, second_node], dtype=np.float64)

    k = int(min(pca_components, n, F.shape[1]))
    pca = PCA(n_components=k, random_state=seed)
    scores = pca.fit_transform(F)
    pc_auc = separation_auc(scores, lab)
    pc_sep = np.maximum(pc_auc, 1.0 - pc_auc)
    best_pc = int(np.argmax(pc_sep))

    kw: dict[str, Any] = {"n_components": 2, "perplexity": max(1.0, min(30.0, (n - 1) / 3.0)),
                          "n_jobs": 1, "random_state": seed, "verbose": False}
    kw.update(tsne_kwargs or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        tsne = np.asarray(TSNE(**kw).fit(F), dtype=np.float64)
    ts_auc = separation_auc(tsne, lab)
    ts_sep = np.maximum(ts_auc, 1.0 - ts_auc)

    rows = []
    node_auc = separation_auc(node_values, lab)[0]
    for method, coord, X1, auc in (
        ("ans_node", f"node {best_node}", node_values[:, None], max(node_auc, 1 - node_auc)),
        ("pca_best", f"PC{best_pc + 1}", scores[:, best_pc:best_pc + 1], pc_sep[best_pc]),
        ("pca_pc1", "PC1", scores[:, :1], pc_sep[0]),
        ("tsne", "tSNE1+tSNE2", tsne, ts_sep.max()),
    ):
        rows.append({"method": method, "coordinate": coord, "auc": float(auc),
                     "cv_accuracy": _cv_accuracy(X1, lab, int(cv_folds), seed),
                     "silhouette": _silhouette(X1, lab, seed)})
    table = pd.DataFrame(rows).set_index("method")
    return ComparisonResult(table=table, ans_table=ans_table, best_node=best_node,
                            second_node=second_node, best_pc=best_pc, node_values=node_values,
                            second_values=second_values,
                            pca=scores, pca_variance_ratio=pca.explained_variance_ratio_,
                            tsne=tsne, labels=lab)
