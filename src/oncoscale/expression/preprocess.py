"""Preprocessing of expression AnnDatas (samples x genes), scanpy style.

Every function takes an AnnData and returns an AnnData (a new one unless ``copy=False``
where that makes sense) and appends what it did to ``adata.uns["oncoscale_preprocess"]``:
``{"steps": [...names...], "<name>": {...parameters and counts...}}``.

The published GDC autoencoder setup is: ``log2(1 + FPKM-UQ)``, protein-coding genes, then
per-gene min-max scaling to [0, 1] fitted on the training tumours and applied unchanged to the
tumour/normal pairs (:func:`preprocess` does exactly that).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from oncoscale.errors import ConfigurationError, InputError

__all__ = ["log2_1p", "filter_genes", "gene_variance", "MinMaxScaler", "preprocess"]

UNS_KEY = "oncoscale_preprocess"
_CHUNK = 1024  # rows per chunk for float64 statistics


def _require_anndata(adata: Any, who: str) -> None:
    if not (hasattr(adata, "X") and hasattr(adata, "var") and hasattr(adata, "obs")):
        raise InputError(f"{who} expects an AnnData (samples x genes), found "
                         f"{type(adata).__name__}")
    if adata.X is None:
        raise InputError(f"{who}: the AnnData has no X matrix")


def _h5ad_safe(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return np.asarray([str(x) for x in v], dtype=object) if v else np.array([], dtype=str)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _record(adata: Any, step: str, **params: Any) -> None:
    """Append ``step`` (with h5ad-writable params; None values dropped) to the uns record."""
    old = adata.uns.get(UNS_KEY, {})
    rec: dict[str, Any] = {k: v for k, v in dict(old).items()}
    steps = [str(s) for s in np.atleast_1d(rec.get("steps", np.array([], dtype=str)))]
    name, k = step, 2
    while name in rec:
        name, k = f"{step}_{k}", k + 1
    steps.append(name)
    rec["steps"] = np.asarray(steps, dtype=object)
    rec[name] = {key: _h5ad_safe(v) for key, v in params.items() if v is not None}
    adata.uns[UNS_KEY] = rec


def _done(adata: Any, step: str) -> bool:
    steps = adata.uns.get(UNS_KEY, {}).get("steps", [])
    return any(str(s) == step or str(s).startswith(step + "_") for s in np.atleast_1d(steps))


def log2_1p(adata: Any, *, copy: bool = True, force: bool = False) -> Any:
    """``X <- log2(1 + X)``, float32.

    Parameters
    ----------
    adata
        AnnData with non-negative ``X`` (n_samples x n_genes), e.g. FPKM-UQ values.
    copy
        Return a transformed copy (default) or transform ``adata`` in place and return it.
    force
        Transform even if ``uns["oncoscale_preprocess"]`` says it was already done.

    Raises
    ------
    InputError
        Negative values (which log2(1+x) cannot take), or already log-transformed.
    """
    _require_anndata(adata, "log2_1p")
    if _done(adata, "log2_1p") and not force:
        raise InputError("log2_1p: this AnnData is already log2(1+x)-transformed (see "
                         "uns['oncoscale_preprocess']); pass force=True to do it again")
    out = adata.copy() if (copy or adata.is_view) else adata
    X = out.X
    if sp.issparse(X):
        X = X.astype(np.float32)
        if X.data.size and X.data.min() < 0:
            raise InputError("log2_1p: X has negative values (expected counts or "
                             f"FPKM/TPM >= 0; minimum {X.data.min()})")
        X.data = np.log2(1.0 + X.data, dtype=np.float32)
    else:
        X = np.asarray(X)
        if X.dtype != np.float32:
            X = X.astype(np.float32)
        elif not X.flags.writeable:
            X = X.copy()
        if X.size and X.min() < 0:
            raise InputError("log2_1p: X has negative values (expected counts or "
                             f"FPKM/TPM >= 0; minimum {X.min()})")
        np.log1p(X, out=X)
        X *= np.float32(1.0 / np.log(2.0))
    out.X = X
    _record(out, "log2_1p", base=2, pseudocount=1.0)
    return out


def gene_variance(adata: Any) -> np.ndarray:
    """Per-gene variance over samples (population variance, ddof=0), float64, shape (n_genes,).

    Computed in row chunks with float64 accumulators (memory: one chunk, not a copy of X).
    """
    _require_anndata(adata, "gene_variance")
    X = adata.X
    n, g = X.shape
    if n == 0:
        return np.zeros(g)
    s = np.zeros(g)
    ss = np.zeros(g)
    for start in range(0, n, _CHUNK):
        block = X[start:start + _CHUNK]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        b = block.astype(np.float64)
        s += b.sum(axis=0)
        ss += np.einsum("ij,ij->j", b, b)
    mean = s / n
    return np.maximum(ss / n - mean * mean, 0.0)


def filter_genes(adata: Any, gene_types: Iterable[str] | None = ("protein_coding",),
                 min_variance: float | None = None, top_n_variance: int | None = None) -> Any:
    """Keep genes by type and by variance; returns a new AnnData (genes in original order).

    Parameters
    ----------
    adata
        AnnData (n_samples x n_genes) with ``var["gene_type"]`` when ``gene_types`` is set.
    gene_types
        Gene types to keep (GENCODE ``gene_type``, e.g. ``"protein_coding"``, ``"lncRNA"``);
        None keeps every type.
    min_variance
        Keep genes whose variance over the samples (ddof=0, in the units of X - usually
        log2 values) is >= this.
    top_n_variance
        Then keep the ``top_n_variance`` most variable genes (ties: lower position first).

    Returns
    -------
    anndata.AnnData
        Subset copy; ``var["variance"]`` holds the variances it was filtered on.

    Raises
    ------
    InputError
        No ``gene_type`` annotation, or no gene left.
    """
    _require_anndata(adata, "filter_genes")
    keep = np.ones(adata.n_vars, dtype=bool)
    n_before = int(adata.n_vars)
    types_kept = None
    if gene_types is not None:
        types_kept = [gene_types] if isinstance(gene_types, str) else list(gene_types)
        if "gene_type" not in adata.var.columns or (
                adata.var["gene_type"].astype(str) == "").all():
            raise InputError("filter_genes: var has no 'gene_type' annotation (legacy HTSeq "
                             "files carry none); pass gene_types=None or annotate var")
        keep &= adata.var["gene_type"].astype(str).isin(types_kept).to_numpy()
        if not keep.any():
            found = sorted(adata.var["gene_type"].astype(str).unique())[:10]
            raise InputError(f"filter_genes: no gene of type(s) {types_kept}; var has "
                             f"types {found}")
    if min_variance is not None and top_n_variance is not None and top_n_variance < 1:
        raise ConfigurationError(f"top_n_variance must be >= 1, got {top_n_variance}")
    variance = None
    if min_variance is not None or top_n_variance is not None:
        variance = gene_variance(adata)
        if min_variance is not None:
            keep &= variance >= min_variance
        if top_n_variance is not None:
            if top_n_variance < 1:
                raise ConfigurationError(f"top_n_variance must be >= 1, got {top_n_variance}")
            cand = np.flatnonzero(keep)
            if cand.size > top_n_variance:
                order = np.argsort(-variance[cand], kind="stable")[:top_n_variance]
                sel = np.zeros_like(keep)
                sel[cand[order]] = True
                keep = sel
    if not keep.any():
        raise InputError(f"filter_genes: no gene left (min_variance={min_variance})")
    out = adata[:, keep].copy()
    if variance is not None:
        out.var["variance"] = variance[keep]
    _record(out, "filter_genes", gene_types=types_kept, min_variance=min_variance,
            top_n_variance=top_n_variance, n_genes_before=n_before,
            n_genes_after=int(keep.sum()))
    return out


class MinMaxScaler:
    """Per-gene min-max scaling to [0, 1], fitted on one cohort and applied unchanged to others.

    ``x' = (x - min_g) / (max_g - min_g)`` with ``min_g``, ``max_g`` taken on the fitted
    (training) cohort; a gene constant in training maps to ``x - min_g``. Values of another
    cohort outside the training range would fall outside [0, 1]; with ``clip=True`` (default)
    they are clipped to [0, 1], which a sigmoid-output autoencoder needs.

    Parameters
    ----------
    clip
        Clip transformed values to [0, 1].

    Attributes
    ----------
    min_, max_ : numpy.ndarray
        Per-gene training minimum and maximum, float32, shape (n_genes,).
    var_names_ : numpy.ndarray or None
        Gene ids the scaler was fitted on (None when fitted on a plain array).
    n_features_in_ : int
    """

    def __init__(self, clip: bool = True) -> None:
        self.clip = clip

    def fit(self, adata: Any) -> MinMaxScaler:
        """Learn per-gene min and max from an AnnData or an (n_samples, n_genes) array."""
        X, names = self._unpack(adata, "fit")
        if X.shape[0] == 0:
            raise InputError("MinMaxScaler.fit: no samples")
        mn = np.full(X.shape[1], np.inf, dtype=np.float32)
        mx = np.full(X.shape[1], -np.inf, dtype=np.float32)
        for start in range(0, X.shape[0], _CHUNK):
            block = X[start:start + _CHUNK]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            if not np.isfinite(block).all():
                raise InputError("MinMaxScaler.fit: X has NaN or infinite values")
            np.minimum(mn, block.min(axis=0), out=mn)
            np.maximum(mx, block.max(axis=0), out=mx)
        self.min_, self.max_ = mn, mx
        self.var_names_ = names
        self.n_features_in_ = int(X.shape[1])
        self.n_samples_fit_ = int(X.shape[0])
        return self

    @classmethod
    def from_anndata(cls, adata: Any, clip: bool = True) -> MinMaxScaler:
        """Rebuild a fitted scaler from the ``scale_min`` / ``scale_max`` var columns that
        :meth:`transform` writes (e.g. after reloading an .h5ad)."""
        if "scale_min" not in adata.var.columns or "scale_max" not in adata.var.columns:
            raise InputError("this AnnData has no var['scale_min'] / var['scale_max'] columns "
                             "(it was not transformed by MinMaxScaler)")
        sc = cls(clip=clip)
        sc.min_ = adata.var["scale_min"].to_numpy(np.float32)
        sc.max_ = adata.var["scale_max"].to_numpy(np.float32)
        sc.var_names_ = np.asarray(adata.var_names, dtype=object)
        sc.n_features_in_ = int(adata.n_vars)
        return sc

    def _unpack(self, adata: Any, who: str) -> tuple[Any, np.ndarray | None]:
        if hasattr(adata, "var_names") and hasattr(adata, "X"):
            return adata.X, np.asarray(adata.var_names, dtype=object)
        X = adata if sp.issparse(adata) else np.asarray(adata)
        if X.ndim != 2:
            raise InputError(f"MinMaxScaler.{who}: expected a 2-d (samples x genes) array, "
                             f"found shape {X.shape}")
        return X, None

    def _check_fitted(self) -> None:
        if not hasattr(self, "min_"):
            raise ConfigurationError("MinMaxScaler is not fitted; call fit() first")

    def _scale(self, X: Any, cols: np.ndarray | None) -> np.ndarray:
        mn, mx = (self.min_, self.max_) if cols is None else (self.min_[cols], self.max_[cols])
        rng = mx - mn
        rng = np.where(rng > 0, rng, np.float32(1.0)).astype(np.float32)
        out = np.empty(X.shape, dtype=np.float32)
        for start in range(0, X.shape[0], _CHUNK):
            block = X[start:start + _CHUNK]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            b = (block.astype(np.float32, copy=False) - mn) / rng
            if self.clip:
                np.clip(b, 0.0, 1.0, out=b)
            out[start:start + b.shape[0]] = b
        return out

    def transform(self, adata: Any) -> Any:
        """Apply the fitted scaling; returns a new AnnData (or array for array input).

        An AnnData is aligned by gene id: its genes must include every fitted gene (extra
        genes are dropped, order follows the fit).

        Raises
        ------
        InputError
            Genes the scaler was fitted on are missing, or the gene count differs.
        """
        self._check_fitted()
        X, names = self._unpack(adata, "transform")
        if names is None:
            if X.shape[1] != self.n_features_in_:
                raise InputError(f"MinMaxScaler.transform: expected {self.n_features_in_} "
                                 f"genes (columns), found {X.shape[1]}")
            return self._scale(X, None)
        cols = None
        if self.var_names_ is not None and not np.array_equal(names, self.var_names_):
            idx = pd.Index(names).get_indexer(pd.Index(self.var_names_))
            if (idx < 0).any():
                missing = self.var_names_[idx < 0]
                raise InputError(f"MinMaxScaler.transform: {missing.size} of the "
                                 f"{self.n_features_in_} fitted genes are missing "
                                 f"(e.g. {', '.join(map(str, missing[:3]))})")
            cols = idx
        elif X.shape[1] != self.n_features_in_:
            raise InputError(f"MinMaxScaler.transform: expected {self.n_features_in_} genes, "
                             f"found {X.shape[1]}")
        src = adata if cols is None else adata[:, cols]
        Xs = self._scale(src.X, None)
        out = src.copy() if not src.is_view else src.copy()
        out.X = Xs
        out.var["scale_min"] = self.min_
        out.var["scale_max"] = self.max_
        _record(out, "minmax_scale", clip=bool(self.clip),
                fitted_on_n_samples=getattr(self, "n_samples_fit_", None),
                n_genes=int(self.n_features_in_))
        return out

    def fit_transform(self, adata: Any) -> Any:
        """``fit(adata)`` then ``transform(adata)``."""
        return self.fit(adata).transform(adata)

    def __repr__(self) -> str:
        return f"MinMaxScaler(clip={self.clip})"


def preprocess(train: Any, *others: Any, log: bool = True,
               gene_types: Iterable[str] | None = ("protein_coding",),
               min_variance: float | None = None, top_n_variance: int | None = None,
               scale: bool = True, clip: bool = True) -> tuple[Any, ...]:
    """The published GDC preprocessing: log2(1+x), gene filters, [0, 1] scaling.

    Gene filters and scaling are fitted on ``train`` only; each of ``others`` (e.g. the
    tumour/normal pairs) gets the same genes, in the same order, and the same per-gene
    min/max (values outside the training range are clipped to [0, 1] when ``clip``).

    Parameters
    ----------
    train
        Training cohort, AnnData (n_train x n_genes) of non-negative values (e.g. FPKM-UQ).
    *others
        Further cohorts with (a superset of) the same genes.
    log
        Apply :func:`log2_1p` first (skip if the data are already logged).
    gene_types, min_variance, top_n_variance
        See :func:`filter_genes` (variance measured on ``train`` after the log).
    scale
        Fit :class:`MinMaxScaler` on ``train`` and apply it to all.
    clip
        Clip scaled values to [0, 1].

    Returns
    -------
    tuple of anndata.AnnData
        ``(train, *others)`` transformed, all with identical ``var_names``; ``var`` has
        ``scale_min`` / ``scale_max`` and ``uns["oncoscale_preprocess"]`` records the steps.
    """
    _require_anndata(train, "preprocess")
    for o in others:
        _require_anndata(o, "preprocess")
    cohorts = [train, *others]
    if log:
        cohorts = [log2_1p(a) for a in cohorts]
    filtering = gene_types is not None or min_variance is not None or top_n_variance is not None
    t = cohorts[0]
    if filtering:
        t = filter_genes(t, gene_types=gene_types, min_variance=min_variance,
                         top_n_variance=top_n_variance)
    genes = t.var_names
    rest = []
    for k, a in enumerate(cohorts[1:], start=1):
        idx = a.var_names.get_indexer(genes)
        if (idx < 0).any():
            miss = genes[idx < 0]
            raise InputError(f"preprocess: cohort {k} lacks {len(miss)} of the training "
                             f"genes (e.g. {', '.join(map(str, miss[:3]))})")
        if filtering or not np.array_equal(idx, np.arange(a.n_vars)):
            b = a[:, idx].copy()
            _record(b, "filter_genes", selected_on="train", n_genes_before=int(a.n_vars),
                    n_genes_after=int(len(genes)))
        else:
            b = a
        rest.append(b)
    cohorts = [t, *rest]
    if scale:
        scaler = MinMaxScaler(clip=clip).fit(cohorts[0])
        cohorts = [scaler.transform(a) for a in cohorts]
    return tuple(cohorts)
