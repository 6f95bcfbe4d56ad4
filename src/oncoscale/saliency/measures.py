"""Autoencoder node saliency (ANS): histogram measures of latent nodes, vectorised over nodes.

The measures follow Fan et al., "Autoencoder Node Saliency: Selecting Relevant Latent
Representations" (Pattern Recognition 2019) and "Distinguishing between Normal and Cancer Cells
Using Autoencoder Node Saliency" (2018), and the authors' public ``ans.py``
(CBIIT/NCI-DOE-Collab-Pilot1-Autoencoder-Node-Saliency). Everything is computed for all nodes at
once, block by block of nodes: one row-wise numpy sort of (activation, label) keys per block
gives the class histograms (positions of the exact bin edges, found by a binary search run on
all nodes at once), the Mann-Whitney rank sum and the best threshold. There is no Python loop
over nodes. Blocks may run on several threads (numpy releases the GIL).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from oncoscale.errors import InputError
from oncoscale.saliency._validate import as_activations, as_binary_labels, check_bins

__all__ = ["ans", "ans_histograms", "bin_edges", "bin_index", "COLUMNS"]

#: Columns of the table returned by :func:`ans`, in order.
COLUMNS = (
    "n_occupied", "ned", "ned0", "ned1", "ned_below_classes",
    "ce0_binary", "ce1_binary", "sns_binary", "sns_binary_class",
    "ce0_increasing", "ce1_increasing", "sns_increasing", "sns_increasing_class",
    "mean0", "mean1", "auc", "auc_separation",
    "best_threshold", "threshold_above_class", "threshold_accuracy",
    "rank_sns_binary", "rank_sns_increasing",
)

_BLOCK_ELEMENTS = 1 << 22  # about 4 M activations (16-32 MB) per block of nodes


def bin_edges(bins: int, dtype: Any = np.float64) -> np.ndarray:
    """Inner bin edges ``e_k = k/B`` (k = 1..B-1) as the nearest ``dtype`` numbers.

    A value ``a`` lies in 0-based bin ``#{k : a > e_k}``: a value that equals an edge as
    stored in floating point (e.g. the float 0.1 for B = 10) lies in the lower bin, as the
    definition's closed right ends ((k-1)/B, k/B] say; everything else is placed exactly, with
    no rounding of ``a * B``. The edges are in the activations' own precision.
    """
    return _bin_edges(int(bins), np.dtype(dtype).name).copy()


@functools.lru_cache(maxsize=64)
def _bin_edges(bins: int, dtype: str) -> np.ndarray:
    """Cached worker of :func:`bin_edges`."""
    dt = np.dtype(dtype).type
    out = np.empty(bins - 1, dtype=dt)
    for k in range(1, bins):
        target = Fraction(k, bins)
        e = dt(k / bins)
        cands = (np.nextafter(e, dt(0)), e, np.nextafter(e, dt(1)))
        out[k - 1] = min(cands, key=lambda c: abs(Fraction(float(c)) - target))
    return out


def bin_index(values: Any, bins: int) -> np.ndarray:
    """0-based ANS bin of each activation in [0, 1]: ``max(ceil(a * B) - 1, 0)``.

    Bin 0 is [0, 1/B]; 0-based bin k >= 1 is (k/B, (k+1)/B]. The edges are the floats nearest
    to k/B in the values' precision (float32 stays float32, see :func:`bin_edges`); a value
    equal to an edge lies in the lower bin. Returns int64 of the same shape as ``values``.
    """
    arr = np.asarray(values)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    edges = bin_edges(check_bins(bins), dtype)
    return np.searchsorted(edges, arr.astype(dtype, copy=False), side="left").astype(np.int64)


def _entropy_ned(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NED per row of a (nodes, B) count matrix and the number of occupied bins M.

    NED = 1 - H / log2(M) with H the base-2 entropy of the occupied bins' probabilities;
    NED = 1 when M <= 1.
    """
    total = counts.sum(axis=1, keepdims=True)
    p = counts / np.where(total > 0, total, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    h = -plogp.sum(axis=1)
    m = (counts > 0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ned = np.where(m > 1, 1.0 - h / np.log2(np.maximum(m, 2)), 1.0)
    return ned, m


def _cross_entropies(h0: np.ndarray, h1: np.ndarray, r: np.ndarray,
                     class_balanced: bool, n0: int, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """CE_0 and CE_1 (bits) per node for target distribution ``r`` (length B)."""
    total = h0 + h1
    p = total / float(n0 + n1)  # share of ALL samples in each bin
    if class_balanced:
        w0, w1 = h0 / float(n0), h1 / float(n1)
    else:
        w0, w1 = h0.astype(np.float64), h1.astype(np.float64)
    denom = w0 + w1
    with np.errstate(divide="ignore", invalid="ignore"):
        q1 = np.where(denom > 0, w1 / np.where(denom > 0, denom, 1.0), 0.0)
    q0 = 1.0 - q1
    mixed = (h0 > 0) & (h1 > 0)  # bins with q in {0, 1} (or empty) contribute nothing
    safe1 = np.where(mixed, q1, 0.5)
    safe0 = np.where(mixed, q0, 0.5)
    lq1, lq0 = np.log2(safe1), np.log2(safe0)
    # for class 1: r log2 q1 + (1 - r) log2(1 - q1) with 1 - q1 = q0, and symmetrically.
    term1 = r * lq1 + (1.0 - r) * lq0
    term0 = r * lq0 + (1.0 - r) * lq1
    ce1 = -(np.where(mixed, p * term1, 0.0)).sum(axis=1)
    ce0 = -(np.where(mixed, p * term0, 0.0)).sum(axis=1)
    return ce0 + 0.0, ce1 + 0.0  # + 0.0 turns -0.0 into 0.0


def _transpose(A: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Copy ``A[:, start:stop]`` into a C-contiguous (nodes, samples) array, tile by tile.

    Tiles of about 160 kB keep the strided copy in cache (about 3x faster than a plain
    ``ascontiguousarray(A[:, start:stop].T)`` on 100 k samples).
    """
    n = A.shape[0]
    nb = stop - start
    out = np.empty((nb, n), dtype=A.dtype)
    step = max(64, 160_000 // (nb * A.dtype.itemsize))
    for i in range(0, n, step):
        out[:, i:i + step] = A[i:i + step, start:stop].T
    return out


def _count_le(keys: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each row of sorted ``keys`` (rows, n) and each target, how many keys are <= it.

    A binary search run on all rows and targets at once (about log2(n) vectorised steps).
    Returns int64 of shape (rows, len(targets)).
    """
    rows, n = keys.shape
    lo = np.zeros((rows, targets.size), dtype=np.int64)
    hi = np.full((rows, targets.size), n, dtype=np.int64)
    r = np.arange(rows)[:, None]
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        v = keys[r, np.minimum(mid, n - 1)]
        go_right = active & (v <= targets[None, :])
        go_left = active & ~go_right
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(go_left, mid, hi)


def _block(A: np.ndarray, start: int, stop: int, lab: np.ndarray, bins: int,
           rescale: bool) -> dict[str, np.ndarray]:
    """All per-node quantities for nodes ``start:stop`` (see :func:`ans`).

    One sort per node does everything: the bin counts (positions of the exact bin edges in
    the sorted activations), the rank sum for the AUC, and the best threshold.
    """
    n = A.shape[0]
    nb = stop - start
    X = _transpose(A, start, stop)  # (nb, n), one node per row
    lo = X.min(axis=1)
    hi = X.max(axis=1)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise InputError(f"activations: expected finite values, found NaN or infinity in node "
                         f"{start + j} (column {start + j})")
    n1 = int(lab.sum())
    n0 = n - n1
    sum_all = X.sum(axis=1, dtype=np.float64)
    sum1 = (X @ lab.astype(X.dtype)).astype(np.float64)
    out: dict[str, np.ndarray] = {"mean1": sum1 / n1, "mean0": (sum_all - sum1) / n0}
    if rescale:
        span = (hi.astype(np.float64) - lo.astype(np.float64))
        const = span <= 0
        W = X.astype(np.float64)
        W -= lo.astype(np.float64)[:, None]
        W /= np.where(const, 1.0, span)[:, None]
        W[const] = 0.0
        np.clip(W, 0.0, 1.0, out=W)
        X = W
        lo = lo.astype(np.float64)
    else:
        outside = (lo < 0) | (hi > 1)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            found = float(lo[j]) if lo[j] < 0 else float(hi[j])
            raise InputError(
                f"activations: expected values in [0, 1] (e.g. sigmoid outputs), found "
                f"{found!r} in node {start + j}; pass rescale=True to min-max scale each node "
                f"to [0, 1]")
        lo = np.zeros(nb)
        span = np.ones(nb)

    # -- sort (value, label) keys; class 0 sorts before class 1 within ties --------------------
    # Activations are >= 0, so their IEEE bits order like the values; the sign bit is free and
    # the shift drops it (-0.0 and 0.0 both give key 0).
    itype = np.int32 if X.dtype == np.float32 else np.int64
    keys = X.view(itype)  # X is this block's own copy: turn it into keys in place
    del X
    keys <<= 1
    keys |= lab.astype(itype)
    keys.sort(axis=1)
    ctype = np.int32 if n < 2**30 else np.int64  # counts and d = (p + 1) - 2 c1 must fit
    c1 = np.empty(keys.shape, dtype=ctype)
    np.bitwise_and(keys, 1, out=c1, casting="unsafe")  # labels in sorted order
    np.cumsum(c1, axis=1, out=c1)  # class-1 samples at or before each position
    rows = np.arange(nb)

    # -- histograms: positions of the exact bin edges in the sorted activations ----------------
    edge_keys = (_bin_edges(bins, "float32" if itype is np.int32 else "float64")
                 .view(itype).astype(itype) << 1) | 1
    cuts = np.zeros((nb, bins + 1), dtype=np.int64)
    cuts[:, 1:bins] = _count_le(keys, edge_keys)
    cuts[:, bins] = n
    c1_cut = np.where(cuts > 0, c1[rows[:, None], np.maximum(cuts - 1, 0)], 0).astype(np.int64)
    total = np.diff(cuts, axis=1)
    out["h1"] = np.diff(c1_cut, axis=1)
    out["h0"] = total - out["h1"]

    # -- AUC: rank sum of class 1, minus half of the tied (class 0, class 1) pairs -------------
    # sum of 1-based positions of class 1 = (n + 1) n1 - sum_p c1[p]
    rank_sum = (n + 1) * n1 - c1.sum(axis=1, dtype=np.int64)
    u_le = rank_sum - n1 * (n1 + 1) // 2  # pairs with x0 <= x1 (ties counted fully)
    tie = np.bitwise_xor(keys[:, 1:], keys[:, :-1]) < 2  # key p equals key p + 1 in value
    t_row, t_col = np.nonzero(tie)
    del tie
    tie_pairs = np.zeros(nb, dtype=np.float64)
    if t_row.size:
        new = np.ones(t_row.size, dtype=bool)  # first tie position of each group of equals
        new[1:] = (t_row[1:] != t_row[:-1]) | (t_col[1:] != t_col[:-1] + 1)
        first = np.flatnonzero(new)
        last = np.r_[first[1:] - 1, t_row.size - 1]
        g_row = t_row[first]
        g_start = t_col[first]
        g_end = t_col[last] + 1
        g_size = (g_end - g_start + 1).astype(np.int64)
        g_c1 = c1[g_row, g_end].astype(np.int64) - np.where(
            g_start > 0, c1[g_row, np.maximum(g_start - 1, 0)], 0)
        tie_pairs = np.bincount(g_row, weights=((g_size - g_c1) * g_c1).astype(np.float64),
                                minlength=nb)
    out["auc"] = (u_le - 0.5 * tie_pairs) / (float(n0) * float(n1))

    # -- best single threshold -----------------------------------------------------------------
    # After position p, the rule "a > key[p] is class 1" has accuracy (d[p] + n1) / n with
    # d[p] = (p + 1) - 2 c1[p]; "a > key[p] is class 0" has 1 - (d[p] + n1) / n. A threshold
    # may not split equal values, so positions inside a group of ties are excluded.
    d = c1
    d *= -2
    d += np.arange(1, n + 1, dtype=ctype)
    big = ctype(n + 1)
    d[t_row, t_col] = big
    arg_lo = d.argmin(axis=1)
    d[t_row, t_col] = -big
    arg_hi = d.argmax(axis=1)
    acc_hi = (d[rows, arg_hi].astype(np.float64) + n1) / n  # above threshold -> class 1
    acc_lo = 1.0 - (d[rows, arg_lo].astype(np.float64) + n1) / n  # above threshold -> class 0
    above1 = acc_hi >= acc_lo
    pos = np.where(above1, arg_hi, arg_lo)
    nxt = np.minimum(pos + 1, n - 1)
    fdt = np.float32 if itype is np.int32 else np.float64
    k_a = (keys[rows, pos] >> 1).astype(itype).view(fdt).astype(np.float64)
    k_b = (keys[rows, nxt] >> 1).astype(itype).view(fdt).astype(np.float64)
    mid = 0.5 * (k_a + k_b)
    # between two adjacent floats the midpoint rounds to one of them; never onto the upper one
    mid = np.where(mid < k_b, mid, k_a)
    thr = np.where(pos < n - 1, mid, k_a)
    out["best_threshold"] = lo + thr * span  # in the units of the input activations
    out["threshold_above_class"] = above1.astype(np.int8)
    out["threshold_accuracy"] = np.where(above1, acc_hi, acc_lo)
    return out


def _run_blocks(A: np.ndarray, lab: np.ndarray, bins: int, rescale: bool,
                n_jobs: int | None) -> dict[str, np.ndarray]:
    n, m = A.shape
    nb = max(1, min(m, _BLOCK_ELEMENTS // max(n, 1)))
    spans = [(s, min(s + nb, m)) for s in range(0, m, nb)]
    if n_jobs is None:
        n_jobs = min(4, os.cpu_count() or 1)
    if n_jobs < 1:
        raise InputError(f"n_jobs: expected a positive integer or None, found {n_jobs!r}")
    if n_jobs == 1 or len(spans) == 1:
        parts = [_block(A, s, e, lab, bins, rescale) for s, e in spans]
    else:
        with ThreadPoolExecutor(max_workers=min(n_jobs, len(spans))) as pool:
            parts = list(pool.map(lambda se: _block(A, se[0], se[1], lab, bins, rescale),
                                  spans))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def ans_histograms(activations: Any, labels: Any, bins: int = 10, *,
                   rescale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class histograms of every node: ``(h0, h1)``, each int64 of shape (nodes, bins).

    ``h0[j, k]`` counts the class-0 samples whose activation of node ``j`` falls in bin ``k``
    (bins as in :func:`ans`). Same validation and ``rescale`` as :func:`ans`.
    """
    A = as_activations(activations)
    lab = as_binary_labels(labels, A.shape[0])
    res = _run_blocks(A, lab, check_bins(bins), rescale, n_jobs=1)
    return res["h0"], res["h1"]


def ans(activations: Any, labels: Any, bins: int = 10, *, rescale: bool = False,
        class_balanced: bool = False, n_jobs: int | None = None) -> pd.DataFrame:
    """Autoencoder node saliency of every latent node: one row per node.

    Parameters
    ----------
    activations
        Array-like of shape (n_samples, n_nodes): the latent activations, one row per sample
        (numpy, pandas, or a torch tensor). Values must lie in [0, 1] (sigmoid outputs);
        NaN or infinity is an :class:`~oncoscale.errors.InputError`. float32 input is used as
        float32 (less memory), anything else as float64.
    labels
        Length n_samples: booleans or the numbers 0 and 1 (1 = e.g. cancer, 0 = normal). Both
        classes must be present. Other encodings (strings, -1/+1) are rejected: map them first.
    bins
        Number B of equal-width bins on [0, 1]. Bin 0 is [0, 1/B]; 0-based bin k >= 1 is
        (k/B, (k+1)/B], i.e. ``max(ceil(a*B) - 1, 0)``: the values are compared with the
        floats nearest to k/B in their own precision (:func:`bin_edges`), so a value on an
        edge (e.g. 0.1 for B = 10) lies in the lower bin and nothing depends on rounding
        ``a * B``.
    rescale
        If True, each node is first min-max scaled to [0, 1] on these samples:
        ``(a - min) / (max - min)``; a constant node becomes all 0. Then activations outside
        [0, 1] (e.g. ReLU or linear latents) are accepted. The result is invariant to any
        positive affine change of a node's values. ``mean0``/``mean1`` and ``best_threshold``
        stay in the input units.
    class_balanced
        How ``h_k^c`` enters the saliency (see below). False (default) uses raw class counts,
        as the published ``ans.py`` does; True divides each class histogram by its class size
        first, so that a class imbalance does not bias ``q_k``. Both give identical results
        when the classes are the same size (the breast fixture is 112 / 112).
    n_jobs
        Threads over blocks of nodes (default: up to 4, bounded by the CPU count).

    Returns
    -------
    pandas.DataFrame
        Index: 0-based node number, named ``"node"``. Columns (see ``COLUMNS``):

        - ``n_occupied``: number M of occupied bins (all samples).
        - ``ned``: normalised entropy difference ``1 - H / log2(M)`` of the bin shares of all
          samples, H the base-2 entropy over occupied bins; 1 when M <= 1. In [0, 1]; high
          means concentrated. ``ned0``, ``ned1``: the same within class 0 / class 1.
        - ``ned_below_classes``: ``ned < min(ned0, ned1)``, the published sign of a node whose
          classes sit in different places (each class concentrated, the mixture spread).
        - ``ce{c}_binary``, ``ce{c}_increasing``: cross entropy (bits) for class c,
          ``CE_c = -sum_k p_k [r_k log2 q_k + (1 - r_k) log2(1 - q_k)]`` over bins where both
          classes occur, with ``q_k = h_k^c / (h_k^0 + h_k^1)`` the share of class c in bin k
          (``h_k^c`` = number of class-c samples in bin k, or that count / n_c when
          ``class_balanced``) and ``p_k`` the share of all samples in bin k. Bins holding only
          one class (q_k in {0, 1}) contribute nothing, as in the published method, so a node
          that separates the classes perfectly has CE 0.
          binary: ``r_k = 1`` for 0-based bin index ``k > B/2`` else 0; increasing: ``r_k`` =
          the bin's midpoint ``(k + 0.5) / B``.
        - ``sns_binary``, ``sns_increasing``: ``min(CE_0, CE_1)``; lower is better.
          ``sns_*_class``: the class c that attains the minimum (the class the node's high
          activations point to; 0 on a tie).
        - ``mean0``, ``mean1``: mean activation per class (input units).
        - ``auc``: ROC AUC of the raw activation for class 1 = P(a1 > a0) + P(a1 = a0) / 2
          (Mann-Whitney, ties by mid-ranks); ``auc_separation = max(auc, 1 - auc)``.
        - ``best_threshold``, ``threshold_above_class``, ``threshold_accuracy``: the single
          threshold t (midway between two consecutive distinct activations) whose rule
          "a > t is class ``threshold_above_class``, else the other class" has the highest
          accuracy on these samples (ties: the smallest t). In input units; with
          ``rescale=True`` it is mapped back from the rescaled values (exact up to rounding).
        - ``rank_sns_binary``, ``rank_sns_increasing``: 1 = lowest SNS (ties keep node order).

        ``df.attrs`` holds ``bins``, ``n0``, ``n1``, ``rescale``, ``class_balanced``.

    Notes
    -----
    Differences from the published ``ans.py``, on purpose:

    - Its increasing-distribution cross entropy subtracts the ``(1 - r_k) log2(1 - q_k)``
      term (``r log q - (1 - r) log(1 - q)``); we use the cross entropy as written in the
      papers and the issue (``+``). Its binary variant, NED, NED0 and NED1 agree with ours.
    - Its bins compare against ``(1/B) * k`` computed in floating point (e.g. 0.1 * 3 =
      0.30000000000000004); ours against the float nearest to k/B (0.3). The two differ
      only for a value within one rounding unit of an edge.

    Examples
    --------
    >>> table = ans(latent, is_tumour)                 # latent: (samples, nodes) in [0, 1]
    >>> table.nsmallest(5, "sns_binary")[["sns_binary", "auc", "threshold_accuracy"]]

    Raises
    ------
    InputError
        Wrong shapes, non-numeric data, NaN/infinity, values outside [0, 1] without
        ``rescale``, labels that are not 0/1 or hold only one class, ``bins`` < 2.
    """
    A = as_activations(activations)
    n, m = A.shape
    lab = as_binary_labels(labels, n)
    B = check_bins(bins)
    res = _run_blocks(A, lab, B, rescale, n_jobs=n_jobs)
    n1 = int(lab.sum())
    n0 = n - n1
    h0, h1 = res["h0"], res["h1"]
    ned, m_occ = _entropy_ned(h0 + h1)
    ned0, _ = _entropy_ned(h0)
    ned1, _ = _entropy_ned(h1)
    k = np.arange(B)
    r_bin = (k > B / 2).astype(np.float64)
    r_inc = (k + 0.5) / B
    ce0_b, ce1_b = _cross_entropies(h0, h1, r_bin, class_balanced, n0, n1)
    ce0_i, ce1_i = _cross_entropies(h0, h1, r_inc, class_balanced, n0, n1)
    sns_b = np.minimum(ce0_b, ce1_b)
    sns_i = np.minimum(ce0_i, ce1_i)
    auc = res["auc"]
    df = pd.DataFrame({
        "n_occupied": m_occ.astype(np.int64),
        "ned": ned, "ned0": ned0, "ned1": ned1,
        "ned_below_classes": ned < np.minimum(ned0, ned1),
        "ce0_binary": ce0_b, "ce1_binary": ce1_b, "sns_binary": sns_b,
        "sns_binary_class": (ce1_b < ce0_b).astype(np.int64),
        "ce0_increasing": ce0_i, "ce1_increasing": ce1_i, "sns_increasing": sns_i,
        "sns_increasing_class": (ce1_i < ce0_i).astype(np.int64),
        "mean0": res["mean0"], "mean1": res["mean1"],
        "auc": auc, "auc_separation": np.maximum(auc, 1.0 - auc),
        "best_threshold": res["best_threshold"],
        "threshold_above_class": res["threshold_above_class"].astype(np.int64),
        "threshold_accuracy": res["threshold_accuracy"],
        "rank_sns_binary": _rank(sns_b), "rank_sns_increasing": _rank(sns_i),
    }, index=pd.RangeIndex(m, name="node"))
    df.attrs.update({"bins": B, "n0": n0, "n1": n1, "rescale": bool(rescale),
                     "class_balanced": bool(class_balanced)})
    return df


def _rank(values: np.ndarray) -> np.ndarray:
    """1-based rank, lowest value first, ties in node order."""
    order = np.argsort(values, kind="stable")
    rank = np.empty(values.size, dtype=np.int64)
    rank[order] = np.arange(1, values.size + 1)
    return rank
