"""oncoscale.parallel: data-, model- and hybrid-parallel training (HyPar-Flow style).

``fit`` is the one entry point; ``fit_sequential`` (the single-process loop) is imported
lazily so this package imports even where that module is not available.

Modules, one job each: ``layout`` (replicas x partitions numbering), ``partition`` (torch.fx
tracing, units, values crossing a cut, stage modules, profiling), ``balance`` (linear
partition of profiled costs, the printed plan), ``schedule`` (GPipe / 1F1B op lists),
``pipeline`` (one stage at run time: non-blocking p2p, buffer pool), ``replica`` (bucketed,
hook-driven gradient allreduce, compressors), ``engine`` (``fit``), ``_dist`` (the seam to
``oncoscale.comm`` / torch.distributed).

Known limits: the model takes one input tensor whose first dimension is the batch; the
loss must be a mean over the micro-batch; BatchNorm statistics are per micro-batch and
running buffers are not synchronised across replicas (use GroupNorm, e.g.
``ResNet(norm="group")``, for results identical to whole-batch training); the CUDA/NCCL path
is written device-agnostic but has only been run on CPU/gloo.
"""

from __future__ import annotations

from typing import Any

from oncoscale.parallel.balance import Plan, linear_partition, resolve_boundaries
from oncoscale.parallel.engine import ParallelFitResult, fit, resolve_layout
from oncoscale.parallel.layout import Layout
from oncoscale.parallel.partition import split_graph, trace
from oncoscale.parallel.replica import GradientSync, TopKCompressor
from oncoscale.parallel.schedule import bubble_fraction, gpipe, make_schedule, one_f_one_b

__all__ = [
    "GradientSync", "Layout", "ParallelFitResult", "Plan", "TopKCompressor",
    "bubble_fraction", "fit", "fit_sequential", "gpipe", "linear_partition",
    "make_schedule", "one_f_one_b", "resolve_boundaries", "resolve_layout", "split_graph",
    "trace",
]


def __getattr__(name: str) -> Any:
    if name in ("fit_sequential", "FitResult", "train_autoencoder", "EarlyStopping"):
        from oncoscale.parallel import sequential

        return getattr(sequential, name)
    raise AttributeError(f"module 'oncoscale.parallel' has no attribute {name!r}")
