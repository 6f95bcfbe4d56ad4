"""oncoscale.saliency: autoencoder node saliency (ANS), PCA / t-SNE comparison, plots.

    >>> from oncoscale.saliency import ans
    >>> table = ans(activations, labels, bins=10)   # one row per latent node
    >>> table.sort_values("sns_binary").head()

Heavy dependencies (scikit-learn, openTSNE, matplotlib, anndata) are imported only when the
functions that need them are called.
"""

from __future__ import annotations

import importlib
from typing import Any

from oncoscale.saliency.measures import COLUMNS, ans, ans_histograms, bin_edges, bin_index

__all__ = [
    "COLUMNS", "ans", "ans_histograms", "bin_edges", "bin_index",
    "ans_adata", "compare", "compare_adata", "ComparisonResult",
    "plot_node_histograms", "plot_saliency_curves", "plot_comparison",
    "figure_to_png", "figure_to_base64", "figure_to_data_uri",
]

_LAZY = {
    "ans_adata": "oncoscale.saliency.adata",
    "compare_adata": "oncoscale.saliency.adata",
    "compare": "oncoscale.saliency.comparison",
    "ComparisonResult": "oncoscale.saliency.comparison",
    "plot_node_histograms": "oncoscale.saliency.plots",
    "plot_saliency_curves": "oncoscale.saliency.plots",
    "plot_comparison": "oncoscale.saliency.plots",
    "figure_to_png": "oncoscale.saliency.plots",
    "figure_to_base64": "oncoscale.saliency.plots",
    "figure_to_data_uri": "oncoscale.saliency.plots",
}


def __getattr__(name: str) -> Any:
    """Import the comparison, AnnData and plotting helpers on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'oncoscale.saliency' has no attribute {name!r}")
