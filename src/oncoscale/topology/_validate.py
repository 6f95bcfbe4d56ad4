"""Input checks shared by the topology modules (arrays in, clear `InputError` out)."""

from __future__ import annotations

import warnings

import numpy as np

from oncoscale.errors import InputError


def check_points(X: object, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 array of shape (n, d).

    A 1-D array is read as n samples of one dimension. NaN or inf raise `InputError` naming
    the first bad sample and dimension.
    """
    arr = np.asarray(X)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name} must be numeric, found dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{name} must have shape (n_samples, n_dims), found shape {arr.shape}")
    if arr.shape[0] < 2:
        raise InputError(f"{name} must hold at least 2 samples, found {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise InputError(f"{name} must have at least 1 dimension, found 0")
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"{name} must be finite, found {arr[i, j]} at sample {i}, dimension {j} "
            f"({int(bad.sum())} non-finite values in all); drop or impute them first"
        )
    return arr


def check_function(f: object, n: int, name: str = "f") -> np.ndarray:
    """Return ``f`` as a float64 vector of length ``n``; NaN/inf raise `InputError`."""
    arr = np.asarray(f)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name} must be numeric, found dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a vector of length n_samples, found shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{name} must have one value per sample ({n}), found {arr.shape[0]}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{name} must be finite, found {arr[i]} at sample {i} "
            f"({int(bad.sum())} non-finite values in all); drop those samples first"
        )
    return arr


def effective_k(k: int, n: int) -> int:
    """Clip the neighbour count to ``n - 1`` (with a warning); reject k < 1."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, found {k!r}")
    if k > n - 1:
        warnings.warn(
            f"k={k} is not smaller than the number of samples n={n}; using k={n - 1} "
            "(every other sample is a candidate neighbour)",
            UserWarning,
            stacklevel=3,
        )
        return n - 1
    return int(k)
