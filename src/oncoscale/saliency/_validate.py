"""Input checks shared by the saliency functions: activations matrix and binary labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from oncoscale.errors import InputError


def as_activations(activations: Any, name: str = "activations") -> np.ndarray:
    """Return ``activations`` as a 2-D float array (samples x nodes) without copying if possible.

    float32 input stays float32 (half the memory); any other real dtype becomes float64.
    Raises InputError for non-numeric input, a wrong number of dimensions, or an empty matrix.
    NaN / infinity and the [0, 1] range are checked block by block in the measures, so the
    data are not scanned twice.
    """
    if hasattr(activations, "detach"):  # a torch tensor: move to host memory first
        activations = activations.detach().cpu().numpy()
    try:
        arr = np.asarray(activations)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise InputError(f"{name}: expected a 2-D numeric array, got {type(activations)!r}") \
            from exc
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name}: expected a real-valued numeric array (samples x nodes), "
                         f"found dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array of shape (samples, nodes), "
                         f"found {arr.ndim}-D shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise InputError(f"{name}: expected at least 2 samples and 1 node, found shape "
                         f"{arr.shape}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    return arr


def as_binary_labels(labels: Any, n_samples: int, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int8 vector of 0/1 of length ``n_samples``.

    Accepted: booleans (True = class 1), or numbers whose values are exactly 0 and 1
    (e.g. 0/1 integers or 0.0/1.0 floats). Both classes must be present. Anything else
    (strings, -1/+1, three classes, NaN) is an InputError: map your labels to 0/1 first,
    e.g. ``labels = (obs["sample_type"] == "tumour")``.
    """
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.ndim == 2 and 1 in lab.shape:
        lab = lab.reshape(-1)
    if lab.ndim != 1:
        raise InputError(f"{name}: expected a 1-D vector of 0/1 class labels, "
                         f"found shape {lab.shape}")
    if lab.shape[0] != n_samples:
        raise InputError(f"{name}: expected one label per sample ({n_samples} samples in the "
                         f"activations), found {lab.shape[0]} labels")
    if lab.dtype == np.bool_:
        out = lab.astype(np.int8)
    elif np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.floating):
        if np.issubdtype(lab.dtype, np.floating) and np.isnan(lab).any():
            raise InputError(f"{name}: found NaN; expected only the values 0 and 1")
        bad = ~((lab == 0) | (lab == 1))
        if bad.any():
            found = np.unique(lab[bad])[:5].tolist()
            raise InputError(f"{name}: expected only the values 0 and 1 (or booleans), "
                             f"found {found}; map your classes to 0/1 first")
        out = lab.astype(np.int8)
    else:
        raise InputError(f"{name}: expected booleans or the numbers 0 and 1, found dtype "
                         f"{lab.dtype}; map your classes to 0/1 first, e.g. "
                         f"labels == 'tumour'")
    n1 = int(out.sum())
    if n1 == 0 or n1 == n_samples:
        only = 1 if n1 else 0
        raise InputError(f"{name}: both classes 0 and 1 must be present, found only class "
                         f"{only} ({n_samples} samples)")
    return out


def check_bins(bins: Any) -> int:
    """Validate the number of histogram bins (an integer >= 2)."""
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or int(bins) < 2:
        raise InputError(f"bins: expected an integer >= 2, found {bins!r}")
    return int(bins)
