"""Topological exploration of a high-dimensional function f over samples X.

Follows Liu et al., "Scalable Topological Data Analysis and Visualization for Evaluating
Data-Driven Models in Scientific Applications" (VIS 2019):

* `neighborhood_graph` - FAISS kNN candidates pruned to a (relaxed) β-skeleton, streamed in
  chunks to Parquet (`oncoscale.topology.graph`);
* `MorseSmale` - steepest ascent/descent, saddles, persistence hierarchy, Morse-Smale
  segmentation (`oncoscale.topology.morse`);
* `write_cube` / `Cube` - the topology-aware datacube in DuckDB (`oncoscale.topology.cube`);
* `build` - all three in one call; `explorer.serve` - the web explorer.

Example::

    from oncoscale import topology
    ms = topology.MorseSmale(k=15, beta=1.0, relaxed=True).fit(X, f)
    ms.maxima(persistence=0.05)
    path = topology.build(X, f, out="cube.duckdb", k=15)
    topology.explorer.serve(path, host="127.0.0.1", port=8050)
"""

from __future__ import annotations

import importlib
from typing import Any

from oncoscale.topology.build import build, load_inputs
from oncoscale.topology.cube import Cube, write_cube
from oncoscale.topology.graph import Graph, KnnResult, knn, neighborhood_graph
from oncoscale.topology.morse import MorseSmale

__all__ = ["Cube", "Graph", "KnnResult", "MorseSmale", "build", "explorer", "knn",
           "load_inputs", "neighborhood_graph", "write_cube"]


def __getattr__(name: str) -> Any:  # lazy: the web stack loads only when asked for
    if name == "explorer":
        return importlib.import_module("oncoscale.topology.explorer")
    raise AttributeError(f"module 'oncoscale.topology' has no attribute {name!r}")
