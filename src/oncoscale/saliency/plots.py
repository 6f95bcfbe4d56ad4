"""Figures for ANS and the PCA / t-SNE comparison (matplotlib, no pyplot state, PNG export).

Every function builds a :class:`matplotlib.figure.Figure` directly (Agg canvas), so nothing
depends on a display or on pyplot's global figure list; save it with ``fig.savefig`` or turn it
into bytes / base64 for a self-contained HTML report with :func:`figure_to_png`,
:func:`figure_to_base64` or :func:`figure_to_data_uri`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oncoscale.errors import InputError
from oncoscale.saliency._validate import as_activations, as_binary_labels
from oncoscale.saliency.measures import ans, ans_histograms

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from oncoscale.saliency.comparison import ComparisonResult

__all__ = ["plot_node_histograms", "plot_saliency_curves", "plot_comparison",
           "figure_to_png", "figure_to_base64", "figure_to_data_uri"]

#: class 0 / class 1 colours (the published ANS figures' blue and red)
CLASS_COLORS = ("#006BA4", "#D62728")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _top_nodes(table: pd.DataFrame, top: int, by: str) -> list[int]:
    if by not in table.columns:
        raise InputError(f"rank_by: expected a column of the ANS table, found {by!r}")
    ascending = not by.startswith("auc")
    ordered = table[by].sort_values(ascending=ascending, kind="stable")
    return [int(i) for i in ordered.index[:top]]


def plot_node_histograms(activations: Any, labels: Any, *, ans_table: pd.DataFrame | None = None,
                         nodes: Sequence[int] | None = None, top: int = 4, bins: int = 10,
                         rescale: bool = False, rank_by: str = "sns_binary",
                         class_names: Sequence[str] = ("class 0", "class 1"),
                         ncols: int = 4) -> Figure:
    """Stacked class histograms (counts per ANS bin) of the top nodes, one panel per node.

    ``nodes`` lists 0-based node numbers to draw; by default the ``top`` nodes of ``ans_table``
    ranked by ``rank_by`` (``sns_*``/``ned*`` ascending, ``auc*`` descending), the table
    being computed when not given. Bins are those of :func:`~oncoscale.saliency.ans`
    (``bins``, ``rescale``). Class 0 is drawn at the bottom, class 1 stacked on top.
    """
    A = as_activations(activations)
    lab = as_binary_labels(labels, A.shape[0])
    if nodes is None:
        if ans_table is None:
            ans_table = ans(A, lab, bins=bins, rescale=rescale)
        nodes = _top_nodes(ans_table, top, rank_by)
    nodes = [int(j) for j in nodes]
    if not nodes:
        raise InputError("nodes: expected at least one node to plot, found none")
    bad = [j for j in nodes if not 0 <= j < A.shape[1]]
    if bad:
        raise InputError(f"nodes: expected node numbers in [0, {A.shape[1] - 1}], found {bad}")
    h0, h1 = ans_histograms(A[:, nodes], lab, bins, rescale=rescale)
    ncols = max(1, min(ncols, len(nodes)))
    nrows = -(-len(nodes) // ncols)
    fig = _figure(3.2 * ncols, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    mids = (np.arange(bins) + 0.5) / bins
    width = 0.8 / bins
    for i, j in enumerate(nodes):
        ax = axes[i]
        ax.bar(mids, h0[i], width=width, color=CLASS_COLORS[0], label=class_names[0])
        ax.bar(mids, h1[i], width=width, bottom=h0[i], color=CLASS_COLORS[1], hatch="//",
               label=class_names[1])
        title = f"node {j}"
        if ans_table is not None and j in ans_table.index:
            row = ans_table.loc[j]
            title += f"  SNS={row['sns_binary']:.3f}  AUC={row['auc_separation']:.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("activation (bin middle)" + (", rescaled" if rescale else ""), fontsize=8)
        ax.set_ylabel("samples", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper center")
    for ax in axes[len(nodes):]:
        ax.set_visible(False)
    return fig


def plot_saliency_curves(ans_table: pd.DataFrame, *, top: int | None = None,
                         rank_by: str = "sns_binary") -> Figure:
    """SNS and NED curves over nodes ranked by ``rank_by`` (the published ANS figures).

    Top panel: ``sns_binary`` and ``sns_increasing`` in rank order of ``rank_by``. Bottom
    panel: ``ned``, ``ned0``, ``ned1`` in the same order; a good separating node has
    NED below both class NEDs. ``top`` keeps only the first ``top`` ranked nodes.
    """
    needed = {"sns_binary", "sns_increasing", "ned", "ned0", "ned1", rank_by}
    missing = sorted(needed - set(ans_table.columns))
    if missing:
        raise InputError(f"ans_table: expected the columns of ans(), missing {missing}")
    ordered = ans_table.sort_values(rank_by, kind="stable")
    if top is not None:
        ordered = ordered.iloc[:top]
    x = np.arange(1, len(ordered) + 1)
    fig = _figure(9, 5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(x, ordered["sns_binary"], color="k", lw=1.5, label="SNS, binary")
    ax1.plot(x, ordered["sns_increasing"], color="0.5", lw=1.0, ls="--", label="SNS, increasing")
    ax1.set_ylabel("SNS (bits)")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(f"nodes ranked by {rank_by} (best first); best node {int(ordered.index[0])}",
                  fontsize=10)
    ax2.plot(x, ordered["ned"], color="k", lw=1.5, label="NED")
    ax2.plot(x, ordered["ned0"], color=CLASS_COLORS[0], lw=1.0, ls=":", label="NED$_0$")
    ax2.plot(x, ordered["ned1"], color=CLASS_COLORS[1], lw=1.0, ls="--", label="NED$_1$")
    ax2.set_ylabel("NED")
    ax2.set_xlabel("rank")
    ax2.legend(fontsize=8, loc="lower right")
    return fig


def plot_comparison(result: ComparisonResult, *,
                    class_names: Sequence[str] = ("class 0", "class 1")) -> Figure:
    """Three scatter plots side by side, coloured by class: the two best ANS nodes,
    PC1 vs PC2, and the t-SNE map, each titled with its AUC and cross-validated accuracy."""
    lab = np.asarray(result.labels).astype(bool)
    table = result.table
    fig = _figure(12, 4)
    axes = fig.subplots(1, 3)
    pcs = result.pca
    pc2 = pcs[:, 1] if pcs.shape[1] > 1 else np.zeros(pcs.shape[0])
    panels = (
        ("ans_node", result.node_values, result.second_values,
         f"node {result.best_node}", f"node {result.second_node}"),
        ("pca_pc1", pcs[:, 0], pc2, "PC1", "PC2"),
        ("tsne", result.tsne[:, 0], result.tsne[:, 1], "t-SNE 1", "t-SNE 2"),
    )
    for ax, (method, x, y, xl, yl) in zip(axes, panels, strict=True):
        for c in (0, 1):
            sel = lab == bool(c)
            ax.scatter(x[sel], y[sel], s=8, alpha=0.7, color=CLASS_COLORS[c],
                       label=class_names[c], edgecolors="none")
        row = table.loc[method]
        ax.set_title(f"{method}: AUC={row['auc']:.2f}, CV acc={row['cv_accuracy']:.2f}",
                     fontsize=9)
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.tick_params(labelsize=7)
    if "pca_best" in table.index:
        best = table.loc["pca_best"]
        axes[1].text(0.02, 0.02, f"best PC: {best['coordinate']} (AUC={best['auc']:.2f})",
                     transform=axes[1].transAxes, fontsize=7)
    axes[0].legend(fontsize=7)
    return fig


def figure_to_png(fig: Figure, *, dpi: int = 100, close: bool = False) -> bytes:
    """PNG bytes of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        fig.clear()
    return buf.getvalue()


def figure_to_base64(fig: Figure, *, dpi: int = 100) -> str:
    """Base64 (ASCII) of the PNG of ``fig``."""
    return base64.b64encode(figure_to_png(fig, dpi=dpi)).decode("ascii")


def figure_to_data_uri(fig: Figure, *, dpi: int = 100) -> str:
    """``data:image/png;base64,...`` for an ``<img src=...>`` in a self-contained HTML file."""
    return "data:image/png;base64," + figure_to_base64(fig, dpi=dpi)
